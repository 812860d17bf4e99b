//! Fixed template images for the structure-family targets: built once per
//! process, copied per input, with the fuzzed structure spliced in at its
//! real location (checksum recomputed on request) before opening.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use formats::chain::ChainOptions;
use formats::Namespace;

use crate::harness;
use crate::sparse::{Pages, SparseNs};
use crate::template::{self, BaseSpec, ChildSpec, Op};

pub struct Template {
    pub files: Vec<(PathBuf, Pages)>,
    /// Base first.
    pub paths: Vec<PathBuf>,
}

pub const FIXED: usize = 0;
pub const DYNAMIC: usize = 1;
pub const DIFFERENCING: usize = 2;

fn ops(seed: u8) -> Vec<Op> {
    vec![
        Op::Write {
            at: 0,
            len: 7,
            seed,
        },
        Op::Write {
            at: 1500,
            len: 200,
            seed: seed ^ 0x5a,
        },
        Op::Zero { at: 1600, len: 9 },
    ]
}

fn build(vhdx: bool) -> Option<Vec<Template>> {
    // Probe: while a driver cannot create yet, its templates are absent
    // (the targets then only run their direct-parse half).
    let (_pm, pns) = harness::mem_ns();
    let probe = PathBuf::from(if vhdx { "/p.vhdx" } else { "/p.vhd" });
    let params = formats::params::CreateParams {
        virtual_size: 1 << 20,
        ..Default::default()
    };
    formats::create::create_file(&pns, &probe, &params).ok()?;
    let mut out = Vec::new();
    for kind in [FIXED, DYNAMIC, DIFFERENCING] {
        let base = BaseSpec {
            vhdx,
            fixed: kind == FIXED,
            big_sector: false,
            size_units: if vhdx { 767 } else { 6143 },
            block: 1,
            ops: ops(kind as u8),
        };
        let children = if kind == DIFFERENCING {
            vec![ChildSpec {
                block: 0,
                grow: 0,
                ops: ops(0x77),
            }]
        } else {
            vec![]
        };
        let (m, ns) = harness::sparse_ns();
        let (paths, _) = template::build_chain(&ns, &base, &children);
        let files = paths
            .iter()
            .map(|p| (p.clone(), m.get(p).expect("template file")))
            .collect();
        out.push(Template { files, paths });
    }
    Some(out)
}

pub fn templates(vhdx: bool) -> Option<&'static [Template]> {
    static VHD: OnceLock<Option<Vec<Template>>> = OnceLock::new();
    static VHDX: OnceLock<Option<Vec<Template>>> = OnceLock::new();
    let cell = if vhdx { &VHDX } else { &VHD };
    cell.get_or_init(|| build(vhdx)).as_deref()
}

/// A template's files in a sparse namespace: a log replay may grow a file
/// by up to 32 MiB (formats' bound), which dense memory would then copy and
/// zero per input (a 171 ms input, a libFuzzer timeout under ASan).
pub struct Instance {
    pub m: Arc<SparseNs>,
    pub ns: Arc<dyn Namespace>,
    pub paths: Vec<PathBuf>,
}

impl Instance {
    pub fn top(&self) -> &PathBuf {
        self.paths.last().expect("template has a top")
    }
    pub fn top_bytes(&self) -> Vec<u8> {
        let p = self.m.get(self.top()).expect("top exists");
        p.get(0, p.len() as usize)
    }
    pub fn set_top(&self, bytes: Vec<u8>) {
        self.m.put(self.top(), Pages::from_bytes(&bytes));
    }
    /// Change the top file with `edit` (on a dense copy of its bytes),
    /// then open it every way [`exercise`] does with `flags`.
    pub fn splice_and_exercise(&self, flags: u8, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut file = self.top_bytes();
        edit(&mut file);
        self.set_top(file);
        exercise(self, flags);
    }
}

/// A splice target's input: the flag byte, then the bytes to splice.
pub fn split_flags(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(f, r)| (*f, r))
}

pub fn instantiate(t: &Template) -> Instance {
    let (m, ns) = harness::sparse_ns();
    for (p, b) in &t.files {
        m.put(p, b.clone());
    }
    Instance {
        m,
        ns,
        paths: t.paths.clone(),
    }
}

/// Open the (modified) instance: its chain read-only, and its top alone
/// read-only and, when `flags & 2`, writable. `flags & 1` ignores checksums.
pub fn exercise(i: &Instance, flags: u8) {
    if i.paths.len() > 1 {
        let opts = ChainOptions {
            ignore_checksums: flags & 1 != 0,
            ignore_linkage: flags & 4 != 0,
            ..Default::default()
        };
        harness::open_chain(&i.ns, i.top(), &opts);
    }
    harness::open_file_both_ways(&i.ns, i.top(), flags);
}

/// Overlay `src` onto `dst` at `at` (clipped to `dst`'s length and to
/// `max` bytes).
pub fn overlay(dst: &mut [u8], at: u64, src: &[u8], max: usize) {
    let Ok(at) = usize::try_from(at) else { return };
    if at >= dst.len() {
        return;
    }
    let n = src.len().min(dst.len() - at).min(max);
    dst[at..at + n].copy_from_slice(&src[..n]);
}
