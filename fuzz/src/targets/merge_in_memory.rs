//! `merge_in_memory`: an arbitrary chain and merge request on memory
//! storage. Uncorrupted: the merge must succeed, the destination must read
//! exactly the byte model of the source's view and pass `check`. Corrupted
//! (structure-aware, checksums fixed): anything may be refused, but a merge
//! that reports success must leave the destination reading what the source
//! chain read before.

use arbitrary::{Arbitrary, Unstructured};
use formats::chain::{Chain, ChainOptions};
use formats::Severity;
use merge::{JobHandle, MergeRequest};

use std::path::Path;
use std::sync::Arc;

use crate::harness;
use crate::mutate::{self, Mutation};
use crate::template::{self, BaseSpec, ChildSpec};

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

fn read_all(ns: &Arc<dyn formats::Namespace>, path: &Path) -> Option<Vec<u8>> {
    let chain = Chain::open(ns, path, &ChainOptions::default()).ok()?;
    let size = chain.top().virtual_size();
    if size > harness::WHOLE_READ_LIMIT {
        return None;
    }
    let mut buf = vec![0u8; size as usize];
    chain.reader().read(0, &mut buf).ok()?;
    Some(buf)
}

fn check_errors(ns: &Arc<dyn formats::Namespace>, path: &Path) -> Vec<String> {
    let chain = match Chain::open(ns, path, &ChainOptions::default()) {
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

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let (m, ns) = harness::mem_ns();
    let mut children = vec![input.first.clone()];
    children.extend(input.more.iter().take(2).cloned());
    let (paths, model) = template::build_chain(&ns, &input.base, &children);
    let depth = paths.len() - 1;
    let source = paths[depth].clone();
    let dest = paths[depth - (1 + usize::from(input.dest) % depth)].clone();
    let corrupted = match &input.corrupt {
        Some((victim, ms)) if !ms.is_empty() => {
            let v = &paths[usize::from(*victim) % paths.len()];
            let mut bytes = m.get(v).expect("file exists");
            mutate::apply_all(&mut bytes, ms);
            m.insert(v, bytes);
            true
        }
        _ => false,
    };
    let before = read_all(&ns, &source);
    if !corrupted {
        assert!(
            before.as_deref() == Some(&model[..]),
            "valid chain does not read its model before the merge"
        );
    }
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
    if out.return_value == 0 {
        if let Some(before) = before {
            let after = read_all(&ns, &dest);
            assert!(
                after.as_deref() == Some(&before[..]),
                "merged destination does not read what the source read (corrupted input: {corrupted})"
            );
        }
        if !corrupted {
            let errs = check_errors(&ns, &dest);
            assert!(errs.is_empty(), "check errors after merge: {errs:?}");
        }
    }
}
