//! `open_image`: bytes as a whole file — open, check, read the whole
//! virtual disk. Byte 0 picks the mode: raw bytes (strict or tolerant of
//! checksums), or a structured image: created valid by chainfold, written
//! to, then corrupted field by field with checksums recomputed.

use arbitrary::{Arbitrary, Unstructured};

use crate::harness;
use crate::mutate::{self, Mutation};
use crate::template::{self, BaseSpec};

#[derive(Debug, Arbitrary)]
struct Input {
    base: BaseSpec,
    mutations: Vec<Mutation>,
    /// bit 0: ignore checksums; bit 1: also open writable.
    flags: u8,
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => harness::open_bytes(rest.to_vec(), false),
        1 => harness::open_bytes(rest.to_vec(), true),
        _ => structured(rest),
    }
}

fn structured(rest: &[u8]) {
    let mut u = Unstructured::new(rest);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let (m, ns) = harness::sparse_ns();
    let (paths, model) = template::build_chain_cached(&m, &input.base, &[]);
    let path = paths[0].clone();
    if input.mutations.is_empty() {
        // Oracle: what was written is what is read, and a file chainfold
        // made and wrote passes its own validation.
        harness::assert_valid_chain(&ns, &path, &model, "image");
    }
    m.edit(&path, |p| mutate::apply_all(p, &input.mutations))
        .expect("image exists");
    harness::open_file_both_ways(&ns, &path, input.flags);
}
