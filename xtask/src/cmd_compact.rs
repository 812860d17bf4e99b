//! `compact IMAGE [--json]` (Hyper-V's Optimize-VHD): move payload blocks
//! from the file's tail into the space no structure references, cut the
//! file after its last referenced byte and punch the gaps left. Exit 0:
//! compacted (or nothing to do); 1: refused (the image fails `check`),
//! nothing changed; 2: the image could not be opened.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Args;
use formats::params::OpenOptions;
use formats::{Access, JournalSlot, Severity};
use serde::Serialize;

use crate::cli_util::{fs, print_json};
use crate::outln;

#[derive(Args)]
pub struct CompactArgs {
    pub image: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
pub struct CompactOutput {
    pub path: String,
    pub compacted: bool,
    pub apparent_before: u64,
    pub apparent_after: u64,
    pub allocated_before: u64,
    pub allocated_after: u64,
    pub moved: u64,
    pub bytes_moved: u64,
    pub bytes_punched: u64,
    pub error: Option<String>,
}

/// (apparent, allocated) bytes of a file, as `stat -c '%s %b'` shows them.
fn sizes(p: &Path) -> (u64, u64) {
    std::fs::metadata(p)
        .map(|m| (m.len(), m.blocks() * 512))
        .unwrap_or_default()
}

fn compact(args: &CompactArgs, out: &mut CompactOutput) -> Result<(), (u8, String)> {
    let ns = fs();
    // Locked exclusively but read-only until the checks pass: a refused
    // compaction changes no byte.
    let opts = formats::chain::ChainOptions {
        access: Access::Write,
        writable: false,
        ..Default::default()
    };
    let img =
        formats::chain::open_image_file(&ns, &args.image, &opts).map_err(|e| (2, e.to_string()))?;
    let errors: Vec<String> = img
        .check()
        .map_err(|e| (1, e.to_string()))?
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect();
    if !errors.is_empty() {
        return Err((
            1,
            format!("refused, nothing changed: {}", errors.join("; ")),
        ));
    }
    let mut img = img
        .reopen(
            Some(JournalSlot::for_image(ns.clone(), &args.image)),
            OpenOptions {
                writable: true,
                ignore_checksums: false,
            },
        )
        .map_err(|e| (2, e.to_string()))?;
    let r = img.compact().map_err(|e| (1, e.to_string()))?;
    out.compacted = true;
    out.moved = r.moved;
    out.bytes_moved = r.bytes_moved;
    out.bytes_punched = r.bytes_punched;
    Ok(())
}

pub fn run(args: CompactArgs) -> u8 {
    let (apparent_before, allocated_before) = sizes(&args.image);
    let mut out = CompactOutput {
        path: args.image.display().to_string(),
        apparent_before,
        allocated_before,
        ..Default::default()
    };
    let code = match compact(&args, &mut out) {
        Ok(()) => 0,
        Err((code, msg)) => {
            out.error = Some(msg);
            code
        }
    };
    (out.apparent_after, out.allocated_after) = sizes(&args.image);
    if args.json {
        print_json(&out);
    } else if let Some(e) = &out.error {
        eprintln!("compact: {}: {e}", out.path);
    } else {
        outln!(
            "{}: {} blocks moved ({} bytes); apparent {} -> {} bytes, allocated {} -> {} bytes",
            out.path,
            out.moved,
            out.bytes_moved,
            out.apparent_before,
            out.apparent_after,
            out.allocated_before,
            out.allocated_after
        );
    }
    code
}
