//! `check --json` names each violation by its `kind`: fresh VHDX and VHD
//! images damaged in distinct ways must each give the expected kind, and
//! every finding of every case must carry a kind from
//! `formats::CorruptionKind`.

mod common;

use std::path::Path;

use common::{s, write, xtask, xtask_ok};
use formats::CorruptionKind;
use serde_json::Value;
use testdata::raw::*;

const FULLY_PRESENT: u64 = 6;

/// Byte offsets of the payload BAT entries that are FULLY_PRESENT.
fn present_entries(b: &[u8]) -> Vec<usize> {
    let (bat, len, _) = vhdx_region(b, &BAT_GUID);
    (0..len / 8)
        .map(|i| bat + 8 * i)
        .filter(|o| le64(b, *o) & 7 == FULLY_PRESENT)
        .collect()
}

fn fix_vhd_header(b: &mut [u8]) {
    let h = vhd_header(b);
    testdata::raw::fix_vhd_header(b, h);
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
        |b| break_vhdx_header_checksums(b),
    ),
    (
        "vhdx",
        "one header checksum",
        CorruptionKind::HeaderChecksum,
        "warning",
        |b| b[VHDX_HEADERS[0] + 100] ^= 1,
    ),
    (
        "vhdx",
        "both region table checksums",
        CorruptionKind::RegionTableChecksum,
        "error",
        |b| {
            for t in VHDX_REGION_TABLES {
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
            for t in VHDX_REGION_TABLES {
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
            for t in VHDX_REGION_TABLES {
                let (meta, _, _) = vhdx_region_in(b, t, &META_GUID);
                let (_, _, e) = vhdx_region_in(b, t, &BAT_GUID);
                put_le64(b, e + 16, meta as u64);
            }
            fix_vhdx_region_tables(b);
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
            let (m, len, _) = vhdx_region(b, &META_GUID);
            put_le32(b, m + 32 + 16, len as u32);
        },
    ),
    (
        "vhdx",
        "metadata table signature",
        CorruptionKind::MetadataTableSignature,
        "error",
        |b| break_vhdx_metadata_table_signature(b),
    ),
    (
        "vhd",
        "both footer checksums",
        CorruptionKind::FooterChecksum,
        "error",
        |b| break_vhd_footer_checksums(b),
    ),
    (
        "vhd",
        "end footer checksum (the copy at 0 is used)",
        CorruptionKind::FooterChecksum,
        "warning",
        |b| break_vhd_end_footer_checksum(b),
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
            fix_vhd_footer(b, 0);
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
