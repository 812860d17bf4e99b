//! `scan DIR [--recursive] [--follow-symlinks] [--json]`: every VHD/VHDX
//! under DIR (found by signature, whatever its name) and the forest they
//! make: each child's parent by its locator, else by its parent linkage
//! among the scanned files (a parent that moved), with what is wrong.
//!
//! Only headers, metadata and locators are read, each file opened read-only
//! with a shared lock, and no path outside DIR is ever opened: a locator
//! is turned into candidate paths by the same policy a merge uses
//! (`formats::chain::resolve::candidates`), and only candidates that are
//! among the scanned files count. Exit 0: no problems; 1: problems found;
//! 2: DIR cannot be read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Args;
use formats::chain::resolve::{candidates, hint_label, linkage_matches};
use formats::chain::{open_image_file, ChainOptions};
use formats::params::{DiskType, Format, Identity, ParentLinkage, PathHint};
use formats::Access;
use serde::Serialize;

use crate::cli_util::{fs, print_json, print_report};
use crate::outln;

#[derive(Args)]
pub struct ScanArgs {
    pub dir: PathBuf,
    /// Descend into subdirectories.
    #[arg(long)]
    pub recursive: bool,
    /// Follow symbolic links (to files and, with --recursive, directories),
    /// also out of DIR.
    #[arg(long)]
    pub follow_symlinks: bool,
    #[arg(long)]
    pub json: bool,
}

/// How a differencing image's parent was found among the scanned files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentStatus {
    /// A base image: no parent.
    None,
    /// The locator names a scanned file whose identity matches.
    Ok,
    /// The locator is stale, but a scanned file carries the identity the
    /// child records (the parent moved): `set-parent` re-links it.
    FoundById,
    /// No scanned file is the parent.
    Missing,
    /// The locator names a scanned file whose identity does not match (it
    /// was written after the child was made, or replaced).
    IdMismatch,
}

#[derive(Debug, Serialize)]
pub struct ScannedImage {
    pub path: String,
    pub format: &'static str,
    #[serde(rename = "type")]
    pub disk_type: &'static str,
    pub virtual_size: u64,
    pub file_size: u64,
    pub allocated_bytes: u64,
    pub parent: Option<String>,
    pub parent_status: ParentStatus,
    pub children: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Serialize, Default)]
pub struct ScanReport {
    pub images: Vec<ScannedImage>,
    pub problems: Vec<Problem>,
}

/// What scanning one file learned (nothing past its headers).
struct Found {
    path: PathBuf,
    format: Format,
    disk_type: DiskType,
    virtual_size: u64,
    file_size: u64,
    allocated: u64,
    identity: Identity,
    linkage: Option<ParentLinkage>,
    hints: Vec<PathHint>,
}

fn format_name(f: Format) -> &'static str {
    f.name()
}

fn type_name(t: DiskType) -> &'static str {
    t.name()
}

/// Identities as map keys: VHDX by DataWriteGuid, VHD by Unique Id (the
/// time stamp is not part of the linkage check).
fn identity_key(id: &Identity) -> String {
    match id {
        Identity::Vhdx { data_write_guid } => format!("vhdx:{data_write_guid}"),
        Identity::Vhd { unique_id, .. } => {
            let hex: String = unique_id.iter().map(|b| format!("{b:02x}")).collect();
            format!("vhd:{hex}")
        }
    }
}

/// The identities a child's linkage accepts.
fn linkage_keys(l: &ParentLinkage) -> Vec<String> {
    match l {
        ParentLinkage::Vhdx {
            parent_linkage,
            parent_linkage2,
        } => std::iter::once(parent_linkage)
            .chain(parent_linkage2.as_ref())
            .map(|g| {
                identity_key(&Identity::Vhdx {
                    data_write_guid: *g,
                })
            })
            .collect(),
        ParentLinkage::Vhd {
            parent_unique_id, ..
        } => vec![identity_key(&Identity::Vhd {
            unique_id: *parent_unique_id,
            timestamp: 0,
        })],
    }
}

/// Files under `dir` (recursively when asked), symlinks only when allowed;
/// directories already visited (by device and inode) are skipped, so a
/// followed link loop ends.
fn walk(
    dir: &Path,
    args: &ScanArgs,
    seen_dirs: &mut BTreeSet<(u64, u64)>,
    files: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    if !seen_dirs.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Ok(lm) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = if lm.file_type().is_symlink() {
            if !args.follow_symlinks {
                continue;
            }
            match std::fs::metadata(&p) {
                Ok(m) => m.file_type(),
                Err(_) => continue, // dangling
            }
        } else {
            lm.file_type()
        };
        if ft.is_file() {
            files.push(p);
        } else if ft.is_dir() && args.recursive {
            if let Err(e) = walk(&p, args, seen_dirs, files, problems) {
                problems.push(Problem {
                    kind: "unreadable",
                    path: p.display().to_string(),
                    detail: format!("directory not scanned: {e}"),
                });
            }
        }
    }
    Ok(())
}

/// `None` when the file is not a VHD/VHDX (by its signature: `vhdxfile`
/// at 0, or a `conectix` footer); an image that cannot be opened is an
/// `Err`. One open per file: detection is the open's first read.
fn scan_file(
    ns: &std::sync::Arc<dyn formats::Namespace>,
    path: &Path,
    opts: &ChainOptions,
) -> Option<Result<Found, String>> {
    let img = match open_image_file(ns, path, opts) {
        Ok(i) => i,
        Err(formats::Error::NotAnImage { .. }) => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    let info = img.info();
    let meta = std::fs::metadata(path).ok();
    Some(Ok(Found {
        path: path.to_path_buf(),
        format: info.format,
        disk_type: info.disk_type,
        virtual_size: info.virtual_size,
        file_size: meta.as_ref().map_or(0, |m| m.len()),
        allocated: meta.as_ref().map_or(0, |m| m.blocks() * 512),
        identity: img.identity(),
        linkage: img.parent_linkage(),
        hints: img.parent_locator().map(|l| l.hints).unwrap_or_default(),
    }))
}

/// Files opened at once while scanning.
const SCAN_THREADS: usize = 16;

/// `f` over `items` on up to `threads` threads, results in input order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("scan worker panicked"))
            .collect()
    });
    let mut all: Vec<(usize, R)> = parts.drain(..).flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// The canonical form of a path, as the scanned set is keyed.
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub fn scan(args: &ScanArgs) -> Result<ScanReport, String> {
    let ns = fs();
    let mut report = ScanReport::default();
    let mut files = Vec::new();
    walk(
        &args.dir,
        args,
        &mut BTreeSet::new(),
        &mut files,
        &mut report.problems,
    )
    .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let opts = ChainOptions {
        follow_symlinks: args.follow_symlinks,
        access: Access::Read,
        // A bad checksum is a finding for `check`; the scan still places
        // the image in its chain.
        ignore_checksums: true,
        ..ChainOptions::default()
    };
    // Opening is a handful of small reads per file, mostly waiting for
    // the device when the cache is cold: many in flight at once keep it
    // busy (10,000 images: ~1 s warm either way; cold, this VM's disk
    // needed 46 s one at a time).
    let results = parallel_map(&files, SCAN_THREADS, |p| scan_file(&ns, p, &opts));
    let mut found: Vec<Found> = Vec::new();
    for (p, r) in files.iter().zip(results) {
        match r {
            None => {}
            Some(Ok(f)) => found.push(f),
            Some(Err(e)) => report.problems.push(Problem {
                kind: "unreadable",
                path: p.display().to_string(),
                detail: e,
            }),
        }
    }

    let by_path: HashMap<PathBuf, usize> = found
        .iter()
        .enumerate()
        .map(|(i, f)| (canonical(&f.path), i))
        .collect();
    let mut by_identity: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        by_identity
            .entry(identity_key(&f.identity))
            .or_default()
            .push(i);
    }

    // Parent of each image (index) and how it was found.
    let mut parent: Vec<Option<usize>> = vec![None; found.len()];
    let mut status = vec![ParentStatus::None; found.len()];
    for (i, f) in found.iter().enumerate() {
        let Some(linkage) = &f.linkage else { continue };
        let shown = f.path.display().to_string();
        let child_dir = f.path.parent().unwrap_or(Path::new("."));
        let mut mismatch: Option<(usize, String)> = None;
        let mut named: Vec<String> = Vec::new();
        'hints: for h in &f.hints {
            let (label, text) = hint_label(h);
            named.push(format!("{label} {text:?}"));
            for c in candidates(h, child_dir, &[]).unwrap_or_default() {
                let Some(&j) = by_path.get(&canonical(&c)) else {
                    continue;
                };
                if j == i {
                    continue;
                }
                match linkage_matches(linkage, &found[j].identity) {
                    Ok(()) => {
                        parent[i] = Some(j);
                        status[i] = ParentStatus::Ok;
                        break 'hints;
                    }
                    Err(msg) => {
                        mismatch.get_or_insert((j, msg));
                    }
                }
            }
        }
        if parent[i].is_some() {
            continue;
        }
        let by_id: Vec<usize> = linkage_keys(linkage)
            .iter()
            .filter_map(|k| by_identity.get(k))
            .flatten()
            .copied()
            .filter(|&j| j != i)
            .collect();
        let locator = if named.is_empty() {
            "no locator entries".to_string()
        } else {
            named.join(", ")
        };
        // An image whose locator failed: how its parent was found, if at
        // all, and the problem reported for it.
        let (found_parent, how, kind, detail) = if let Some(&j) = by_id.first() {
            (
                Some(j),
                ParentStatus::FoundById,
                "stale_locator",
                format!(
                    "the locator ({locator}) does not lead to the parent, but {found_at} carries the identity this image records{others}: the parent moved; re-link it with `cargo xtask set-parent {child} {found_at}` (Hyper-V: Set-VHD {child} -ParentPath {found_at}), or pass `--parent {found_at}` to merge or info",
                    found_at = found[j].path.display(),
                    others = if by_id.len() > 1 {
                        format!(" (so do {} other files)", by_id.len() - 1)
                    } else {
                        String::new()
                    },
                    child = f.path.display(),
                ),
            )
        } else if let Some((j, msg)) = mismatch {
            (
                Some(j),
                ParentStatus::IdMismatch,
                "id_mismatch",
                format!(
                    "the locator leads to {}, but {msg}: the parent changed after this image was made",
                    found[j].path.display()
                ),
            )
        } else {
            (
                None,
                ParentStatus::Missing,
                "orphan",
                format!(
                    "no scanned file is its parent (locator: {locator}; no scanned file carries the identity it records)"
                ),
            )
        };
        parent[i] = found_parent;
        status[i] = how;
        report.problems.push(Problem {
            kind,
            path: shown,
            detail,
        });
    }

    // Cycles: a walk up from any image that comes back to itself. Each
    // cycle is reported once, at its smallest member.
    let in_cycle: Vec<bool> = (0..found.len())
        .map(|start| {
            let mut at = start;
            // A walk longer than the set has entered a cycle elsewhere.
            for _ in 0..found.len() {
                match parent[at] {
                    Some(p) if p == start => return true,
                    Some(p) => at = p,
                    None => return false,
                }
            }
            false
        })
        .collect();
    for i in (0..found.len()).filter(|&i| in_cycle[i]) {
        let mut members = vec![i];
        let mut at = parent[i].expect("a cycle member has a parent");
        while at != i {
            members.push(at);
            at = parent[at].expect("a cycle member has a parent");
        }
        if members.iter().min() == Some(&i) {
            report.problems.push(Problem {
                kind: "cycle",
                path: found[i].path.display().to_string(),
                detail: format!(
                    "parent links form a cycle: {}",
                    members
                        .iter()
                        .chain(std::iter::once(&i))
                        .map(|&m| found[m].path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            });
        }
    }

    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in parent.iter().enumerate() {
        if let Some(p) = p {
            children.entry(*p).or_default().push(i);
        }
    }
    for (&p, kids) in &children {
        if kids.len() > 1 {
            report.problems.push(Problem {
                kind: "siblings",
                path: found[p].path.display().to_string(),
                detail: format!(
                    "{} children depend on it ({}): merging one of them into it would change what the others read (merge refuses it without --force)",
                    kids.len(),
                    kids.iter()
                        .map(|&k| found[k].path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }

    for (i, f) in found.iter().enumerate() {
        report.images.push(ScannedImage {
            path: f.path.display().to_string(),
            format: format_name(f.format),
            disk_type: type_name(f.disk_type),
            virtual_size: f.virtual_size,
            file_size: f.file_size,
            allocated_bytes: f.allocated,
            parent: parent[i].map(|j| found[j].path.display().to_string()),
            parent_status: status[i],
            children: children
                .get(&i)
                .map(|k| {
                    k.iter()
                        .map(|&c| found[c].path.display().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(report)
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The forest, roots first (bases, and images whose parent is missing),
/// each chain drawn as a tree.
fn print_tree(r: &ScanReport) {
    let index: HashMap<&str, usize> = r
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.path.as_str(), i))
        .collect();
    fn line(im: &ScannedImage) -> String {
        let note = match im.parent_status {
            ParentStatus::None | ParentStatus::Ok => "",
            ParentStatus::FoundById => "  [stale locator: parent found by ID]",
            ParentStatus::Missing => "  [orphan: parent missing]",
            ParentStatus::IdMismatch => "  [parent ID mismatch]",
        };
        format!(
            "{} ({} {}, {} virtual, {} on disk){note}",
            im.path,
            im.format,
            im.disk_type,
            human_size(im.virtual_size),
            human_size(im.allocated_bytes)
        )
    }
    fn draw(
        r: &ScanReport,
        index: &HashMap<&str, usize>,
        i: usize,
        prefix: &str,
        seen: &mut BTreeSet<usize>,
    ) {
        let kids = &r.images[i].children;
        for (n, c) in kids.iter().enumerate() {
            let last = n + 1 == kids.len();
            let Some(&ci) = index.get(c.as_str()) else {
                continue;
            };
            if !seen.insert(ci) {
                continue;
            }
            outln!(
                "{prefix}{} {}",
                if last { "└──" } else { "├──" },
                line(&r.images[ci])
            );
            let next = format!("{prefix}{}", if last { "    " } else { "│   " });
            draw(r, index, ci, &next, seen);
        }
    }
    let mut seen = BTreeSet::new();
    let chains = r.images.iter().filter(|im| im.parent.is_none()).count();
    outln!(
        "{} images in {} chains; {} problems",
        r.images.len(),
        chains,
        r.problems.len()
    );
    for (i, im) in r.images.iter().enumerate() {
        if im.parent.is_none() {
            seen.insert(i);
            outln!("{}", line(im));
            draw(r, &index, i, "", &mut seen);
        }
    }
    // What no root reaches: cycles.
    for (i, im) in r.images.iter().enumerate() {
        if seen.insert(i) {
            outln!("{}  [in a cycle]", line(im));
        }
    }
    if !r.problems.is_empty() {
        outln!("problems:");
        for p in &r.problems {
            outln!("  {}: {}: {}", p.kind, p.path, p.detail);
        }
    }
}

pub fn run(args: ScanArgs) -> u8 {
    match scan(&args) {
        Ok(r) => {
            print_report(args.json, &r, print_tree);
            u8::from(!r.problems.is_empty())
        }
        Err(e) => {
            if args.json {
                print_json(&serde_json::json!({ "error": e }));
            } else {
                eprintln!("scan: {e}");
            }
            2
        }
    }
}
