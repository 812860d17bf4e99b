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

/// The VHDX images with neither a pending log nor a parent, with the BAT
/// states the README counts for some of them (fully present, ZERO,
/// UNMAPPED, not present).
const PLAIN: [(&str, Option<[u64; 4]>); 6] = [
    ("fixed.vhdx", None),
    ("dynamic.vhdx", None),
    ("btrfs.vhdx", Some([2, 1, 0, 29])),
    ("iotest-dynamic-1G.vhdx", None),
    ("swap.vhdx", None),
    ("lvm2.vhdx", Some([18, 39, 25, 238])),
];

/// Each plain image opens with the type, sizes, sectors and BAT states
/// the README lists, has no parent, reads the listed hash (but for the
/// 10 GiB ones: see the next test) and checks clean.
#[test]
fn plain_images_open_as_listed() {
    testdata::each_case(PLAIN, |&(name, bat_states)| {
        let e = testdata::real_image(name);
        let Some((_d, img)) = opened(name) else {
            return;
        };
        let info = img.info();
        assert_eq!(info.disk_type.name(), e.disk_type);
        assert_eq!(info.virtual_size, e.virtual_size);
        assert_eq!(info.block_size, e.block_size);
        assert_eq!(
            (info.logical_sector_size, info.physical_sector_size),
            (e.logical, e.physical)
        );
        assert!(img.parent_locator().is_none() && img.parent_linkage().is_none());
        if let Some(want) = bat_states {
            let c = counts(&img);
            let states = [
                bat::PAYLOAD_FULLY_PRESENT,
                bat::PAYLOAD_ZERO,
                bat::PAYLOAD_UNMAPPED,
                bat::PAYLOAD_NOT_PRESENT,
            ];
            assert_eq!(states.map(|s| c[s as usize]), want);
        }
        if !e.slow {
            assert_eq!(Some(virtual_sha(&img)), e.sha256.map(String::from));
        }
        assert_clean_check(&img);
    });
}

#[test]
#[ignore = "hashes 10 GiB; run with --ignored"]
fn plain_images_of_10_gib_hash_as_listed() {
    let slow = PLAIN.map(|(name, _)| testdata::real_image(name));
    testdata::each_case(slow.iter().filter(|e| e.slow), |e| {
        let Some((_d, img)) = opened(e.name) else {
            return;
        };
        assert_eq!(Some(virtual_sha(&img)), e.sha256.map(String::from));
    });
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

/// A real image whose log is pending: a read-only open reads the replayed
/// content (`read_only` checks it) and leaves the file as it was; a
/// writable open replays the log into the file and clears it; reopened,
/// the image reads the BAT the read-only replay built, has no pending log
/// and checks clean. `replayed` checks more, on the writable image and on
/// the reopened one.
fn pending_log(file: &str, read_only: impl Fn(&VhdxImage), replayed: impl Fn(&VhdxImage)) {
    let Some((_d, p)) = unpack(file) else {
        return;
    };
    let before = file_sha(&p);
    let replayed_bat = {
        let img = open(&p, false);
        read_only(&img);
        assert_clean_check(&img);
        img_bat(&img)
    };
    assert_eq!(file_sha(&p), before, "a read-only open changed the file");
    let img = open(&p, true);
    assert!(img.header().log_guid.is_nil());
    replayed(&img);
    drop(img);
    let img = open(&p, false);
    assert!(img.header().log_guid.is_nil());
    assert!(!img
        .open_findings()
        .iter()
        .any(|f| f.kind == formats::CorruptionKind::PendingLog));
    // Same BAT as the in-memory replay, now read from disk.
    assert_eq!(img_bat(&img), replayed_bat);
    replayed(&img);
    assert_clean_check(&img);
}

#[test]
fn log_replay_read_only_then_writable() {
    let sha = "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e";
    pending_log(
        "vhdx-log-replay.vhdx.gz",
        |img| {
            assert_eq!(img.virtual_size(), 1 << 30);
            let c = counts(img);
            assert_eq!(
                (
                    c[bat::PAYLOAD_FULLY_PRESENT as usize],
                    c[bat::PAYLOAD_ZERO as usize]
                ),
                (1, 3)
            );
            assert_eq!(virtual_sha(img), sha);
            assert!(img.open_findings().iter().any(|f| f.structure == "log"));
        },
        |img| assert_eq!(virtual_sha(img), sha),
    );
}

/// Hash of the 10 GiB dirty-log image computed from its allocated blocks:
/// everything else must be zeros, so the hash is fed zeros in bulk (once:
/// after the replay the BAT comparison stands for it).
#[test]
fn dirtylog_10g_read_only_and_writable() {
    pending_log(
        "iotest-dirtylog-10G-4M.vhdx.bz2",
        |img| {
            assert_eq!(img.virtual_size(), 10737418240);
            assert_eq!(img.block_size(), 1 << 20);
            assert_eq!(
                (img.logical_sector_size(), img.info().physical_sector_size),
                (512, 512)
            );
            assert_eq!(
                virtual_sha(img),
                "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f"
            );
        },
        |_| {},
    );
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
