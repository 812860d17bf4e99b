//! Issue 19 item 2 through the real binary: re-running `merge` after a
//! merge completed returns 0 and says "already merged" (`already_merged`
//! in `--json`) — source kept or removed (`--remove-merged`), record
//! (`.cfmerge`) present or gone — decided from the committed-merge marker
//! `<source>.cfmerged` checked against the destination's identity, while a
//! genuinely mismatched chain still gets 32775 and changes no byte.

mod common;
use common::{data_file, s, xtask_ok as ok, Fmt, FMTS};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testdata::file_hashes as hashes;

fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run xtask")
}

/// `merge ARGS --json`: the outcome, checked against the exit status.
fn merge(args: &[&str]) -> Value {
    merge_in(Path::new("."), args)
}

fn merge_in(cwd: &Path, args: &[&str]) -> Value {
    let mut all = vec!["merge"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run_in(cwd, &all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{all:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = v["return_value"].as_u64().unwrap();
    let exit = match code {
        0 => 0,
        32775 => 5,
        32779 => 3,
        _ => out.status.code().unwrap_or(-1),
    };
    assert_eq!(out.status.code(), Some(exit), "{all:?}: {v}");
    v
}

/// `merge ARGS --json` that merges for the first time: 0, and not
/// already merged.
fn merged(args: &[&str]) -> Value {
    let v = merge(args);
    assert_eq!(v["return_value"], 0, "{args:?}: {v}");
    assert_eq!(v["already_merged"], false, "{args:?}: {v}");
    v
}

/// Plain `merge ARGS` (human output): exit 0, saying "already merged".
fn says_already_merged(args: &[&str]) {
    let out = ok(&[&["merge"], args].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already merged"), "{args:?}: {err}");
}

fn assert_already_merged(v: &Value, dest: &Path) {
    assert_eq!(v["return_value"], 0, "{v}");
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["already_merged"], true, "{v}");
    assert_eq!(v["bytes_merged"], 0, "{v}");
    assert_eq!(v["destination"], s(dest), "{v}");
}

fn assert_linkage_refused(v: &Value) {
    assert_eq!(v["return_value"], 32775, "{v}");
    assert_eq!(v["already_merged"], false, "{v}");
}

fn write(image: &Path, offset: &str, seed: u64, dir: &Path) {
    let data = dir.join(format!("data-{seed}.bin"));
    data_file(&data, 256 << 10, seed);
    ok(&["write", s(image), "--offset", offset, "--input", s(&data)]);
    std::fs::remove_file(&data).unwrap();
}

fn create_base(path: &Path, fmt: Fmt, dir: &Path, seed: u64) {
    ok(&[
        "create",
        s(path),
        "--size",
        "8M",
        "--block-size",
        fmt.block(),
    ]);
    write(path, "0", seed, dir);
}

fn create_child(path: &Path, parent: &Path, fmt: Fmt, dir: &Path, seed: u64) {
    ok(&[
        "create",
        s(path),
        "--parent",
        s(parent),
        "--block-size",
        fmt.block(),
    ]);
    write(path, "1M", seed, dir);
}

/// base <- child in a fresh temporary directory (the guard), both holding
/// data.
fn pair(fmt: Fmt) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let base = dir.join(format!("base.{}", fmt.base()));
    let child = dir.join(format!("child.{}", fmt.child()));
    create_base(&base, fmt, dir, 11);
    create_child(&child, &base, fmt, dir, 12);
    (d, base, child)
}

/// The virtual content of `image`'s chain, as a SHA-256 of its raw form.
fn content(image: &Path, dir: &Path) -> String {
    let raw = dir.join("content.raw");
    ok(&["convert", s(image), s(&raw)]);
    let h = testdata::sha256_file(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    h
}

fn marker(source: &Path) -> PathBuf {
    PathBuf::from(format!("{}.cfmerged", source.display()))
}

fn record(source: &Path) -> PathBuf {
    PathBuf::from(format!("{}.cfmerge", source.display()))
}

#[test]
fn rerun_with_the_source_kept_is_already_merged() {
    for fmt in FMTS {
        let (d, base, child) = pair(fmt);
        let view = content(&child, d.path());

        let v = merged(&[s(&child)]);
        assert!(v["bytes_merged"].as_u64().unwrap() > 0, "{v}");
        assert!(!record(&child).exists(), "{fmt:?}: record left");
        assert!(
            marker(&child).exists(),
            "{fmt:?}: no committed-merge marker"
        );
        assert_eq!(content(&base, d.path()), view, "{fmt:?}: merged content");

        // The same command again, and with the destination named.
        let before = hashes(d.path());
        assert_already_merged(&merge(&[s(&child)]), &base);
        assert_already_merged(&merge(&[s(&child), s(&base)]), &base);
        assert_eq!(hashes(d.path()), before, "{fmt:?}: a no-op changed bytes");

        // Human output says so, exit 0.
        says_already_merged(&[s(&child)]);

        // Asked now, the obsolete source goes (it still carries the
        // identity the marker recorded); the marker stays and answers.
        let v = merge(&[s(&child), "--remove-merged"]);
        assert_already_merged(&v, &base);
        assert_eq!(v["removed"][0], s(&child), "{v}");
        assert!(!child.exists());
        assert_already_merged(&merge(&[s(&child)]), &base);
        assert_eq!(content(&base, d.path()), view, "{fmt:?}: content");
    }
}

#[test]
fn rerun_after_remove_merged_is_already_merged() {
    for fmt in FMTS {
        let (d, base, child) = pair(fmt);
        let view = content(&child, d.path());
        merged(&[s(&child), "--remove-merged"]);
        assert!(!child.exists() && !record(&child).exists());

        for args in [
            vec![s(&child)],
            vec![s(&child), s(&base)],
            vec![s(&child), "--remove-merged"],
        ] {
            assert_already_merged(&merge(&args), &base);
        }
        says_already_merged(&[s(&child), s(&base)]);
        assert_eq!(content(&base, d.path()), view, "{fmt:?}: content");
        assert_eq!(ok(&["check", s(&base)]).status.code(), Some(0));
    }
}

/// A crash after the commit but before the record became the marker leaves
/// the record (`.cfmerge`): renaming the marker back recreates that state
/// exactly. The re-run finishes and answers "already merged" too.
#[test]
fn rerun_with_the_record_left_is_already_merged() {
    for fmt in FMTS {
        for remove in [false, true] {
            let (d, base, child) = pair(fmt);
            let view = content(&child, d.path());
            let mut args = vec![s(&child)];
            if remove {
                args.push("--remove-merged");
            }
            assert_eq!(merge(&args)["return_value"], 0);
            std::fs::rename(marker(&child), record(&child)).unwrap();

            let v = merge(&[s(&child)]);
            assert_already_merged(&v, &base);
            assert_eq!(v["resumed"], true, "{v}");
            assert!(!record(&child).exists(), "{fmt:?}: record left");
            assert!(marker(&child).exists(), "{fmt:?}: no marker");
            assert_eq!(child.exists(), !remove, "{fmt:?}");
            // And from the marker alone.
            let v = merge(&[s(&child), s(&base)]);
            assert_already_merged(&v, &base);
            assert_eq!(v["resumed"], false, "{v}");
            assert_eq!(content(&base, d.path()), view, "{fmt:?}: content");
        }
    }
}

/// The marker and the record name their files relative to their own
/// directory: a merge run with relative paths is recognised from anywhere.
#[test]
fn rerun_from_another_directory_is_already_merged() {
    for fmt in FMTS {
        for record_left in [false, true] {
            let (d, base, child) = pair(fmt);
            let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
            let v = merge_in(d.path(), &[&name(&child), &name(&base)]);
            assert_eq!(v["return_value"], 0, "{v}");
            assert_eq!(v["destination"], name(&base), "{v}");
            if record_left {
                std::fs::rename(marker(&child), record(&child)).unwrap();
            }
            let elsewhere = tempfile::tempdir().unwrap();
            let v = merge_in(elsewhere.path(), &[s(&child)]);
            assert_already_merged(&v, &base);
            assert_eq!(v["resumed"], record_left, "{v}");
            let v = merge_in(elsewhere.path(), &[s(&child), s(&base), "--remove-merged"]);
            assert_already_merged(&v, &base);
            assert_eq!(v["removed"][0], s(&child), "{v}");
            assert!(!child.exists() && !record(&child).exists());
        }
    }
}

/// Into an ancestor: `merge top base`, re-run, and the other merges of the
/// same chain that did not happen.
#[test]
fn into_an_ancestor_only_the_same_merge_is_already_merged() {
    for fmt in FMTS {
        let (d, base, mid) = pair(fmt);
        let top = d.path().join(format!("top.{}", fmt.child()));
        create_child(&top, &mid, fmt, d.path(), 13);
        let view = content(&top, d.path());
        assert_eq!(merge(&[s(&top), s(&base)])["return_value"], 0);
        assert_eq!(content(&base, d.path()), view);

        assert_already_merged(&merge(&[s(&top), s(&base)]), &base);
        let before = hashes(d.path());
        // Default destination = mid: not the merge that happened, and
        // mid no longer links to the merged base.
        assert_linkage_refused(&merge(&[s(&top)]));
        assert_linkage_refused(&merge(&[s(&top), s(&mid)]));
        assert_linkage_refused(&merge(&[s(&mid)]));
        assert_eq!(hashes(d.path()), before, "{fmt:?}: a refusal changed bytes");

        let v = merge(&[s(&top), s(&base), "--remove-merged"]);
        assert_already_merged(&v, &base);
        assert_eq!(v["removed"].as_array().unwrap().len(), 2, "{v}");
        assert!(!top.exists() && !mid.exists());
        assert_already_merged(&merge(&[s(&top), s(&base)]), &base);
    }
}

/// Without a completed merge behind it, a broken linkage is 32775 and
/// changes nothing: the parent changed (VHDX: written, so its
/// DataWriteGuid was renewed; VHD: replaced by a new image).
fn break_parent(base: &Path, fmt: Fmt, dir: &Path) {
    match fmt {
        Fmt::Vhdx => write(base, "2M", 99, dir),
        Fmt::Vhd => {
            std::fs::remove_file(base).unwrap();
            create_base(base, fmt, dir, 98);
        }
    }
}

#[test]
fn a_genuine_mismatch_is_still_32775() {
    for fmt in FMTS {
        let (d, base, child) = pair(fmt);
        break_parent(&base, fmt, d.path());
        let before = hashes(d.path());
        assert_linkage_refused(&merge(&[s(&child)]));
        assert_linkage_refused(&merge(&[s(&child), s(&base)]));
        assert_eq!(hashes(d.path()), before, "{fmt:?}: a refusal changed bytes");
        // A source that is simply missing is not found, not merged.
        let gone = d.path().join(format!("gone.{}", fmt.child()));
        assert_eq!(merge(&[s(&gone)])["return_value"], 32779);
    }
}

/// After a completed merge the marker alone proves nothing: a destination
/// changed since, a marker that is torn or deleted, or another image at
/// the source's path leave the usual answer.
#[test]
fn a_stale_or_damaged_marker_proves_nothing() {
    for fmt in FMTS {
        // The destination changed after the merge.
        let (d, base, child) = pair(fmt);
        assert_eq!(merge(&[s(&child)])["return_value"], 0);
        break_parent(&base, fmt, d.path());
        let before = hashes(d.path());
        assert_linkage_refused(&merge(&[s(&child)]));
        assert_linkage_refused(&merge(&[s(&child), "--remove-merged"]));
        assert_eq!(hashes(d.path()), before, "{fmt:?}: a refusal changed bytes");
        assert!(child.exists());

        // A torn marker (CRC mismatch), then none at all.
        let (_d, _base, child) = pair(fmt);
        assert_eq!(merge(&[s(&child)])["return_value"], 0);
        let m = marker(&child);
        let mut bytes = std::fs::read(&m).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        std::fs::write(&m, &bytes).unwrap();
        assert_linkage_refused(&merge(&[s(&child)]));
        std::fs::remove_file(&m).unwrap();
        assert_linkage_refused(&merge(&[s(&child)]));

        // Another image at the source's path: here a new child of the
        // merged base, which merges for real (and replaces the marker) ...
        let (d, base, child) = pair(fmt);
        assert_eq!(merge(&[s(&child), "--remove-merged"])["return_value"], 0);
        create_child(&child, &base, fmt, d.path(), 21);
        let view = content(&child, d.path());
        let v = merged(&[s(&child)]);
        assert!(v["bytes_merged"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(content(&base, d.path()), view, "{fmt:?}: content");
        assert_already_merged(&merge(&[s(&child)]), &base);
        // ... and a child of another parent whose linkage is broken is
        // refused, the old marker notwithstanding.
        let other = d.path().join(format!("other.{}", fmt.base()));
        create_base(&other, fmt, d.path(), 31);
        std::fs::remove_file(&child).unwrap();
        create_child(&child, &other, fmt, d.path(), 32);
        break_parent(&other, fmt, d.path());
        assert_linkage_refused(&merge(&[s(&child)]));
    }
}
