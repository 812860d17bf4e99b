//! Creating VHDX files, writing through the log, crash cut points, and
//! qemu-img interoperability when it is installed.

use std::sync::Arc;

use formats::layer::push_run;
use formats::params::{CreateParams, DiskType, HeldBlocks, Identity, OpenOptions, ParentSpec};
use formats::vhdx::{self, VhdxImage};
use formats::{Image, Layer, MemStorage, RunKind, Severity, Storage};
use testdata::{CutStorage, XorShift as Rng};

const MIB: u64 = 1 << 20;

fn params(kind: DiskType, size: u64, bs: u32, lss: u32) -> CreateParams {
    CreateParams {
        virtual_size: size,
        disk_type: kind,
        block_size: Some(bs),
        logical_sector_size: lss,
        physical_sector_size: 4096,
        parent: None,
    }
}

fn diff_params(size: u64, bs: u32, lss: u32) -> CreateParams {
    CreateParams {
        parent: Some(ParentSpec {
            identity: Identity::Vhdx {
                data_write_guid: uuid::Uuid::new_v4(),
            },
            relative_path: r".\base.vhdx".into(),
            absolute_path: r"C:\vms\base.vhdx".into(),
            file_name: "base.vhdx".into(),
            virtual_size: size,
            logical_sector_size: lss,
            physical_sector_size: 4096,
            virtual_disk_id: Some(uuid::Uuid::new_v4()),
            geometry: None,
        }),
        ..params(DiskType::Differencing, size, bs, lss)
    }
}

fn open(s: Arc<dyn Storage>, writable: bool) -> VhdxImage {
    VhdxImage::open(
        "test.vhdx",
        s,
        OpenOptions {
            writable,
            ignore_checksums: false,
        },
    )
    .unwrap()
}

/// What the model expects each sector of this layer alone to read as.
#[derive(Clone)]
struct Model {
    lss: usize,
    bytes: Vec<u8>,
    /// Sector held by this layer (differencing: hides the parent).
    held: Vec<bool>,
}

impl Model {
    fn new(size: u64, lss: u32, all_held: bool) -> Self {
        Model {
            lss: lss as usize,
            bytes: vec![0; size as usize],
            held: vec![all_held; (size / u64::from(lss)) as usize],
        }
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.bytes[off..off + data.len()].copy_from_slice(data);
        for s in off / self.lss..(off + data.len()) / self.lss {
            self.held[s] = true;
        }
    }
}

/// Compare the layer with the model: Present bytes equal, Zero held and
/// zero, Transparent not held (or, in a base, zeros).
fn assert_matches(img: &VhdxImage, m: &Model) {
    let mut runs = Vec::new();
    img.map(0, img.virtual_size(), &mut runs).unwrap();
    let diff = img.is_differencing();
    for r in &runs {
        let (o, n) = (r.offset as usize, r.len as usize);
        match r.kind {
            RunKind::Present { file_offset } => {
                let mut buf = vec![0u8; n];
                img.read_file(file_offset, &mut buf).unwrap();
                assert!(buf == m.bytes[o..o + n], "bytes differ in run {r:?}");
                assert!(
                    m.held[o / m.lss..(o + n) / m.lss].iter().all(|h| *h),
                    "{r:?}"
                );
            }
            RunKind::Zero => {
                assert!(
                    m.bytes[o..o + n].iter().all(|b| *b == 0),
                    "zero run over data {r:?}"
                );
                if diff {
                    assert!(
                        m.held[o / m.lss..(o + n) / m.lss].iter().all(|h| *h),
                        "{r:?}"
                    );
                }
            }
            RunKind::Transparent => {
                if diff {
                    assert!(
                        m.held[o / m.lss..(o + n) / m.lss].iter().all(|h| !*h),
                        "held sectors transparent {r:?}"
                    );
                } else {
                    assert!(m.bytes[o..o + n].iter().all(|b| *b == 0), "{r:?}");
                }
            }
        }
    }
}

fn no_errors(img: &VhdxImage) {
    let errs: Vec<_> = img
        .check()
        .unwrap()
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errs.is_empty(), "{errs:#?}");
}

fn random_session(img: &mut VhdxImage, m: &mut Model, rng: &mut Rng, ops: usize) {
    let size = img.virtual_size();
    let lss = u64::from(img.logical_sector_size());
    let bs = img.block_size();
    for _ in 0..ops {
        let sectors = size / lss;
        let start = rng.below(sectors);
        // Mostly small writes, sometimes a block or more, sometimes zeroing.
        let max = match rng.below(4) {
            0 => (2 * bs / lss).max(1),
            _ => 16,
        };
        let n = (1 + rng.below(max)).min(sectors - start);
        let (off, len) = (start * lss, n * lss);
        if rng.below(5) == 0 {
            img.zero_sectors(off, len).unwrap();
            m.write(off as usize, &vec![0u8; len as usize]);
        } else {
            let fill = (rng.next_u64() & 0xff) as u8 | 1;
            let data: Vec<u8> = (0..len)
                .map(|i| fill.wrapping_add((i / 512) as u8))
                .collect();
            img.write_sectors(off, &data).unwrap();
            m.write(off as usize, &data);
        }
    }
}

fn exercise(p: CreateParams, seed: u64) -> (Arc<MemStorage>, Model) {
    let mem = Arc::new(MemStorage::new());
    vhdx::create(&*mem, &p).unwrap();
    let size = p.virtual_size;
    let lss = p
        .parent
        .as_ref()
        .map_or(p.logical_sector_size, |x| x.logical_sector_size);
    let diff = p.parent.is_some();
    let mut m = Model::new(size, lss, !diff);
    {
        let img = open(mem.clone(), false);
        assert_eq!(
            img.info().disk_type,
            if diff {
                DiskType::Differencing
            } else {
                p.disk_type
            }
        );
        assert_eq!(img.virtual_size(), size);
        assert_matches(&img, &m);
        no_errors(&img);
    }
    let mut rng = Rng(seed);
    let mut img = open(mem.clone(), true);
    let before = img.identity();
    random_session(&mut img, &mut m, &mut rng, 60);
    assert_ne!(
        img.identity(),
        before,
        "DataWriteGuid must change with the data"
    );
    assert_matches(&img, &m);
    drop(img);
    let img = open(mem.clone(), false);
    assert!(img.header().log_guid.is_nil());
    assert_matches(&img, &m);
    no_errors(&img);
    (mem, m)
}

#[test]
fn create_and_write_every_kind() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for lss in [512u32, 4096] {
        for bs in [MIB as u32, 32 * MIB as u32] {
            for kind in [DiskType::Dynamic, DiskType::Fixed] {
                seed += 1;
                // A size that ends inside a block.
                exercise(params(kind, 70 * MIB + 8 * 4096, bs, lss), seed);
            }
            seed += 1;
            exercise(diff_params(70 * MIB + 8 * 4096, bs, lss), seed);
        }
    }
}

#[test]
fn differencing_creation_records_the_parent() {
    let p = diff_params(64 * MIB, 2 * MIB as u32, 512);
    let mem = Arc::new(MemStorage::new());
    vhdx::create(&*mem, &p).unwrap();
    let img = open(mem, false);
    let parent = p.parent.unwrap();
    let Identity::Vhdx { data_write_guid } = parent.identity else {
        unreachable!()
    };
    assert_eq!(
        img.parent_linkage(),
        Some(formats::params::ParentLinkage::Vhdx {
            parent_linkage: data_write_guid,
            parent_linkage2: None
        })
    );
    let loc = img.parent_locator().unwrap();
    assert!(loc
        .entries
        .contains(&("parent_linkage".into(), format!("{{{data_write_guid}}}"))));
    assert!(loc
        .entries
        .contains(&("relative_path".into(), r".\base.vhdx".into())));
    assert_eq!(
        img.info()
            .details
            .iter()
            .find(|(k, _)| k == "virtual_disk_id")
            .unwrap()
            .1,
        parent.virtual_disk_id.unwrap().to_string()
    );
    // Differencing BAT count: SB blocks x (chunk ratio + 1).
    assert_eq!(img.geometry().total_entries, 2049);
}

#[test]
fn differencing_partial_write_sets_bits_and_whole_zero_hides_parent() {
    let p = diff_params(16 * MIB, MIB as u32, 512);
    let mem = Arc::new(MemStorage::new());
    vhdx::create(&*mem, &p).unwrap();
    let mut img = open(mem.clone(), true);
    img.write_sectors(3 * 512, &[0xab; 1024]).unwrap();
    img.zero_sectors(2 * MIB, MIB).unwrap();
    drop(img);
    let img = open(mem, false);
    let (c, sb) = img.state_counts();
    assert_eq!(c[7], 1, "one PARTIALLY_PRESENT block");
    assert_eq!(c[2], 1, "one ZERO block");
    assert_eq!(sb, 1);
    let mut runs = Vec::new();
    img.map(0, 3 * MIB, &mut runs).unwrap();
    assert_eq!(
        runs[0],
        formats::Run {
            offset: 0,
            len: 1536,
            kind: RunKind::Transparent
        }
    );
    assert!(
        matches!(runs[1].kind, RunKind::Present { .. })
            && runs[1].offset == 1536
            && runs[1].len == 1024
    );
    assert_eq!(runs[2].kind, RunKind::Transparent);
    assert_eq!(
        *runs.last().unwrap(),
        formats::Run {
            offset: 2 * MIB,
            len: MIB,
            kind: RunKind::Zero
        }
    );
    no_errors(&img);
}

/// A writable image over a copy of `base` whose storage fails every write
/// (and length change) after the first `n` from here on; the copy.
fn cut_after(base: &MemStorage, n: u64) -> (Arc<MemStorage>, VhdxImage) {
    let mem = Arc::new(MemStorage::from_vec(base.to_vec()));
    let cut = Arc::new(CutStorage::new(mem.clone()).cutting_set_len());
    let img = open(cut.clone(), true);
    cut.cut_after(n);
    (mem, img)
}

/// What a cut left in `mem`, opened read-only: it reads `old` or `new`
/// and checks clean. The image and its content.
fn survivor(mem: &Arc<MemStorage>, old: &[u8], new: &[u8], what: &str) -> (VhdxImage, Vec<u8>) {
    let ro = open(mem.clone(), false);
    let c = content(&ro);
    assert!(c == old || c == new, "{what}: neither old nor new");
    no_errors(&ro);
    (ro, c)
}

fn content(img: &VhdxImage) -> Vec<u8> {
    let mut out = vec![0u8; img.virtual_size() as usize];
    let mut runs = Vec::new();
    img.map(0, img.virtual_size(), &mut runs).unwrap();
    for r in runs {
        if let RunKind::Present { file_offset } = r.kind {
            img.read_file(
                file_offset,
                &mut out[r.offset as usize..(r.offset + r.len) as usize],
            )
            .unwrap();
        }
    }
    out
}

/// Cut the write sequence of one write_sectors after every possible number
/// of writes: the reopened file shows old or new content and checks clean;
/// the cut right after the commit header leaves a pending log that the next
/// open replays.
#[test]
fn every_cut_point_of_a_write_is_old_or_new() {
    for diff in [false, true] {
        let p = if diff {
            diff_params(8 * MIB, MIB as u32, 512)
        } else {
            params(DiskType::Dynamic, 8 * MIB, MIB as u32, 512)
        };
        let base = Arc::new(MemStorage::new());
        vhdx::create(&*base, &p).unwrap();
        {
            let mut img = open(base.clone(), true);
            img.write_sectors(0, &[1u8; 4096]).unwrap();
        }
        let old = content(&open(base.clone(), false));
        let data = vec![0x5au8; 3 * 512];
        let mut new = old.clone();
        new[MIB as usize + 512..MIB as usize + 2048].copy_from_slice(&data);
        let mut saw_pending = false;
        let mut n = 0;
        loop {
            let (mem, mut img) = cut_after(&base, n);
            let done = img.write_sectors(MIB + 512, &data).is_ok();
            drop(img);
            let (ro, c) = survivor(&mem, &old, &new, &format!("cut after {n} writes"));
            if !ro.header().log_guid.is_nil() {
                saw_pending = true;
                assert!(c == new, "a pending log must hold the new content");
                let before = mem.to_vec();
                drop(ro);
                assert!(mem.to_vec() == before);
                let rw = open(mem.clone(), true);
                assert!(rw.header().log_guid.is_nil());
                assert!(content(&rw) == new);
                no_errors(&rw);
            }
            if done {
                assert!(c == new);
                break;
            }
            n += 1;
        }
        assert!(saw_pending, "no cut point left a pending log");
    }
}

#[test]
fn bad_parameters_are_refused() {
    let mem = MemStorage::new();
    assert!(vhdx::create(&mem, &params(DiskType::Dynamic, 1000, MIB as u32, 512)).is_err());
    assert!(vhdx::create(&mem, &params(DiskType::Dynamic, MIB, 3 * MIB as u32, 512)).is_err());
    assert!(vhdx::create(&mem, &params(DiskType::Dynamic, MIB, 512 * MIB as u32, 512)).is_err());
    assert!(vhdx::create(&mem, &params(DiskType::Dynamic, MIB, MIB as u32, 1024)).is_err());
    assert!(vhdx::create(
        &mem,
        &params(DiskType::Dynamic, (64 << 40) + 512, MIB as u32, 512)
    )
    .is_err());
    assert_eq!(mem.len().unwrap(), 0);
    let mut img = open(
        Arc::new({
            let m = MemStorage::new();
            vhdx::create(&m, &params(DiskType::Dynamic, 4 * MIB, MIB as u32, 512)).unwrap();
            m
        }),
        false,
    );
    assert!(
        img.write_sectors(0, &[0u8; 512]).is_err(),
        "read-only open must refuse writes"
    );
}

fn qemu_img() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/bin/qemu-img");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping qemu-img interop: qemu-img not found");
        None
    }
}

/// Run qemu-img `q` with `args`, then `files`; it must succeed.
fn qemu_img_ok(q: &std::path::Path, args: &[&str], files: &[&std::path::Path]) {
    testdata::command_ok(
        std::process::Command::new(q).args(args).args(files),
        &format!("qemu-img {args:?} {files:?}"),
    );
}

#[test]
fn qemu_img_checks_and_compares() {
    let Some(q) = qemu_img() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 77;
    for kind in [DiskType::Dynamic, DiskType::Fixed] {
        for bs in [MIB as u32, 32 * MIB as u32] {
            seed += 1;
            let (mem, m) = exercise(params(kind, 70 * MIB + 8 * 4096, bs, 512), seed);
            let img = dir.path().join(format!("t{seed}.vhdx"));
            let raw = dir.path().join(format!("t{seed}.raw"));
            std::fs::write(&img, mem.to_vec()).unwrap();
            std::fs::write(&raw, &m.bytes).unwrap();
            qemu_img_ok(&q, &["check", "-f", "vhdx"], &[&img]);
            qemu_img_ok(&q, &["compare", "-f", "vhdx", "-F", "raw"], &[&img, &raw]);
        }
    }
}

/// A file qemu wrote: we read what qemu says it holds.
#[test]
fn reads_what_qemu_writes() {
    let Some(q) = qemu_img() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.vhdx");
    let run = |args: &[&str]| qemu_img_ok(&q, args, &[]);
    run(&[
        "create",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        img.to_str().unwrap(),
        "20M",
    ]);
    let qio = std::path::Path::new("/usr/bin/qemu-io");
    if qio.exists() {
        let out = std::process::Command::new(qio)
            .args([
                "-f",
                "vhdx",
                "-c",
                "write -P 0xab 1M 64k",
                "-c",
                "write -z 4M 1M",
            ])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let s: Arc<dyn Storage> = Arc::new(formats::storage::FileStorage::new(
        std::fs::File::open(&img).unwrap(),
    ));
    let v = open(s, false);
    let c = content(&v);
    if qio.exists() {
        assert!(c[MIB as usize..MIB as usize + 65536]
            .iter()
            .all(|b| *b == 0xab));
        assert!(c[..MIB as usize].iter().all(|b| *b == 0));
    }
    no_errors(&v);
}

// ---- the merge batch ----

use formats::MergeBatch;

/// A new dynamic (or differencing) image with 1 MiB blocks and 512-byte
/// sectors, in memory.
fn created_1m_blocks(diff: bool, size: u64) -> Arc<MemStorage> {
    let p = if diff {
        diff_params(size, MIB as u32, 512)
    } else {
        params(DiskType::Dynamic, size, MIB as u32, 512)
    };
    let mem = Arc::new(MemStorage::new());
    vhdx::create(&*mem, &p).unwrap();
    mem
}

/// A base image with some content: FULLY_PRESENT, ZERO and (for a child)
/// PARTIALLY_PRESENT blocks.
fn prepared(diff: bool, size: u64) -> (Arc<MemStorage>, Model) {
    let mem = created_1m_blocks(diff, size);
    let mut m = Model::new(size, 512, !diff);
    let mut img = open(mem.clone(), true);
    for (off, len, v) in [
        (0u64, 2 * MIB, 1u8),
        (3 * MIB + 512, 4096, 2),
        (5 * MIB, 1024, 3),
    ] {
        let d = vec![v; len as usize];
        img.write_sectors(off, &d).unwrap();
        m.write(off as usize, &d);
    }
    img.zero_sectors(6 * MIB, MIB).unwrap();
    m.write(6 * MIB as usize, &vec![0; MIB as usize]);
    drop(img);
    (mem, m)
}

/// Stage a mix of writes and zeros on `b`, mirrored into `m`.
fn stage(b: &mut dyn MergeBatch, m: &mut Model) -> formats::Result<()> {
    let ops: [(u64, u64, Option<u8>); 7] = [
        (512, 1024, Some(0x11)),    // inside a FULLY_PRESENT block: copy on write
        (3 * MIB, 512, Some(0x22)), // next to existing sectors of a partial block
        (5 * MIB + 4096, 8192, Some(0x33)),
        (6 * MIB + 8192, 4096, Some(0x44)), // into a ZERO block: rest stays zero
        (7 * MIB, MIB, None),               // whole block zeroed
        (MIB + 4096, 4096, None),           // partial zero inside a present block
        (9 * MIB - 512, 1024, Some(0x55)),  // across a block boundary
    ];
    for (off, len, v) in ops {
        match v {
            Some(v) => {
                let d = vec![v; len as usize];
                b.write(off, &d)?;
                m.write(off as usize, &d);
            }
            None => {
                b.zero(off, len)?;
                m.write(off as usize, &vec![0; len as usize]);
            }
        }
    }
    Ok(())
}

/// `img`'s batch; with `journal`, partly replaced held blocks go through
/// the log (`HeldBlocks::Journal`, the room a merge would reserve).
fn begin(img: &mut VhdxImage, journal: bool) -> formats::Result<Box<dyn MergeBatch + '_>> {
    let mut b = img.begin_batch()?;
    if journal {
        b.held_blocks(HeldBlocks::Journal);
        b.expect_fresh(16 * MIB)?;
    }
    Ok(b)
}

#[test]
fn batch_commit_and_abandon() {
    for (diff, journal) in [(false, false), (true, false), (false, true), (true, true)] {
        let (mem, old) = prepared(diff, 16 * MIB);
        let old_bytes = mem.to_vec();
        // Dropped before commit: the old image, checking clean.
        {
            let mut img = open(mem.clone(), true);
            let mut m = old.clone();
            let mut b = begin(&mut img, journal).unwrap();
            stage(&mut *b, &mut m).unwrap();
            b.prepare().unwrap();
            drop(b);
            assert_matches(&img, &old);
        }
        let ro = open(mem.clone(), false);
        assert_matches(&ro, &old);
        no_errors(&ro);
        drop(ro);
        // Live bytes were never written by staging: past the header slots
        // (FileWriteGuid updates) the file is unchanged, and the staged space
        // was given back.
        let now = mem.to_vec();
        assert_eq!(now.len(), old_bytes.len());
        assert!(now[0x30000..] == old_bytes[0x30000..]);

        // Committed: the new content and the new identity.
        let mut img = open(mem.clone(), true);
        let mut m = old.clone();
        let g = uuid::Uuid::new_v4();
        {
            let mut b = begin(&mut img, journal).unwrap();
            stage(&mut *b, &mut m).unwrap();
            b.prepare().unwrap();
            b.commit(Identity::Vhdx { data_write_guid: g }).unwrap();
        }
        assert_eq!(img.identity(), Identity::Vhdx { data_write_guid: g });
        assert_matches(&img, &m);
        // The commit adopts its BAT in memory; it must be what the file says.
        let adopted = img.bat().clone();
        drop(img);
        let ro = open(mem.clone(), false);
        assert!(&adopted == ro.bat(), "adopted BAT differs from disk");
        assert!(ro.header().log_guid.is_nil());
        assert_eq!(ro.identity(), Identity::Vhdx { data_write_guid: g });
        assert_matches(&ro, &m);
        no_errors(&ro);
    }
}

#[test]
fn batch_grow_in_place_and_with_a_moved_bat() {
    for (diff, new_size) in [
        (false, 40 * MIB),
        (true, 40 * MIB),
        (false, 300u64 << 30),
        (true, 300u64 << 30),
    ] {
        let (mem, old) = prepared(diff, 16 * MIB);
        let mut img = open(mem.clone(), true);
        // Where `info` says the BAT region is.
        let bat_region = |img: &VhdxImage| {
            img.info()
                .details
                .iter()
                .find(|(k, _)| k == "bat_region")
                .unwrap()
                .1
                .clone()
        };
        let old_bat_region = bat_region(&img);
        let mut m = old.clone();
        {
            let mut b = img.begin_batch().unwrap();
            b.grow(new_size).unwrap();
            stage(&mut *b, &mut m).unwrap();
            let tail = vec![0x77u8; 4096];
            b.write(new_size - 4096, &tail).unwrap();
            b.prepare().unwrap();
            b.commit(Identity::Vhdx {
                data_write_guid: uuid::Uuid::new_v4(),
            })
            .unwrap();
            // Model of the grown disk: only check the first 16 MiB and the tail.
            m.bytes.truncate(16 * MIB as usize);
        }
        drop(img);
        let ro = open(mem.clone(), false);
        assert_eq!(ro.virtual_size(), new_size);
        let moved = bat_region(&ro) != old_bat_region;
        assert_eq!(
            moved,
            new_size > (1u64 << 30),
            "BAT moves only when it must"
        );
        let mut buf = vec![0u8; 4096];
        let mut runs = Vec::new();
        ro.map(new_size - 4096, 4096, &mut runs).unwrap();
        let RunKind::Present { file_offset } = runs[0].kind else {
            panic!("{runs:?}")
        };
        ro.read_file(file_offset, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0x77));
        let mut first = Vec::new();
        ro.map(0, 16 * MIB, &mut first).unwrap();
        for r in first {
            let (o, n) = (r.offset as usize, r.len as usize);
            match r.kind {
                RunKind::Present { file_offset } => {
                    let mut b = vec![0u8; n];
                    ro.read_file(file_offset, &mut b).unwrap();
                    assert!(b == m.bytes[o..o + n]);
                }
                RunKind::Zero => assert!(m.bytes[o..o + n].iter().all(|b| *b == 0)),
                RunKind::Transparent => {
                    assert!(!diff || m.held[o / 512..(o + n) / 512].iter().all(|h| !*h))
                }
            }
        }
        no_errors(&ro);
        // A grown file is still a valid VHDX for qemu (base images only).
        if let (false, Some(q)) = (diff, qemu_img()) {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("g.vhdx");
            std::fs::write(&f, mem.to_vec()).unwrap();
            qemu_img_ok(&q, &["check", "-f", "vhdx"], &[&f]);
        }
    }
}

/// An entry too large for the 1 MiB log goes to a temporary log area at the
/// end of the file, which is gone after the commit.
#[test]
fn batch_with_a_large_entry_uses_a_temporary_log() {
    let size = 200u64 << 30;
    let mem = Arc::new(MemStorage::new());
    vhdx::create(&*mem, &diff_params(size, MIB as u32, 512)).unwrap();
    let mut img = open(mem.clone(), true);
    let len_before = mem.len().unwrap();
    {
        let mut b = img.begin_batch().unwrap();
        // Every 512th block zeroed: one BAT sector each, ~400 sectors.
        for k in 0..400u64 {
            b.zero(k * 512 * MIB, MIB).unwrap();
        }
        b.prepare().unwrap();
        b.commit(Identity::Vhdx {
            data_write_guid: uuid::Uuid::new_v4(),
        })
        .unwrap();
    }
    assert_eq!(img.header().log_offset, MIB);
    assert_eq!(img.header().log_length as u64, MIB);
    assert_eq!(
        mem.len().unwrap(),
        len_before,
        "temporary log area not truncated"
    );
    drop(img);
    let ro = open(mem.clone(), false);
    assert_eq!(ro.state_counts().0[2], 400);
    no_errors(&ro);
}

/// Cut the whole batch (staging and commit) after every number of writes:
/// the file always opens as the complete old or the complete new image.
#[test]
fn batch_every_cut_point_is_old_or_new() {
    for (diff, journal) in [(false, false), (true, false), (false, true), (true, true)] {
        let (base, _) = prepared(diff, 16 * MIB);
        let old = content(&open(base.clone(), false));
        let new = {
            let mem = Arc::new(MemStorage::from_vec(base.to_vec()));
            let mut img = open(mem.clone(), true);
            let mut m = Model::new(16 * MIB, 512, true);
            let mut b = begin(&mut img, journal).unwrap();
            stage(&mut *b, &mut m).unwrap();
            b.commit(Identity::Vhdx {
                data_write_guid: uuid::Uuid::new_v4(),
            })
            .unwrap();
            img.compact().unwrap();
            drop(img);
            (content(&open(mem.clone(), false)), mem.len().unwrap())
        };
        let (new, new_len) = new;
        // After any cut, a writable open (replaying what the cut left) and
        // a compaction leave the file no longer than the image before or
        // after (a journal's log area left named by the header goes).
        let most = new_len.max(base.len().unwrap());
        assert!(old != new);
        let mut n = 0;
        loop {
            let (mem, mut img) = cut_after(&base, n);
            let mut m = Model::new(16 * MIB, 512, true);
            let done = (|| -> formats::Result<()> {
                let mut b = begin(&mut img, journal)?;
                stage(&mut *b, &mut m)?;
                b.prepare()?;
                b.commit(Identity::Vhdx {
                    data_write_guid: uuid::Uuid::new_v4(),
                })
            })()
            .is_ok();
            drop(img);
            let (ro, c) = survivor(
                &mem,
                &old,
                &new,
                &format!("diff={diff} journal={journal}: cut after {n} writes"),
            );
            drop(ro);
            let mut rw = open(mem.clone(), true);
            rw.compact().unwrap();
            assert_eq!(content(&rw), c);
            drop(rw);
            let len = mem.len().unwrap();
            assert!(
                len <= most,
                "diff={diff} journal={journal}: cut after {n} writes, compacted: {len} bytes > {most}"
            );
            if done {
                assert!(c == new);
                break;
            }
            n += 1;
        }
    }
}

/// The first block at or after `offset` whose map is not wholly
/// transparent: what `next_held` must find, computed the slow way.
fn first_held_by_map(img: &VhdxImage, offset: u64) -> Option<u64> {
    let bs = img.block_size();
    let mut runs = Vec::new();
    (offset / bs..img.virtual_size().div_ceil(bs)).find_map(|b| {
        runs.clear();
        let len = bs.min(img.virtual_size() - b * bs);
        img.map(b * bs, len, &mut runs).unwrap();
        runs.iter()
            .any(|r| r.kind != RunKind::Transparent)
            .then_some((b * bs).max(offset))
    })
}

/// A 1 MiB-block image of `size` with data in a few blocks on either side
/// of the sector-bitmap entries (after every 4096 blocks), `extra` writes
/// (block, length) and one zeroed block, opened read-only.
fn scattered_1m_blocks(diff: bool, size: u64, extra: &[(u64, u64)]) -> VhdxImage {
    let mem = created_1m_blocks(diff, size);
    let mut img = open(mem.clone(), true);
    let writes = [(10u64, 4096u64), (4095, MIB), (4097, 4096), (8194, 512)];
    for &(block, len) in extra.iter().chain(&writes) {
        img.write_sectors(block * MIB, &vec![7u8; len as usize])
            .unwrap();
    }
    img.zero_sectors(6000 * MIB, MIB).unwrap();
    drop(img);
    open(mem, false)
}

/// Mapping a long range skips runs of empty blocks at once; the runs must
/// be those of the blocks mapped one at a time, joined.
#[test]
fn a_long_map_equals_its_blocks_mapped_one_by_one() {
    let size = 8 * 1024 * MIB + 3 * MIB;
    for diff in [false, true] {
        let img = scattered_1m_blocks(diff, size, &[(0, 512)]);
        let bs = img.block_size();
        for (from, to) in [
            (0, size),
            (MIB / 2, size - 512),
            (11 * MIB, 4095 * MIB + 4096),
        ] {
            let mut whole = Vec::new();
            img.map(from, to - from, &mut whole).unwrap();
            let mut joined = Vec::new();
            let mut pos = from;
            while pos < to {
                let n = (bs - pos % bs).min(to - pos);
                let mut one = Vec::new();
                img.map(pos, n, &mut one).unwrap();
                for r in one {
                    push_run(&mut joined, r);
                }
                pos += n;
            }
            assert_eq!(whole, joined, "diff={diff}, [{from:#x}, {to:#x})");
        }
    }
}

#[test]
fn next_held_scans_across_sector_bitmap_entries_like_the_map() {
    // 1 MiB blocks, 512-byte sectors: 4096 payload entries per chunk, so
    // the BAT interleaves a sector-bitmap entry after every 4096 blocks.
    let size = 8 * 1024 * MIB + 3 * MIB;
    for diff in [false, true] {
        let img = scattered_1m_blocks(diff, size, &[]);
        let probes = [
            0,
            10 * MIB,
            10 * MIB + 512,
            11 * MIB,
            4095 * MIB + 1,
            4096 * MIB,
            4097 * MIB + MIB / 2,
            4098 * MIB,
            6000 * MIB,
            6001 * MIB,
            8194 * MIB + 512,
            size - 1,
            size,
            size + MIB,
        ];
        for at in probes {
            assert_eq!(
                img.next_held(at).unwrap(),
                first_held_by_map(&img, at),
                "diff={diff}, offset {at:#x}"
            );
        }
    }
}

#[test]
fn a_writable_reopen_keeps_the_content_and_the_bat() {
    let (mem, m) = prepared(true, 16 * MIB);
    let ro: Box<dyn Image> = Box::new(open(mem.clone(), false));
    let on_disk = open(mem.clone(), false).bat().clone();
    let rw = ro
        .reopen(
            None,
            OpenOptions {
                writable: true,
                ignore_checksums: false,
            },
        )
        .unwrap();
    let mut runs = Vec::new();
    rw.map(0, rw.virtual_size(), &mut runs).unwrap();
    drop(rw);
    // Written through the writable reopen: the new FileWriteGuid is there.
    let again = open(mem, false);
    assert!(&on_disk == again.bat());
    assert_matches(&again, &m);
    let mut again_runs = Vec::new();
    again.map(0, again.virtual_size(), &mut again_runs).unwrap();
    assert_eq!(runs, again_runs);
}

/// The journal (`HeldBlocks::Journal`) over a disk whose every block is
/// held: whole sectors, sectors written in part (512-byte sectors inside
/// 4 KiB log sectors), a sector written in part again after the log entry
/// holding it went out (its latest copy read back from the log area), and
/// out of order. The content equals the model's, nothing moves, and the
/// file ends where it was.
#[test]
fn journal_rewrites_and_partial_sectors_land_in_place() {
    for diff in [false, true] {
        let size = 16 * MIB;
        let mem = created_1m_blocks(diff, size);
        let mut m = Model::new(size, 512, !diff);
        let mut img = open(mem.clone(), true);
        let full: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
        img.write_sectors(0, &full).unwrap();
        m.write(0, &full);
        drop(img);
        let len_before = mem.len().unwrap();
        let mut img = open(mem.clone(), true);
        // Most of blocks 0..6 (a whole block would be rebuilt, not
        // journaled): many log entries (126 sectors each for 1 MiB
        // blocks) of whole sectors.
        let mut ops: Vec<(u64, u64, u8)> =
            (0..6).map(|k| (k * MIB + 4096, MIB - 8192, 0x21)).collect();
        ops.extend([
            // Block 0's first sectors went out with the first entry: the
            // partly written 4 KiB sector is read back from the log area.
            (4096 + 1024, 512, 0x22),
            // Out of order, inside one 4 KiB sector of block 8.
            (8 * MIB + 1536, 512, 0x23),
            (8 * MIB, 4096, 0x24),
            (8 * MIB + 512, 512, 0x25),
            // Unaligned run across a 4 KiB edge and a block edge.
            (10 * MIB - 2560, 5120, 0x26),
            // The same bytes twice: the later copy wins.
            (12 * MIB + 4096, 8192, 0x27),
            (12 * MIB + 4096, 8192, 0x28),
        ]);
        {
            let mut b = begin(&mut img, true).unwrap();
            for &(off, len, v) in &ops {
                let d = vec![v; len as usize];
                b.write(off, &d).unwrap();
                m.write(off as usize, &d);
            }
            b.prepare().unwrap();
            b.commit(Identity::Vhdx {
                data_write_guid: uuid::Uuid::new_v4(),
            })
            .unwrap();
        }
        assert_matches(&img, &m);
        let report = img.compact().unwrap();
        assert_eq!(report.moved, 0, "diff={diff}: the journal moved blocks");
        drop(img);
        assert_eq!(mem.len().unwrap(), len_before, "diff={diff}");
        let ro = open(mem.clone(), false);
        assert!(ro.header().log_guid.is_nil());
        assert_matches(&ro, &m);
        no_errors(&ro);
    }
}

/// A VHDX whose empty log is 0 bytes long (legal while LogGuid is zero),
/// its held blocks rebuilt: the commit entry goes to a temporary log area,
/// and the compaction after it, which cannot commit a move through that
/// log, leaves the merged content instead of failing after the commit
/// (the fuzz finding crash-20d6c12 under `--held-blocks rebuild`).
#[test]
fn rebuild_and_compact_with_a_zero_byte_log() {
    let (mem, old) = prepared(false, 16 * MIB);
    let mut bytes = mem.to_vec();
    testdata::schema::vhdx_headers(&mut bytes, |h| h.log_length = 0);
    let mem = Arc::new(MemStorage::from_vec(bytes));
    let mut img = open(mem.clone(), true);
    let mut m = old.clone();
    {
        let mut b = img.begin_batch().unwrap();
        b.held_blocks(HeldBlocks::Rebuild);
        b.expect_fresh(16 * MIB).unwrap();
        stage(&mut *b, &mut m).unwrap();
        b.prepare().unwrap();
        b.commit(Identity::Vhdx {
            data_write_guid: uuid::Uuid::new_v4(),
        })
        .unwrap();
    }
    img.compact().unwrap();
    assert_matches(&img, &m);
    drop(img);
    let ro = open(mem, false);
    assert_eq!(ro.header().log_length, 0);
    assert_matches(&ro, &m);
    no_errors(&ro);
}
