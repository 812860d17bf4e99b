//! Issue 8 through the real binary: a child whose locators point outside
//! its folder (`merge --json` = 32779, `info --json` unresolved with the
//! paths tried), and hostile sizes in small files (VHD block size 0 /
//! 0xFFFFFE00 / 0x80000000, a BAT claiming gigabytes, a VHDX BAT region and
//! a metadata entry count claiming gigabytes, a log entry longer than the
//! log): each a clear error naming the field, in < 1 s, under 64 MiB of
//! peak RSS (measured with /usr/bin/time), with the file unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, FsNamespace, Namespace};

fn xtask() -> &'static str {
    env!("CARGO_BIN_EXE_xtask")
}

/// Tests of this file run one at a time: spawning the binary forks while
/// another test may hold an image open, and the child shares the flock'd
/// file description until it execs, so that test's next open would see a
/// spurious "locked".
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fs() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
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

fn create(path: &Path, size: u64, block: u32) {
    let params = CreateParams {
        virtual_size: size,
        disk_type: DiskType::Dynamic,
        block_size: Some(block),
        ..Default::default()
    };
    formats::create::create_file(&fs(), path, &params).unwrap();
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(&fs(), path, &opts).unwrap();
    img.write_sectors(0, &vec![0x42; 4096]).unwrap();
}

#[test]
fn outside_locator_merge_and_info() {
    let _serial = serial();
    for vhdx in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let elsewhere = root.join("elsewhere");
        let dir = root.join("a/b");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let (pe, ce) = if vhdx {
            ("vhdx", "avhdx")
        } else {
            ("vhd", "vhd")
        };
        let parent = elsewhere.join(format!("p.{pe}"));
        create(&parent, 8 << 20, if vhdx { 1 << 20 } else { 512 << 10 });
        let child = dir.join(format!("c.{ce}"));
        let p = open_image_file(&fs(), &parent, &ChainOptions::default()).unwrap();
        let mut spec = formats::create::parent_spec(&fs(), p.as_ref(), &parent, &child).unwrap();
        drop(p);
        let rel = format!(r"..\..\elsewhere\p.{pe}");
        spec.relative_path = rel.clone();
        spec.absolute_path = parent.display().to_string();
        spec.file_name = format!("../../elsewhere/p.{pe}");
        formats::create::create_file(
            &fs(),
            &child,
            &CreateParams {
                virtual_size: 8 << 20,
                disk_type: DiskType::Differencing,
                block_size: Some(if vhdx { 1 << 20 } else { 512 << 10 }),
                parent: Some(spec),
                ..Default::default()
            },
        )
        .unwrap();
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

fn vhd_fix(bytes: &mut [u8], ho: usize) {
    let n = bytes.len();
    for at in [0, n - 512] {
        let c = formats::checksum::vhd_checksum(&bytes[at..at + 512], 0x40);
        bytes[at + 0x40..at + 0x44].copy_from_slice(&c.to_be_bytes());
    }
    let c = formats::checksum::vhd_checksum(&bytes[ho..ho + 1024], 0x24);
    bytes[ho + 0x24..ho + 0x28].copy_from_slice(&c.to_be_bytes());
}

/// A 1 MiB-ish dynamic VHD with `edit` applied to (bytes, header offset).
fn hostile_vhd(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>, usize)) -> PathBuf {
    let p = dir.join(name);
    create(&p, 8 << 20, 512 << 10);
    let mut b = std::fs::read(&p).unwrap();
    b.resize((1 << 20) - 512, 0);
    let footer = std::fs::read(&p).unwrap();
    b.extend_from_slice(&footer[footer.len() - 512..]);
    let ho = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
    edit(&mut b, ho);
    vhd_fix(&mut b, ho);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn hostile_vhd_sizes() {
    let _serial = serial();
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

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
const METADATA_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];

/// Region table entry (byte offset in copy 1) of the region `guid`.
fn region_entry(b: &[u8], guid: &[u8; 16]) -> usize {
    let rt = 192 << 10;
    (0..le_u32(b, rt + 8) as usize)
        .map(|i| rt + 16 + 32 * i)
        .find(|e| &b[*e..*e + 16] == guid)
        .expect("region present")
}

fn fix_region_tables(b: &mut [u8]) {
    let (one, two) = (192usize << 10, 256usize << 10);
    let copy = b[one..one + (64 << 10)].to_vec();
    b[two..two + (64 << 10)].copy_from_slice(&copy);
    for at in [one, two] {
        let c = formats::checksum::crc32c_zeroed(&b[at..at + (64 << 10)], 4);
        b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    }
}

fn fix_headers(b: &mut [u8]) {
    for at in [64usize << 10, 128 << 10] {
        let c = formats::checksum::crc32c_zeroed(&b[at..at + 4096], 4);
        b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    }
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
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    // The BAT region claims ~4 GiB.
    let p = hostile_vhdx(d.path(), "bat-region.vhdx", |b| {
        let e = region_entry(b, &BAT_GUID);
        b[e + 24..e + 28].copy_from_slice(&0xFFF0_0000u32.to_le_bytes());
        fix_region_tables(b);
    });
    assert!(std::fs::metadata(&p).unwrap().len() < 8 << 20);
    hostile(&p, "region_outside_file", &["BAT", "region"]);
    // A virtual size whose BAT would need gigabytes (64 TiB / 1 MiB blocks
    // = 2^26 entries... plus the region is only 1 MiB).
    let p = hostile_vhdx(d.path(), "vsize.vhdx", |b| {
        let e = region_entry(b, &METADATA_GUID);
        let mo = le_u64(b, e + 16) as usize;
        let size_guid: [u8; 16] = [
            0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B,
            0xF4, 0xB8,
        ];
        let n = u16::from_le_bytes([b[mo + 10], b[mo + 11]]) as usize;
        let t = (0..n)
            .map(|i| mo + 32 + 32 * i)
            .find(|t| b[*t..*t + 16] == size_guid)
            .unwrap();
        let io = mo + le_u32(b, t + 16) as usize;
        b[io..io + 8].copy_from_slice(&(64u64 << 40).to_le_bytes());
    });
    hostile(
        &p,
        "bat_region_too_small",
        &["BAT", "Virtual Disk Size", "virtual size"],
    );
    // The metadata table claims 65535 entries (spec: at most 2047).
    let p = hostile_vhdx(d.path(), "metadata-count.vhdx", |b| {
        let e = region_entry(b, &METADATA_GUID);
        let mo = le_u64(b, e + 16) as usize;
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
        let lo = le_u64(b, h + 72) as usize;
        let ll = le_u32(b, h + 68);
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
        for at in [64usize << 10, 128 << 10] {
            b[at + 48..at + 64].copy_from_slice(&guid);
        }
        fix_headers(b);
    });
    hostile(
        &p,
        "log_sequence_invalid",
        &["EntryLength", "entry length", "log"],
    );
}
