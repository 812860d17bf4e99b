//! The VHDX driver against real images from other tools
//! (../shared/testdata/real, expected values from its README).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::params::{DiskType, Identity, OpenOptions, ParentLinkage, PathHint};
use formats::storage::FileStorage;
use formats::vhdx::{bat, VhdxImage};
use formats::{Image, Layer, RunKind, Storage};
use sha2::{Digest, Sha256};

/// A private copy of the real image `file` (found compressed or not in
/// ../shared/testdata/real) in a temp dir; the dir guard and the path.
fn unpack(file: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let name = file.trim_end_matches(".gz").trim_end_matches(".bz2");
    let p = testdata::real_image_copy(name, dir.path())?;
    Some((dir, p))
}

/// `unpack`, then the copy opened read-only (the dir guard and the image).
fn opened(file: &str) -> Option<(tempfile::TempDir, VhdxImage)> {
    let (d, p) = unpack(file)?;
    Some((d, open(&p, false)))
}

fn storage(path: &Path, writable: bool) -> Arc<dyn Storage> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .unwrap();
    Arc::new(FileStorage::new(f))
}

fn open(path: &Path, writable: bool) -> VhdxImage {
    VhdxImage::open(
        path.file_name().unwrap().to_str().unwrap(),
        storage(path, writable),
        OpenOptions {
            writable,
            ignore_checksums: false,
        },
    )
    .unwrap()
}

fn file_sha(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of the whole virtual disk (this layer alone; below it zeros).
fn virtual_sha(img: &VhdxImage) -> String {
    let mut h = Sha256::new();
    let zeros = vec![0u8; 4 << 20];
    let mut buf = vec![0u8; 4 << 20];
    let size = img.virtual_size();
    let mut off = 0;
    let mut runs = Vec::new();
    while off < size {
        let n = (4u64 << 20).min(size - off);
        runs.clear();
        img.map(off, n, &mut runs).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), n);
        for r in &runs {
            match r.kind {
                RunKind::Present { file_offset } => {
                    img.read_file(file_offset, &mut buf[..r.len as usize])
                        .unwrap();
                    h.update(&buf[..r.len as usize]);
                }
                _ => h.update(&zeros[..r.len as usize]),
            }
        }
        off += n;
    }
    hex(&h.finalize())
}

fn counts(img: &VhdxImage) -> [u64; 8] {
    img.state_counts().0
}

fn assert_clean_check(img: &VhdxImage) {
    let errs: Vec<_> = img
        .check()
        .unwrap()
        .into_iter()
        .filter(|f| f.severity == formats::Severity::Error)
        .collect();
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn fixed_vhdx() {
    let Some((_d, img)) = opened("fixed.vhdx.gz") else {
        return;
    };
    let info = img.info();
    assert_eq!(info.disk_type, DiskType::Fixed);
    assert_eq!(info.virtual_size, 10485760);
    assert_eq!(info.block_size, 2 << 20);
    assert_eq!(
        (info.logical_sector_size, info.physical_sector_size),
        (512, 4096)
    );
    assert_eq!(
        virtual_sha(&img),
        "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"
    );
    assert_clean_check(&img);
}

#[test]
fn dynamic_vhdx() {
    let Some((_d, img)) = opened("dynamic.vhdx.gz") else {
        return;
    };
    let info = img.info();
    assert_eq!(info.disk_type, DiskType::Dynamic);
    assert_eq!(info.virtual_size, 10485760);
    assert_eq!(info.block_size, 32 << 20);
    assert_eq!(
        (info.logical_sector_size, info.physical_sector_size),
        (512, 4096)
    );
    assert_eq!(
        virtual_sha(&img),
        "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"
    );
    assert_clean_check(&img);
    assert!(img.parent_locator().is_none() && img.parent_linkage().is_none());
}

#[test]
fn btrfs_vhdx() {
    let Some((_d, img)) = opened("btrfs.vhdx.gz") else {
        return;
    };
    assert_eq!(img.virtual_size(), 1 << 30);
    let c = counts(&img);
    assert_eq!(
        (
            c[bat::PAYLOAD_FULLY_PRESENT as usize],
            c[bat::PAYLOAD_ZERO as usize],
            c[bat::PAYLOAD_NOT_PRESENT as usize]
        ),
        (2, 1, 29)
    );
    assert_eq!(
        virtual_sha(&img),
        "0b959f9cb4e18348ad8b646f152178282542c8304f02fddf765e3fd1a1de6864"
    );
    assert_clean_check(&img);
}

#[test]
fn iotest_dynamic_1g() {
    let Some((_d, img)) = opened("iotest-dynamic-1G.vhdx.bz2") else {
        return;
    };
    assert_eq!(img.virtual_size(), 1 << 30);
    assert_eq!(img.block_size(), 32 << 20);
    assert_eq!(
        virtual_sha(&img),
        "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"
    );
    assert_clean_check(&img);
}

#[test]
fn lvm2_counts() {
    let Some((_d, img)) = opened("lvm2.vhdx.gz") else {
        return;
    };
    assert_eq!(img.virtual_size(), 10737418240);
    let c = counts(&img);
    assert_eq!(c[bat::PAYLOAD_FULLY_PRESENT as usize], 18);
    assert_eq!(c[bat::PAYLOAD_ZERO as usize], 39);
    assert_eq!(c[bat::PAYLOAD_UNMAPPED as usize], 25);
    assert_eq!(c[bat::PAYLOAD_NOT_PRESENT as usize], 238);
    assert_clean_check(&img);
}

#[test]
#[ignore = "hashes 10 GiB; run with --ignored"]
fn lvm2_full_hash() {
    let Some((_d, p)) = unpack("lvm2.vhdx.gz") else {
        return;
    };
    assert_eq!(
        virtual_sha(&open(&p, false)),
        "f7dc6812a3b12a35f3ec895ce981bd59ff4558270fc80cd812c9cd522bff1295"
    );
}

#[test]
fn swap_opens() {
    let Some((_d, img)) = opened("swap.vhdx.gz") else {
        return;
    };
    assert_eq!(img.virtual_size(), 10737418240);
    assert_eq!(img.block_size(), 32 << 20);
    assert_clean_check(&img);
}

#[test]
#[ignore = "hashes 10 GiB; run with --ignored"]
fn swap_full_hash() {
    let Some((_d, p)) = unpack("swap.vhdx.gz") else {
        return;
    };
    assert_eq!(
        virtual_sha(&open(&p, false)),
        "60dd30b4c74361427d1089510cabb36e2eeda0cc4747f467ea43173acd358c49"
    );
}

#[test]
fn differencing_avhdx() {
    let Some((_d, img)) = opened("differencing.avhdx.gz") else {
        return;
    };
    let info = img.info();
    assert_eq!(info.disk_type, DiskType::Differencing);
    assert_eq!(info.virtual_size, 8589934592);
    assert_eq!(info.block_size, 2 << 20);
    assert_eq!(img.header().sequence_number.max(6), 7);
    let Identity::Vhdx { data_write_guid } = img.identity() else {
        panic!()
    };
    assert!(data_write_guid.to_string().starts_with("b298d413"));
    assert!(img
        .header()
        .file_write_guid
        .to_string()
        .starts_with("ccbd40d9"));
    assert_eq!(
        img.parent_linkage(),
        Some(ParentLinkage::Vhdx {
            parent_linkage: uuid::uuid!("ff34003b-11ed-4cf8-a166-b2be05e20b80"),
            parent_linkage2: None,
        })
    );
    let loc = img.parent_locator().unwrap();
    let get = |k: &str| {
        loc.entries
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("parent_linkage2").as_deref(),
        Some("{00000000-0000-0000-0000-000000000000}")
    );
    assert!(get("relative_path")
        .unwrap()
        .starts_with(r".\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx"));
    assert!(get("absolute_win32_path").unwrap().starts_with(
        r"C:\Users\Public\Documents\Hyper-V\Virtual hard disks\Generation 1_49C4BAF3-"
    ));
    assert!(get("volume_path")
        .unwrap()
        .starts_with(r"\\?\Volume{0eba351e-"));
    assert!(matches!(loc.hints[0], PathHint::Relative(_)));
    assert!(matches!(loc.hints[1], PathHint::Volume(_)));
    assert!(matches!(loc.hints[2], PathHint::AbsoluteWindows(_)));
    let (c, sb) = img.state_counts();
    assert_eq!(c[bat::PAYLOAD_PARTIALLY_PRESENT as usize], 32);
    assert_eq!(c[bat::PAYLOAD_NOT_PRESENT as usize], 4096 - 32);
    assert_eq!(sb, 2);
    assert_eq!(img.geometry().total_entries, 4096 + 2);
    // Present sectors, through map().
    let mut runs = Vec::new();
    img.map(0, img.virtual_size(), &mut runs).unwrap();
    let present: u64 = runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Present { .. }))
        .map(|r| r.len)
        .sum();
    assert_eq!(present / 512, 6200);
    let covers = |s: u64| {
        runs.iter().any(|r| {
            matches!(r.kind, RunKind::Present { .. })
                && r.offset <= s * 512
                && s * 512 < r.offset + r.len
        })
    };
    assert!(covers(2048) && covers(2055) && !covers(2056) && !covers(2047));
    assert!(covers(1050624) && covers(1050655) && !covers(1050656));
    // Block 1027 at file offset 8 MiB, block 0 at 26 MiB.
    assert_eq!(
        img.bat()
            .get(img.geometry().payload_index(1027) as usize)
            .unwrap()
            .file_offset(),
        8 << 20
    );
    assert_eq!(img.bat().get(0).unwrap().file_offset(), 26 << 20);
    assert_clean_check(&img);
}

#[test]
fn log_replay_read_only_leaves_file_untouched() {
    let Some((_d, p)) = unpack("vhdx-log-replay.vhdx.gz") else {
        return;
    };
    let before = file_sha(&p);
    {
        let img = open(&p, false);
        assert_eq!(img.virtual_size(), 1 << 30);
        let c = counts(&img);
        assert_eq!(
            (
                c[bat::PAYLOAD_FULLY_PRESENT as usize],
                c[bat::PAYLOAD_ZERO as usize]
            ),
            (1, 3)
        );
        assert_eq!(
            virtual_sha(&img),
            "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"
        );
        assert!(img.open_findings().iter().any(|f| f.structure == "log"));
        assert_clean_check(&img);
    }
    assert_eq!(file_sha(&p), before, "a read-only open changed the file");
}

#[test]
fn log_replay_writable_cleans_the_log() {
    let Some((_d, p)) = unpack("vhdx-log-replay.vhdx.gz") else {
        return;
    };
    {
        let img = open(&p, true);
        assert!(img.header().log_guid.is_nil());
        assert_eq!(
            virtual_sha(&img),
            "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"
        );
    }
    let img = open(&p, false);
    assert!(img.header().log_guid.is_nil());
    assert!(!img
        .open_findings()
        .iter()
        .any(|f| f.kind == formats::CorruptionKind::PendingLog));
    assert_eq!(
        virtual_sha(&img),
        "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"
    );
    assert_clean_check(&img);
}

/// Hash of the 10 GiB dirty-log image computed from its allocated blocks:
/// everything else must be zeros, so the hash is fed zeros in bulk.
#[test]
fn dirtylog_10g_read_only_and_writable() {
    let Some((_d, p)) = unpack("iotest-dirtylog-10G-4M.vhdx.bz2") else {
        return;
    };
    let before = file_sha(&p);
    let expected = "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f";
    let img = open(&p, false);
    assert_eq!(img.virtual_size(), 10737418240);
    assert_eq!(img.block_size(), 1 << 20);
    assert_eq!(
        (img.logical_sector_size(), img.info().physical_sector_size),
        (512, 512)
    );
    assert_eq!(virtual_sha(&img), expected);
    assert_clean_check(&img);
    drop(img);
    assert_eq!(file_sha(&p), before);
    let replayed_bat = img_bat(&open(&p, false));
    let img = open(&p, true);
    assert!(img.header().log_guid.is_nil());
    drop(img);
    let img = open(&p, false);
    assert!(img.header().log_guid.is_nil());
    // Same BAT as the in-memory replay, now read from disk (the full hash
    // of 10 GiB was checked once above).
    assert_eq!(img_bat(&img), replayed_bat);
    assert_clean_check(&img);
}

fn img_bat(img: &VhdxImage) -> Vec<u64> {
    img.bat().iter().map(|e| e.raw).collect()
}

#[test]
fn structures_write_back_byte_identical() {
    use formats::vhdx::{
        header, metadata_table, region_table, FileIdentifier, MetadataTable, RegionTable,
        VhdxHeader,
    };
    for f in [
        "fixed.vhdx.gz",
        "dynamic.vhdx.gz",
        "differencing.avhdx.gz",
        "iotest-dirtylog-10G-4M.vhdx.bz2",
    ] {
        let Some((_d, p)) = unpack(f) else { return };
        let bytes = std::fs::read(&p).unwrap();
        let id = FileIdentifier::decode(&bytes).unwrap();
        assert!(id.encode() == bytes[..520]);
        for off in header::SLOT_OFFSETS {
            let raw = &bytes[off as usize..off as usize + 4096];
            let (h, ok) = VhdxHeader::parse(raw).unwrap();
            assert!(ok, "{f}");
            assert!(h.to_bytes() == raw, "{f}: header");
        }
        for off in region_table::COPY_OFFSETS {
            let raw = &bytes[off as usize..off as usize + region_table::SIZE];
            let (t, _) = RegionTable::parse(raw, false).unwrap();
            assert!(t.to_bytes() == raw, "{f}: region table");
            let m = t.find(region_table::METADATA_GUID).unwrap().file_offset as usize;
            let mraw = &bytes[m..m + metadata_table::TABLE_SIZE];
            let mt = MetadataTable::parse(mraw).unwrap();
            // Header and entries; the rest of the 64 KiB is not part of the table.
            let used = 32 + 32 * mt.entries.len();
            assert!(mt.to_bytes()[..used] == mraw[..used], "{f}: metadata table");
            for (i, e) in mt.entries.iter().enumerate() {
                assert!(e.encode() == mraw[32 + 32 * i..64 + 32 * i]);
            }
            let _ = metadata_table::SIGNATURE;
        }
    }
}
