//! Hostile and damaged VHDX files: precise errors or findings, never a panic.

use std::sync::Arc;

use formats::params::{CreateParams, DiskType, OpenOptions};
use formats::vhdx::{self, header, region_table, RegionTable, VhdxHeader, VhdxImage};
use formats::{CorruptionKind as K, Error, Image, Layer, MemStorage, Severity};
use proptest::prelude::*;
use testdata::CutStorage;

const MIB: usize = 1 << 20;
// Layout written by vhdx::create: log 1 MiB, metadata 2 MiB, BAT 3 MiB.
const LOG: usize = MIB;
const META: usize = 2 * MIB;
const BAT: usize = 3 * MIB;

fn fresh(kind: DiskType) -> Vec<u8> {
    let m = MemStorage::new();
    let p = CreateParams {
        virtual_size: 8 << 20,
        disk_type: kind,
        block_size: Some(1 << 20),
        ..Default::default()
    };
    vhdx::create(&m, &p).unwrap();
    let s = Arc::new(m);
    {
        let mut img = VhdxImage::open(
            "x",
            s.clone(),
            OpenOptions {
                writable: true,
                ignore_checksums: false,
            },
        )
        .unwrap();
        img.write_sectors(0, &[7u8; 4096]).unwrap();
    }
    s.to_vec()
}

fn try_open(bytes: Vec<u8>, ignore: bool) -> Result<VhdxImage, Error> {
    VhdxImage::open(
        "bad.vhdx",
        Arc::new(MemStorage::from_vec(bytes)),
        OpenOptions {
            writable: false,
            ignore_checksums: ignore,
        },
    )
}

fn corrupt_msg(e: Error) -> (String, u64, String) {
    match e {
        Error::Corrupt {
            structure,
            offset,
            message,
            ..
        } => (structure.to_string(), offset, message),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// The kind of a corruption error (which violation was detected).
fn kind_of(e: Error) -> K {
    match e {
        Error::Corrupt { kind, .. } | Error::Checksum { kind, .. } => kind,
        other => panic!("expected Corrupt or Checksum, got {other:?}"),
    }
}

/// `bytes` do not open (checksums checked), for the violation `kind`.
fn refused_as(bytes: Vec<u8>, kind: K) {
    assert_eq!(kind_of(try_open(bytes, false).unwrap_err()), kind);
}

/// Rewrite the current header with a change (CRC recomputed).
fn edit_header(b: &mut [u8], f: impl Fn(&mut VhdxHeader)) {
    for off in header::SLOT_OFFSETS {
        let o = off as usize;
        let (mut h, _) = VhdxHeader::parse(&b[o..o + 4096]).unwrap();
        f(&mut h);
        b[o..o + 4096].copy_from_slice(&h.to_bytes());
    }
}

fn edit_regions(b: &mut [u8], f: impl Fn(&mut RegionTable)) {
    for off in region_table::COPY_OFFSETS {
        let o = off as usize;
        let (mut t, _) = RegionTable::parse(&b[o..o + region_table::SIZE], true).unwrap();
        f(&mut t);
        b[o..o + region_table::SIZE].copy_from_slice(&t.to_bytes());
    }
}

#[test]
fn bad_identifier() {
    let mut b = fresh(DiskType::Dynamic);
    b[0] = b'X';
    let e = try_open(b, false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt {
                kind: K::FileIdentifierSignature,
                ..
            }
        ),
        "{e:?}"
    );
    let (s, o, _) = corrupt_msg(e);
    assert_eq!((s.as_str(), o), ("file type identifier", 0));
}

#[test]
fn header_checksums() {
    let b = fresh(DiskType::Dynamic);
    // One bad header: the other is used, with a finding.
    let mut one = b.clone();
    one[0x10000 + 200] ^= 1;
    let img = try_open(one, false).unwrap();
    assert!(img
        .open_findings()
        .iter()
        .any(|f| f.offset == Some(0x10000) && f.kind == K::HeaderChecksum));
    // Both bad: a checksum error, unless ignored.
    let mut both = b.clone();
    both[0x10000 + 200] ^= 1;
    both[0x20000 + 200] ^= 1;
    match try_open(both.clone(), false).unwrap_err() {
        Error::Checksum {
            structure, kind, ..
        } => assert_eq!((structure, kind), ("header", K::HeaderChecksum)),
        e => panic!("{e:?}"),
    }
    let img = try_open(both, true).unwrap();
    assert!(img
        .check()
        .unwrap()
        .iter()
        .any(|f| f.severity == Severity::Error && f.kind == K::HeaderChecksum));
    // Equal sequence numbers, different contents.
    let mut eq = b.clone();
    edit_header(&mut eq, |h| {
        h.sequence_number = 9;
        h.file_write_guid = uuid::Uuid::new_v4();
    });
    refused_as(eq, K::HeaderSequenceTie);
    // No signature at all.
    let mut none = b.clone();
    none[0x10000] = 0;
    none[0x20000] = 0;
    refused_as(none, K::NoValidHeader);
}

#[test]
fn log_placement_is_bounded() {
    let mut b = fresh(DiskType::Dynamic);
    edit_header(&mut b, |h| h.log_offset = 1 << 40);
    let e = try_open(b, false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt {
                structure: "header",
                kind: K::LogOutsideFile,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn region_table_copies_and_overlaps() {
    let b = fresh(DiskType::Dynamic);
    let mut c1 = b.clone();
    c1[0x30000 + 1000] ^= 1;
    let img = try_open(c1.clone(), false).unwrap();
    assert!(img.open_findings().iter().any(|f| f.offset == Some(0x30000)
        && f.kind == K::RegionTableChecksum
        && f.severity == Severity::Warning));
    c1[0x40000 + 1000] ^= 1;
    assert!(matches!(
        try_open(c1, false).unwrap_err(),
        Error::Checksum {
            structure: "region table",
            offset: 0x30000,
            kind: K::RegionTableChecksum,
            ..
        }
    ));

    let mut ov = b.clone();
    edit_regions(&mut ov, |t| {
        t.find_mut(region_table::BAT_GUID).unwrap().file_offset = META as u64
    });
    refused_as(ov, K::RegionOverlap);

    let mut logov = b.clone();
    edit_regions(&mut logov, |t| {
        t.find_mut(region_table::METADATA_GUID).unwrap().file_offset = LOG as u64
    });
    let e = try_open(logov, false).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::RegionOverlap,
            ..
        }
    ));
    // The message names what it overlaps.
    assert!(corrupt_msg(e).2.contains("overlaps the log"));

    let mut huge = b.clone();
    for off in region_table::COPY_OFFSETS {
        let o = off as usize;
        huge[o + 8..o + 12].copy_from_slice(&100_000u32.to_le_bytes());
        let crc = formats::checksum::crc32c_zeroed(&huge[o..o + region_table::SIZE], 4);
        huge[o + 4..o + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let e = try_open(huge, false).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::RegionTableEntryCount,
            ..
        }
    ));
    let (s, o, m) = corrupt_msg(e);
    assert_eq!((s.as_str(), o), ("region table", 0x30008));
    assert!(m.contains("100000"));

    let mut past = b.clone();
    edit_regions(&mut past, |t| {
        t.find_mut(region_table::BAT_GUID).unwrap().length = 1 << 30
    });
    refused_as(past, K::RegionOutsideFile);
}

#[test]
fn metadata_bounds() {
    let b = fresh(DiskType::Dynamic);
    let mut sig = b.clone();
    sig[META] = b'X';
    refused_as(sig, K::MetadataTableSignature);
    let mut count = b.clone();
    count[META + 10..META + 12].copy_from_slice(&60000u16.to_le_bytes());
    let e = try_open(count, false).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::MetadataTableEntryCount,
            ..
        }
    ));
    let (_, o, m) = corrupt_msg(e);
    assert_eq!(o, (META + 10) as u64);
    assert!(m.contains("60000"));
    // First entry's Length huge.
    let mut len = b.clone();
    len[META + 32 + 20..META + 32 + 24].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    refused_as(len, K::MetadataItemTooLong);
    // First entry's Offset outside the region.
    let mut off = b.clone();
    off[META + 32 + 16..META + 32 + 20].copy_from_slice(&(MIB as u32 - 4).to_le_bytes());
    refused_as(off, K::MetadataItemOutsideRegion);
    // A virtual size of 64 TiB in an 8 MiB file: the BAT region is too short.
    let mut vs = b.clone();
    let e = vhdx::MetadataTable::parse(&vs[META..META + 65536]).unwrap();
    // Absolute offset of the metadata item `id`.
    let item_at = |id| {
        let item = e.entries.iter().find(|x| x.item_id == id).unwrap();
        META + item.offset as usize
    };
    let at = item_at(vhdx::metadata_items::VIRTUAL_DISK_SIZE);
    vs[at..at + 8].copy_from_slice(&(64u64 << 40).to_le_bytes());
    refused_as(vs, K::BatRegionTooSmall);
    // Block size not a power of two.
    let mut bs = b.clone();
    let at = item_at(vhdx::metadata_items::FILE_PARAMETERS);
    bs[at..at + 4].copy_from_slice(&3_000_000u32.to_le_bytes());
    refused_as(bs, K::InvalidBlockSize);
}

#[test]
fn bat_entries() {
    let b = fresh(DiskType::Dynamic);
    // Reserved state 4 in payload block 2.
    let mut r = b.clone();
    r[BAT + 16..BAT + 24].copy_from_slice(&(4u64 | (5 << 20)).to_le_bytes());
    let img = try_open(r, false).unwrap();
    let mut runs = Vec::new();
    let e = img.map(0, img.virtual_size(), &mut runs).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::BatEntryReservedState,
            ..
        }
    ));
    let (s, o, m) = corrupt_msg(e);
    assert_eq!((s.as_str(), o), ("BAT entry", (BAT + 16) as u64));
    assert!(m.contains("reserved state 4"));
    assert!(img
        .check()
        .unwrap()
        .iter()
        .any(|f| f.offset == Some((BAT + 16) as u64)
            && f.severity == Severity::Error
            && f.kind == K::BatEntryReservedState));
    // A FULLY_PRESENT block far past the end of the file.
    let mut p = b.clone();
    p[BAT + 24..BAT + 32].copy_from_slice(&(6u64 | (1 << 40)).to_le_bytes());
    let img = try_open(p, false).unwrap();
    runs.clear();
    assert_eq!(
        kind_of(img.map(3 << 20, 1 << 20, &mut runs).unwrap_err()),
        K::BlockOutsideFile
    );
    assert!(img
        .check()
        .unwrap()
        .iter()
        .any(|f| f.kind == K::BlockOutsideFile));
    // Two blocks at the same offset, and a block on the BAT region.
    let mut d = b.clone();
    let first = u64::from_le_bytes(d[BAT..BAT + 8].try_into().unwrap());
    d[BAT + 8..BAT + 16].copy_from_slice(&first.to_le_bytes());
    d[BAT + 32..BAT + 40].copy_from_slice(&(6u64 | BAT as u64).to_le_bytes());
    let f = try_open(d, false).unwrap().check().unwrap();
    assert!(f.iter().any(|x| x.kind == K::BlockOverlap));
    assert!(f
        .iter()
        .any(|x| x.kind == K::BlockOverlapsStructure && x.message.contains("the BAT region")));
    // PARTIALLY_PRESENT in a dynamic file.
    let mut pp = b.clone();
    pp[BAT..BAT + 8].copy_from_slice(&((first & !7) | 7).to_le_bytes());
    let img = try_open(pp, false).unwrap();
    assert!(img
        .check()
        .unwrap()
        .iter()
        .any(|x| x.kind == K::PartialBlockInNonDifferencing));
    runs.clear();
    assert!(img.map(0, 4096, &mut runs).is_err());
}

/// A file whose last write stopped right after the commit header: the log
/// is pending.
fn pending_log_image() -> Vec<u8> {
    let base = fresh(DiskType::Dynamic);
    for n in 0..64 {
        let mem = Arc::new(MemStorage::from_vec(base.clone()));
        let cut = Arc::new(CutStorage::new(mem.clone()));
        let mut img = VhdxImage::open(
            "x",
            cut.clone(),
            OpenOptions {
                writable: true,
                ignore_checksums: false,
            },
        )
        .unwrap();
        cut.cut_after(n);
        let _ = img.write_sectors(2 << 20, &[9u8; 512]);
        drop(img);
        let v = mem.to_vec();
        let h = try_open(v.clone(), false).unwrap();
        if !h.header().log_guid.is_nil() {
            return v;
        }
    }
    panic!("no cut point left a pending log");
}

#[test]
fn damaged_logs_refuse_to_open() {
    let b = pending_log_image();
    assert!(try_open(b.clone(), false).is_ok());
    // A flipped byte inside the entry: CRC mismatch, no valid sequence.
    let mut crc = b.clone();
    crc[LOG + 4096 + 100] ^= 1;
    let e = try_open(crc, false).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::LogSequenceInvalid,
            ..
        }
    ));
    let (s, o, m) = corrupt_msg(e);
    assert_eq!((s.as_str(), o), ("log", LOG as u64));
    // The message says why the entry was rejected.
    assert!(m.contains("checksum"), "{m}");
    // EntryLength beyond the log.
    let mut len = b.clone();
    len[LOG + 8..LOG + 12].copy_from_slice(&(4u32 << 20).to_le_bytes());
    let e = try_open(len, false).unwrap_err();
    assert!(matches!(
        e,
        Error::Corrupt {
            kind: K::LogSequenceInvalid,
            ..
        }
    ));
    let m = corrupt_msg(e).2;
    assert!(m.contains("EntryLength"), "{m}");
    // A descriptor count claiming millions of descriptors.
    let mut dc = b.clone();
    dc[LOG + 24..LOG + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    refused_as(dc, K::LogSequenceInvalid);
    // Truncated file (shorter than FlushedFileOffset).
    let mut t = b.clone();
    let flushed = u64::from_le_bytes(t[LOG + 48..LOG + 56].try_into().unwrap()) as usize;
    t.truncate(flushed - MIB);
    refused_as(t, K::LogFlushedOffsetBeyondFile);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]
    /// Random damage to the metadata-bearing first 4 MiB never panics; when
    /// the file still opens, reading everything and checking never panic.
    #[test]
    fn random_damage_never_panics(flips in proptest::collection::vec((0usize..4 * MIB, any::<u8>()), 1..40), pending in any::<bool>()) {
        thread_local! {
            static CLEAN: Vec<u8> = fresh(DiskType::Dynamic);
            static PENDING: Vec<u8> = pending_log_image();
        }
        let mut b = if pending { PENDING.with(|v| v.clone()) } else { CLEAN.with(|v| v.clone()) };
        for (at, v) in flips {
            // Bias towards the structures: the header section, log, metadata and BAT starts.
            let at = match at % 5 { 0 => at % 0x50000, 1 => LOG + at % 8192, 2 => META + at % 70000, 3 => BAT + at % 4096, _ => at };
            b[at] ^= v | 1;
        }
        for ignore in [false, true] {
            if let Ok(img) = try_open(b.clone(), ignore) {
                let mut runs = Vec::new();
                let _ = img.map(0, img.virtual_size(), &mut runs);
                let _ = img.check();
                let _ = img.info();
                let _ = img.parent_locator();
            }
        }
    }
}
