//! `check` on deliberately corrupted variants of the real images: each one
//! must give an error finding (exit 1) or a clear refusal (exit 2) whose
//! `kind` names what is wrong, and never panic. Checksums are recomputed after a
//! field is damaged so that the damage itself, not the checksum, is found.

use std::process::Command;

use formats::checksum::{crc32c_zeroed, vhd_checksum};

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn put_be32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_le32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_le64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recompute both VHD footers' checksums (end and copy at 0).
fn fix_vhd_footers(b: &mut [u8]) {
    let n = b.len();
    for at in [0, n - 512] {
        if &b[at..at + 8] == b"conectix" {
            let c = vhd_checksum(&b[at..at + 512], 64);
            put_be32(b, at + 64, c);
        }
    }
}
fn fix_vhd_header(b: &mut [u8], at: usize) {
    let c = vhd_checksum(&b[at..at + 1024], 36);
    put_be32(b, at + 36, c);
}
fn fix_vhdx_headers(b: &mut [u8]) {
    for at in [64usize << 10, 128 << 10] {
        let c = crc32c_zeroed(&b[at..at + 4096], 4);
        put_le32(b, at + 4, c);
    }
}
fn fix_vhdx_regions(b: &mut [u8]) {
    for at in [192usize << 10, 256 << 10] {
        let c = crc32c_zeroed(&b[at..at + (64 << 10)], 4);
        put_le32(b, at + 4, c);
    }
}

const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
const META_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
const FILE_PARAMS: [u8; 16] = [
    0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
];
const LSS_ITEM: [u8; 16] = [
    0x1D, 0xBF, 0x41, 0x81, 0x6F, 0xA9, 0x09, 0x47, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
];

/// (file offset of the region, index of its entry) from region table 1.
fn region(b: &[u8], guid: &[u8; 16]) -> (usize, usize) {
    let t = 192usize << 10;
    let n = le32(b, t + 8) as usize;
    (0..n)
        .find_map(|i| {
            let e = t + 16 + 32 * i;
            (&b[e..e + 16] == guid).then(|| (le64(b, e + 16) as usize, i))
        })
        .expect("region")
}

/// Absolute offset of a metadata item.
fn item(b: &[u8], guid: &[u8; 16]) -> usize {
    let (m, _) = region(b, &META_GUID);
    let n = u16::from_le_bytes([b[m + 10], b[m + 11]]) as usize;
    (0..n)
        .find_map(|i| {
            let e = m + 32 + 32 * i;
            (&b[e..e + 16] == guid).then(|| m + le32(b, e + 16) as usize)
        })
        .expect("item")
}

/// Index of the first payload BAT entry with the given state.
fn bat_entry(b: &[u8], state: u64) -> usize {
    let (bat, _) = region(b, &BAT_GUID);
    (0..4096)
        .map(|i| bat + 8 * i)
        .find(|o| le64(b, *o) & 7 == state)
        .expect("BAT entry")
}

/// (real image, what is damaged, the `kind` an error finding must carry,
/// the damage).
type Mutation = (&'static str, &'static str, &'static str, fn(&mut Vec<u8>));

const CASES: &[Mutation] = &[
    (
        "dynamic.vhd",
        "both footer checksums wrong",
        "footer_checksum",
        |b| {
            let n = b.len();
            b[n - 512 + 64] ^= 0x55;
            b[64] ^= 0x55;
        },
    ),
    (
        "fixed.vhd",
        "footer checksum wrong",
        "footer_checksum",
        |b| {
            let n = b.len();
            b[n - 512 + 64] ^= 0x55;
        },
    ),
    (
        "dynamic.vhd",
        "dynamic header checksum wrong",
        "dynamic_header_checksum",
        |b| {
            b[512 + 36] ^= 1;
        },
    ),
    (
        "dynamic.vhd",
        "dynamic header cookie",
        "dynamic_header_cookie",
        |b| {
            b[512] = b'X';
            fix_vhd_header(b, 512);
        },
    ),
    ("dynamic.vhd", "disk type 7", "disk_type_invalid", |b| {
        let n = b.len();
        put_be32(b, n - 512 + 60, 7);
        put_be32(b, 60, 7);
        fix_vhd_footers(b);
    }),
    ("dynamic.vhd", "block size 0", "invalid_block_size", |b| {
        put_be32(b, 512 + 32, 0);
        fix_vhd_header(b, 512);
    }),
    (
        "dynamic.vhd",
        "block size 3 sectors",
        "invalid_block_size",
        |b| {
            put_be32(b, 512 + 32, 1536);
            fix_vhd_header(b, 512);
        },
    ),
    (
        "dynamic.vhd",
        "max table entries too small",
        "max_table_entries_invalid",
        |b| {
            put_be32(b, 512 + 28, 1);
            fix_vhd_header(b, 512);
        },
    ),
    (
        "dynamic.vhd",
        "BAT entry past end of file",
        "block_outside_file",
        |b| {
            let bat = be64(b, 512 + 16) as usize;
            let past = (b.len() as u32 / 512) + 100;
            put_be32(b, bat, past);
        },
    ),
    (
        "dynamic.vhd",
        "two BAT entries share a block",
        "block_overlap",
        |b| {
            let bat = be64(b, 512 + 16) as usize;
            let used = (0..5)
                .map(|i| be32(b, bat + 4 * i))
                .find(|v| *v != u32::MAX)
                .unwrap();
            for i in 0..5 {
                put_be32(b, bat + 4 * i, used);
            }
        },
    ),
    (
        "dynamic.vhd",
        "truncated inside a block",
        "block_outside_file",
        |b| {
            let n = b.len();
            b.truncate(n - 700_000);
        },
    ),
    (
        "dynamic.vhdx",
        "file identifier signature",
        "not_an_image",
        |b| {
            b[0] = b'X';
        },
    ),
    (
        "dynamic.vhdx",
        "both header checksums wrong",
        "header_checksum",
        |b| {
            b[(64 << 10) + 100] ^= 1;
            b[(128 << 10) + 100] ^= 1;
        },
    ),
    ("dynamic.vhdx", "header version 2", "header_version", |b| {
        for at in [64usize << 10, 128 << 10] {
            b[at + 66] = 2;
        }
        fix_vhdx_headers(b);
    }),
    (
        "dynamic.vhdx",
        "both region table checksums wrong",
        "region_table_checksum",
        |b| {
            b[(192 << 10) + 200] ^= 1;
            b[(256 << 10) + 200] ^= 1;
        },
    ),
    (
        "dynamic.vhdx",
        "BAT region overlaps the metadata region",
        "region_overlap",
        |b| {
            let (meta, _) = region(b, &META_GUID);
            let (_, i) = region(b, &BAT_GUID);
            for t in [192usize << 10, 256 << 10] {
                put_le64(b, t + 16 + 32 * i + 16, meta as u64);
            }
            fix_vhdx_regions(b);
        },
    ),
    (
        "dynamic.vhdx",
        "metadata table signature",
        "metadata_table_signature",
        |b| {
            let (m, _) = region(b, &META_GUID);
            b[m] = b'X';
        },
    ),
    (
        "dynamic.vhdx",
        "block size 3 MiB",
        "invalid_block_size",
        |b| {
            let o = item(b, &FILE_PARAMS);
            put_le32(b, o, 3 << 20);
        },
    ),
    (
        "dynamic.vhdx",
        "logical sector size 1024",
        "invalid_sector_size",
        |b| {
            let o = item(b, &LSS_ITEM);
            put_le32(b, o, 1024);
        },
    ),
    (
        "btrfs.vhdx",
        "reserved payload BAT state 4",
        "bat_entry_reserved_state",
        |b| {
            let o = bat_entry(b, 6);
            let v = le64(b, o);
            put_le64(b, o, (v & !7) | 4);
        },
    ),
    (
        "btrfs.vhdx",
        "BAT entry past end of file",
        "block_outside_file",
        |b| {
            let o = bat_entry(b, 6);
            let mb = (b.len() as u64 >> 20) + 64;
            put_le64(b, o, (mb << 20) | 6);
        },
    ),
    (
        "btrfs.vhdx",
        "PARTIALLY_PRESENT in a dynamic file",
        "partial_block_in_non_differencing",
        |b| {
            let o = bat_entry(b, 6);
            let v = le64(b, o);
            put_le64(b, o, (v & !7) | 7);
        },
    ),
    (
        "btrfs.vhdx",
        "two payload blocks share a file offset",
        "block_overlap",
        |b| {
            let (bat, _) = region(b, &BAT_GUID);
            let first = (0..64)
                .map(|i| bat + 8 * i)
                .find(|o| le64(b, *o) & 7 == 6)
                .unwrap();
            let v = le64(b, first);
            let other = (0..64)
                .map(|i| bat + 8 * i)
                .filter(|o| le64(b, *o) & 7 == 6)
                .nth(1)
                .unwrap();
            put_le64(b, other, v);
        },
    ),
    (
        "dynamic.vhdx",
        "LogGuid set with no log entry",
        "log_sequence_invalid",
        |b| {
            for at in [64usize << 10, 128 << 10] {
                b[at + 48] = 0x42;
            }
            fix_vhdx_headers(b);
        },
    ),
    (
        "vhdx-log-replay.vhdx",
        "log entry with a bad CRC",
        "log_sequence_invalid",
        |b| {
            let h = 64usize << 10;
            let log = le64(b, h + 72) as usize;
            let len = le32(b, h + 68) as usize;
            // Damage every entry: with only the first one damaged, the
            // later ones still form a complete sequence (correctly replayed).
            let mut hit = 0;
            for at in (log..log + len).step_by(4096) {
                if &b[at..at + 4] == b"loge" {
                    b[at + 100] ^= 0xFF;
                    hit += 1;
                }
            }
            assert!(hit > 0, "no log entry found");
        },
    ),
    (
        "fixed.vhdx",
        "truncated before the last block",
        "block_outside_file",
        |b| {
            let n = b.len();
            b.truncate(n - (3 << 20));
        },
    ),
];

#[test]
fn check_finds_each_deliberate_corruption() {
    assert!(CASES.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    let mut tested = 0;
    for (name, what, kind, mutate) in CASES {
        let Some(src) = testdata::real_image_cached(name) else {
            return;
        };
        let mut bytes = std::fs::read(&src).unwrap();
        mutate(&mut bytes);
        let p = dir.path().join(format!("{tested}-{name}"));
        std::fs::write(&p, &bytes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["check", "--json", p.to_str().unwrap()])
            .output()
            .unwrap();
        let code = out.status.code();
        assert!(
            code == Some(1) || code == Some(2),
            "{name} / {what}: exit {code:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let findings = v["findings"].as_array().unwrap();
        for f in findings {
            let k = f["kind"].as_str().unwrap_or_default();
            assert!(!k.is_empty(), "{name} / {what}: a finding has no kind: {f}");
        }
        let errors: Vec<&str> = findings
            .iter()
            .filter(|f| f["severity"] == "error")
            .filter_map(|f| f["kind"].as_str())
            .collect();
        assert!(
            errors.contains(kind),
            "{name} / {what}: no error finding of kind {kind}: {}",
            serde_json::to_string_pretty(findings).unwrap()
        );
        tested += 1;
    }
    eprintln!("{tested} corrupted variants checked");
}
