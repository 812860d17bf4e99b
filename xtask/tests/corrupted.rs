//! `check` on deliberately corrupted variants of the real images: each one
//! must give an error finding (exit 1) or a clear refusal (exit 2) whose
//! `kind` names what is wrong, and never panic. Checksums are recomputed after a
//! field is damaged so that the damage itself, not the checksum, is found.

use std::process::Command;

use testdata::raw::*;

/// Index of the first payload BAT entry with the given state.
fn bat_entry(b: &[u8], state: u64) -> usize {
    let (bat, _, _) = vhdx_region(b, &BAT_GUID);
    (0..4096)
        .map(|i| bat + 8 * i)
        .find(|o| le64(b, *o) & 7 == state)
        .expect("BAT entry")
}

/// Give the first FULLY_PRESENT payload BAT entry the state `state`.
fn set_first_present_state(b: &mut [u8], state: u64) {
    let o = bat_entry(b, 6);
    let v = le64(b, o);
    put_le64(b, o, (v & !7) | state);
}

/// (real image, what is damaged, the `kind` an error finding must carry,
/// the damage).
type Mutation = (&'static str, &'static str, &'static str, fn(&mut Vec<u8>));

const CASES: &[Mutation] = &[
    (
        "dynamic.vhd",
        "both footer checksums wrong",
        "footer_checksum",
        |b| break_vhd_footer_checksums(b),
    ),
    (
        "fixed.vhd",
        "footer checksum wrong",
        "footer_checksum",
        |b| break_vhd_end_footer_checksum(b),
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
        |b| break_vhdx_header_checksums(b),
    ),
    ("dynamic.vhdx", "header version 2", "header_version", |b| {
        patch_vhdx_headers(b, 66, &[2]);
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
            let (meta, _, _) = vhdx_region(b, &META_GUID);
            // The BAT entry's place in a table, the same in both.
            let (_, _, e) = vhdx_region(b, &BAT_GUID);
            let e = e - VHDX_REGION_TABLES[0];
            for t in VHDX_REGION_TABLES {
                put_le64(b, t + e + 16, meta as u64);
            }
            fix_vhdx_region_tables(b);
        },
    ),
    (
        "dynamic.vhdx",
        "metadata table signature",
        "metadata_table_signature",
        |b| break_vhdx_metadata_table_signature(b),
    ),
    (
        "dynamic.vhdx",
        "block size 3 MiB",
        "invalid_block_size",
        |b| {
            let o = vhdx_item(b, &FILE_PARAMS);
            put_le32(b, o, 3 << 20);
        },
    ),
    (
        "dynamic.vhdx",
        "logical sector size 1024",
        "invalid_sector_size",
        |b| {
            let o = vhdx_item(b, &LSS_ITEM);
            put_le32(b, o, 1024);
        },
    ),
    (
        "btrfs.vhdx",
        "reserved payload BAT state 4",
        "bat_entry_reserved_state",
        |b| set_first_present_state(b, 4),
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
        |b| set_first_present_state(b, 7),
    ),
    (
        "btrfs.vhdx",
        "two payload blocks share a file offset",
        "block_overlap",
        |b| {
            let (bat, _, _) = vhdx_region(b, &BAT_GUID);
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
        |b| patch_vhdx_headers(b, 48, &[0x42]),
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
