//! Issue 8 through the real binary: a child whose locators point outside
//! its folder (`merge --json` = 32779, `info --json` unresolved with the
//! paths tried), and hostile sizes in small files (VHD block size 0 /
//! 0xFFFFFE00 / 0x80000000, a BAT claiming gigabytes, a VHDX BAT region and
//! a metadata entry count claiming gigabytes, a log entry longer than the
//! log): each a clear error naming the field, in < 1 s, under 64 MiB of
//! peak RSS (measured with /usr/bin/time), with the file unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use formats::params::{CreateParams, DiskType};
use testdata::image::{self, fs};
use testdata::raw::*;

fn xtask() -> &'static str {
    env!("CARGO_BIN_EXE_xtask")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    wall: Duration,
    /// Peak RSS in KiB, when /usr/bin/time is available.
    rss_kib: Option<u64>,
}

/// Run the binary, under /usr/bin/time when present.
fn run(args: &[&str]) -> Run {
    let time = Path::new("/usr/bin/time");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f").arg("%M").arg("-o").arg(tmp.path()).arg(xtask());
        c
    } else {
        Command::new(xtask())
    };
    let start = Instant::now();
    let out = cmd.args(args).output().unwrap();
    let wall = start.elapsed();
    let rss_kib = std::fs::read_to_string(tmp.path())
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        wall,
        rss_kib,
    }
}

/// A dynamic image of `size` bytes in `block`-byte blocks, with 4 KiB of
/// data at its start.
fn create(path: &Path, size: u64, block: u32) {
    let params = CreateParams {
        virtual_size: size,
        disk_type: DiskType::Dynamic,
        block_size: Some(block),
        ..Default::default()
    };
    image::create(&fs(), path, None, params);
    image::open_writable(&fs(), path)
        .write_sectors(0, &[0x42; 4096])
        .unwrap();
}

#[test]
fn outside_locator_merge_and_info() {
    let _serial = testdata::serial();
    for vhdx in [true, false] {
        let (_guard, root) = testdata::canonical_tempdir();
        let [elsewhere, dir] = testdata::make_dirs(&root, ["elsewhere", "a/b"]);
        let (pe, ce) = image::exts(vhdx);
        let parent = elsewhere.join(format!("p.{pe}"));
        let params = image::small(vhdx);
        create(&parent, params.virtual_size, params.block_size.unwrap());
        let child = dir.join(format!("c.{ce}"));
        let rel = format!(r"..\..\elsewhere\p.{pe}");
        image::child_with_locators(
            &fs(),
            &child,
            image::parent_spec(&fs(), &parent, &child),
            &rel,
            &parent.display().to_string(),
            &format!("../../elsewhere/p.{pe}"),
        );
        let before_parent = std::fs::read(&parent).unwrap();
        let before_child = std::fs::read(&child).unwrap();
        let c = child.to_str().unwrap();

        let r = run(&["merge", c, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("merge --json output: {e}: {} {}", r.stdout, r.stderr));
        assert_eq!(v["return_value"], 32779, "{v}");
        assert_eq!(r.code, 3, "exit status for 32779");
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains(&format!("{rel:?}")) && err.contains("--search-dir"),
            "{err}"
        );
        assert!(r.wall < Duration::from_secs(1), "{:?}", r.wall);

        let r = run(&["info", c, "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let parent_report = &v["parent"];
        assert_eq!(parent_report["resolved"], false, "{v}");
        assert_eq!(v["chain"].as_array().unwrap().len(), 1);
        let tried = parent_report["tried"].as_array().unwrap();
        // The climbing relative path was refused without a path; every path
        // that was tried lies in the child's directory.
        let refused = tried
            .iter()
            .find(|t| t["locator"] == rel.as_str())
            .unwrap_or_else(|| panic!("relative locator not reported: {tried:?}"));
        assert!(refused["path"].is_null(), "{refused}");
        assert!(
            refused["outcome"].as_str().unwrap().contains("leaves"),
            "{refused}"
        );
        for t in tried {
            if let Some(p) = t["path"].as_str() {
                assert!(
                    Path::new(p).starts_with(&dir),
                    "tried {p} outside the child's dir"
                );
            }
        }
        // Nothing changed (the merge was refused, info is read-only).
        assert_eq!(std::fs::read(&parent).unwrap(), before_parent);
        assert_eq!(std::fs::read(&child).unwrap(), before_child);

        // With the option the error names, the parent resolves.
        let r = run(&[
            "info",
            c,
            "--json",
            "--search-dir",
            elsewhere.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["parent"]["resolved"], true, "{v}");
        assert_eq!(
            v["parent"]["resolved_path"].as_str().map(PathBuf::from),
            Some(parent.clone())
        );
    }
}

/// Run `info` and `check` on a hostile file: both must fail or report
/// quickly, in bounded memory, naming `field`, and leave it unchanged;
/// `check --json` must report an error finding of `kind`.
fn hostile(path: &Path, kind: &str, field: &[&str]) {
    let before = std::fs::read(path).unwrap();
    let p = path.to_str().unwrap();
    let r = run(&["check", "--json", p]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("check --json");
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["severity"] == "error" && f["kind"] == kind),
        "{p}: no error finding of kind {kind}: {v}"
    );
    assert!(findings
        .iter()
        .all(|f| f["kind"].as_str().is_some_and(|k| !k.is_empty())));
    let out = path.with_extension("raw");
    let o = out.to_str().unwrap();
    for cmd in [&["info", p][..], &["check", p][..], &["convert", p, o][..]] {
        let r = run(cmd);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert_ne!(r.code, 0, "{cmd:?} accepted a hostile file: {text}");
        assert!(
            field.iter().any(|f| text.contains(f)),
            "{cmd:?}: error does not name {field:?}: {text}"
        );
        assert!(r.wall < Duration::from_secs(1), "{cmd:?} took {:?}", r.wall);
        match r.rss_kib {
            Some(k) => assert!(k < 64 << 10, "{cmd:?}: peak RSS {k} KiB"),
            None => eprintln!("skipping the RSS bound: /usr/bin/time is absent"),
        }
        eprintln!(
            "{cmd:?}: exit {} in {:?}, peak RSS {:?} KiB: {}",
            r.code,
            r.wall,
            r.rss_kib,
            text.lines().next().unwrap_or("")
        );
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "a read-only command changed bytes"
    );
}

/// A 1 MiB-ish dynamic VHD with `edit` applied to (bytes, header offset).
fn hostile_vhd(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>, usize)) -> PathBuf {
    let p = dir.join(name);
    create(&p, 8 << 20, 512 << 10);
    let mut b = std::fs::read(&p).unwrap();
    b.resize((1 << 20) - 512, 0);
    let footer = std::fs::read(&p).unwrap();
    b.extend_from_slice(&footer[footer.len() - 512..]);
    let ho = be64(&b, 16) as usize;
    edit(&mut b, ho);
    fix_vhd_footers(&mut b);
    fix_vhd_header(&mut b, ho);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn hostile_vhd_sizes() {
    let _serial = testdata::serial();
    let d = tempfile::tempdir().unwrap();
    for (name, bs) in [
        ("bs0.vhd", 0u32),
        ("bs-fffffe00.vhd", 0xFFFF_FE00),
        ("bs-80000000.vhd", 0x8000_0000),
    ] {
        let p = hostile_vhd(d.path(), name, |b, ho| {
            b[ho + 0x20..ho + 0x24].copy_from_slice(&bs.to_be_bytes());
        });
        hostile(&p, "invalid_block_size", &["Block Size"]);
    }
    // A BAT of 2^30 entries (4 GiB) for a 512 GiB disk of 512-byte blocks,
    // in a 1 MiB file.
    let p = hostile_vhd(d.path(), "bat-4g.vhd", |b, ho| {
        let n = b.len();
        for at in [0, n - 512] {
            b[at + 0x28..at + 0x30].copy_from_slice(&(512u64 << 30).to_be_bytes());
            b[at + 0x30..at + 0x38].copy_from_slice(&(512u64 << 30).to_be_bytes());
        }
        b[ho + 0x1C..ho + 0x20].copy_from_slice(&(1u32 << 30).to_be_bytes());
        b[ho + 0x20..ho + 0x24].copy_from_slice(&512u32.to_be_bytes());
    });
    hostile(
        &p,
        "bat_outside_file",
        &["Table Offset", "Max Table Entries"],
    );
    // A BAT count far beyond what the size needs.
    let p = hostile_vhd(d.path(), "bat-count.vhd", |b, ho| {
        b[ho + 0x1C..ho + 0x20].copy_from_slice(&u32::MAX.to_be_bytes());
    });
    hostile(&p, "max_table_entries_invalid", &["Max Table Entries"]);
}

/// Copy region table 1 over table 2, then fix both checksums.
fn fix_region_tables(b: &mut [u8]) {
    let [one, two] = VHDX_REGION_TABLES;
    let copy = b[one..one + (64 << 10)].to_vec();
    put(b, two, &copy);
    fix_vhdx_region_tables(b);
}

fn hostile_vhdx(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let p = dir.join(name);
    create(&p, 64 << 20, 1 << 20);
    let mut b = std::fs::read(&p).unwrap();
    edit(&mut b);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn hostile_vhdx_sizes() {
    let _serial = testdata::serial();
    let d = tempfile::tempdir().unwrap();
    // The BAT region claims ~4 GiB.
    let p = hostile_vhdx(d.path(), "bat-region.vhdx", |b| {
        let (_, _, e) = vhdx_region(b, &BAT_GUID);
        b[e + 24..e + 28].copy_from_slice(&0xFFF0_0000u32.to_le_bytes());
        fix_region_tables(b);
    });
    assert!(std::fs::metadata(&p).unwrap().len() < 8 << 20);
    hostile(&p, "region_outside_file", &["BAT", "region"]);
    // A virtual size whose BAT would need gigabytes (64 TiB / 1 MiB blocks
    // = 2^26 entries... plus the region is only 1 MiB).
    let p = hostile_vhdx(d.path(), "vsize.vhdx", |b| {
        let io = vhdx_item(b, &VIRTUAL_DISK_SIZE);
        b[io..io + 8].copy_from_slice(&(64u64 << 40).to_le_bytes());
    });
    hostile(
        &p,
        "bat_region_too_small",
        &["BAT", "Virtual Disk Size", "virtual size"],
    );
    // The metadata table claims 65535 entries (spec: at most 2047).
    let p = hostile_vhdx(d.path(), "metadata-count.vhdx", |b| {
        let (mo, _, _) = vhdx_region(b, &META_GUID);
        b[mo + 10..mo + 12].copy_from_slice(&0xFFFFu16.to_le_bytes());
    });
    hostile(
        &p,
        "metadata_table_entry_count",
        &["EntryCount", "entry count", "entries"],
    );
    // A log entry whose EntryLength (4 GiB - 4 KiB) is beyond the log.
    let p = hostile_vhdx(d.path(), "log-length.vhdx", |b| {
        let h = 64usize << 10;
        let lo = le64(b, h + 72) as usize;
        let ll = le32(b, h + 68);
        assert!(ll > 0);
        let guid = [0x5Au8; 16];
        let mut e = vec![0u8; 4096];
        e[0..4].copy_from_slice(b"loge");
        e[8..12].copy_from_slice(&0xFFFF_F000u32.to_le_bytes());
        e[12..16].copy_from_slice(&0u32.to_le_bytes());
        e[16..24].copy_from_slice(&1u64.to_le_bytes());
        e[24..28].copy_from_slice(&0u32.to_le_bytes());
        e[32..48].copy_from_slice(&guid);
        let flen = (b.len() as u64).div_ceil(1 << 20) << 20;
        e[48..56].copy_from_slice(&flen.to_le_bytes());
        e[56..64].copy_from_slice(&flen.to_le_bytes());
        // The CRC over the first sector only (the claimed length cannot
        // be summed): the length must be refused before the CRC matters.
        let c = formats::checksum::crc32c_zeroed(&e, 4);
        e[4..8].copy_from_slice(&c.to_le_bytes());
        b[lo..lo + 4096].copy_from_slice(&e);
        patch_vhdx_headers(b, 48, &guid);
    });
    hostile(
        &p,
        "log_sequence_invalid",
        &["EntryLength", "entry length", "log"],
    );
}
