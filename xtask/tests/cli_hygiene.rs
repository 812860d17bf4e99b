//! Issue 19 items 3 and 6 through the real binary:
//!
//! - output into a pipe whose reader went away (`info IMAGE | head -1`)
//!   ends quietly: the usual exit code, no panic, no exit 101;
//! - SIGINT during `merge` cancels it at a safe point: the JSON outcome
//!   says `cancelled` (return value 32768, exit 1), the destination reads
//!   as before and passes `check`, and a re-run completes;
//! - a `write` that does not fit is refused before any byte is written.

mod common;
use common::{data_file, s, xtask as run, xtask_ok as ok};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use formats::chain::{Chain, ChainOptions};
use formats::{FsNamespace, Namespace};
use testdata::sha256_file;

fn xtask() -> &'static str {
    env!("CARGO_BIN_EXE_xtask")
}

/// SHA-256 of the virtual content of `image`'s chain (read-only open,
/// closed again before returning).
fn content_hash(image: &Path) -> String {
    let ns: Arc<dyn Namespace> = Arc::new(FsNamespace);
    let chain = Chain::open(&ns, image, &ChainOptions::default()).unwrap();
    testdata::hash_layers(chain.layers()).unwrap()
}

/// A small VHDX chain (base with data, child with data) in `dir`.
fn small_chain(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    let data = dir.join("data.bin");
    data_file(&data, 1 << 20, 7);
    ok(&["create", s(&base), "--size", "64M"]);
    ok(&["write", s(&base), "--offset", "0", "--input", s(&data)]);
    ok(&["create", s(&child), "--parent", s(&base)]);
    ok(&["write", s(&child), "--offset", "8M", "--input", s(&data)]);
    (base, child)
}

/// Start the binary with `args`, no stdin, stdout and stderr piped.
fn spawn_piped(args: &[&str]) -> std::process::Child {
    Command::new(xtask())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Spawn `args` with stdout piped, let the reader read `lines` lines (0:
/// none) and close the pipe, then wait. The exit code and stderr.
fn into_closed_pipe(args: &[&str], lines: usize) -> (Option<i32>, String) {
    let mut child = spawn_piped(args);
    let stdout = child.stdout.take().unwrap();
    if lines > 0 {
        let mut r = BufReader::new(stdout);
        for _ in 0..lines {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "{args:?}: no output to read");
        }
        drop(r);
    } else {
        drop(stdout);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let (_, child) = small_chain(tmp.path());
    let c = s(&child);
    for args in [
        vec!["info", c],
        vec!["info", c, "--json"],
        vec!["check", c],
        vec!["check", c, "--json"],
    ] {
        // 0 lines: the pipe is closed before the command writes anything,
        // so its first write certainly meets EPIPE; 1 line: `| head -1`.
        for lines in [0, 1] {
            let (code, stderr) = into_closed_pipe(&args, lines);
            assert!(
                !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
                "{args:?} (reader read {lines} line(s)): {stderr}"
            );
            assert_eq!(
                code,
                Some(0),
                "{args:?} (reader read {lines} line(s)): usual exit code expected; stderr: {stderr}"
            );
        }
    }
}

/// Build base.vhdx (1 MiB of data) and child.avhdx holding `gib` GiB of
/// data in 64 MiB writes, through the `create` and `write` commands.
fn big_chain(dir: &Path, gib: u64) -> (PathBuf, PathBuf) {
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    let small = dir.join("small.bin");
    let piece = dir.join("piece.bin");
    data_file(&small, 1 << 20, 3);
    data_file(&piece, 64 << 20, 5);
    let size = format!("{gib}G");
    ok(&["create", s(&base), "--size", &size]);
    ok(&["write", s(&base), "--offset", "0", "--input", s(&small)]);
    ok(&["write", s(&base), "--offset", "100M", "--input", s(&small)]);
    ok(&["create", s(&child), "--parent", s(&base)]);
    for i in 0..gib * 16 {
        let off = format!("{}M", i * 64);
        ok(&["write", s(&child), "--offset", &off, "--input", s(&piece)]);
    }
    std::fs::remove_file(&piece).unwrap();
    (base, child)
}

/// Apparent size of a file.
fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// After an interrupted merge is re-run, the base is no larger than an
/// uninterrupted merge leaves it, within one 32 MiB block: `gib` GiB of
/// child data over a base holding two blocks the child overwrites.
fn assert_space_of_rerun(base: &Path, before: u64, gib: u64) {
    let limit = before + (gib << 30) + (32 << 20);
    let after = file_len(base);
    eprintln!("base {before} bytes before, {after} after the re-run (limit {limit})");
    assert!(
        after <= limit,
        "the re-run merge left {after} bytes, more than {limit} (before {before} + {gib} GiB + one block)"
    );
}

#[test]
fn sigkill_during_a_merge_then_rerun_ends_within_one_block() {
    let _serial = testdata::serial();
    let gib = 1u64;
    let tmp = tempfile::tempdir().unwrap();
    let (base, child) = big_chain(tmp.path(), gib);
    let before = file_len(&base);
    let child_view = content_hash(&child);
    let mut merge = Command::new(xtask())
        .args(["merge", s(&child), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    merge.kill().unwrap();
    let status = merge.wait().unwrap();
    eprintln!(
        "merge after SIGKILL: {status:?}, base now {} bytes",
        file_len(&base)
    );
    let again = ok(&["merge", s(&child), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["return_value"], 0, "{v}");
    assert_eq!(content_hash(&base), child_view, "merged content");
    ok(&["check", s(&base)]);
    assert_space_of_rerun(&base, before, gib);
}

/// Run `xtask ARGS` (a `--json` command), send it SIGINT after 0.3 s, and
/// return its JSON outcome, exit status and stderr. The process must have
/// exited by itself (the handler was installed), not died by the signal.
fn interrupted(args: &[&str]) -> (serde_json::Value, Option<i32>, String) {
    let child = spawn_piped(args);
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success(), "kill -INT failed");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code.is_some(),
        "{args:?} died by the signal itself ({:?}): the handler was not installed \
         0.3 s after the start; stderr: {stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} --json output: {e}: {stdout} {stderr}"));
    (v, code, stderr)
}

#[test]
fn sigint_cancels_a_running_merge() {
    let _serial = testdata::serial();
    for gib in [1u64, 2, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let (base, child) = big_chain(tmp.path(), gib);
        let len_before = file_len(&base);
        let base_before = content_hash(&base);
        let child_view = content_hash(&child);
        assert_ne!(base_before, child_view);

        let (v, code, stderr) = interrupted(&["merge", s(&child), "--json"]);
        if v["state"] == "completed" {
            eprintln!(
                "the merge of a {gib} GiB child finished before the SIGINT (0.3 s); \
                 trying again with a child twice as big"
            );
            continue;
        }
        assert_eq!(v["state"], "cancelled", "{v}\n{stderr}");
        assert_eq!(v["return_value"], 32768, "{v}");
        assert_eq!(
            code,
            Some(1),
            "documented exit status for a cancelled merge"
        );
        assert!(
            v["bytes_merged"].as_u64().unwrap() < v["bytes_total"].as_u64().unwrap(),
            "{v}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        eprintln!(
            "cancelled a {gib} GiB merge after {} of {} bytes",
            v["bytes_merged"], v["bytes_total"]
        );

        // The destination reads as before and is sound; the child still
        // links to it.
        assert_eq!(content_hash(&base), base_before, "destination changed");
        assert_eq!(
            file_len(&base),
            len_before,
            "a cancelled merge gives back what it staged"
        );
        ok(&["check", s(&base)]);
        ok(&["check", s(&child)]);

        // Running the same command again completes the merge.
        let again = ok(&["merge", s(&child), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(v["state"], "completed", "{v}");
        assert_eq!(v["return_value"], 0, "{v}");
        assert_eq!(content_hash(&base), child_view, "merged content");
        ok(&["check", s(&base)]);
        assert_space_of_rerun(&base, len_before, gib);
        return;
    }
    panic!("the merge of a 4 GiB child always finished before the SIGINT at 0.3 s");
}

#[test]
fn refused_write_leaves_the_image_byte_identical() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 10 MiB: more than one 4 MiB write chunk, so a write validated chunk
    // by chunk would have written its first chunks before refusing.
    let data = dir.join("data.bin");
    data_file(&data, 10 << 20, 11);
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    let dynamic = dir.join("dynamic.vhd");
    let fixed = dir.join("fixed.vhd");
    ok(&["create", s(&base), "--size", "64M"]);
    ok(&["create", s(&child), "--parent", s(&base)]);
    ok(&["create", s(&dynamic), "--size", "64M"]);
    ok(&["create", s(&fixed), "--size", "64M", "--type", "fixed"]);
    for image in [&child, &base, &dynamic, &fixed] {
        let name = image.display();
        let before = sha256_file(image).unwrap();
        // The write `out` (`how`) was refused and changed no byte.
        let refused = |out: std::process::Output, how: &str| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {how}: {stderr}");
            assert!(stderr.contains("nothing written"), "{stderr}");
            assert_eq!(
                sha256_file(image).unwrap(),
                before,
                "{name} changed ({how})"
            );
        };
        // Crossing the end (first 6 MiB would fit), unaligned, and past it.
        for offset in ["58M", "62914561", "64M", "65M"] {
            let out = run(&["write", s(image), "--offset", offset, "--input", s(&data)]);
            refused(out, &format!("at {offset}"));
        }
        // The same through stdin (a stream, length unknown up front).
        let out = Command::new(xtask())
            .args(["write", s(image), "--offset", "58M"])
            .stdin(std::fs::File::open(&data).unwrap())
            .output()
            .unwrap();
        refused(out, "stdin");

        // A write that fits still goes through, unaligned edges included.
        ok(&["write", s(image), "--offset", "1000", "--input", s(&data)]);
        let raw = dir.join("out.raw");
        ok(&["convert", s(image), s(&raw)]);
        let got = std::fs::read(&raw).unwrap();
        assert!(
            got[1000..1000 + (10 << 20)] == std::fs::read(&data).unwrap()[..],
            "{name}: content written"
        );
        std::fs::remove_file(&raw).unwrap();
        ok(&["check", s(image)]);
    }
}

#[test]
fn sigint_cancels_a_running_rebase() {
    let _serial = testdata::serial();
    for gib in [1u64, 2] {
        let tmp = tempfile::tempdir().unwrap();
        // base <- child (gib GiB) <- top: rebasing top onto base pulls the
        // child's data into top.
        let (base, child) = big_chain(tmp.path(), gib);
        let top = tmp.path().join("top.avhdx");
        ok(&["create", s(&top), "--parent", s(&child)]);
        let top_len = file_len(&top);
        let view = content_hash(&top);
        let (v, code, stderr) = interrupted(&["rebase", s(&top), "--onto", s(&base), "--json"]);
        if v["state"] == "completed" {
            eprintln!("the rebase of {gib} GiB finished before the SIGINT; trying a bigger one");
            continue;
        }
        assert_eq!(v["state"], "cancelled", "{v}\n{stderr}");
        assert_eq!(v["return_value"], 32768, "{v}");
        assert_eq!(code, Some(1), "{v}");
        // The child reads as before, still over the old chain, and its
        // staged space is given back. (Its header may carry a new
        // FileWriteGuid: the writable open that a cancel interrupts takes
        // one, as for a cancelled merge.)
        assert_eq!(
            content_hash(&top),
            view,
            "the cancelled rebase changed the view"
        );
        assert_eq!(file_len(&top), top_len, "staged space given back");
        ok(&["check", s(&top)]);
        // The same command again completes it; the view is kept.
        let again = ok(&["rebase", s(&top), "--onto", s(&base), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(v["state"], "completed", "{v}");
        std::fs::remove_file(&child).unwrap();
        assert_eq!(content_hash(&top), view, "rebased content");
        ok(&["check", s(&top)]);
        return;
    }
    panic!("the rebase always finished before the SIGINT at 0.3 s");
}
