//! Valid images and chains derived from fuzz input: small, created by
//! chainfold itself on memory storage, with a plain byte model of what the
//! top of the chain shows.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use formats::chain::{open_image_file, ChainOptions};
use formats::entropy::with_seed;
use formats::params::{CreateParams, DiskType, ParentSpec};
use formats::{Access, Namespace};

use crate::sparse::{Pages, SparseNs};

const MIB: u64 = 1 << 20;
/// At most this many writes per layer: each one is a full write path.
const MAX_OPS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Arbitrary)]
pub enum Op {
    /// Write `len + 1` sectors of a pattern at sector `at` (clamped).
    Write { at: u16, len: u8, seed: u8 },
    /// Make `len + 1` sectors read as zeros (clamped).
    Zero { at: u16, len: u8 },
}

/// One image, base of its chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Arbitrary)]
pub struct BaseSpec {
    pub vhdx: bool,
    pub fixed: bool,
    pub big_sector: bool,
    /// Virtual size in 512-byte (VHD) or 4 KiB (VHDX) units, reduced to at
    /// most 1 MiB (small disks keep every input fast; the block sizes below
    /// still give several blocks and partial last blocks).
    pub size_units: u16,
    pub block: u8,
    pub ops: Vec<Op>,
}

/// A differencing child on top of the previous layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Arbitrary)]
pub struct ChildSpec {
    pub block: u8,
    /// Extra virtual size over the parent, in 256 KiB, reduced to 0..=2.
    pub grow: u8,
    pub ops: Vec<Op>,
}

impl BaseSpec {
    pub fn sector(&self) -> u64 {
        if self.vhdx && self.big_sector {
            4096
        } else {
            512
        }
    }
    pub fn virtual_size(&self) -> u64 {
        if self.vhdx {
            (u64::from(self.size_units) % 256 + 1) * 4096
        } else {
            (u64::from(self.size_units) % 2048 + 1) * 512
        }
    }
    pub fn ext(&self, child: bool) -> &'static str {
        match (self.vhdx, child) {
            (true, false) => "vhdx",
            (true, true) => "avhdx",
            (false, _) => "vhd",
        }
    }
}

pub fn block_size(vhdx: bool, pick: u8) -> u32 {
    if vhdx {
        [1 << 20, 2 << 20, 4 << 20][usize::from(pick % 3)]
    } else {
        [512 << 10, 2 << 20, 64 << 10, 4 << 10][usize::from(pick % 4)]
    }
}

pub fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| seed.wrapping_add(((offset + i) / 512) as u8) ^ ((offset + i) as u8))
        .collect()
}

/// Apply `ops` to the image at `path` and to `model`.
pub fn apply(ns: &Arc<dyn Namespace>, path: &Path, sector: u64, ops: &[Op], model: &mut [u8]) {
    if ops.is_empty() {
        return;
    }
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(ns, path, &opts).expect("a freshly created image opens writable");
    let sectors = model.len() as u64 / sector;
    for op in ops.iter().take(MAX_OPS) {
        let (at, len) = match op {
            Op::Write { at, len, .. } | Op::Zero { at, len } => {
                let at = u64::from(*at) % sectors;
                (at, (u64::from(*len) + 1).min(sectors - at))
            }
        };
        let (off, n) = (at * sector, (len * sector) as usize);
        match op {
            Op::Write { seed, .. } => {
                let data = pattern(*seed, off, n);
                img.write_sectors(off, &data)
                    .expect("write_sectors on a valid image");
                model[off as usize..off as usize + n].copy_from_slice(&data);
            }
            Op::Zero { .. } => {
                img.zero_sectors(off, n as u64)
                    .expect("zero_sectors on a valid image");
                model[off as usize..off as usize + n].fill(0);
            }
        }
    }
}

fn base_path(spec: &BaseSpec) -> PathBuf {
    PathBuf::from(format!("/c/base.{}", spec.ext(false)))
}

/// Create the base image, empty, at `/c/base.<ext>`.
fn create_base(ns: &Arc<dyn Namespace>, spec: &BaseSpec) -> PathBuf {
    let path = base_path(spec);
    formats::create::create_file(
        ns,
        &path,
        &CreateParams {
            virtual_size: spec.virtual_size(),
            disk_type: if spec.fixed {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            block_size: Some(block_size(spec.vhdx, spec.block)),
            logical_sector_size: spec.sector() as u32,
            physical_sector_size: 4096,
            parent: None,
        },
    )
    .unwrap_or_else(|e| panic!("create {spec:?}: {e}"));
    path
}

/// Create the base image at `/c/base.<ext>` and apply its writes.
pub fn build_base(ns: &Arc<dyn Namespace>, spec: &BaseSpec) -> (PathBuf, Vec<u8>) {
    let path = create_base(ns, spec);
    let mut model = vec![0u8; spec.virtual_size() as usize];
    apply(ns, &path, spec.sector(), &spec.ops, &mut model);
    (path, model)
}

fn child_path(base: &BaseSpec, i: usize) -> PathBuf {
    PathBuf::from(format!("/c/child{i}.{}", base.ext(true)))
}

fn child_size(parent_size: u64, c: &ChildSpec) -> u64 {
    parent_size + u64::from(c.grow % 3) * (MIB / 4)
}

/// The parent description a child over `parent` records, for the child
/// at `child` (its locators are relative to it).
fn parent_spec_of(ns: &Arc<dyn Namespace>, parent: &Path, child: &Path) -> ParentSpec {
    let pimg = open_image_file(ns, parent, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("open parent {}: {e}", parent.display()));
    formats::create::parent_spec(ns, pimg.as_ref(), parent, child)
        .unwrap_or_else(|e| panic!("parent_spec: {e}"))
}

/// Create child number `i` of a chain over `base`, empty, at `path`, over
/// the parent `spec_p` of `parent_size` bytes.
fn create_child_at(
    ns: &Arc<dyn Namespace>,
    base: &BaseSpec,
    path: &Path,
    mut spec_p: ParentSpec,
    parent_size: u64,
    i: usize,
    c: &ChildSpec,
) {
    spec_p.virtual_size = parent_size;
    formats::create::create_file(
        ns,
        path,
        &CreateParams {
            virtual_size: child_size(parent_size, c),
            disk_type: DiskType::Differencing,
            block_size: Some(block_size(base.vhdx, c.block)),
            logical_sector_size: base.sector() as u32,
            physical_sector_size: 4096,
            parent: Some(spec_p),
        },
    )
    .unwrap_or_else(|e| panic!("create child {i} of {base:?}: {e}"));
}

/// Create child number `i`, empty, over the top of `paths`.
fn create_child(
    ns: &Arc<dyn Namespace>,
    base: &BaseSpec,
    paths: &[PathBuf],
    parent_size: u64,
    i: usize,
    c: &ChildSpec,
) -> PathBuf {
    let parent = paths.last().expect("base exists");
    let path = child_path(base, i);
    let spec_p = parent_spec_of(ns, parent, &path);
    create_child_at(ns, base, &path, spec_p, parent_size, i, c);
    path
}

/// Create child number `i` over the top of `paths` and apply its writes.
fn add_child(
    ns: &Arc<dyn Namespace>,
    base: &BaseSpec,
    paths: &mut Vec<PathBuf>,
    model: &mut Vec<u8>,
    i: usize,
    c: &ChildSpec,
) {
    let path = create_child(ns, base, paths, model.len() as u64, i, c);
    model.resize(child_size(model.len() as u64, c) as usize, 0);
    apply(ns, &path, base.sector(), &c.ops, model);
    paths.push(path);
}

/// Build a chain: the base then `children` (at most 3). Returns the paths,
/// base first, and the model of the top's view.
pub fn build_chain(
    ns: &Arc<dyn Namespace>,
    base: &BaseSpec,
    children: &[ChildSpec],
) -> (Vec<PathBuf>, Vec<u8>) {
    let (p, mut model) = build_base(ns, base);
    let mut paths = vec![p];
    for (i, c) in children.iter().take(3).enumerate() {
        add_child(ns, base, &mut paths, &mut model, i, c);
    }
    (paths, model)
}

/// The creation parameters of a base (its spec without the writes).
type EmptyKey = (bool, bool, bool, u64, u8);

fn empty_key(b: &BaseSpec) -> EmptyKey {
    (
        b.vhdx,
        b.fixed,
        b.vhdx && b.big_sector,
        b.virtual_size(),
        b.block % if b.vhdx { 3 } else { 4 },
    )
}

/// The GUID and clock seed of layer `layer`'s creation (`apply` false) or
/// writes. The cached builder runs both seeded, so a spec always builds the
/// same bytes (every layer of a chain from its own seeds: no two share a
/// GUID) and a parent's identity repeats across specs that differ only in
/// what was written, which is what lets created children be reused.
fn seed(layer: usize, apply: bool) -> u64 {
    0xc4a1_f01d_5eed_0000 + 2 * layer as u64 + u64::from(apply)
}

/// A built chain prefix: its files (base first), the model of the top's
/// view, and (once a child was built over it) what a child records about
/// its top.
struct Built {
    id: u64,
    key: (BaseSpec, Vec<ChildSpec>),
    files: Vec<(PathBuf, Pages)>,
    model: Arc<Vec<u8>>,
    top_spec: Option<ParentSpec>,
}

#[derive(Default)]
struct Cache {
    /// Chain prefixes built recently, newest last.
    chains: VecDeque<Built>,
    /// Freshly created, unwritten base files.
    empty: VecDeque<(EmptyKey, Pages)>,
    /// Freshly created, unwritten children: (what the child records of its
    /// parent, its layer, block and growth) -> file. Creation is seeded, so
    /// that key fixes every byte.
    empty_children: VecDeque<(ChildKey, Pages)>,
    next_id: u64,
}

type ChildKey = (String, usize, u8, u8);

/// libFuzzer mutates inputs it has run, and the chain spec comes first in
/// every structured input, so many inputs share a chain, or the start of
/// one, with an input just run; copying sparse files is much cheaper than
/// creating and writing them again through formats (which, for a VHDX,
/// writes megabytes of zeros). Creation and writing are still run on every
/// miss, and uncached by `cargo test` and the splice templates.
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
const CHAIN_ENTRIES: usize = 64;
/// ... and at most this many bytes of pages and models (counting shared
/// pages once per entry), well inside libFuzzer's -rss_limit_mb=256.
const CHAIN_BUDGET: u64 = 48 << 20;
const EMPTY_ENTRIES: usize = 512;

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    f(c.get_or_insert_with(Cache::default))
}

/// Keep `f` under `key` in a bounded list of recent entries.
fn keep<K>(list: &mut VecDeque<(K, Pages)>, key: K, f: Pages) {
    if list.len() >= EMPTY_ENTRIES {
        list.pop_front();
    }
    list.push_back((key, f));
}

/// Cache the chain prefix at `paths`; returns its id.
fn remember(
    m: &SparseNs,
    key: (BaseSpec, Vec<ChildSpec>),
    paths: &[PathBuf],
    model: Arc<Vec<u8>>,
) -> u64 {
    let files: Vec<(PathBuf, Pages)> = paths
        .iter()
        .map(|p| (p.clone(), m.get(p).expect("built file")))
        .collect();
    with_cache(|c| {
        let size =
            |b: &Built| b.model.len() as u64 + b.files.iter().map(|(_, f)| f.stored()).sum::<u64>();
        let mut total: u64 = c.chains.iter().map(size).sum::<u64>() + model.len() as u64;
        while c.chains.len() >= CHAIN_ENTRIES || (total > CHAIN_BUDGET && !c.chains.is_empty()) {
            if let Some(old) = c.chains.pop_front() {
                total -= size(&old).min(total);
            }
        }
        c.next_id += 1;
        let id = c.next_id;
        c.chains.push_back(Built {
            id,
            key,
            files,
            model,
            top_spec: None,
        });
        id
    })
}

/// The base at `/c/base.<ext>`, empty: a copy of a cached one, or created
/// (seeded) and cached.
fn empty_base(m: &SparseNs, ns: &Arc<dyn Namespace>, base: &BaseSpec) -> PathBuf {
    let key = empty_key(base);
    let cached = with_cache(|c| {
        c.empty
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| f.clone())
    });
    match cached {
        Some(f) => {
            let p = base_path(base);
            m.put(&p, f);
            p
        }
        None => {
            let p = with_seed(seed(0, false), || create_base(ns, base));
            let f = m.get(&p).expect("created");
            with_cache(|c| keep(&mut c.empty, key, f));
            p
        }
    }
}

/// Child number `i`, empty, over the parent `spec_p` of `parent_size`
/// bytes: a copy of a cached one, or created (seeded) and cached.
fn empty_child(
    m: &SparseNs,
    ns: &Arc<dyn Namespace>,
    base: &BaseSpec,
    spec_p: ParentSpec,
    parent_size: u64,
    i: usize,
    c: &ChildSpec,
) -> PathBuf {
    let path = child_path(base, i);
    let key: ChildKey = (
        format!("{spec_p:?} {parent_size}"),
        i,
        c.block % if base.vhdx { 3 } else { 4 },
        c.grow % 3,
    );
    let cached = with_cache(|cache| {
        cache
            .empty_children
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| f.clone())
    });
    match cached {
        Some(f) => m.put(&path, f),
        None => {
            with_seed(seed(i + 1, false), || {
                create_child_at(ns, base, &path, spec_p, parent_size, i, c)
            });
            let f = m.get(&path).expect("created");
            with_cache(|cache| keep(&mut cache.empty_children, key, f));
        }
    }
    path
}

/// [`build_chain`] into the sparse namespace `m`, reusing the longest
/// recently built prefix of the chain, and failing that recently created
/// empty bases and children. Built with seeded GUIDs and clock (see
/// [`seed`]).
pub fn build_chain_cached(
    m: &SparseNs,
    base: &BaseSpec,
    children: &[ChildSpec],
) -> (Vec<PathBuf>, Arc<Vec<u8>>) {
    let children = &children[..children.len().min(3)];
    let ns: Arc<dyn Namespace> = Arc::new(m.clone());
    // The top's size: the model grows to it without reallocating.
    let full = children.iter().fold(base.virtual_size(), child_size) as usize;
    let found = with_cache(|c| {
        (0..=children.len()).rev().find_map(|k| {
            let i = c
                .chains
                .iter()
                .position(|b| b.key.0 == *base && b.key.1 == children[..k])?;
            let b = c.chains.remove(i).expect("found");
            for (p, f) in &b.files {
                m.put(p, f.clone());
            }
            let out = (
                k,
                b.id,
                b.files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
                Arc::clone(&b.model),
                b.top_spec.clone(),
            );
            c.chains.push_back(b);
            Some(out)
        })
    });
    let (mut paths, mut model, from, mut parent_id, mut top_spec) = match found {
        Some((k, _, paths, model, _)) if k == children.len() => return (paths, model),
        Some((k, id, paths, model, spec)) => {
            let mut v = Vec::with_capacity(full);
            v.extend_from_slice(&model);
            (paths, v, k, id, spec)
        }
        None => {
            let path = empty_base(m, &ns, base);
            let mut model = Vec::with_capacity(full);
            model.resize(base.virtual_size() as usize, 0);
            with_seed(seed(0, true), || {
                apply(&ns, &path, base.sector(), &base.ops, &mut model)
            });
            let paths = vec![path];
            if children.is_empty() {
                // The whole chain: the cache and the caller share its model.
                let model = Arc::new(model);
                remember(m, (base.clone(), Vec::new()), &paths, Arc::clone(&model));
                return (paths, model);
            }
            let id = remember(
                m,
                (base.clone(), Vec::new()),
                &paths,
                Arc::new(model.clone()),
            );
            (paths, model, 0, id, None)
        }
    };
    for (i, c) in children.iter().enumerate().skip(from) {
        let spec_p = match top_spec.take() {
            Some(s) => s,
            None => {
                let s = parent_spec_of(&ns, paths.last().expect("base"), &child_path(base, i));
                with_cache(|cache| {
                    if let Some(b) = cache.chains.iter_mut().find(|b| b.id == parent_id) {
                        b.top_spec = Some(s.clone());
                    }
                });
                s
            }
        };
        let path = empty_child(m, &ns, base, spec_p, model.len() as u64, i, c);
        model.resize(child_size(model.len() as u64, c) as usize, 0);
        with_seed(seed(i + 1, true), || {
            apply(&ns, &path, base.sector(), &c.ops, &mut model)
        });
        paths.push(path);
        let key = (base.clone(), children[..=i].to_vec());
        if i + 1 == children.len() {
            let model = Arc::new(std::mem::take(&mut model));
            remember(m, key, &paths, Arc::clone(&model));
            return (paths, model);
        }
        parent_id = remember(m, key, &paths, Arc::new(model.clone()));
    }
    (paths, Arc::new(model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::chain::Chain;

    fn spec(vhdx: bool, seed: u8) -> BaseSpec {
        BaseSpec {
            vhdx,
            fixed: seed.is_multiple_of(3),
            big_sector: seed.is_multiple_of(2),
            size_units: 100 + u16::from(seed),
            block: seed,
            ops: vec![Op::Write {
                at: u16::from(seed) * 3,
                len: 20,
                seed,
            }],
        }
    }

    fn kid(seed: u8, round: u8) -> ChildSpec {
        ChildSpec {
            block: seed,
            grow: seed,
            ops: vec![Op::Write {
                at: u16::from(seed + round),
                len: 9,
                seed: seed ^ round,
            }],
        }
    }

    /// Chains from the cache (whole, from a prefix, from an empty base or
    /// child: the same block sizes with other writes in later rounds) are
    /// valid chains that read their model, just like fresh ones.
    #[test]
    fn cached_chains_read_their_model() {
        for vhdx in [false, true] {
            for round in 0..3 {
                for n in 0..4 {
                    let kids: Vec<ChildSpec> = (0..n).map(|i| kid(i as u8, round % 2)).collect();
                    let (m, ns) = crate::harness::sparse_ns();
                    let (paths, model) = build_chain_cached(&m, &spec(vhdx, 4), &kids);
                    assert_eq!(paths.len(), n + 1);
                    let chain = Chain::open(&ns, paths.last().unwrap(), &ChainOptions::default())
                        .unwrap_or_else(|e| panic!("cached chain does not open: {e}"));
                    let mut got = vec![0u8; model.len()];
                    chain.reader().read(0, &mut got).unwrap();
                    assert!(got == *model, "vhdx {vhdx} round {round} n {n}");
                }
            }
        }
    }
}
