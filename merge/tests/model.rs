//! Model-based merge tests: random chains (VHD and VHDX, every destination
//! kind, depth 1 to 4, mixed block sizes, 512/4096-byte sectors, ZERO
//! ranges, children larger than their parents) built on memory storage,
//! with a plain `Vec<u8>` model of what each layer shows. After merging the
//! source into a random ancestor, the destination alone must read exactly
//! what the source read before, and pass `check`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{MemNamespace, Namespace, Severity};
mod common;
use common::merge_into;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Write `len` sectors of a pattern at sector `at` (clamped to the disk).
    Write { at: u64, len: u64, seed: u8 },
    /// Make sectors read zero (hiding the parent).
    Zero { at: u64, len: u64 },
}

#[derive(Debug, Clone)]
struct LayerSpec {
    block_size: u32,
    /// Extra virtual size over the parent, in MiB (resized child).
    grow_mib: u64,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct ChainSpec {
    vhdx: bool,
    fixed_base: bool,
    sector: u64,
    base_mib: u64,
    base_block: u32,
    base_ops: Vec<Op>,
    children: Vec<LayerSpec>,
    /// Destination index counted from the source (1 = parent).
    dest: usize,
}

const MIB: u64 = 1 << 20;

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0u64..40_000, 1u64..5000, any::<u8>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
            1 => (0u64..40_000, 1u64..9000).prop_map(|(at, len)| Op::Zero { at, len }),
        ],
        0..max,
    )
}

fn chain_spec() -> impl Strategy<Value = ChainSpec> {
    (any::<bool>(), any::<bool>(), any::<bool>(), 1usize..=4).prop_flat_map(
        |(vhdx, fixed_base, big_sector, depth)| {
            let sector = if vhdx && big_sector { 4096 } else { 512 };
            let blocks: Vec<u32> = if vhdx {
                vec![1 << 20, 2 << 20, 32 << 20]
            } else {
                vec![512 << 10, 2 << 20]
            };
            let child = (
                prop::sample::select(blocks.clone()),
                prop_oneof![4 => Just(0u64), 1 => 1u64..4],
                ops(6),
            )
                .prop_map(|(block_size, grow_mib, ops)| LayerSpec {
                    block_size,
                    grow_mib,
                    ops,
                });
            (
                Just(vhdx),
                Just(fixed_base),
                Just(sector),
                4u64..20,
                prop::sample::select(blocks),
                ops(6),
                prop::collection::vec(child, depth..=depth),
                1usize..=depth,
            )
                .prop_map(
                    |(vhdx, fixed_base, sector, base_mib, base_block, base_ops, children, dest)| {
                        ChainSpec {
                            vhdx,
                            fixed_base,
                            sector,
                            base_mib,
                            base_block,
                            base_ops,
                            children,
                            dest,
                        }
                    },
                )
        },
    )
}

fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| seed.wrapping_add(((offset + i) / 512) as u8) ^ ((offset + i) as u8))
        .collect()
}

fn ns() -> (Arc<MemNamespace>, Arc<dyn Namespace>) {
    let m = MemNamespace::new();
    let d: Arc<dyn Namespace> = Arc::new(Arc::clone(&m));
    (m, d)
}

/// Apply `ops` to the image at `path` (top of its chain) and to `model`.
fn apply(ns: &Arc<dyn Namespace>, path: &Path, sector: u64, ops: &[Op], model: &mut [u8]) {
    let mut img = testdata::image::open_writable(ns, path);
    let sectors = model.len() as u64 / sector;
    for op in ops {
        let (at, len) = match op {
            Op::Write { at, len, .. } | Op::Zero { at, len } => {
                let at = at % sectors;
                (at, (*len).min(sectors - at))
            }
        };
        let (off, n) = (at * sector, (len * sector) as usize);
        match op {
            Op::Write { seed, .. } => {
                let data = pattern(*seed, off, n);
                img.write_sectors(off, &data).expect("write_sectors");
                model[off as usize..off as usize + n].copy_from_slice(&data);
            }
            Op::Zero { .. } => {
                img.zero_sectors(off, n as u64).expect("zero_sectors");
                model[off as usize..off as usize + n].fill(0);
            }
        }
    }
}

use testdata::image::read_all;

fn errors(ns: &Arc<dyn Namespace>, path: &Path) -> Vec<String> {
    let chain = Chain::open(ns, path, &ChainOptions::default()).expect("open chain");
    chain
        .links
        .iter()
        .flat_map(|l| l.image.check().expect("check"))
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect()
}

/// Build the chain; returns the paths (base first) and the model of the
/// top's view.
fn build(ns: &Arc<dyn Namespace>, spec: &ChainSpec) -> (Vec<PathBuf>, Vec<u8>) {
    let ext = if spec.vhdx { "vhdx" } else { "vhd" };
    let base = PathBuf::from(format!("/c/base.{ext}"));
    let size = spec.base_mib * MIB;
    formats::create::create_file(
        ns,
        &base,
        &CreateParams {
            virtual_size: size,
            disk_type: if spec.fixed_base {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            block_size: Some(spec.base_block),
            logical_sector_size: spec.sector as u32,
            physical_sector_size: 4096,
            parent: None,
        },
    )
    .expect("create base");
    let mut model = vec![0u8; size as usize];
    apply(ns, &base, spec.sector, &spec.base_ops, &mut model);
    let mut paths = vec![base];
    for (i, c) in spec.children.iter().enumerate() {
        let parent = paths.last().unwrap().clone();
        let path = PathBuf::from(format!(
            "/c/child{i}.{}",
            if spec.vhdx { "avhdx" } else { "vhd" }
        ));
        let p = open_image_file(ns, &parent, &ChainOptions::default()).expect("open parent");
        let mut spec_p =
            formats::create::parent_spec(ns, p.as_ref(), &parent, &path).expect("spec");
        drop(p);
        let vsize = model.len() as u64 + c.grow_mib * MIB;
        spec_p.virtual_size = model.len() as u64;
        formats::create::create_file(
            ns,
            &path,
            &CreateParams {
                virtual_size: vsize,
                disk_type: DiskType::Differencing,
                block_size: Some(c.block_size),
                logical_sector_size: spec.sector as u32,
                physical_sector_size: 4096,
                parent: Some(spec_p),
            },
        )
        .expect("create child");
        model.resize(vsize as usize, 0);
        apply(ns, &path, spec.sector, &c.ops, &mut model);
        paths.push(path);
    }
    (paths, model)
}

fn run_case(spec: &ChainSpec) -> Result<(), TestCaseError> {
    let (_mem, ns) = ns();
    let (paths, model) = build(&ns, spec);
    let source = paths.last().unwrap().clone();
    prop_assert_eq!(
        read_all(&ns, &source),
        model.clone(),
        "chain reads its model before the merge"
    );
    let dest = paths[paths.len() - 1 - spec.dest].clone();
    let out = merge_into(&ns, &source, Some(&dest));
    prop_assert_eq!(out.return_value, 0, "merge failed: {:?}", out.error);
    let got = read_all(&ns, &dest);
    prop_assert_eq!(got.len(), model.len());
    prop_assert!(
        got == model,
        "destination differs from the pre-merge view of the source"
    );
    let errs = errors(&ns, &dest);
    prop_assert!(errs.is_empty(), "check errors after merge: {:?}", errs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn merged_destination_reads_what_the_source_read(spec in chain_spec()) {
        run_case(&spec)?;
    }
}

#[test]
fn merge_refuses_a_base_image_as_source() {
    let (_m, ns) = ns();
    let spec = ChainSpec {
        vhdx: true,
        fixed_base: false,
        sector: 512,
        base_mib: 4,
        base_block: 1 << 20,
        base_ops: vec![Op::Write {
            at: 0,
            len: 8,
            seed: 1,
        }],
        children: vec![],
        dest: 1,
    };
    let (paths, _) = build(&ns, &spec);
    let before = _m.get(&paths[0]);
    let out = merge_into(&ns, &paths[0], None);
    assert_eq!(out.return_value, 32770, "{:?}", out.error);
    assert_eq!(_m.get(&paths[0]), before);
}
