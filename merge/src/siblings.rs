//! Other children of the destination or of an intermediate: after the merge
//! their parent's content changes under them, so the merge refuses unless
//! forced (the rule of XAPI's one-child coalesce).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{linkage_matches, Chain};
use formats::params::OpenOptions;
use formats::{Access, EntryKind, Namespace, Result};

fn is_image_name(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("vhd" | "vhdx" | "avhd" | "avhdx")
    )
}

/// Images in the chain's directories (and `search_dirs`) that are children
/// of the destination or of an intermediate but not part of this chain.
pub fn find(
    ns: &Arc<dyn Namespace>,
    chain: &Chain,
    destination: usize,
    search_dirs: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let members: Vec<PathBuf> = chain
        .links
        .iter()
        .map(|l| ns.canonicalize(&l.path).unwrap_or_else(|_| l.path.clone()))
        .collect();
    // Parents whose other children would change: the destination and the
    // intermediates (chain positions 1..=destination). Each one's direct
    // child in the chain is expected; any other child is a sibling.
    let parents: Vec<_> = (1..=destination)
        .map(|i| chain.links[i].image.identity())
        .collect();
    let mut dirs: Vec<PathBuf> = chain
        .links
        .iter()
        .map(|l| l.path.parent().map(Path::to_path_buf).unwrap_or_default())
        .collect();
    dirs.extend(search_dirs.iter().cloned());
    dirs.sort();
    dirs.dedup();
    let mut found = Vec::new();
    for dir in dirs {
        let dir_name = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.clone()
        };
        let Ok(entries) = ns.read_dir(&dir_name) else {
            continue;
        };
        for p in entries {
            let p = if dir.as_os_str().is_empty() {
                p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            };
            if !is_image_name(&p) || ns.kind(&p).ok() != Some(EntryKind::File) {
                continue;
            }
            let canon = ns.canonicalize(&p).unwrap_or_else(|_| p.clone());
            if members.contains(&canon) || found.contains(&p) {
                continue;
            }
            // Shared lock, read-only: a file another process holds is
            // skipped rather than blocking the merge decision.
            let Ok(storage) = ns.open(&p, Access::Read) else {
                continue;
            };
            let name = p.display().to_string();
            let Ok(img) = formats::image::open(
                &name,
                storage,
                None,
                OpenOptions {
                    writable: false,
                    ignore_checksums: true,
                },
            ) else {
                continue;
            };
            if let Some(link) = img.parent_linkage() {
                if parents.iter().any(|id| linkage_matches(&link, id).is_ok()) {
                    found.push(p);
                }
            }
        }
    }
    Ok(found)
}
