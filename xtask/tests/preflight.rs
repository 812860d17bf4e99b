//! The merge preflight: `merge --dry-run` changes no byte and its counts
//! are what the merge then copies; a merge whose peak extra space does not
//! fit the destination's file system is refused (exit 9, nothing changed)
//! unless `--no-space-check`.

mod common;
use common::data as pattern;
use common::{json, ok, s, write, xtask};

use std::path::{Path, PathBuf};
use std::process::Command;

use testdata::file_hashes as hashes;

const MIB: u64 = 1 << 20;

/// base <- child, the child holding 6 MiB in one run and 64 runs of 4 KiB
/// a page apart (partial blocks).
fn chain(dir: &Path, base_ext: &str, child_ext: &str) -> (PathBuf, PathBuf) {
    let base = dir.join(format!("base.{base_ext}"));
    let child = dir.join(format!("child.{child_ext}"));
    ok(xtask(&["create", s(&base), "--size", "64M"]), "create base");
    write(&base, 0, &pattern(1, 8 * MIB), dir);
    ok(
        xtask(&["create", s(&child), "--parent", s(&base)]),
        "create child",
    );
    write(&child, 5 * MIB, &pattern(2, 6 * MIB), dir);
    for i in 0..64u64 {
        write(&child, 40 * MIB + i * 8192, &pattern(3 + i, 4096), dir);
    }
    (base, child)
}

fn dry_run_then_merge(base_ext: &str, child_ext: &str) {
    let d = tempfile::tempdir().unwrap();
    let (base, child) = chain(d.path(), base_ext, child_ext);
    let before = hashes(d.path());
    let out = ok(
        xtask(&["merge", s(&child), "--dry-run", "--json"]),
        "dry run",
    );
    let dry = json(&out);
    assert_eq!(hashes(d.path()), before, "a dry run changed a file");
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["return_value"], 0, "{dry}");
    let p = &dry["preflight"];
    let to_copy = p["bytes_to_copy"].as_u64().unwrap();
    assert_eq!(to_copy, 6 * MIB + 64 * 4096, "{dry}");
    assert!(p["blocks"].as_u64().unwrap() >= 2, "{dry}");
    assert!(p["free_bytes"].as_u64().unwrap() > 0, "{dry}");
    let peak = p["peak_extra_bytes"].as_u64().unwrap();
    assert!(peak >= to_copy, "peak {peak} below the bytes copied: {dry}");
    // Human form: the preflight line, and the dry-run verdict.
    let text = ok(xtask(&["merge", s(&child), "--dry-run"]), "dry run");
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(
        err.contains("preflight: ") && err.contains("dry run: "),
        "{err}"
    );
    assert_eq!(hashes(d.path()), before, "a dry run changed a file");

    let real = json(&ok(xtask(&["merge", s(&child), "--json"]), "merge"));
    assert_eq!(real["bytes_merged"].as_u64(), Some(to_copy), "{real}");
    // The real merge computed the same preflight (free space aside: it
    // differs between the runs).
    for k in [
        "bytes_to_merge",
        "bytes_to_copy",
        "blocks",
        "block_size",
        "peak_extra_bytes",
    ] {
        assert_eq!(
            real["preflight"][k], dry["preflight"][k],
            "{k}: {real} vs {dry}"
        );
    }
    ok(xtask(&["check", s(&base)]), "check");
}

#[test]
fn dry_run_changes_nothing_and_counts_what_a_vhdx_merge_copies() {
    dry_run_then_merge("vhdx", "avhdx");
}

#[test]
fn dry_run_changes_nothing_and_counts_what_a_vhd_merge_copies() {
    dry_run_then_merge("vhd", "vhd");
}

/// A tmpfs of `size` bytes mounted under a temporary directory, unmounted
/// on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: u64) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_merge_that_cannot_fit_is_refused_before_any_byte_changes() {
    let fs = match SmallFs::new(64 * MIB) {
        Ok(f) => f,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };
    let dir = fs.path();
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    // 1 MiB blocks: the peak is close to the data, and the file system is
    // filled until less than that is left.
    ok(
        xtask(&["create", s(&base), "--size", "32M", "--block-size", "1M"]),
        "create base",
    );
    let scratch = tempfile::tempdir().unwrap();
    write(&base, 0, &pattern(1, 16 * MIB), scratch.path());
    ok(
        xtask(&["create", s(&child), "--parent", s(&base)]),
        "create child",
    );
    write(&child, 0, &pattern(2, 16 * MIB), scratch.path());
    let free = {
        let dry = json(&ok(
            xtask(&["merge", s(&child), "--dry-run", "--json"]),
            "dry run",
        ));
        let p = &dry["preflight"];
        let (peak, free) = (
            p["peak_extra_bytes"].as_u64().unwrap(),
            p["free_bytes"].as_u64().unwrap(),
        );
        // Leave half the peak free.
        let filler = free.saturating_sub(peak / 2);
        std::fs::write(dir.join("filler"), vec![0xA5u8; filler as usize]).unwrap();
        eprintln!("peak {peak}, free {free}, filler {filler}");
        free - filler
    };
    let before = hashes(dir);
    let out = xtask(&["merge", s(&child), "--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(9), "{v}");
    assert_eq!(v["error_kind"], "insufficient_space", "{v}");
    assert_eq!(v["return_value"], 32768, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains(&v["preflight"]["peak_extra_bytes"].to_string())
            && msg.contains(&v["preflight"]["free_bytes"].to_string()),
        "the refusal names both numbers: {msg}"
    );
    assert!(v["preflight"]["free_bytes"].as_u64().unwrap() <= free + MIB);
    assert_eq!(hashes(dir), before, "a refused merge changed a file");

    // With room again the same merge goes through.
    std::fs::remove_file(dir.join("filler")).unwrap();
    let v = json(&ok(xtask(&["merge", s(&child), "--json"]), "merge"));
    assert_eq!(v["return_value"], 0, "{v}");
    ok(xtask(&["check", s(&base)]), "check");
}
