//! `open_chain`: two or three files — a valid chain derived from the input,
//! then one file corrupted structure-aware; open the chain (locator
//! resolution, linkage checks), validate every link, read through it.

use arbitrary::{Arbitrary, Unstructured};
use formats::chain::{Chain, ChainOptions};
use formats::Severity;

use crate::harness;
use crate::mutate::{self, Mutation};
use crate::template::{self, BaseSpec, ChildSpec};

#[derive(Debug, Arbitrary)]
struct Input {
    base: BaseSpec,
    first: ChildSpec,
    second: Option<ChildSpec>,
    /// Which file to corrupt (counted from the base).
    victim: u8,
    mutations: Vec<Mutation>,
    /// bit 0 ignore checksums, bit 1 ignore linkage, bit 2 explicit parents,
    /// bit 3 search dir.
    flags: u8,
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let (m, ns) = harness::sparse_ns();
    let mut children = vec![input.first.clone()];
    children.extend(input.second.clone());
    let (paths, model) = template::build_chain_cached(&m, &input.base, &children);
    let top = paths.last().expect("chain has a top").clone();
    if input.mutations.is_empty() {
        let chain = Chain::open(&ns, &top, &ChainOptions::default())
            .unwrap_or_else(|e| panic!("valid chain does not open: {e}"));
        let mut got = vec![0u8; model.len()];
        chain
            .reader()
            .read(0, &mut got)
            .unwrap_or_else(|e| panic!("valid chain does not read: {e}"));
        assert!(got == *model, "chain reads differ from what was written");
        for l in &chain.links {
            let errs: Vec<String> = l
                .image
                .check()
                .unwrap_or_else(|e| panic!("check fails on a valid image: {e}"))
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| f.to_string())
                .collect();
            assert!(errs.is_empty(), "check errors on a valid chain: {errs:?}");
        }
        return;
    }
    let victim = &paths[usize::from(input.victim) % paths.len()];
    m.edit(victim, |p| mutate::apply_all(p, &input.mutations))
        .expect("file exists");
    let mut opts = ChainOptions {
        ignore_checksums: input.flags & 1 != 0,
        ignore_linkage: input.flags & 2 != 0,
        ..Default::default()
    };
    if input.flags & 4 != 0 {
        opts.parents = paths.iter().rev().skip(1).cloned().collect();
    }
    if input.flags & 8 != 0 {
        opts.search_dirs = vec!["/c".into(), "/elsewhere".into()];
    }
    harness::open_chain(&ns, &top, &opts);
}
