//! `open_chain`: two or three files — a valid chain derived from the input,
//! then one file corrupted structure-aware; open the chain (locator
//! resolution, linkage checks), validate every link, read through it.

use arbitrary::{Arbitrary, Unstructured};
use formats::chain::ChainOptions;

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
        harness::assert_valid_chain(&ns, &top, &model, "chain");
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
