//! Valid images and chains derived from fuzz input: small, created by
//! chainfold itself on memory storage, with a plain byte model of what the
//! top of the chain shows.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, Namespace};

use crate::harness;
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

/// Create the base image at `/c/base.<ext>` and apply its writes.
pub fn build_base(ns: &Arc<dyn Namespace>, spec: &BaseSpec) -> (PathBuf, Vec<u8>) {
    let path = PathBuf::from(format!("/c/base.{}", spec.ext(false)));
    let size = spec.virtual_size();
    formats::create::create_file(
        ns,
        &path,
        &CreateParams {
            virtual_size: size,
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
    let mut model = vec![0u8; size as usize];
    apply(ns, &path, spec.sector(), &spec.ops, &mut model);
    (path, model)
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
        let parent = paths.last().expect("base exists").clone();
        let path = PathBuf::from(format!("/c/child{i}.{}", base.ext(true)));
        let pimg = open_image_file(ns, &parent, &ChainOptions::default())
            .unwrap_or_else(|e| panic!("open parent {}: {e}", parent.display()));
        let mut spec_p = formats::create::parent_spec(ns, pimg.as_ref(), &parent, &path)
            .unwrap_or_else(|e| panic!("parent_spec: {e}"));
        drop(pimg);
        spec_p.virtual_size = model.len() as u64;
        let vsize = model.len() as u64 + u64::from(c.grow % 3) * (MIB / 4);
        formats::create::create_file(
            ns,
            &path,
            &CreateParams {
                virtual_size: vsize,
                disk_type: DiskType::Differencing,
                block_size: Some(block_size(base.vhdx, c.block)),
                logical_sector_size: base.sector() as u32,
                physical_sector_size: 4096,
                parent: Some(spec_p),
            },
        )
        .unwrap_or_else(|e| panic!("create child {i} of {base:?}: {e}"));
        model.resize(vsize as usize, 0);
        apply(ns, &path, base.sector(), &c.ops, &mut model);
        paths.push(path);
    }
    (paths, model)
}

/// A built chain: its files (base first) and the model of the top's view.
struct Built {
    key: (BaseSpec, Vec<ChildSpec>),
    files: Vec<(PathBuf, Pages)>,
    model: Arc<Vec<u8>>,
}

/// Chains built recently, newest last. libFuzzer mostly mutates inputs it
/// has run, and the chain spec comes first in every structured input, so
/// many inputs share a spec with one just run; copying its sparse files is
/// much cheaper than creating and writing them again through formats.
/// Creation itself is covered by every miss and by `cargo test`.
static CACHE: Mutex<VecDeque<Built>> = Mutex::new(VecDeque::new());
const CACHE_ENTRIES: usize = 16;

/// [`build_chain`] into a sparse namespace `m`, through the cache of
/// recently built chains.
pub fn build_chain_cached(
    m: &SparseNs,
    base: &BaseSpec,
    children: &[ChildSpec],
) -> (Vec<PathBuf>, Arc<Vec<u8>>) {
    let key = (base.clone(), children.iter().take(3).cloned().collect());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = cache.iter().position(|b| b.key == key) {
        let b = cache.remove(i).expect("found");
        for (p, f) in &b.files {
            m.put(p, f.clone());
        }
        let out = (
            b.files.iter().map(|(p, _)| p.clone()).collect(),
            Arc::clone(&b.model),
        );
        cache.push_back(b);
        return out;
    }
    drop(cache);
    let (fresh, ns) = harness::sparse_ns();
    let (paths, model) = build_chain(&ns, base, children);
    let files: Vec<(PathBuf, Pages)> = paths
        .iter()
        .map(|p| (p.clone(), fresh.get(p).expect("built file")))
        .collect();
    for (p, f) in &files {
        m.put(p, f.clone());
    }
    let model = Arc::new(model);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CACHE_ENTRIES {
        cache.pop_front();
    }
    cache.push_back(Built {
        key,
        files,
        model: Arc::clone(&model),
    });
    (paths, model)
}
