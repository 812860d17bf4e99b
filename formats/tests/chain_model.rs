//! Model-based test of the write path: random sequences of writes (aligned
//! and unaligned, spanning blocks, zero-length, at the end of the disk)
//! through the top of random chains, compared with a plain in-memory model
//! of the virtual disk after every step and after reopening. proptest prints
//! the failing case and its seed; `PROPTEST_CASES` scales the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{open_image_file, write_through, Chain, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, MemNamespace, Namespace, Severity};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Write {
        at: u64,
        len: usize,
        seed: u8,
    },
    /// Write ending exactly at the end of the disk.
    WriteAtEnd {
        len: usize,
        seed: u8,
    },
    Reopen,
}

#[derive(Debug, Clone)]
struct Case {
    vhdx: bool,
    fixed_base: bool,
    sector4k: bool,
    depth: usize,
    block_kib: u32,
    size_mib: u64,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        6 => (0u64..(12 << 20), 0usize..300_000, any::<u8>()).prop_map(|(at, len, seed)| Step::Write { at, len, seed }),
        1 => (0usize..10_000, any::<u8>()).prop_map(|(len, seed)| Step::WriteAtEnd { len, seed }),
        1 => Just(Step::Reopen),
    ];
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..=3,
        any::<bool>(),
        3u64..10,
        prop::collection::vec(step, 1..12),
    )
        .prop_map(
            |(vhdx, fixed_base, sector4k, depth, big, size_mib, steps)| Case {
                vhdx,
                fixed_base,
                sector4k: vhdx && sector4k,
                depth,
                block_kib: match (vhdx, big) {
                    (true, false) => 1024,
                    (true, true) => 2048,
                    (false, false) => 512,
                    (false, true) => 2048,
                },
                size_mib,
                steps,
            },
        )
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i / 7) as u8) | 1)
        .collect()
}

fn open_top(ns: &Arc<dyn Namespace>, top: &Path) -> Chain {
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let img = open_image_file(ns, top, &opts).expect("open top writable");
    let ro = ChainOptions::default();
    let mut chain = Chain::open_partial_from(ns, top, img, &ro).expect("open chain");
    assert!(chain.broken.take().is_none(), "chain broken");
    chain
}

fn read_all(chain: &Chain) -> Vec<u8> {
    let mut v = vec![0u8; chain.top().virtual_size() as usize];
    chain.reader().read(0, &mut v).expect("read");
    v
}

fn build(ns: &Arc<dyn Namespace>, c: &Case) -> (PathBuf, Vec<u8>) {
    let ext = if c.vhdx { "vhdx" } else { "vhd" };
    let size = c.size_mib << 20;
    let mut path = PathBuf::from(format!("/t/l0.{ext}"));
    let sector = if c.sector4k { 4096 } else { 512 };
    formats::create::create_file(
        ns,
        &path,
        &CreateParams {
            virtual_size: size,
            disk_type: if c.fixed_base {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            block_size: Some(c.block_kib << 10),
            logical_sector_size: sector,
            physical_sector_size: 4096,
            parent: None,
        },
    )
    .expect("create base");
    let mut model = vec![0u8; size as usize];
    // Give lower layers some content so copy-up of partial sectors matters.
    {
        let mut chain = open_top(ns, &path);
        let d = data(0xA5, 100_000);
        write_through(&mut chain, 1000, &d).unwrap();
        model[1000..1000 + d.len()].copy_from_slice(&d);
    }
    for i in 1..=c.depth {
        let child = PathBuf::from(format!("/t/l{i}.{ext}"));
        let p = open_image_file(ns, &path, &ChainOptions::default()).unwrap();
        let spec = formats::create::parent_spec(ns, p.as_ref(), &path, &child).unwrap();
        drop(p);
        formats::create::create_file(
            ns,
            &child,
            &CreateParams {
                virtual_size: size,
                disk_type: DiskType::Differencing,
                block_size: Some(c.block_kib << 10),
                logical_sector_size: sector,
                physical_sector_size: 4096,
                parent: Some(spec),
            },
        )
        .unwrap();
        path = child;
        let mut chain = open_top(ns, &path);
        let off = (i as u64 * 777_777) % (size - 50_000);
        let d = data(i as u8, 40_000);
        write_through(&mut chain, off, &d).unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    (path, model)
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let mem = MemNamespace::new();
    let ns: Arc<dyn Namespace> = Arc::new(mem);
    let (top, mut model) = build(&ns, c);
    let size = model.len() as u64;
    let mut chain = open_top(&ns, &top);
    prop_assert!(read_all(&chain) == model, "initial content");
    for (i, s) in c.steps.iter().enumerate() {
        match s {
            Step::Write { at, len, seed } => {
                let at = at % size;
                let len = (*len).min((size - at) as usize);
                let d = data(*seed, len);
                write_through(&mut chain, at, &d)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model[at as usize..at as usize + len].copy_from_slice(&d);
            }
            Step::WriteAtEnd { len, seed } => {
                let len = (*len).min(size as usize);
                let d = data(*seed, len);
                write_through(&mut chain, size - len as u64, &d)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let n = model.len();
                model[n - len..].copy_from_slice(&d);
            }
            Step::Reopen => {
                drop(chain);
                chain = open_top(&ns, &top);
            }
        }
        prop_assert!(
            read_all(&chain) == model,
            "content differs after step {} ({:?})",
            i,
            s
        );
    }
    drop(chain);
    let chain = Chain::open(&ns, &top, &ChainOptions::default()).unwrap();
    prop_assert!(read_all(&chain) == model, "content differs after reopening");
    for l in &chain.links {
        let errs: Vec<_> = l
            .image
            .check()
            .unwrap()
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        prop_assert!(errs.is_empty(), "{}: {:?}", l.path.display(), errs);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn writes_through_random_chains_match_the_model(c in case()) {
        run(&c)?;
    }
}

#[test]
fn a_write_past_the_end_is_refused_and_changes_nothing() {
    let mem = MemNamespace::new();
    let ns: Arc<dyn Namespace> = Arc::new(Arc::clone(&mem));
    let c = Case {
        vhdx: true,
        fixed_base: false,
        sector4k: false,
        depth: 1,
        block_kib: 1024,
        size_mib: 4,
        steps: vec![],
    };
    let (top, model) = build(&ns, &c);
    let mut chain = open_top(&ns, &top);
    assert!(write_through(&mut chain, (4 << 20) - 10, &[1u8; 11]).is_err());
    assert!(write_through(&mut chain, u64::MAX, &[1u8; 1]).is_err());
    drop(chain);
    // The writable open itself renews the FileWriteGuid; content is unchanged.
    let chain = Chain::open(&ns, &top, &ChainOptions::default()).unwrap();
    assert!(read_all(&chain) == model);
    assert!(mem.get(&top).is_some());
}
