//! `check --json` names each violation by its `kind`: fresh VHDX and VHD
//! images damaged in distinct ways must each give the expected kind, and
//! every finding of every case must carry a kind from
//! `formats::CorruptionKind`.

mod common;

use std::path::Path;

use common::{s, write, xtask, xtask_ok};
use formats::checksum::{crc32c_zeroed, vhd_checksum};
use formats::CorruptionKind;
use serde_json::Value;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn put_le32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_le64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_be32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

const HEADERS: [usize; 2] = [64 << 10, 128 << 10];
const REGION_TABLES: [usize; 2] = [192 << 10, 256 << 10];
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
const META_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
const FULLY_PRESENT: u64 = 6;

/// (offset, length, byte offset of the entry) of a region in table copy `t`.
fn region_in(b: &[u8], t: usize, guid: &[u8; 16]) -> (usize, usize, usize) {
    (0..le32(b, t + 8) as usize)
        .map(|i| t + 16 + 32 * i)
        .find(|e| &b[*e..*e + 16] == guid)
        .map(|e| (le64(b, e + 16) as usize, le32(b, e + 24) as usize, e))
        .expect("region present")
}
fn region(b: &[u8], guid: &[u8; 16]) -> (usize, usize, usize) {
    region_in(b, REGION_TABLES[0], guid)
}
fn fix_regions(b: &mut [u8]) {
    for at in REGION_TABLES {
        let c = crc32c_zeroed(&b[at..at + (64 << 10)], 4);
        put_le32(b, at + 4, c);
    }
}
/// Byte offsets of the payload BAT entries that are FULLY_PRESENT.
fn present_entries(b: &[u8]) -> Vec<usize> {
    let (bat, len, _) = region(b, &BAT_GUID);
    (0..len / 8)
        .map(|i| bat + 8 * i)
        .filter(|o| le64(b, *o) & 7 == FULLY_PRESENT)
        .collect()
}

fn fix_vhd_footers(b: &mut [u8]) {
    let n = b.len();
    for at in [0, n - 512] {
        let c = vhd_checksum(&b[at..at + 512], 64);
        b[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
    }
}
/// The dynamic disk header's offset (footer Data Offset).
fn vhd_header(b: &[u8]) -> usize {
    be64(b, b.len() - 512 + 0x10) as usize
}
fn fix_vhd_header(b: &mut [u8]) {
    let h = vhd_header(b);
    let c = vhd_checksum(&b[h..h + 1024], 36);
    b[h + 36..h + 40].copy_from_slice(&c.to_be_bytes());
}
/// Byte offsets of the allocated VHD BAT entries.
fn vhd_allocated(b: &[u8]) -> Vec<usize> {
    let h = vhd_header(b);
    let table = be64(b, h + 0x10) as usize;
    let n = be32(b, h + 0x1C) as usize;
    (0..n)
        .map(|i| table + 4 * i)
        .filter(|o| be32(b, *o) != u32::MAX)
        .collect()
}

/// A fresh 8 MiB image with data in its first and third MiB (two blocks).
fn fresh(dir: &Path, name: &str) -> Vec<u8> {
    let p = dir.join(name);
    xtask_ok(&["create", s(&p), "--size", "8M", "--block-size", "1M"]);
    write(&p, 0, &[0x11; 4096], dir);
    write(&p, 2 << 20, &[0x22; 4096], dir);
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    b
}

type Case = (
    &'static str,
    &'static str,
    CorruptionKind,
    &'static str,
    fn(&mut Vec<u8>),
);

/// (image, what is damaged, expected kind, its severity, the damage).
const CASES: &[Case] = &[
    (
        "vhdx",
        "both header checksums",
        CorruptionKind::HeaderChecksum,
        "error",
        |b| {
            for h in HEADERS {
                b[h + 100] ^= 1;
            }
        },
    ),
    (
        "vhdx",
        "one header checksum",
        CorruptionKind::HeaderChecksum,
        "warning",
        |b| b[HEADERS[0] + 100] ^= 1,
    ),
    (
        "vhdx",
        "both region table checksums",
        CorruptionKind::RegionTableChecksum,
        "error",
        |b| {
            for t in REGION_TABLES {
                b[t + 1000] ^= 1;
            }
        },
    ),
    (
        "vhdx",
        "region table signature",
        CorruptionKind::RegionTableSignature,
        "error",
        |b| {
            for t in REGION_TABLES {
                b[t] = b'X';
            }
        },
    ),
    (
        "vhdx",
        "BAT region overlaps the metadata region",
        CorruptionKind::RegionOverlap,
        "error",
        |b| {
            for t in REGION_TABLES {
                let (meta, _, _) = region_in(b, t, &META_GUID);
                let (_, _, e) = region_in(b, t, &BAT_GUID);
                put_le64(b, e + 16, meta as u64);
            }
            fix_regions(b);
        },
    ),
    (
        "vhdx",
        "BAT entry outside the file",
        CorruptionKind::BlockOutsideFile,
        "error",
        |b| {
            let o = present_entries(b)[0];
            let mb = (b.len() as u64 >> 20) + 64;
            put_le64(b, o, (mb << 20) | FULLY_PRESENT);
        },
    ),
    (
        "vhdx",
        "two BAT entries share a block",
        CorruptionKind::BlockOverlap,
        "error",
        |b| {
            let e = present_entries(b);
            let v = le64(b, e[0]);
            put_le64(b, e[1], v);
        },
    ),
    (
        "vhdx",
        "BAT entry with a reserved state",
        CorruptionKind::BatEntryReservedState,
        "error",
        |b| {
            let o = present_entries(b)[0];
            let v = le64(b, o);
            put_le64(b, o, (v & !7) | 4);
        },
    ),
    (
        "vhdx",
        "metadata item outside the metadata region",
        CorruptionKind::MetadataItemOutsideRegion,
        "error",
        |b| {
            let (m, len, _) = region(b, &META_GUID);
            put_le32(b, m + 32 + 16, len as u32);
        },
    ),
    (
        "vhdx",
        "metadata table signature",
        CorruptionKind::MetadataTableSignature,
        "error",
        |b| {
            let (m, _, _) = region(b, &META_GUID);
            b[m] = b'X';
        },
    ),
    (
        "vhd",
        "both footer checksums",
        CorruptionKind::FooterChecksum,
        "error",
        |b| {
            let n = b.len();
            b[n - 512 + 64] ^= 0x55;
            b[64] ^= 0x55;
        },
    ),
    (
        "vhd",
        "end footer checksum (the copy at 0 is used)",
        CorruptionKind::FooterChecksum,
        "warning",
        |b| {
            let n = b.len();
            b[n - 512 + 64] ^= 0x55;
        },
    ),
    (
        "vhd",
        "dynamic header checksum",
        CorruptionKind::DynamicHeaderChecksum,
        "error",
        |b| {
            let h = vhd_header(b);
            b[h + 36] ^= 1;
        },
    ),
    (
        "vhd",
        "dynamic header cookie",
        CorruptionKind::DynamicHeaderCookie,
        "error",
        |b| {
            let h = vhd_header(b);
            b[h] = b'X';
            fix_vhd_header(b);
        },
    ),
    (
        "vhd",
        "disk type 7",
        CorruptionKind::DiskTypeInvalid,
        "error",
        |b| {
            let n = b.len();
            put_be32(b, n - 512 + 60, 7);
            put_be32(b, 60, 7);
            fix_vhd_footers(b);
        },
    ),
    (
        "vhd",
        "two BAT entries share a block",
        CorruptionKind::BlockOverlap,
        "error",
        |b| {
            let e = vhd_allocated(b);
            let v = be32(b, e[0]);
            put_be32(b, e[1], v);
        },
    ),
    (
        "vhd",
        "BAT entry outside the file",
        CorruptionKind::BlockOutsideFile,
        "error",
        |b| {
            let o = vhd_allocated(b)[0];
            let past = (b.len() as u32 / 512) + 100;
            put_be32(b, o, past);
        },
    ),
    (
        "vhd",
        "footer copy differs",
        CorruptionKind::FooterCopyMismatch,
        "warning",
        |b| {
            b[0x18] ^= 1; // Time Stamp of the copy at 0
            let c = vhd_checksum(&b[..512], 64);
            b[64..68].copy_from_slice(&c.to_be_bytes());
        },
    ),
];

/// `check --json` of `path`: (exit code, findings).
fn check(path: &Path) -> (Option<i32>, Vec<Value>) {
    let out = xtask(&["check", "--json", s(path)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json {}: {e}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v["findings"].as_array().unwrap().clone())
}

/// Every finding has a kind, and it is one of `CorruptionKind`'s names.
fn assert_all_kinded(what: &str, findings: &[Value]) {
    for f in findings {
        let k = f["kind"].as_str().unwrap_or_default();
        assert!(!k.is_empty(), "{what}: a finding without a kind: {f}");
        assert!(
            CorruptionKind::ALL.iter().any(|c| c.name() == k),
            "{what}: unknown kind {k:?}: {f}"
        );
    }
}

#[test]
fn check_json_names_each_violation_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let clean_vhdx = fresh(dir.path(), "base.vhdx");
    let clean_vhd = fresh(dir.path(), "base.vhd");
    for (ext, clean) in [("vhdx", &clean_vhdx), ("vhd", &clean_vhd)] {
        let p = dir.path().join(format!("clean.{ext}"));
        std::fs::write(&p, clean).unwrap();
        let (code, findings) = check(&p);
        assert_eq!(code, Some(0), "clean {ext}: {findings:?}");
        assert_all_kinded(&format!("clean {ext}"), &findings);
    }
    for (i, (ext, what, kind, severity, damage)) in CASES.iter().enumerate() {
        let mut b = match *ext {
            "vhdx" => clean_vhdx.clone(),
            _ => clean_vhd.clone(),
        };
        damage(&mut b);
        let p = dir.path().join(format!("case{i}.{ext}"));
        std::fs::write(&p, &b).unwrap();
        let (code, findings) = check(&p);
        let label = format!("{ext} / {what}");
        let shown = serde_json::to_string_pretty(&findings).unwrap();
        match *severity {
            "error" => assert!(
                code == Some(1) || code == Some(2),
                "{label}: exit {code:?}: {shown}"
            ),
            _ => assert_eq!(code, Some(0), "{label}: {shown}"),
        }
        assert_all_kinded(&label, &findings);
        assert!(
            findings
                .iter()
                .any(|f| f["kind"] == kind.name() && f["severity"] == *severity),
            "{label}: no {severity} finding of kind {}: {shown}",
            kind.name()
        );
    }
}
