//! `set-parent CHILD PARENT [--ignore-id-mismatch]` (Hyper-V's `Set-VHD
//! -ParentPath`) and `rebase CHILD (--onto NEWPARENT | --standalone)`
//! (qemu-img rebase, safe mode): see `merge::relink`. Both print what they did (`--json`: the
//! `RelinkOutcome`). Exit status: the merge table (0 done, 2 invalid
//! parameter, 3 file not found, 4 in use, 5 invalid state, 6 not a
//! differencing image, 7 corrupt, 8 access denied, 1 other) plus 10: the
//! new parent does not fit — its identity is not the one the child records
//! (`id_mismatch`; `--ignore-id-mismatch` links it anyway), its format,
//! virtual size or logical sector size differ (`parent_mismatch`), or it
//! descends from the child (`cycle`). Every refusal changes no byte.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use clap::Args;
use merge::relink::{RelinkOutcome, RelinkRequest};
use merge::JobHandle;

use crate::cli_util::{chain_options, fs, print_json};
use crate::ChainArgs;

#[derive(Args)]
pub struct SetParentArgs {
    /// The differencing image whose parent link is rewritten.
    pub child: PathBuf,
    /// The parent it should link to.
    pub parent: PathBuf,
    /// Link even when the parent's identity (VHDX DataWriteGuid, VHD
    /// unique id) is not the one the child records; the new one is recorded.
    #[arg(long)]
    pub ignore_id_mismatch: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
}

#[derive(Args)]
pub struct RebaseArgs {
    /// The differencing image to move onto another parent.
    pub child: PathBuf,
    /// The new parent: every range where it reads differently from the old
    /// parent chain is first copied into the child.
    #[arg(
        long,
        required_unless_present = "standalone",
        conflicts_with = "standalone"
    )]
    pub onto: Option<PathBuf>,
    /// No new parent: the child becomes a dynamic image holding everything
    /// its chain shows (qemu-img rebase -b "").
    #[arg(long)]
    pub standalone: bool,
    /// Run every check, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// Exit status of an outcome (module table).
fn exit_code(out: &RelinkOutcome) -> u8 {
    match out.error_kind {
        Some("id_mismatch" | "parent_mismatch" | "cycle") => 10,
        _ => crate::cmd_merge::exit_code(out.return_value),
    }
}

pub fn run_set_parent(args: SetParentArgs) -> u8 {
    let req = RelinkRequest {
        child: args.child.clone(),
        new_parent: Some(args.parent.clone()),
        ignore_id_mismatch: args.ignore_id_mismatch,
        chain: chain_options(&args.chain),
        dry_run: false,
    };
    let out = merge::relink::set_parent(&fs(), &req, &JobHandle::new());
    report("set-parent", &out, args.json)
}

pub fn run_rebase(args: RebaseArgs) -> u8 {
    let req = RelinkRequest {
        child: args.child.clone(),
        new_parent: args.onto.clone(),
        ignore_id_mismatch: false,
        chain: chain_options(&args.chain),
        dry_run: args.dry_run,
    };
    let job = JobHandle::new();
    // Ctrl-C / SIGTERM cancel before the commit, as for a merge.
    let _active = crate::cmd_merge::cancel_on_signal(&job);
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let job = job.clone();
        std::thread::spawn(move || {
            let _ = tx.send(merge::relink::rebase(&fs(), &req, &job));
        });
    }
    // Progress on stderr: a bar on a terminal, else a line per 10 %.
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} rebasing [{bar:40}] {pos:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let mut last = 0u8;
    let out = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(o) => break Some(o),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let s = job.status();
        if let Some(b) = &bar {
            b.set_position(u64::from(s.percent_complete));
            b.set_message(format!("{} / {} bytes", s.bytes_done, s.bytes_total));
        } else if !args.json && s.percent_complete >= last.saturating_add(10) {
            last = s.percent_complete / 10 * 10;
            eprintln!(
                "rebase: {:>3}% ({} / {} bytes examined)",
                s.percent_complete, s.bytes_done, s.bytes_total
            );
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match out {
        Some(out) => report("rebase", &out, args.json),
        None => {
            eprintln!("rebase failed: the worker thread panicked");
            1
        }
    }
}

fn report(what: &str, out: &RelinkOutcome, json: bool) -> u8 {
    if json {
        print_json(out);
    } else if out.return_value == 0 {
        let parent = out.new_parent.as_deref().unwrap_or("no parent");
        if out.dry_run {
            eprintln!(
                "dry run: {} would be rebased onto {parent}; nothing was changed",
                out.child
            );
        } else if out.nothing_to_do {
            eprintln!("{}: has no parent already; nothing to do", out.child);
        } else if out.new_parent.is_none() {
            eprintln!(
                "{}: now a dynamic image with no parent (was over {}); {} bytes copied where the chain differed from zeros, every stored block filled",
                out.child,
                out.old_parent.as_deref().unwrap_or("?"),
                out.bytes_copied
            );
        } else {
            let copied = if what == "rebase" {
                format!(
                    "; {} bytes compared, {} bytes copied into the child",
                    out.bytes_compared, out.bytes_copied
                )
            } else {
                String::new()
            };
            eprintln!(
                "{}: now links to {parent} (was {}){copied}{}",
                out.child,
                out.old_parent.as_deref().unwrap_or("unresolved"),
                if out.id_mismatch_ignored {
                    "; identity mismatch ignored, the new parent's identity is recorded"
                } else {
                    ""
                }
            );
            eprintln!(
                "  locator: relative {}, absolute {}",
                out.relative_path.as_deref().unwrap_or("-"),
                out.absolute_path.as_deref().unwrap_or("-")
            );
            if out.resolves == Some(false) {
                eprintln!(
                    "  note: the parent lies outside the child's directory; open the chain with --search-dir (or --parent)"
                );
            }
        }
    } else if out.state == merge::JobState::Cancelled {
        eprintln!(
            "{what} cancelled (return value {}): the child is unchanged",
            out.return_value
        );
    } else {
        eprintln!(
            "{what} failed (return value {}): {}",
            out.return_value,
            out.error.as_deref().unwrap_or("unknown error")
        );
    }
    exit_code(out)
}
