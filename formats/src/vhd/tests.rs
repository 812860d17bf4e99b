//! Driver tests: real images, create/write/read-back against a model, merge
//! batches (shadow paging and the fixed journal) including crash points,
//! corrupted inputs, and qemu-img interop when it is installed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::storage::crash::rng::SplitMix64;
use ::storage::crash::{Choice, CrashModel, CrashNamespace, Keep, Op as CrashOp};
use sha2::{Digest, Sha256};

use super::*;
use crate::layer::{Layer, Run, RunKind};
use crate::params::{CreateParams, DiskType, Identity, OpenOptions, ParentSpec, PathHint};
use crate::storage::{Access, JournalSlot, MemNamespace, Namespace};
use crate::{CorruptionKind as K, Error, MemStorage, Severity, Storage};

// ---------------------------------------------------------------- helpers

fn real_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/real");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("skipping: {} is absent", d.display());
        None
    }
}

/// The bytes of a real image, decompressed in memory (never into the repo).
fn real(name: &str) -> Option<Vec<u8>> {
    let dir = real_dir()?;
    let p = dir.join(name);
    let raw = std::fs::read(&p).ok().or_else(|| {
        eprintln!("skipping: {} is absent", p.display());
        None
    })?;
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
    } else if name.ends_with(".bz2") {
        bzip2::read::BzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = raw;
    }
    Some(out)
}

fn mem(bytes: Vec<u8>) -> Arc<dyn Storage> {
    Arc::new(MemStorage::from_vec(bytes))
}

fn ro() -> OpenOptions {
    OpenOptions::default()
}
fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..Default::default()
    }
}
fn lenient() -> OpenOptions {
    OpenOptions {
        ignore_checksums: true,
        ..Default::default()
    }
}

/// Virtual content through map()+read_file, with `below` answering
/// Transparent runs (zeros when None).
fn content_over(img: &dyn Layer, below: Option<&[u8]>) -> Vec<u8> {
    let size = img.virtual_size();
    let mut out = vec![0u8; size as usize];
    let mut runs: Vec<Run> = Vec::new();
    img.map(0, size, &mut runs).unwrap();
    let mut pos = 0;
    for r in runs {
        assert_eq!(r.offset, pos, "runs must cover the range in order");
        let dst = &mut out[r.offset as usize..(r.offset + r.len) as usize];
        match r.kind {
            RunKind::Present { file_offset } => img.read_file(file_offset, dst).unwrap(),
            RunKind::Zero => dst.fill(0),
            RunKind::Transparent => {
                if let Some(b) = below {
                    let end = (r.offset + r.len).min(b.len() as u64);
                    if r.offset < end {
                        dst[..(end - r.offset) as usize]
                            .copy_from_slice(&b[r.offset as usize..end as usize]);
                    }
                }
            }
        }
        pos += r.len;
    }
    assert_eq!(pos, size);
    out
}

fn content(img: &dyn Layer) -> Vec<u8> {
    content_over(img, None)
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn errors(f: &[crate::Finding]) -> Vec<&crate::Finding> {
    f.iter().filter(|x| x.severity == Severity::Error).collect()
}

/// `check` finds nothing at all (it says what it found otherwise).
fn assert_clean(img: &VhdImage) {
    let found = img.check().unwrap();
    assert!(found.is_empty(), "{found:?}");
}

/// `check` finds no error (warnings may stand).
fn assert_no_errors(img: &VhdImage) {
    let found = img.check().unwrap();
    assert!(errors(&found).is_empty(), "{found:?}");
}

fn detail<'a>(info: &'a crate::params::ImageInfo, key: &str) -> &'a str {
    &info.details.iter().find(|(k, _)| k == key).unwrap().1
}

/// A small deterministic pseudo-random generator for write patterns.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn new_image(
    kind: DiskType,
    size: u64,
    block: Option<u32>,
    parent: Option<ParentSpec>,
) -> Arc<MemStorage> {
    let st = Arc::new(MemStorage::new());
    let params = CreateParams {
        virtual_size: size,
        disk_type: kind,
        block_size: block,
        logical_sector_size: 512,
        physical_sector_size: 512,
        parent,
    };
    create(st.as_ref(), &params).unwrap();
    st
}

/// One seed makes one image: the footer's time stamp comes from the
/// seeded clock like its unique id (the simulator replays a run from its
/// seed), and a later run under the same seed writes the same bytes.
#[test]
fn a_seeded_create_repeats_byte_for_byte() {
    let bytes = |seed| {
        let st = crate::entropy::with_seed(seed, || {
            new_image(DiskType::Dynamic, 4 << 20, Some(2 << 20), None)
        });
        let mut b = vec![0u8; st.len().unwrap() as usize];
        st.read_at(&mut b, 0).unwrap();
        b
    };
    let first = bytes(11);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(first == bytes(11), "same seed, other bytes");
    assert!(first != bytes(12), "another seed gives another image");
}

fn open_rw(st: &Arc<MemStorage>) -> VhdImage {
    VhdImage::open("t.vhd", Arc::clone(st) as Arc<dyn Storage>, None, rw()).unwrap()
}
fn open_ro(st: &Arc<MemStorage>) -> VhdImage {
    VhdImage::open("t.vhd", Arc::clone(st) as Arc<dyn Storage>, None, ro()).unwrap()
}

fn parent_spec(p: &VhdImage) -> ParentSpec {
    use crate::image::Image;
    ParentSpec {
        identity: p.identity(),
        relative_path: ".\\base.vhd".into(),
        absolute_path: "C:\\vms\\base.vhd".into(),
        file_name: "base.vhd".into(),
        virtual_size: p.virtual_size(),
        logical_sector_size: 512,
        physical_sector_size: 512,
        virtual_disk_id: None,
        geometry: Some((
            p.footer().cylinders,
            p.footer().heads,
            p.footer().sectors_per_track,
        )),
    }
}

// ---------------------------------------------------------- real images

#[test]
fn real_fixed_and_dynamic_images_read_as_the_readme_says() {
    use crate::image::Image;
    let cases = [
        (
            "fixed.vhd.gz",
            DiskType::Fixed,
            10_485_760u64,
            0u64,
            "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463",
        ),
        (
            "dynamic.vhd.gz",
            DiskType::Dynamic,
            10_485_760,
            2 << 20,
            "ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784",
        ),
        (
            "d2v-zerofilled.vhd.bz2",
            DiskType::Dynamic,
            263_454_720,
            2 << 20,
            "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143",
        ),
    ];
    for (file, kind, size, block, hash) in cases {
        let Some(bytes) = real(file) else { return };
        let img = VhdImage::open(file, mem(bytes), None, ro()).unwrap();
        let info = img.info();
        assert_eq!(info.disk_type, kind, "{file}");
        assert_eq!(info.virtual_size, size, "{file}");
        assert_eq!(info.block_size, block, "{file}");
        assert_eq!(sha(&content(&img)), hash, "{file}");
        assert!(
            errors(&img.check().unwrap()).is_empty(),
            "{file}: {:?}",
            img.check().unwrap()
        );
        if file == "dynamic.vhd.gz" {
            assert_eq!(detail(&info, "chs_size"), "10479616");
        }
        if file.starts_with("d2v") {
            let bat = img.bat().unwrap();
            assert_eq!(bat.len(), 126);
            assert!(bat.iter().all(|&e| e != BAT_UNALLOCATED));
            assert!(detail(&info, "creator_application").starts_with("d2v"));
        }
    }
}

#[test]
fn real_empty_127gib_images_have_no_allocated_block() {
    use crate::image::Image;
    for file in ["hyperv2012r2-dynamic.vhd.bz2", "virtualpc-dynamic.vhd.bz2"] {
        let Some(bytes) = real(file) else { return };
        let img = VhdImage::open(file, mem(bytes), None, ro()).unwrap();
        assert_eq!(img.virtual_size(), 136_365_211_648, "{file}");
        assert_eq!(detail(&img.info(), "chs_size"), "136363130880", "{file}");
        assert!(
            img.bat().unwrap().iter().all(|&e| e == BAT_UNALLOCATED),
            "{file}"
        );
        let mut runs = Vec::new();
        img.map(0, img.virtual_size(), &mut runs).unwrap();
        assert_eq!(
            runs,
            vec![Run {
                offset: 0,
                len: 136_365_211_648,
                kind: RunKind::Transparent
            }]
        );
        assert!(errors(&img.check().unwrap()).is_empty(), "{file}");
    }
}

#[test]
fn dfvfs_images_need_ignore_checksums_and_then_read_correctly() {
    use crate::image::Image;
    let Some(base) = real("image.vhd") else {
        return;
    };
    let Some(child) = real("image-differential.vhd") else {
        return;
    };
    let e = VhdImage::open("image.vhd", mem(base.clone()), None, ro()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Checksum {
                structure: "hard disk footer",
                kind: K::FooterChecksum,
                ..
            }
        ),
        "{e}"
    );
    let e = VhdImage::open("image-differential.vhd", mem(child.clone()), None, ro()).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");

    let p = VhdImage::open("image.vhd", mem(base), None, lenient()).unwrap();
    assert_eq!(p.virtual_size(), 104_448);
    assert_eq!(errors(&p.open_findings()).len(), 1);
    let pc = content(&p);
    assert_eq!(
        sha(&pc),
        "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25"
    );

    let c = VhdImage::open("image-differential.vhd", mem(child), None, lenient()).unwrap();
    assert!(c.is_differencing());
    let loc = c.parent_locator().unwrap();
    assert_eq!(loc.hints, vec![PathHint::Name("image.vhd".into())]);
    let Some(crate::params::ParentLinkage::Vhd {
        parent_unique_id,
        parent_timestamp,
    }) = c.parent_linkage()
    else {
        panic!("no linkage")
    };
    let Identity::Vhd { unique_id, .. } = p.identity() else {
        panic!()
    };
    assert_eq!(parent_unique_id, unique_id);
    assert_eq!(parent_timestamp, 0);
    // Every sector is present in the child: the parent is never consulted.
    let mut runs = Vec::new();
    c.map(0, c.virtual_size(), &mut runs).unwrap();
    assert!(runs
        .iter()
        .all(|r| matches!(r.kind, RunKind::Present { .. })));
    assert_eq!(sha(&content_over(&c, Some(&vec![0xEE; 104_448]))), sha(&pc));
}

#[test]
fn structures_from_real_images_write_back_byte_identical() {
    let files = [
        "fixed.vhd.gz",
        "dynamic.vhd.gz",
        "d2v-zerofilled.vhd.bz2",
        "hyperv2012r2-dynamic.vhd.bz2",
        "virtualpc-dynamic.vhd.bz2",
        "image.vhd",
        "image-differential.vhd",
    ];
    for file in files {
        let Some(bytes) = real(file) else { return };
        let n = bytes.len();
        let mut fb = [0u8; 512];
        fb.copy_from_slice(&bytes[n - 512..]);
        let (f, ok) = HardDiskFooter::parse(&fb, file, 0).unwrap();
        assert_eq!(f.to_raw_bytes().unwrap(), fb, "{file}");
        if ok {
            assert_eq!(f.to_bytes().unwrap(), fb, "{file}");
        }
        if f.data_offset == u64::MAX {
            continue;
        }
        let ho = f.data_offset as usize;
        let mut hb = [0u8; 1024];
        hb.copy_from_slice(&bytes[ho..ho + 1024]);
        let (h, ok) = DynamicDiskHeader::parse(&hb, file, ho as u64).unwrap();
        assert_eq!(h.to_raw_bytes().unwrap(), hb.to_vec(), "{file}");
        if ok {
            assert_eq!(h.to_bytes().unwrap(), hb.to_vec(), "{file}");
        } else {
            assert!(file.starts_with("image"), "{file}: header checksum");
        }
        let to = h.table_offset as usize;
        let cnt = h.max_table_entries as usize;
        let bat =
            BlockAllocationTable::parse(&bytes[to..to + 4 * cnt], cnt as u32, file, to as u64)
                .unwrap();
        assert_eq!(
            &bat.to_bytes().unwrap()[..4 * cnt],
            &bytes[to..to + 4 * cnt],
            "{file}"
        );
        if let Some(&e) = bat.entries.iter().find(|&&e| e != BAT_UNALLOCATED) {
            let at = e as usize * 512;
            let bm = SectorBitmap::parse(&bytes[at..at + 512], file, at as u64).unwrap();
            assert_eq!(bm.to_bytes().unwrap(), bytes[at..at + 512].to_vec());
        }
    }
}

// ------------------------------------------------- create, write, read

fn exercise_writes(kind: DiskType, block: Option<u32>, size: u64, seed: u64) {
    use crate::image::Image;
    let st = new_image(kind, size, block, None);
    let mut model = vec![0u8; size as usize];
    {
        let img = open_ro(&st);
        assert_eq!(img.virtual_size(), size);
        assert_eq!(content(&img), model);
        assert_clean(&img);
    }
    let mut img = open_rw(&st);
    let bs = img.block_size().max(512 * 64);
    let mut rng = Rng(seed);
    let mut writes: Vec<(u64, u64)> = vec![
        (0, bs),             // aligned whole block
        (bs - 1024, 4096),   // spanning a block boundary
        (bs + 512, 512),     // partial block
        (size - 1024, 1024), // at the end
    ];
    for _ in 0..12 {
        let off = rng.below(size / 512) * 512;
        let len = (rng.below(64) + 1) * 512;
        writes.push((off, len.min(size - off)));
    }
    for (i, (off, len)) in writes.into_iter().enumerate() {
        if i % 5 == 4 {
            img.zero_sectors(off, len).unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let d = pattern(len as usize, i as u8);
            img.write_sectors(off, &d).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&d);
        }
        assert_eq!(content(&img), model, "after write {i}");
    }
    drop(img);
    let img = open_ro(&st);
    assert_eq!(content(&img), model);
    assert_clean(&img);
}

#[test]
fn create_write_read_back_every_kind() {
    exercise_writes(DiskType::Fixed, None, 3 << 20, 1);
    exercise_writes(DiskType::Dynamic, Some(512 << 10), (3 << 20) + 512 * 7, 2);
    exercise_writes(DiskType::Dynamic, None, 5 << 20, 3);
    exercise_writes(DiskType::Dynamic, Some(4096), 1 << 20, 4);
}

#[test]
fn created_images_have_the_spec_layout() {
    use crate::image::Image;
    let st = new_image(DiskType::Dynamic, 10 << 20, None, None);
    let b = st.to_vec();
    assert_eq!(&b[..8], b"conectix");
    assert_eq!(&b[..512], &b[b.len() - 512..]);
    assert_eq!(&b[512..520], b"cxsparse");
    assert_eq!(&b[1536..1540], &[0xFF; 4]);
    let img = open_ro(&st);
    let f = img.footer();
    assert_eq!(f.features, 2);
    assert_eq!(f.current_size, 10 << 20);
    assert_eq!(&f.creator_application, b"cfld");
    assert_eq!(f.creator_host_os, 0x5769_326B);
    assert_eq!(img.dynamic_header().unwrap().max_table_entries, 5);
    let fixed = new_image(DiskType::Fixed, 1 << 20, None, None);
    assert_eq!(fixed.len().unwrap(), (1 << 20) + 512);
    let img = open_ro(&fixed);
    assert_eq!(img.footer().data_offset, u64::MAX);
    assert_eq!(img.info().block_size, 0);
    let e = create(
        MemStorage::new().as_ref_dyn(),
        &CreateParams {
            virtual_size: 1000,
            ..Default::default()
        },
    );
    assert!(matches!(e, Err(Error::InvalidParameter(_))));
}

trait AsDyn {
    fn as_ref_dyn(&self) -> &dyn Storage;
}
impl AsDyn for MemStorage {
    fn as_ref_dyn(&self) -> &dyn Storage {
        self
    }
}

#[test]
fn differencing_create_links_and_reads_through_the_parent() {
    use crate::image::Image;
    let size = (4 << 20) + 4096;
    let base_st = new_image(DiskType::Dynamic, size, Some(512 << 10), None);
    let mut base = open_rw(&base_st);
    let pdata = pattern(size as usize, 9);
    base.write_sectors(0, &pdata).unwrap();
    let spec = parent_spec(&base);
    let child_st = new_image(DiskType::Dynamic, 0, Some(512 << 10), Some(spec));
    let mut child = open_rw(&child_st);
    assert!(child.is_differencing());
    let loc = child.parent_locator().unwrap();
    assert_eq!(
        loc.hints,
        vec![
            PathHint::Relative(".\\base.vhd".into()),
            PathHint::AbsoluteWindows("C:\\vms\\base.vhd".into()),
            PathHint::Name("base.vhd".into())
        ]
    );
    assert!(loc
        .entries
        .contains(&("W2ku".into(), "C:\\vms\\base.vhd".into())));
    let Identity::Vhd {
        unique_id,
        timestamp,
    } = base.identity()
    else {
        panic!()
    };
    assert_eq!(
        child.parent_linkage(),
        Some(crate::params::ParentLinkage::Vhd {
            parent_unique_id: unique_id,
            parent_timestamp: timestamp
        })
    );
    assert_eq!(content_over(&child, Some(&pdata)), pdata);
    let mut model = pdata.clone();
    for (i, (off, len)) in [
        (512u64, 512u64),
        (512 * 1023, 2048),
        (3 << 20, 1 << 20),
        (size - 512, 512),
    ]
    .into_iter()
    .enumerate()
    {
        let d = pattern(len as usize, 100 + i as u8);
        child.write_sectors(off, &d).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
    child.zero_sectors(8192, 4096).unwrap();
    model[8192..8192 + 4096].fill(0);
    assert_eq!(content_over(&child, Some(&pdata)), model);
    // Unwritten sectors of allocated blocks stay transparent.
    let mut runs = Vec::new();
    child.map(0, 4096, &mut runs).unwrap();
    assert_eq!(
        runs[0],
        Run {
            offset: 0,
            len: 512,
            kind: RunKind::Transparent
        }
    );
    drop(child);
    let child = open_ro(&child_st);
    assert_eq!(content_over(&child, Some(&pdata)), model);
    assert_clean(&child);
}

#[test]
fn read_only_open_refuses_writes() {
    use crate::image::Image;
    let st = new_image(DiskType::Dynamic, 1 << 20, None, None);
    let mut img = open_ro(&st);
    assert!(matches!(
        img.write_sectors(0, &[1; 512]),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(img.begin_batch().is_err());
}

// ------------------------------------------------------------- batches

fn new_id(n: u8) -> Identity {
    Identity::Vhd {
        unique_id: [n; 16],
        timestamp: 1000 + u32::from(n),
    }
}

/// Stage a fixed set of changes into a batch and the model.
fn stage(batch: &mut dyn crate::MergeBatch, model: &mut Vec<u8>, grow_to: Option<u64>) {
    if let Some(g) = grow_to {
        batch.grow(g).unwrap();
        model.resize(g as usize, 0);
    }
    let size = model.len() as u64;
    let w: [(u64, u64); 4] = [
        (0, 4096),
        (600 * 1024, 1 << 20),
        (size - 2048, 2048),
        (2 << 20, 512),
    ];
    for (i, (off, len)) in w.into_iter().enumerate() {
        let d = pattern(len as usize, 50 + i as u8);
        if i == 1 {
            // Exercise copy() from another storage.
            let src = MemStorage::from_vec(d.clone());
            batch.copy(off, len, &src, 0).unwrap();
        } else {
            batch.write(off, &d).unwrap();
        }
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
    batch.zero(1024, 1024).unwrap();
    model[1024..2048].fill(0);
    // Back into a block staged before others (held in `prefill`'s images:
    // its bitmap comes back from the journal).
    let d = pattern(1024, 60);
    batch.write(700 << 10, &d).unwrap();
    model[700 << 10..(700 << 10) + 1024].copy_from_slice(&d);
}

fn prefill(img: &mut VhdImage, model: &mut [u8]) {
    use crate::image::Image;
    let d = pattern(1 << 20, 7);
    img.write_sectors(512 << 10, &d).unwrap();
    model[512 << 10..(512 << 10) + (1 << 20)].copy_from_slice(&d);
}

/// A 2 MiB dynamic VHD in 512 KiB blocks, `prefill`ed, and its content.
fn prefilled_dynamic() -> (Arc<MemStorage>, Vec<u8>) {
    let size = 2 << 20;
    let st = new_image(DiskType::Dynamic, size, Some(512 << 10), None);
    let mut model = vec![0u8; size as usize];
    prefill(&mut open_rw(&st), &mut model);
    (st, model)
}

#[test]
fn shadow_batch_commits_drops_and_grows() {
    use crate::image::Image;
    use crate::params::HeldBlocks;
    let mut growth = Vec::new();
    for (grow, held) in [
        (None, HeldBlocks::Rebuild),
        (None, HeldBlocks::Journal),
        (Some(6 << 20), HeldBlocks::Rebuild),
        (Some(6 << 20), HeldBlocks::Journal),
    ] {
        for kind in [DiskType::Dynamic, DiskType::Fixed] {
            let size = 4 << 20;
            let st = new_image(kind, size, Some(512 << 10), None);
            let ns = MemNamespace::new();
            let slot = JournalSlot {
                ns: Arc::new(Arc::clone(&ns)),
                path: "/t.vhd.cfjournal".into(),
            };
            let open = |opts| {
                VhdImage::open(
                    "t.vhd",
                    Arc::clone(&st) as Arc<dyn Storage>,
                    Some(slot.clone()),
                    opts,
                )
                .unwrap()
            };
            let mut model = vec![0u8; size as usize];
            let mut img = open(rw());
            prefill(&mut img, &mut model);
            let old = model.clone();
            // Dropped batch: old content, clean check.
            {
                let mut b = img.begin_batch().unwrap();
                b.held_blocks(held);
                let mut m = model.clone();
                stage(b.as_mut(), &mut m, grow);
                b.prepare().unwrap();
                // Held blocks (dynamic) or everything (fixed) journaled.
                let journaled = kind == DiskType::Fixed || held == HeldBlocks::Journal;
                assert_eq!(!ns.paths().is_empty(), journaled, "{kind:?} {held:?}");
            }
            assert!(ns.paths().is_empty(), "abandoned journal left behind");
            let again = open(ro());
            assert_eq!(content(&again), old, "{kind:?} after drop");
            assert_no_errors(&again);
            drop(again);
            let len_before = st.len().unwrap();
            let mut b = img.begin_batch().unwrap();
            b.held_blocks(held);
            stage(b.as_mut(), &mut model, grow);
            b.commit(new_id(3)).unwrap();
            if kind == DiskType::Dynamic {
                growth.push((grow, held, st.len().unwrap() - len_before));
            }
            assert_eq!(content(&img), model, "{kind:?} in-memory after commit");
            assert_eq!(img.identity(), new_id(3));
            drop(img);
            let img = open(ro());
            assert_eq!(img.identity(), new_id(3));
            assert_eq!(img.virtual_size(), model.len() as u64);
            assert_eq!(content(&img), model, "{kind:?} grow {grow:?}");
            assert_clean(&img);
            assert!(ns.paths().is_empty());
        }
    }
    // A copy on write leaves the two held blocks' copies behind (until a
    // compaction); the journal changes them where they are.
    for pair in growth.chunks(2) {
        let [(g, HeldBlocks::Rebuild, rebuilt), (_, HeldBlocks::Journal, journaled)] = pair else {
            panic!("{pair:?}");
        };
        assert!(
            *rebuilt >= journaled + 2 * (512 << 10),
            "grow {g:?}: rebuild grew the file {rebuilt}, the journal {journaled}"
        );
    }
}

#[test]
fn shadow_batch_into_differencing_sets_only_written_bits() {
    use crate::image::Image;
    let size = 2 << 20;
    let base_st = new_image(DiskType::Dynamic, size, Some(512 << 10), None);
    let mut base = open_rw(&base_st);
    let pdata = pattern(size as usize, 77);
    base.write_sectors(0, &pdata).unwrap();
    let st = new_image(
        DiskType::Dynamic,
        0,
        Some(512 << 10),
        Some(parent_spec(&base)),
    );
    let mut img = open_rw(&st);
    img.write_sectors(4096, &[5u8; 512]).unwrap();
    let mut model = pdata.clone();
    model[4096..4608].fill(5);
    let mut b = img.begin_batch().unwrap();
    b.write(8192, &[6u8; 1024]).unwrap();
    b.zero(1 << 20, 512).unwrap();
    b.commit(new_id(4)).unwrap();
    model[8192..9216].fill(6);
    model[1 << 20..(1 << 20) + 512].fill(0);
    drop(img);
    let img = open_ro(&st);
    assert_eq!(content_over(&img, Some(&pdata)), model);
    let mut runs = Vec::new();
    img.map(0, 512 << 10, &mut runs).unwrap();
    let present: u64 = runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Present { .. }))
        .map(|r| r.len)
        .sum();
    assert_eq!(present, 512 + 1024);
    assert_clean(&img);
}

// ------------------------------------------------ crash-point exploration
//
// The batches run once on the storage crate's crash recorder; every crash
// point's post-crash states (pending writes kept, lost or torn at 512-byte
// sectors, pending journal creates and removes kept or lost per directory)
// are rebuilt by its crash model and opened again.

const IMG: &str = "/t.vhd";
const JOURNAL: &str = "/t.vhd.cfjournal";

/// Run `run` once on a recording namespace holding `start` at `IMG`; the
/// model of every state a crash during it can leave.
fn record_run(start: &[u8], run: impl FnOnce(&Arc<dyn Namespace>)) -> CrashModel {
    let ns = CrashNamespace::new();
    ns.insert(IMG, start);
    let base = ns.begin_recording();
    let d: Arc<dyn Namespace> = ns.clone();
    run(&d);
    let (trace, marks) = ns.finish_recording();
    CrashModel::new(base, ns.snapshot(), trace, marks, 512)
}

/// The states of one crash point that the tests open: all of them when
/// few; else everything kept, everything lost, every keep/drop of whole
/// pending writes (when at most 6 are pending; else each one dropped alone
/// and each prefix), and seeded samples with torn writes.
fn crash_states(m: &CrashModel, k: usize) -> Vec<Arc<CrashNamespace>> {
    let space = m.space(k);
    let choices: Vec<Choice> = match space.total {
        Some(total) if space.enumerable(64) => (0..total).map(|i| space.decode(i)).collect(),
        _ => {
            let n = space.data_ops.len();
            let whole = |keep: &dyn Fn(usize) -> bool| Choice {
                ns_kept: vec![true; space.ns_ops.len()],
                data: (0..n)
                    .map(|j| if keep(j) { Keep::Kept } else { Keep::Dropped })
                    .collect(),
            };
            let mut v = vec![space.all_kept(), space.all_dropped()];
            if n <= 6 {
                v.extend((0..1u64 << n).map(|mask| whole(&|j| mask >> j & 1 == 1)));
            } else {
                v.extend((0..n).map(|d| whole(&|j| j != d)));
                v.extend((0..n).map(|p| whole(&|j| j < p)));
            }
            let mut rng = SplitMix64::new(0x9e37_79b9 ^ k as u64);
            v.extend((0..12).map(|_| space.sample(&mut rng)));
            v
        }
    };
    choices.iter().map(|c| m.state(&space, c)).collect()
}

/// Walk every crash point's states through `open` (whether the state shows
/// the new content): point 0 shows only the old content, the end only the
/// new, both appear, and once every state of a point shows the new
/// content every later one does (a commit never comes undone).
fn old_or_new_at_every_crash_point(m: &CrashModel, open: impl Fn(&Arc<CrashNamespace>) -> bool) {
    let (mut n_old, mut n_new, mut committed) = (0, 0, false);
    for k in 0..m.crash_points() {
        let seen: Vec<bool> = crash_states(m, k).iter().map(&open).collect();
        n_new += seen.iter().filter(|n| **n).count();
        n_old += seen.iter().filter(|n| !**n).count();
        let all_new = seen.iter().all(|n| *n);
        assert!(all_new || !committed, "crash point {k} went back to old");
        assert!(k > 0 || seen.iter().all(|n| !*n), "new before any op");
        committed |= all_new;
    }
    assert!(committed, "never committed");
    assert!(n_old > 0 && n_new > 0, "{n_old} old, {n_new} new");
}

#[test]
fn shadow_commit_is_old_or_new_at_every_crash_point() {
    use crate::image::Image;
    let (st0, mut model) = prefilled_dynamic();
    let old = model.clone();
    let m = record_run(&st0.to_vec(), |ns| {
        let st = ns.open(Path::new(IMG), Access::Write).unwrap();
        let mut img = VhdImage::open("t.vhd", st, None, rw()).unwrap();
        let mut b = img.begin_batch().unwrap();
        stage(b.as_mut(), &mut model, Some(3 << 20));
        b.commit(new_id(9)).unwrap();
    });
    assert!(m.crash_points() > 10);
    old_or_new_at_every_crash_point(&m, |ns| {
        let st = Arc::clone(ns).open(Path::new(IMG), Access::Read).unwrap();
        let img = VhdImage::open("t.vhd", st, None, ro()).unwrap();
        let c = content(&img);
        assert!(c == old || c == model, "crash state is neither old nor new");
        // Not even a fallback to the footer copy: the file always ends
        // in a valid footer. Only a stale copy at 0 (after the commit
        // point) may be reported.
        let f = img.check().unwrap();
        assert!(
            f.iter()
                .all(|x| x.severity == Severity::Warning && x.structure == "hard disk footer copy"),
            "{f:?}"
        );
        c == model
    });
}

#[test]
fn held_blocks_journal_is_old_or_new_at_every_crash_point() {
    use crate::image::Image;
    use crate::params::HeldBlocks;
    let (st0, mut model) = prefilled_dynamic();
    let old = model.clone();
    let open = |ns: &Arc<dyn Namespace>, opts: OpenOptions| {
        let access = if opts.writable {
            Access::Write
        } else {
            Access::Read
        };
        let st = ns.open(Path::new(IMG), access).unwrap();
        let slot = JournalSlot::for_image(Arc::clone(ns), Path::new(IMG));
        VhdImage::open("t.vhd", st, Some(slot), opts).unwrap()
    };
    let m = record_run(&st0.to_vec(), |ns| {
        let mut img = open(ns, rw());
        let mut b = img.begin_batch().unwrap();
        b.held_blocks(HeldBlocks::Journal);
        stage(b.as_mut(), &mut model, Some(3 << 20));
        b.commit(new_id(9)).unwrap();
    });
    assert!(m.crash_points() > 10);
    let allowed = [K::PendingJournal, K::UncommittedJournal];
    old_or_new_at_every_crash_point(&m, |cns| {
        let ns: Arc<dyn Namespace> = cns.clone();
        // Read-only: the committed journal overlaid, or ignored.
        let img = open(&ns, ro());
        let seen = content(&img);
        assert!(
            seen == old || seen == model,
            "crash state is neither old nor new"
        );
        drop(img);
        // Writable: replayed or discarded, the same content either way,
        // and the journal gone.
        let img = open(&ns, rw());
        assert_eq!(
            content(&img),
            seen,
            "a writable open changed what a read showed"
        );
        assert!(
            img.check()
                .unwrap()
                .iter()
                .all(|f| f.severity == Severity::Warning
                    && (allowed.contains(&f.kind) || f.structure == "hard disk footer copy")),
            "{:?}",
            img.check().unwrap()
        );
        drop(img);
        assert_eq!(
            ns.kind(Path::new(JOURNAL)).unwrap(),
            crate::storage::EntryKind::Missing
        );
        seen == model
    });
}

#[test]
fn fixed_journal_is_replayed_overlaid_or_discarded() {
    use crate::image::Image;
    let size = 3 << 20;
    let st0 = new_image(DiskType::Fixed, size, None, None);
    let mut model = vec![0u8; size as usize];
    prefill(&mut open_rw(&st0), &mut model);
    let start = st0.to_vec();
    let old = model.clone();
    // One committed batch: the journal written and committed, applied,
    // removed; the image and the journal recorded together.
    let m = record_run(&start, |ns| {
        let st = ns.open(Path::new(IMG), Access::Write).unwrap();
        let slot = JournalSlot::for_image(Arc::clone(ns), Path::new(IMG));
        assert_eq!(slot.path, Path::new(JOURNAL));
        let mut img = VhdImage::open("t.vhd", st, Some(slot), rw()).unwrap();
        let mut b = img.begin_batch().unwrap();
        stage(b.as_mut(), &mut model, Some(4 << 20));
        b.commit(new_id(5)).unwrap();
    });
    assert_eq!(m.final_state().get(Path::new(JOURNAL)), None);
    // The committed journal: its bytes just before its removal.
    let removed = m
        .trace()
        .iter()
        .position(|op| matches!(op, CrashOp::Remove { path } if path == Path::new(JOURNAL)))
        .expect("the journal is removed");
    let space = m.space(removed);
    let jbytes = m
        .state(&space, &space.all_kept())
        .get(Path::new(JOURNAL))
        .unwrap();
    let check_state = |image: Vec<u8>, journal: Option<Vec<u8>>, expect_new: Option<bool>| {
        for writable in [false, true] {
            let ns = MemNamespace::new();
            if let Some(j) = &journal {
                ns.insert(JOURNAL, j.clone());
            }
            let slot = JournalSlot {
                ns: Arc::new(Arc::clone(&ns)),
                path: JOURNAL.into(),
            };
            let st = Arc::new(MemStorage::from_vec(image.clone()));
            let img = VhdImage::open(
                "t.vhd",
                st as Arc<dyn Storage>,
                Some(slot),
                if writable { rw() } else { ro() },
            )
            .unwrap();
            let c = content(&img);
            let is_new = c == model;
            assert!(is_new || c == old, "neither old nor new");
            if let Some(e) = expect_new {
                assert_eq!(is_new, e);
            }
            assert_no_errors(&img);
            if writable {
                assert!(
                    ns.paths().is_empty(),
                    "journal not removed by a writable open"
                );
            } else if journal.is_some() {
                assert_eq!(ns.paths().len(), 1, "read-only open changed the namespace");
            }
        }
    };
    // Committed, unapplied: replay (rw) / overlay (ro) show the new content.
    check_state(start.clone(), Some(jbytes.clone()), Some(true));
    // Torn journal: one byte of record data damaged -> discarded, old content.
    let mut torn = jbytes.clone();
    torn[100] ^= 0xFF;
    check_state(start.clone(), Some(torn), Some(false));
    // Uncommitted (no commit record): old content.
    check_state(
        start.clone(),
        Some(jbytes[..jbytes.len() - 32].to_vec()),
        Some(false),
    );
    // Every crash point of the whole batch (journal writing, commit,
    // apply, removal): a read-only open overlays a committed journal and
    // changes nothing, a writable one replays it and removes it; both
    // see the same content, old or new.
    old_or_new_at_every_crash_point(&m, |ns| {
        let names = ns.paths();
        let d: Arc<dyn Namespace> = Arc::clone(ns) as Arc<dyn Namespace>;
        let mut seen = None;
        for writable in [false, true] {
            let access = if writable {
                Access::Write
            } else {
                Access::Read
            };
            let st = d.open(Path::new(IMG), access).unwrap();
            let slot = JournalSlot::for_image(Arc::clone(&d), Path::new(IMG));
            let opts = if writable { rw() } else { ro() };
            let img = VhdImage::open("t.vhd", st, Some(slot), opts).unwrap();
            let c = content(&img);
            let is_new = c == model;
            assert!(is_new || c == old, "neither old nor new");
            assert!(seen.is_none_or(|s| s == is_new), "the opens disagree");
            seen = Some(is_new);
            assert_no_errors(&img);
            if writable {
                assert_eq!(ns.get(Path::new(JOURNAL)), None, "journal left behind");
            } else {
                assert_eq!(ns.paths(), names, "read-only open changed the namespace");
            }
        }
        seen == Some(true)
    });
}

#[test]
fn fixed_batch_without_journal_slot_is_refused() {
    use crate::image::Image;
    let st = new_image(DiskType::Fixed, 1 << 20, None, None);
    let mut img = open_rw(&st);
    assert!(matches!(
        img.begin_batch().err(),
        Some(Error::Unsupported { .. })
    ));
}

// ------------------------------------------------------ corrupted inputs

fn set_footer(bytes: &mut [u8], edit: impl Fn(&mut HardDiskFooter)) {
    let n = bytes.len();
    for at in [0, n - 512] {
        let mut fb = [0u8; 512];
        fb.copy_from_slice(&bytes[at..at + 512]);
        let (mut f, _) = HardDiskFooter::parse(&fb, "t", 0).unwrap();
        if !f.cookie_ok() {
            continue;
        }
        edit(&mut f);
        bytes[at..at + 512].copy_from_slice(&f.to_bytes().unwrap());
    }
}

fn set_header(bytes: &mut [u8], edit: impl Fn(&mut DynamicDiskHeader)) {
    let mut hb = [0u8; 1024];
    hb.copy_from_slice(&bytes[512..1536]);
    let (mut h, _) = DynamicDiskHeader::parse(&hb, "t", 512).unwrap();
    edit(&mut h);
    bytes[512..1536].copy_from_slice(&h.to_bytes().unwrap());
}

fn sample_dynamic() -> Vec<u8> {
    let st = new_image(DiskType::Dynamic, 3 << 20, Some(1 << 20), None);
    let mut img = open_rw(&st);
    use crate::image::Image;
    img.write_sectors(0, &pattern(3 << 20, 3)).unwrap();
    drop(img);
    st.to_vec()
}

fn open_err(bytes: Vec<u8>) -> Error {
    VhdImage::open("bad.vhd", mem(bytes), None, ro()).unwrap_err()
}

/// The end footer cut off exactly (Xen Orchestra wrote such files): the
/// last block ends at EOF. Read from the copy at 0 with a warning and no
/// error: nothing is "under" a footer that is not there.
#[test]
fn footer_cut_off_reads_from_the_copy_without_a_false_overlap() {
    use crate::image::Image;
    let good = sample_dynamic();
    let want = content(&VhdImage::open("good.vhd", mem(good.clone()), None, ro()).unwrap());
    let cut = good[..good.len() - 512].to_vec();
    let img = VhdImage::open("cut.vhd", mem(cut), None, ro()).unwrap();
    assert_eq!(img.footer_source(), FooterSource::CopyAtZero);
    let f = img.check().unwrap();
    assert!(f.iter().all(|x| x.severity == Severity::Warning), "{f:?}");
    assert!(content(&img) == want);
}

#[test]
fn corrupted_images_give_precise_errors() {
    use crate::image::Image;
    let good = sample_dynamic();
    let n = good.len();

    // Bad end cookie: falls back to the copy at 0 with a warning.
    let mut b = good.clone();
    b[n - 512] = b'X';
    let img = VhdImage::open("bad.vhd", mem(b.clone()), None, ro()).unwrap();
    assert_eq!(img.footer_source(), FooterSource::CopyAtZero);
    assert_eq!(img.open_findings().len(), 1);
    // Both cookies bad: not an image.
    b[0] = b'X';
    assert!(matches!(open_err(b), Error::NotAnImage { .. }));

    // Bad end checksum, good copy: fallback; both bad: Checksum error.
    let mut b = good.clone();
    b[n - 512 + 0x60] ^= 1;
    assert!(VhdImage::open("bad.vhd", mem(b.clone()), None, ro()).is_ok());
    b[0x60] ^= 1;
    assert!(
        matches!(open_err(b.clone()), Error::Checksum { offset, kind: K::FooterChecksum, .. } if offset == n as u64 - 512)
    );
    assert!(VhdImage::open("bad.vhd", mem(b), None, lenient()).is_ok());

    // Header checksum.
    let mut b = good.clone();
    b[512 + 0x30] ^= 1;
    assert!(matches!(
        open_err(b),
        Error::Checksum {
            structure: "dynamic disk header",
            offset: 512,
            kind: K::DynamicHeaderChecksum,
            ..
        }
    ));

    // Block size 0 and "4 GiB" (largest u32), and a non power of two.
    for bs in [0u32, 0xFFFF_FE00, 0x8000_0000, 3 * 512] {
        let mut b = good.clone();
        set_header(&mut b, |h| h.block_size = bs);
        match open_err(b) {
            Error::Corrupt {
                structure,
                offset,
                kind,
                ..
            } => {
                assert_eq!((structure, offset), ("dynamic disk header", 512 + 0x20));
                assert_eq!(kind, K::InvalidBlockSize);
            }
            e => panic!("{e}"),
        }
    }
    // Huge and too small Max Table Entries.
    for m in [u32::MAX, 2] {
        let mut b = good.clone();
        set_header(&mut b, |h| h.max_table_entries = m);
        assert!(matches!(
            open_err(b),
            Error::Corrupt {
                offset: 540,
                kind: K::MaxTableEntriesInvalid,
                ..
            }
        ));
    }
    // Disk type.
    let mut b = good.clone();
    set_footer(&mut b, |f| f.disk_type = 5);
    assert!(matches!(
        open_err(b),
        Error::Corrupt {
            kind: K::DiskTypeInvalid,
            ..
        }
    ));
    // Truncation: cut the last block and footer.
    let b = good[..n - (1 << 20)].to_vec();
    assert!(VhdImage::open("bad.vhd", mem(b), None, ro())
        .is_ok_and(|i| i.footer_source() == FooterSource::CopyAtZero));
    let b = good[..100].to_vec();
    assert!(open_err(b).file().is_some());

    // A BAT entry past EOF: check() names it, map() errors, no panic.
    let mut b = good.clone();
    b[1536 + 4..1536 + 8].copy_from_slice(&0x0100_0000u32.to_be_bytes());
    let img = VhdImage::open("bad.vhd", mem(b), None, ro()).unwrap();
    let f = img.check().unwrap();
    assert!(
        f.iter().any(|x| x.severity == Severity::Error
            && x.offset == Some(1536 + 4)
            && x.kind == K::BlockOutsideFile),
        "{f:?}"
    );
    let mut runs = Vec::new();
    assert!(matches!(
        img.map(1 << 20, 512, &mut runs),
        Err(Error::Corrupt {
            kind: K::BlockOutsideFile,
            ..
        })
    ));

    // Overlapping blocks and a block over the BAT.
    let mut b = good.clone();
    let e0 = b[1536..1540].to_vec();
    b[1536 + 4..1536 + 8].copy_from_slice(&e0);
    b[1536 + 8..1536 + 12].copy_from_slice(&3u32.to_be_bytes());
    let img = VhdImage::open("bad.vhd", mem(b), None, ro()).unwrap();
    let f = img.check().unwrap();
    assert!(f.iter().any(|x| x.kind == K::BlockOverlap), "{f:?}");
    assert!(
        f.iter().any(|x| x.kind == K::BlockOverlapsStructure
            && x.message.contains("block allocation table [")),
        "{f:?}"
    );

    // Footer copy mismatch is a warning.
    let mut b = good.clone();
    let mut fb = [0u8; 512];
    fb.copy_from_slice(&b[..512]);
    let (mut f0, _) = HardDiskFooter::parse(&fb, "t", 0).unwrap();
    f0.time_stamp ^= 1;
    b[..512].copy_from_slice(&f0.to_bytes().unwrap());
    let f = VhdImage::open("bad.vhd", mem(b), None, ro())
        .unwrap()
        .check()
        .unwrap();
    assert!(
        f.len() == 1
            && f[0].severity == Severity::Warning
            && f[0].offset == Some(0)
            && f[0].kind == K::FooterCopyMismatch,
        "{f:?}"
    );
}

#[test]
fn real_images_with_corruption_never_panic() {
    let Some(good) = real("dynamic.vhd.gz") else {
        return;
    };
    let n = good.len();
    let mut rng = Rng(0x5eed);
    // Damage footer, header, BAT and locator fields at random.
    for _ in 0..400 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(4) {
            let region = [n - 512, 0, 512, 1536][rng.below(4) as usize];
            let at = region + rng.below(512) as usize;
            b[at] = rng.next() as u8;
        }
        // Keep checksums valid half the time so deeper code is reached.
        if rng.below(2) == 0 {
            let fix = |b: &mut Vec<u8>, at: usize, len: usize, field: usize| {
                let s = crate::checksum::vhd_checksum(&b[at..at + len], field);
                b[at + field..at + field + 4].copy_from_slice(&s.to_be_bytes());
            };
            fix(&mut b, n - 512, 512, 0x40);
            fix(&mut b, 0, 512, 0x40);
            fix(&mut b, 512, 1024, 0x24);
        }
        for opts in [ro(), lenient()] {
            if let Ok(img) = VhdImage::open("fuzz.vhd", mem(b.clone()), None, opts) {
                use crate::image::Image;
                let _ = img.check();
                let _ = img.info();
                let _ = img.parent_locator();
                let mut runs = Vec::new();
                let _ = img.map(0, img.virtual_size().min(64 << 20), &mut runs);
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    #[test]
    fn random_bytes_never_panic(mut b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), cookie in proptest::prelude::any::<bool>()) {
        if cookie && b.len() >= 512 {
            let n = b.len();
            b[n - 512..n - 504].copy_from_slice(b"conectix");
            b[..8].copy_from_slice(b"conectix");
        }
        if let Ok(img) = VhdImage::open("p.vhd", mem(b), None, lenient()) {
            use crate::image::Image;
            let _ = img.check();
            let mut runs = Vec::new();
            let _ = img.map(0, img.virtual_size().min(1 << 20), &mut runs);
        }
    }
}

// ------------------------------------------------------------- qemu-img

fn qemu_img() -> Option<PathBuf> {
    let p = std::env::var_os("PATH")?;
    std::env::split_paths(&p)
        .map(|d| d.join("qemu-img"))
        .find(|p| p.is_file())
}

#[test]
fn qemu_img_reads_what_we_write() {
    use crate::image::Image;
    let Some(q) = qemu_img() else {
        eprintln!("skipping: qemu-img not on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (kind, block) in [
        (DiskType::Fixed, None),
        (DiskType::Dynamic, None),
        (DiskType::Dynamic, Some(512 << 10)),
    ] {
        // Not a CHS product on purpose: qemu must size "cfld" images by Current Size.
        let size: u64 = (5 << 20) + 3 * 512;
        let st = new_image(kind, size, block, None);
        let mut model = vec![0u8; size as usize];
        let mut img = open_rw(&st);
        for (i, (off, len)) in [
            (0u64, 8192u64),
            ((2 << 20) - 512, 4096),
            (size - 1024, 1024),
        ]
        .into_iter()
        .enumerate()
        {
            let d = pattern(len as usize, i as u8);
            img.write_sectors(off, &d).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&d);
        }
        drop(img);
        let vp = dir.path().join("x.vhd");
        let rp = dir.path().join("x.raw");
        std::fs::write(&vp, st.to_vec()).unwrap();
        std::fs::write(&rp, &model).unwrap();
        testdata::command_ok(
            std::process::Command::new(&q)
                .args(["compare", "-f", "vpc", "-F", "raw"])
                .arg(&vp)
                .arg(&rp),
            &format!("{kind:?}: qemu-img compare"),
        );
        // And the reverse: qemu writes, we read.
        testdata::command_ok(
            std::process::Command::new(&q)
                .args(["convert", "-f", "raw", "-O", "vpc", "-o"])
                .arg(if kind == DiskType::Fixed {
                    "subformat=fixed,force_size=on"
                } else {
                    "subformat=dynamic,force_size=on"
                })
                .arg(&rp)
                .arg(dir.path().join("q.vhd")),
            &format!("{kind:?}: qemu-img convert"),
        );
        let qb = std::fs::read(dir.path().join("q.vhd")).unwrap();
        let qi = VhdImage::open("q.vhd", mem(qb), None, ro()).unwrap();
        assert_eq!(qi.virtual_size(), size);
        assert_eq!(content(&qi), model, "{kind:?}: qemu-written image");
        assert_no_errors(&qi);
    }
}
