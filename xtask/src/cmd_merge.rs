//! `merge SOURCE [DESTINATION]`: MergeVirtualHardDisk offline.
//!
//! Exit status (the `--json` output always carries the exact
//! MergeVirtualHardDisk `return_value`):
//!
//! | exit | return_value | meaning |
//! |---|---|---|
//! | 0 | 0 | completed, or already merged (`"already_merged": true`: an earlier run committed exactly this merge) |
//! | 2 | 32773 | invalid parameter (destination not an ancestor, bad option) |
//! | 3 | 32779 | a file (source, destination or a parent) not found |
//! | 4 | 32774 | an image is in use (locked by another process) |
//! | 5 | 32775 | invalid state (broken linkage, other children depend on the destination) |
//! | 6 | 32770 | not supported (source is not a differencing image) |
//! | 7 | 32776 | not a VHD/VHDX, or corrupt |
//! | 8 | 32769 | access denied |
//! | 1 | other | failed (I/O error, cancelled, ...) |
//!
//! Ctrl-C (SIGINT) and SIGTERM cancel the running merge through its
//! [`JobHandle`]: the merge stops at its next safe point (before the
//! commit; after it the merge always finishes, DESIGN.md 8), the outcome is
//! printed as usual (state `cancelled`, return value 32768, exit 1) and the
//! destination reads as before. A second signal ends the process at once
//! (exit 130), which is as safe as a crash: the destination is old, or
//! committed and finished by running the command again.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Mutex, Once};
use std::time::Duration;

use clap::Args;
use merge::{JobHandle, MergeOutcome, MergeRequest, ReturnValue};

use crate::cli_util::{chain_options, fs, print_json};
use crate::ChainArgs;

#[derive(Args)]
pub struct MergeArgs {
    /// The differencing image to merge (SourcePath).
    pub source: PathBuf,
    /// The ancestor to merge into (DestinationPath); default: the source's parent.
    pub destination: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Delete the source and intermediates once the merge is durably committed.
    #[arg(long)]
    pub remove_merged: bool,
    /// Merge even if other images depend on the destination or an intermediate.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
}

pub fn exit_code(return_value: u32) -> u8 {
    match return_value {
        0 => 0,
        32773 => 2,
        32779 => 3,
        32774 => 4,
        32775 => 5,
        32770 => 6,
        32776 => 7,
        32769 => 8,
        _ => 1,
    }
}

pub fn request(args: &MergeArgs) -> MergeRequest {
    MergeRequest {
        source: args.source.clone(),
        destination: args.destination.clone(),
        remove_merged: args.remove_merged,
        force: args.force,
        chain: chain_options(&args.chain),
    }
}

/// The merge that SIGINT / SIGTERM cancel: set while `run_with_progress`
/// waits for one, `None` otherwise.
static ACTIVE: Mutex<Option<JobHandle>> = Mutex::new(None);
/// Signals received so far.
static SIGNALS: AtomicU32 = AtomicU32::new(0);

/// Install the SIGINT / SIGTERM handler once per process. `ctrlc` runs it
/// on a thread of its own, so it may lock and print.
fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = ctrlc::set_handler(on_signal) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: cannot handle Ctrl-C / SIGTERM ({e}); a signal ends the merge as a crash would"
            );
        }
    });
}

fn on_signal() {
    let first = SIGNALS.fetch_add(1, Ordering::SeqCst) == 0;
    let job = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match job {
        Some(job) if first => {
            job.cancel();
            let _ = writeln!(
                std::io::stderr(),
                "merge: cancelling at the next safe point (signal again to stop at once)"
            );
        }
        // A second signal, or one with no merge running: stop now, as the
        // default action would (128 + SIGINT).
        _ => std::process::exit(130),
    }
}

/// Clears [`ACTIVE`] however `run_with_progress` returns.
struct ActiveGuard;

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Run a merge with a progress display on stderr (a bar on a terminal,
/// plain lines otherwise, nothing with `quiet`). SIGINT / SIGTERM cancel it
/// (see the module documentation).
pub fn run_with_progress(req: MergeRequest, quiet: bool) -> MergeOutcome {
    let job = JobHandle::new();
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
    let _active = ActiveGuard;
    install_signal_handler();
    // The outcome comes back on a channel, so the wait for it ends the
    // moment the merge does (a sleeping poll added up to one tick to every
    // merge's wall time).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let job = job.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send(merge::run(&fs(), &req, &job));
        });
    }
    let tty = std::io::stderr().is_terminal();
    let bar = (!quiet && tty).then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} merging [{bar:40}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    let mut last_line = 0u8;
    let outcome = loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcome) => break Some(outcome),
            // The worker dropped its sender without sending: it panicked.
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let s = job.status();
        if let Some(b) = &bar {
            b.set_position(u64::from(s.percent_complete));
            b.set_message(format!("{} / {} bytes", s.bytes_done, s.bytes_total));
        } else if !quiet && s.percent_complete >= last_line.saturating_add(10) {
            last_line = s.percent_complete / 10 * 10;
            eprintln!(
                "merge: {:>3}% ({} / {} bytes)",
                s.percent_complete, s.bytes_done, s.bytes_total
            );
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    outcome.unwrap_or_else(|| MergeOutcome {
        return_value: ReturnValue::Failed.code(),
        state: merge::JobState::Failed,
        source: String::new(),
        destination: None,
        bytes_merged: 0,
        bytes_total: 0,
        resumed: false,
        already_merged: false,
        removed: Vec::new(),
        siblings: Vec::new(),
        compaction: None,
        error: Some("merge thread panicked".into()),
    })
}

pub fn run(args: MergeArgs) -> u8 {
    let out = run_with_progress(request(&args), args.json);
    let removed = if out.removed.is_empty() {
        String::new()
    } else {
        format!("; removed {}", out.removed.join(", "))
    };
    if args.json {
        print_json(&out);
    } else if out.return_value == 0 && out.already_merged {
        // An earlier run committed this merge (`already_merged` in --json).
        eprintln!(
            "already merged: {} into {}{}{}",
            out.source,
            out.destination.as_deref().unwrap_or("?"),
            if out.resumed {
                " (finished the interrupted run)"
            } else if out.removed.is_empty() {
                " (nothing to do)"
            } else {
                ""
            },
            removed
        );
    } else if out.return_value == 0 {
        eprintln!(
            "merged {} into {}: {} bytes{}",
            out.source,
            out.destination.as_deref().unwrap_or("?"),
            out.bytes_merged,
            removed
        );
    } else if out.state == merge::JobState::Cancelled {
        eprintln!(
            "merge cancelled (return value {}): {}",
            out.return_value,
            out.error
                .as_deref()
                .unwrap_or("the destination is unchanged")
        );
    } else {
        eprintln!(
            "merge failed (return value {}): {}",
            out.return_value,
            out.error.as_deref().unwrap_or("unknown error")
        );
    }
    exit_code(out.return_value)
}
