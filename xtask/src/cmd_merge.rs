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
//! | 9 | 32768 | refused: the preflight's peak extra space exceeds the destination file system's free space (`error_kind` `insufficient_space`; `--no-space-check` overrides); nothing changed |
//! | 1 | other | failed (I/O error, cancelled, ...) |
//!
//! Every merge first prints its preflight (bytes to copy, touched blocks,
//! the peak extra space before the commit, the free space there);
//! `--dry-run` stops after it, having changed nothing.
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
use formats::params::HeldBlocks;

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
    /// Run every check and print the preflight (what would be copied, the
    /// peak extra space, the free space); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Merge even if the peak extra space exceeds the free space.
    #[arg(long)]
    pub no_space_check: bool,
    /// How a VHDX destination replaces part of a block it already holds:
    /// `journal` writes the new sectors into the log and then in place
    /// (twice the new data, nothing moves), `rebuild` copies the block
    /// whole into fresh space and compaction moves it back; `auto`
    /// rebuilds where the file system shares extents (a clone) and
    /// journals elsewhere. A VHD always rebuilds.
    #[arg(long, value_enum, default_value_t = HeldBlocksArg::Auto)]
    pub held_blocks: HeldBlocksArg,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// The exit status of an outcome (see the module table).
pub fn outcome_exit_code(out: &MergeOutcome) -> u8 {
    if out.error_kind == Some("insufficient_space") {
        9
    } else {
        exit_code(out.return_value)
    }
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
        dry_run: args.dry_run,
        no_space_check: args.no_space_check,
        held_blocks: match args.held_blocks {
            HeldBlocksArg::Auto => HeldBlocks::Auto,
            HeldBlocksArg::Rebuild => HeldBlocks::Rebuild,
            HeldBlocksArg::Journal => HeldBlocks::Journal,
        },
    }
}

/// `--held-blocks` (see `formats::params::HeldBlocks`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HeldBlocksArg {
    Auto,
    Rebuild,
    Journal,
}

/// The job (a merge or a rebase) that SIGINT / SIGTERM cancel: set while
/// one runs, `None` otherwise.
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
                "cancelling at the next safe point (signal again to stop at once)"
            );
        }
        // A second signal, or one with no merge running: stop now, as the
        // default action would (128 + SIGINT).
        _ => std::process::exit(130),
    }
}

/// Let SIGINT / SIGTERM cancel `job` at its next safe point (merge and
/// rebase) until the returned guard drops.
pub fn cancel_on_signal(job: &JobHandle) -> ActiveGuard {
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
    install_signal_handler();
    ActiveGuard
}

/// Clears [`ACTIVE`] however the job's wait returns.
pub struct ActiveGuard;

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
    let _active = cancel_on_signal(&job);
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
    let mut preflight_shown = false;
    let started = std::time::Instant::now();
    let outcome = loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcome) => break Some(outcome),
            // The worker dropped its sender without sending: it panicked.
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if !quiet && !preflight_shown {
            if let Some(p) = job.preflight() {
                preflight_shown = true;
                let line = preflight_line(&p);
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
        let s = job.status();
        if let Some(b) = &bar {
            b.set_position(u64::from(s.percent_complete));
            b.set_message(format!(
                "{} / {} bytes{}",
                s.bytes_done,
                s.bytes_total,
                eta(s.bytes_done, s.bytes_total, started.elapsed())
            ));
        } else if !quiet && s.percent_complete >= last_line.saturating_add(10) {
            last_line = s.percent_complete / 10 * 10;
            eprintln!(
                "merge: {:>3}% ({} / {} bytes{})",
                s.percent_complete,
                s.bytes_done,
                s.bytes_total,
                eta(s.bytes_done, s.bytes_total, started.elapsed())
            );
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // A merge (or dry run) that ended before the first poll.
    if !quiet && !preflight_shown {
        if let Some(p) = outcome.as_ref().and_then(|o| o.preflight) {
            eprintln!("{}", preflight_line(&p));
        }
    }
    outcome.unwrap_or_else(|| MergeOutcome {
        return_value: ReturnValue::Failed.code(),
        state: merge::JobState::Failed,
        error: Some("merge thread panicked".into()),
        ..MergeOutcome::running(String::new(), None, false)
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
    } else if out.return_value == 0 && out.dry_run && !out.already_merged {
        eprintln!(
            "dry run: {} would merge into {}; nothing was changed",
            out.source,
            out.destination.as_deref().unwrap_or("?")
        );
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
    outcome_exit_code(&out)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// One line: what the merge will copy and the space it may need.
fn preflight_line(p: &merge::Preflight) -> String {
    format!(
        "preflight: {} to merge ({} copied), {} blocks of {}; peak extra space before the commit up to {}; free there: {}",
        mib(p.bytes_to_merge),
        mib(p.bytes_to_copy),
        p.blocks,
        mib(p.block_size),
        mib(p.peak_extra_bytes),
        p.free_bytes.map_or("unknown".into(), mib)
    )
}

/// ", about N s left" from the copy rate so far (after a second of it).
fn eta(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs < 1.0 || done >= total {
        return String::new();
    }
    let left = (total - done) as f64 / (done as f64 / secs);
    format!(", about {left:.0} s left")
}
