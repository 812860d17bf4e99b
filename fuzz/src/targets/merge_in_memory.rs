//! `merge_in_memory`: an arbitrary chain and merge request on sparse memory
//! storage, checked differentially against `reference`, a reader written
//! from the specifications that shares no code with `formats`.
//!
//! - Before the merge: the reference's fold of the chain equals what
//!   formats reads through it (when both read it), and, uncorrupted, the
//!   byte model of what was written.
//! - Success: the destination's whole view (formats' chain reader) equals
//!   the reference fold of the original chain, and the reference reading
//!   the merged files agrees; uncorrupted, `check` is clean.
//! - Failure: the error is one of the named refusal kinds, and every file
//!   of the namespace is byte for byte what it was (DESIGN.md section 7:
//!   a refused merge leaves every byte as it was).
//!
//! Uncorrupted, the merge must succeed.

use arbitrary::{Arbitrary, Unstructured};
use formats::chain::{Chain, ChainOptions};
use formats::Severity;
use merge::{JobHandle, MergeRequest};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::harness;
use crate::mutate::{self, Mutation};
use crate::reference;
use crate::sparse::{Pages, SparseNs};
use crate::template::{self, BaseSpec, ChildSpec};

/// `MergeError::kind` values that name a refusal of bad or unsuitable
/// input. Not in the list: `io` (memory storage has no I/O errors, so one
/// is a corruption reported as a failure), `locked`, `permission_denied`,
/// `cancelled` (nothing here locks, denies or cancels).
pub const REFUSALS: &[&str] = &[
    "corrupt",
    "checksum",
    "not_an_image",
    "unsupported",
    "parent_not_found",
    "linkage_mismatch",
    "file_not_found",
    "invalid_parameter",
    "not_differencing",
    "not_an_ancestor",
    "siblings",
    "saved_state",
    "unhealthy",
    "destination_larger",
    "insufficient_space",
];

#[derive(Debug, Arbitrary)]
struct Input {
    base: BaseSpec,
    first: ChildSpec,
    more: Vec<ChildSpec>,
    /// Destination counted from the source (reduced to 1..=depth).
    dest: u8,
    remove_merged: bool,
    corrupt: Option<(u8, Vec<Mutation>)>,
}

/// Views are read this many bytes at a time.
const CHUNK: usize = 64 << 10;

/// What formats reads through `chain` (opened with the default options),
/// when that chain is exactly `expect` (top first) and small enough to
/// read whole: read a chunk at a time into sparse pages (all-zero pages
/// take no memory), not into a buffer the size of the disk.
fn read_all(chain: &Chain, expect: &[PathBuf]) -> Option<Pages> {
    if chain.paths() != expect {
        return None;
    }
    let size = chain.top().virtual_size();
    if size > harness::WHOLE_READ_LIMIT {
        return None;
    }
    let mut reader = chain.reader();
    paint_pages(size, |off, buf| reader.read(off, buf).ok().map(|()| true))
}

/// Sparse pages of a `size`-byte view, filled a chunk at a time: `fill`
/// reads the chunk at `off` into `buf` and says whether it did (false: the
/// chunk reads as zeros, which the pages already do there; None: give up).
fn paint_pages(size: u64, mut fill: impl FnMut(u64, &mut [u8]) -> Option<bool>) -> Option<Pages> {
    let mut out = Pages::default();
    out.set_len(size);
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut off = 0;
    while off < size {
        let n = CHUNK.min((size - off) as usize);
        if fill(off, &mut buf[..n])? {
            out.write(off, &buf[..n]);
        }
        off += n as u64;
    }
    Some(out)
}

fn open_chain(ns: &Arc<dyn formats::Namespace>, path: &Path) -> formats::Result<Chain> {
    Chain::open(ns, path, &ChainOptions::default())
}

/// The reference's view of a virtual disk as sparse pages (all-zero pages
/// not stored), painted a chunk at a time (chunks without data skipped):
/// read once, then compared with
/// `Pages::same_bytes` / `Pages::same_as` (whole disks, byte for byte, at
/// the cost of their stored pages) as often as the checks need.
fn folded_pages(f: &reference::Folded<Pages>) -> Pages {
    let painted = paint_pages(f.size(), |off, buf| {
        // A chunk no layer paints with data reads as zeros.
        let data = f.holds_data(off, buf.len() as u64);
        if data {
            f.read(off, buf);
        }
        Some(data)
    });
    painted.unwrap_or_default()
}

/// Error findings of `check` on every link of the chain `open_chain`
/// gave (the destination's, opened once to read it and to check it).
fn check_errors(opened: &formats::Result<Chain>) -> Vec<String> {
    let chain = match opened {
        Ok(c) => c,
        Err(e) => return vec![format!("does not open: {e}")],
    };
    chain
        .links
        .iter()
        .flat_map(|l| match l.image.check() {
            Ok(f) => f
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| f.to_string())
                .collect(),
            Err(e) => vec![format!("check failed: {e}")],
        })
        .collect()
}

/// The reference fold of the files at `paths` (top first), read from
/// copies of them (later writes do not change it).
fn ref_fold(m: &SparseNs, paths: &[PathBuf]) -> Result<Pages, String> {
    let files: Vec<Pages> = paths
        .iter()
        .map(|p| m.get(p).ok_or_else(|| format!("{} missing", p.display())))
        .collect::<Result<_, _>>()?;
    reference::fold_view(files).map(|f| folded_pages(&f))
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let (m, ns) = harness::sparse_ns();
    let mut children = vec![input.first.clone()];
    children.extend(input.more.iter().take(2).cloned());
    let (paths, model) = template::build_chain_cached(&m, &input.base, &children);
    let depth = paths.len() - 1;
    let source = paths[depth].clone();
    let dest_index = depth - (1 + usize::from(input.dest) % depth);
    let dest = paths[dest_index].clone();
    let corrupted = match &input.corrupt {
        Some((victim, ms)) if !ms.is_empty() => {
            let v = &paths[usize::from(*victim) % paths.len()];
            m.edit(v, |p| mutate::apply_all(p, ms))
                .expect("file exists");
            true
        }
        _ => false,
    };
    let source_chain: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    let dest_chain: Vec<PathBuf> = paths[..=dest_index].iter().rev().cloned().collect();
    let folded = ref_fold(&m, &source_chain);
    let before = open_chain(&ns, &source)
        .ok()
        .and_then(|c| read_all(&c, &source_chain));
    if !corrupted {
        match &folded {
            Ok(f) => assert!(
                f.same_as(&model),
                "reference fold of a valid chain differs from its model"
            ),
            Err(e) => panic!("reference declines a valid chain: {e}"),
        }
        assert!(
            before.as_ref().is_some_and(|b| b.same_as(&model)),
            "valid chain does not read its model before the merge"
        );
    }
    if let (Ok(f), Some(b)) = (&folded, &before) {
        assert!(
            f.same_bytes(b),
            "formats reads the chain differently from the reference (corrupted input: {corrupted})"
        );
    }
    let snapshot = m.snapshot();
    let out = merge::run(
        &ns,
        &MergeRequest {
            source: source.clone(),
            destination: Some(dest.clone()),
            remove_merged: input.remove_merged,
            ..Default::default()
        },
        &JobHandle::new(),
    );
    // A refusal because of damaged bytes names the violation.
    if matches!(out.error_kind, Some("corrupt" | "checksum" | "unhealthy")) {
        assert!(
            out.corruption_kind.is_some(),
            "a {:?} refusal without a corruption kind: {:?}",
            out.error_kind,
            out.error
        );
    }
    if !corrupted {
        assert_eq!(
            out.return_value, 0,
            "merge of a valid chain failed: {:?}",
            out.error
        );
    }
    if out.return_value != 0 {
        let kind = out.error_kind.unwrap_or("none");
        assert!(
            REFUSALS.contains(&kind),
            "merge failed with {kind:?}, not a named refusal: {:?}",
            out.error
        );
        let after = m.snapshot();
        let changed: Vec<String> = snapshot
            .iter()
            .filter(|(p, b)| after.iter().find(|(q, _)| q == p).map(|(_, c)| c) != Some(b))
            .map(|(p, _)| p.display().to_string())
            .chain(
                after
                    .iter()
                    .filter(|(p, _)| !snapshot.iter().any(|(q, _)| q == p))
                    .map(|(p, _)| format!("{} (new)", p.display())),
            )
            .collect();
        assert!(
            changed.is_empty(),
            "refused merge ({kind}) changed files: {changed:?}"
        );
        return;
    }
    let dest_opened = open_chain(&ns, &dest);
    let after = dest_opened
        .as_ref()
        .ok()
        .and_then(|c| read_all(c, &dest_chain));
    if let Some(before) = &before {
        assert!(
            after.as_ref().is_some_and(|a| a.same_bytes(before)),
            "merged destination does not read what the source read (corrupted input: {corrupted})"
        );
    }
    if let Ok(f) = &folded {
        assert!(
            after.as_ref().is_some_and(|a| a.same_bytes(f)),
            "merged destination does not read the reference fold of the original chain (corrupted input: {corrupted})"
        );
        match ref_fold(&m, &dest_chain) {
            Ok(g) => assert!(
                g.same_bytes(f),
                "the reference reads the merged files differently (corrupted input: {corrupted})"
            ),
            Err(e) => assert!(corrupted, "reference declines the merged chain: {e}"),
        }
    }
    if !corrupted {
        let errs = check_errors(&dest_opened);
        assert!(errs.is_empty(), "check errors after merge: {errs:?}");
    }
}
