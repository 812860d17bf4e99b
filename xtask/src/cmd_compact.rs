//! `compact IMAGE [--zero-blocks] [--json]` (Hyper-V's Optimize-VHD): move
//! payload blocks from the file's tail into the space no structure
//! references, cut the file after its last referenced byte and punch the
//! gaps left; with `--zero-blocks`, first stop storing blocks whose data is
//! all zeros (a differencing image: only where its parent reads zeros
//! too). Exit 0: compacted (or nothing to do); 1: refused (the image fails
//! `check`), nothing changed; 2: the image (or, for `--zero-blocks`, its
//! parent chain) could not be opened, nothing changed.

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
    /// Also release blocks whose data is all zeros (dynamic: recorded as
    /// zero blocks; differencing: only where the parent reads zeros too).
    #[arg(long)]
    pub zero_blocks: bool,
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
    pub zero_blocks_released: u64,
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
    // A differencing image's zero test needs its parents: the whole chain
    // opens before anything is written.
    let parents = if args.zero_blocks && img.is_differencing() {
        let chain = formats::chain::Chain::open_partial_from(&ns, &args.image, img, &opts)
            .map_err(|e| (2, e.to_string()))?;
        if let Some(e) = chain.broken {
            return Err((
                2,
                format!("refused, nothing changed: --zero-blocks needs the parent chain: {e}"),
            ));
        }
        let mut links = chain.links.into_iter();
        let top = links.next().expect("a chain has a top");
        (top.image, links.map(|l| l.image).collect::<Vec<_>>())
    } else {
        (img, Vec::new())
    };
    let (img, parents) = parents;
    let mut img = img
        .reopen(
            Some(JournalSlot::for_image(ns.clone(), &args.image)),
            OpenOptions {
                writable: true,
                ignore_checksums: false,
            },
        )
        .map_err(|e| (2, e.to_string()))?;
    if args.zero_blocks {
        let layers: Vec<&dyn formats::layer::Layer> = parents
            .iter()
            .map(|p| p.as_ref() as &dyn formats::layer::Layer)
            .collect();
        let mut view = formats::chain::ChainReader::new(layers);
        let mut buf = Vec::new();
        let mut parent_reads_zero = |offset: u64, len: u64| -> formats::Result<bool> {
            if parents.is_empty() {
                return Ok(true);
            }
            let mut at = 0;
            while at < len {
                let n = (len - at).min(4 << 20);
                buf.resize(n as usize, 0);
                view.read(offset + at, &mut buf)?;
                if buf.iter().any(|&b| b != 0) {
                    return Ok(false);
                }
                at += n;
            }
            Ok(true)
        };
        out.zero_blocks_released = img
            .release_zero_blocks(&mut parent_reads_zero)
            .map_err(|e| (1, e.to_string()))?;
    }
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
            "{}: {}{} blocks moved ({} bytes); apparent {} -> {} bytes, allocated {} -> {} bytes",
            out.path,
            if args.zero_blocks {
                format!("{} zero blocks released, ", out.zero_blocks_released)
            } else {
                String::new()
            },
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
