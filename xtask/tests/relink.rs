//! `set-parent` and `rebase` through the real binary (issue 18 items 2 and
//! 3): the content of every affected chain is compared with a byte model
//! and, where installed, with libvhdi (`chain_read.py`, which follows the
//! child's own locator and checks its parent identity, so it confirms the
//! rewritten link independently); every refusal leaves every file
//! byte-identical; the child's size after a relink is checked with
//! `stat`-equivalent lengths and allocated blocks.

mod common;
use common::{json, ok, s, write, xtask, xtask_ok, Fmt, FMTS};

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use testdata::file_hashes as hashes;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// The extension of a differencing child: `.avhd` for VHD (as Hyper-V
/// names checkpoints), `.avhdx` for VHDX.
fn child_ext(fmt: Fmt) -> &'static str {
    match fmt {
        Fmt::Vhd => "avhd",
        Fmt::Vhdx => fmt.child(),
    }
}

/// Every format over a dynamic and over a fixed base, with a label.
fn kinds() -> Vec<(Fmt, bool, String)> {
    FMTS.into_iter()
        .flat_map(|fmt| [false, true].map(|fixed| (fmt, fixed, format!("{fmt:?} fixed={fixed}"))))
        .collect()
}

/// A chain under construction with its byte model per image.
struct Builder {
    dir: PathBuf,
    fmt: Fmt,
    model: BTreeMap<PathBuf, Vec<u8>>,
}

impl Builder {
    fn new(dir: &Path, fmt: Fmt) -> Self {
        Builder {
            dir: dir.to_path_buf(),
            fmt,
            model: BTreeMap::new(),
        }
    }

    /// A 16 MiB base `stem.vhd(x)` in 2 MiB blocks, dynamic or fixed.
    fn base(&mut self, stem: &str, fixed: bool) -> PathBuf {
        let p = self.dir.join(format!("{stem}.{}", self.fmt.base()));
        let mut args = vec!["create", s(&p), "--size", "16M", "--block-size", "2M"];
        if fixed {
            args.extend(["--type", "fixed"]);
        }
        xtask_ok(&args);
        self.model.insert(p.clone(), vec![0; SIZE as usize]);
        p
    }

    /// A differencing child `stem.avhd(x)` of `parent`.
    fn child(&mut self, stem: &str, parent: &Path) -> PathBuf {
        let p = self.dir.join(format!("{stem}.{}", child_ext(self.fmt)));
        xtask_ok(&["create", s(&p), "--parent", s(parent), "--block-size", "2M"]);
        let m = self.model[parent].clone();
        self.model.insert(p.clone(), m);
        p
    }

    /// What the refusal tests relink: base <- child <- grand, the base and
    /// the child holding 1 MiB each, and a base of another size (8 MiB,
    /// `small`, outside the model).
    fn refusal_chain(&mut self) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let base = self.base("base", false);
        self.write(&base, 0, 1 << 20, 1);
        let child = self.child("child", &base);
        self.write(&child, 2 << 20, 1 << 20, 2);
        let grand = self.child("grand", &child);
        let small = self.dir.join(format!("small.{}", self.fmt.base()));
        xtask_ok(&["create", s(&small), "--size", "8M"]);
        (base, child, grand, small)
    }

    /// Write through `img` (4 KiB multiples: libvhdi misreads finer VHD
    /// bitmap patterns, see chain_read.py).
    fn write(&mut self, img: &Path, offset: u64, len: usize, seed: u64) {
        let data = common::data(seed, len as u64);
        write(img, offset, &data, &self.dir);
        self.model.get_mut(img).unwrap()[offset as usize..offset as usize + len]
            .copy_from_slice(&data);
    }
}

/// The virtual content of `img` through its chain (`convert` to raw).
fn content(img: &Path, extra: &[&str]) -> Vec<u8> {
    let out = img.with_extension("content.raw");
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["convert", s(img), s(&out)];
    args.extend_from_slice(extra);
    xtask_ok(&args);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// Content, `check` clean and (when installed) libvhdi through the image's
/// own locators, all equal to `model`.
fn verify(img: &Path, model: &[u8], what: &str) {
    verify_with(img, model, what, &[]);
}

/// `verify`, with libvhdi given the chain (nearest first) where it cannot
/// follow the locator itself: for a VHD it looks for the Parent Unicode
/// Name beside the child, not the W2ru/W2ku paths.
fn verify_with(img: &Path, model: &[u8], what: &str, libvhdi_parents: &[&Path]) {
    assert!(
        content(img, &[]) == model,
        "{what}: {} does not read its model",
        img.display()
    );
    ok(
        xtask(&["check", s(img)]),
        &format!("{what}: check {}", img.display()),
    );
    if testdata::have_libvhdi() {
        assert_eq!(
            testdata::libvhdi_sha(img, libvhdi_parents),
            testdata::sha256(model),
            "{what}: libvhdi reads {} differently",
            img.display()
        );
    }
}

/// (apparent, allocated) bytes, as `stat -c '%s %b'` shows them.
fn stat(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap();
    (m.len(), m.blocks() * 512)
}

/// Run `args --json`; the outcome and the exit status.
fn run_json(args: &[&str]) -> (Value, Option<i32>) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = xtask(&all);
    (json(&out), out.status.code())
}

/// `args` must be refused with `exit` and `kind`, changing no file in `dir`.
fn refused(dir: &Path, args: &[&str], exit: i32, kind: &str) -> Value {
    let before = hashes(dir);
    let (v, code) = run_json(args);
    assert_eq!(code, Some(exit), "{args:?}: {v}");
    assert_eq!(v["error_kind"], kind, "{args:?}: {v}");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        args[1..]
            .iter()
            .filter(|a| !a.starts_with("--"))
            .any(|a| msg.contains(a.rsplit('/').next().unwrap())),
        "{args:?}: the message names a file involved: {msg}"
    );
    assert_eq!(hashes(dir), before, "{args:?} changed a file");
    v
}

#[test]
fn set_parent_reconnects_a_moved_parent() {
    for (fmt, fixed, what) in kinds() {
        let t = tempfile::tempdir().unwrap();
        let mut b = Builder::new(t.path(), fmt);
        let base = b.base("base", fixed);
        b.write(&base, 0, 6 << 20, 1);
        let child = b.child("child", &base);
        b.write(&child, 3 << 20, 2 << 20, 2);
        // A grandchild links to the child: set-parent keeps the
        // child's identity, so it must still open afterwards.
        let grand = b.child("grand", &child);
        b.write(&grand, 10 << 20, 1 << 20, 3);
        let want_child = b.model[&child].clone();
        let want_grand = b.model[&grand].clone();

        // The parent moves: renamed beside the child (restored from a
        // backup under another name), then into a subdirectory.
        std::fs::create_dir(t.path().join("restored")).unwrap();
        let renamed = t.path().join(format!("old-base.{}", fmt.base()));
        let moved = t.path().join(format!("restored/old-base.{}", fmt.base()));
        let mut at = base.clone();
        for (to, relative) in [
            (&renamed, format!(".\\old-base.{}", fmt.base())),
            (&moved, format!(".\\restored\\old-base.{}", fmt.base())),
        ] {
            std::fs::rename(&at, to).unwrap();
            at = to.clone();
            assert_ne!(
                xtask(&["check", s(&child)]).status.code(),
                Some(0),
                "{what}: the chain is broken before set-parent"
            );
            let before = stat(&child);
            let (v, code) = run_json(&["set-parent", s(&child), s(to)]);
            assert_eq!(code, Some(0), "{what}: {v}");
            assert_eq!(v["return_value"], 0, "{what}: {v}");
            assert_eq!(v["old_parent"], Value::Null, "{what}: {v}");
            assert_eq!(v["resolves"], true, "{what}: {v}");
            assert_eq!(v["relative_path"], relative, "{what}: {v}");
            let after = stat(&child);
            eprintln!(
                "{what}: child stat '%s %b' before {} {}, after {} {}",
                before.0,
                before.1 / 512,
                after.0,
                after.1 / 512
            );
            // A new locator costs no space: VHDX keeps it inside the
            // metadata region; a VHD's lands in fresh space with the new
            // header and BAT, and the compaction after the commit moves
            // all three back into the old ones' place.
            assert!(
                after.0 <= before.0 && after.1 <= before.1,
                "{what}: set-parent grew the child from {before:?} to {after:?}"
            );
            let vhd_in_subdir = matches!(fmt, Fmt::Vhd) && to == &moved;
            let chain: Vec<&Path> = if vhd_in_subdir {
                vec![to.as_path()]
            } else {
                Vec::new()
            };
            verify_with(&child, &want_child, &what, &chain);
            let chain: Vec<&Path> = if vhd_in_subdir {
                vec![child.as_path(), to.as_path()]
            } else {
                Vec::new()
            };
            verify_with(&grand, &want_grand, &what, &chain);
        }

        // Running it again is harmless.
        let (v, code) = run_json(&["set-parent", s(&child), s(&moved)]);
        assert_eq!(code, Some(0), "{what}: again: {v}");
        assert!(content(&child, &[]) == want_child, "{what}: again");
    }
}

#[test]
fn set_parent_refusals_change_nothing() {
    for fmt in FMTS {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut b = Builder::new(dir, fmt);
        // `small`: another size.
        let (base, child, grand, small) = b.refusal_chain();
        // Same size, another identity.
        let other = b.base("other", false);
        // The other format.
        let foreign = dir.join(match fmt {
            Fmt::Vhd => "foreign.vhdx",
            Fmt::Vhdx => "foreign.vhd",
        });
        xtask_ok(&["create", s(&foreign), "--size", "16M"]);

        let c = s(&child);
        let v = refused(dir, &["set-parent", c, s(&other)], 10, "id_mismatch");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("--ignore-id-mismatch"),
            "{v}"
        );
        refused(dir, &["set-parent", c, s(&small)], 10, "parent_mismatch");
        refused(
            dir,
            &["set-parent", c, s(&foreign), "--ignore-id-mismatch"],
            10,
            "parent_mismatch",
        );
        refused(
            dir,
            &["set-parent", c, s(&grand), "--ignore-id-mismatch"],
            10,
            "cycle",
        );
        refused(
            dir,
            &["set-parent", c, c, "--ignore-id-mismatch"],
            10,
            "cycle",
        );
        refused(
            dir,
            &["set-parent", s(&base), s(&other)],
            6,
            "not_differencing",
        );
        let missing = dir.join("missing.vhdx");
        refused(dir, &["set-parent", c, s(&missing)], 3, "file_not_found");
        // Corrupt parent: a checksum-protected header byte flipped.
        let bad = dir.join(format!("bad.{}", fmt.base()));
        std::fs::copy(&base, &bad).unwrap();
        let mut bytes = std::fs::read(&bad).unwrap();
        // A checksum-protected byte in both copies, so none is valid:
        // the VHD footer's Original Size (end footer and its copy at 0),
        // the VHDX headers' sequence numbers.
        let at = match fmt {
            Fmt::Vhd => [bytes.len() - 512 + 0x30, 0x30],
            Fmt::Vhdx => [64 * 1024 + 0x10, 128 * 1024 + 0x10],
        };
        for a in at {
            bytes[a] ^= 0xff;
        }
        std::fs::write(&bad, &bytes).unwrap();
        let before = hashes(dir);
        let (v, code) = run_json(&["set-parent", c, s(&bad)]);
        assert_ne!(code, Some(0), "{fmt:?}: a corrupt parent is refused: {v}");
        assert_eq!(hashes(dir), before, "{fmt:?}: refusal changed a file");
    }
}

#[test]
fn set_parent_ignore_id_mismatch_links_another_parent() {
    for fmt in FMTS {
        let t = tempfile::tempdir().unwrap();
        let mut b = Builder::new(t.path(), fmt);
        let base = b.base("base", false);
        b.write(&base, 0, 4 << 20, 1);
        let child = b.child("child", &base);
        b.write(&child, 1 << 20, 1 << 20, 2);
        let other = b.base("other", false);
        b.write(&other, 8 << 20, 2 << 20, 3);
        let (v, code) = run_json(&["set-parent", s(&child), s(&other), "--ignore-id-mismatch"]);
        assert_eq!(code, Some(0), "{fmt:?}: {v}");
        assert_eq!(v["id_mismatch_ignored"], true, "{fmt:?}: {v}");
        // The child's sectors over the other parent's content.
        let mut want = b.model[&other].clone();
        let m = (1 << 20) as usize;
        want[m..2 * m].copy_from_slice(&b.model[&child][m..2 * m]);
        verify(&child, &want, &format!("{fmt:?}"));
    }
}

/// base <- mid <- {top1, top2}: rebase both tops onto base, then mid can
/// go. The classic "delete a middle checkpoint with several children".
#[test]
fn rebase_pulls_a_middle_layer_into_each_child() {
    for (fmt, fixed, what) in kinds() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut b = Builder::new(dir, fmt);
        let base = b.base("base", fixed);
        b.write(&base, 0, 8 << 20, 1);
        let mid = b.child("mid", &base);
        b.write(&mid, 2 << 20, 3 << 20, 2);
        b.write(&mid, 12 << 20, 1 << 20, 3);
        let top1 = b.child("top1", &mid);
        b.write(&top1, 3 << 20, 1 << 20, 4);
        let top2 = b.child("top2", &mid);
        b.write(&top2, 12 << 20, 4096, 5);

        // Merging top1 into mid is refused while top2 depends on mid,
        // and the refusal names the way out.
        let (v, code) = run_json(&["merge", s(&top1)]);
        assert_eq!(code, Some(5), "{what}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("rebase"),
            "{what}: the sibling refusal names rebase: {v}"
        );

        // What only mid holds, and top1 does not hide, must be copied.
        let mid_only_under_top1 = (3 << 20) - (1 << 20) + (1 << 20);
        let mid_only_under_top2 = (3 << 20) + (1 << 20) - 4096;
        for (top, expect_copied) in [(&top1, mid_only_under_top1), (&top2, mid_only_under_top2)] {
            let want = b.model[top].clone();
            let before = hashes(dir);
            let (v, code) = run_json(&["rebase", s(top), "--onto", s(&base), "--dry-run"]);
            assert_eq!(code, Some(0), "{what}: dry run: {v}");
            assert_eq!(v["dry_run"], true, "{what}: {v}");
            assert_eq!(hashes(dir), before, "{what}: a dry run changed a file");
            let _ = v;

            let (v, code) = run_json(&["rebase", s(top), "--onto", s(&base)]);
            assert_eq!(code, Some(0), "{what}: {v}");
            assert_eq!(v["old_parent"], s(&mid), "{what}: {v}");
            assert_eq!(
                v["bytes_copied"],
                expect_copied,
                "{what}: {} copies exactly what mid holds and it does not: {v}",
                top.display()
            );
            verify(top, &want, &what);
            // Again: nothing differs any more.
            let (v, code) = run_json(&["rebase", s(top), "--onto", s(&base)]);
            assert_eq!(code, Some(0), "{what}: again: {v}");
            assert_eq!(v["bytes_copied"], 0, "{what}: again: {v}");
        }
        // mid is no longer needed.
        std::fs::remove_file(&mid).unwrap();
        for top in [&top1, &top2] {
            verify(
                top,
                &b.model[top].clone(),
                &format!("{what} after mid went"),
            );
        }
        // And a merge of top1 into base now only refuses for top2.
        let (v, _) = run_json(&["merge", s(&top1), "--dry-run"]);
        assert_eq!(v["error_kind"], "siblings", "{what}: {v}");
    }
}

/// Onto an unrelated parent: exactly the sectors where the two views
/// differ (and the child does not hide) are copied.
#[test]
fn rebase_onto_an_unrelated_parent_copies_only_differences() {
    for fmt in FMTS {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut b = Builder::new(dir, fmt);
        let old = b.base("old", false);
        b.write(&old, 0, 8 << 20, 1);
        let child = b.child("child", &old);
        b.write(&child, 1 << 20, 1 << 20, 2);
        // The new parent: a copy of old's first 4 MiB (equal bytes, other
        // file), other data at 6..7 MiB and at 12 MiB, zeros elsewhere.
        let new = b.base("new", false);
        let first = b.model[&old][..4 << 20].to_vec();
        write(&new, 0, &first, dir);
        b.model.get_mut(&new).unwrap()[..4 << 20].copy_from_slice(&first);
        b.write(&new, 6 << 20, 1 << 20, 7);
        b.write(&new, 12 << 20, 1 << 20, 8);
        let want = b.model[&child].clone();
        // Sectors outside the child's 1..2 MiB where old and new differ.
        let (om, nm) = (&b.model[&old], &b.model[&new]);
        let differing: u64 = (0..SIZE / 512)
            .filter(|k| !((1 << 20) / 512..(2 << 20) / 512).contains(k))
            .filter(|&k| {
                let r = (k * 512) as usize..(k * 512 + 512) as usize;
                om[r.clone()] != nm[r]
            })
            .count() as u64
            * 512;
        let (v, code) = run_json(&["rebase", s(&child), "--onto", s(&new)]);
        assert_eq!(code, Some(0), "{fmt:?}: {v}");
        assert_eq!(v["bytes_copied"], differing, "{fmt:?}: {v}");
        verify(&child, &want, &format!("{fmt:?}"));
        // The old parent is not needed any more.
        std::fs::remove_file(&old).unwrap();
        verify(&child, &want, &format!("{fmt:?} without the old parent"));
    }
}

#[test]
fn rebase_refusals_change_nothing() {
    for fmt in FMTS {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut b = Builder::new(dir, fmt);
        let (base, child, grand, small) = b.refusal_chain();
        let c = s(&child);
        refused(dir, &["rebase", c, "--onto", s(&grand)], 10, "cycle");
        refused(dir, &["rebase", c, "--onto", c], 10, "cycle");
        refused(
            dir,
            &["rebase", c, "--onto", s(&small)],
            10,
            "parent_mismatch",
        );
        refused(
            dir,
            &["rebase", s(&base), "--onto", s(&small)],
            6,
            "not_differencing",
        );
        // The old parent is gone: the child's view cannot be kept.
        let other = b.base("other", false);
        std::fs::rename(&base, dir.join("elsewhere.bin")).unwrap();
        refused(
            dir,
            &["rebase", c, "--onto", s(&other)],
            3,
            "parent_not_found",
        );
    }
}

/// `rebase --standalone`: the child becomes a dynamic image holding what
/// its chain showed; qemu-img (which reads dynamic VHD/VHDX but no
/// differencing chain) confirms it against the model, as libvhdi does.
#[test]
fn rebase_standalone_makes_a_dynamic_image() {
    for (fmt, fixed, what) in kinds() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let mut b = Builder::new(dir, fmt);
        let base = b.base("base", fixed);
        b.write(&base, 0, 5 << 20, 1);
        let mid = b.child("mid", &base);
        // Partial blocks of the mid, a whole one, and one in an empty
        // region of the base.
        b.write(&mid, 1 << 20, 12 << 10, 2);
        b.write(&mid, 4 << 20, 2 << 20, 3);
        b.write(&mid, 9 << 20, 1 << 20, 4);
        let top = b.child("top", &mid);
        b.write(&top, (2 << 20) + (4 << 10), 12 << 10, 5);
        b.write(&top, 14 << 20, 4 << 10, 6);
        // A grandchild of top stays linked (top keeps its identity).
        let leaf = b.child("leaf", &top);
        b.write(&leaf, 15 << 20, 4 << 10, 7);
        let want = b.model[&top].clone();
        let want_leaf = b.model[&leaf].clone();

        let (v, code) = run_json(&["rebase", s(&top), "--standalone"]);
        assert_eq!(code, Some(0), "{what}: {v}");
        assert_eq!(v["new_parent"], Value::Null, "{what}: {v}");
        // Base and mid go: top needs neither.
        std::fs::remove_file(&base).unwrap();
        std::fs::remove_file(&mid).unwrap();
        let info = xtask_ok(&["info", s(&top), "--json"]);
        let info = json(&info);
        assert_eq!(info["disk_type"], "dynamic", "{what}: {info}");
        verify(&top, &want, &what);
        verify(&leaf, &want_leaf, &what);
        if testdata::have_qemu() {
            let raw = dir.join("want.raw");
            std::fs::write(&raw, &want).unwrap();
            let f = match fmt {
                Fmt::Vhd => "vpc",
                Fmt::Vhdx => "vhdx",
            };
            testdata::command_ok(
                std::process::Command::new("qemu-img").args([
                    "compare",
                    "-f",
                    f,
                    s(&top),
                    "-F",
                    "raw",
                    s(&raw),
                ]),
                &format!("{what}: qemu-img compare"),
            );
        }
        // Running it again: nothing to do, nothing changed.
        let before = hashes(dir);
        let (v, code) = run_json(&["rebase", s(&top), "--standalone"]);
        assert_eq!(code, Some(0), "{what}: again: {v}");
        assert_eq!(v["nothing_to_do"], true, "{what}: again: {v}");
        assert_eq!(hashes(dir), before, "{what}: the re-run changed a file");
    }
}

/// `scan` finds a moved parent by identity and names `set-parent`; after
/// it, `scan` reports the link as ok.
#[test]
fn scan_stale_locator_is_fixed_by_set_parent() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut b = Builder::new(dir, Fmt::Vhdx);
    let base = b.base("base", false);
    b.write(&base, 0, 1 << 20, 1);
    let child = b.child("child", &base);
    let moved = dir.join("renamed.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    let scan = |expect: i32| {
        let out = xtask(&["scan", s(dir), "--json"]);
        assert_eq!(
            out.status.code(),
            Some(expect),
            "scan: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        json(&out)
    };
    let v = scan(1);
    let p = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "stale_locator")
        .unwrap_or_else(|| panic!("no stale_locator: {v}"));
    assert!(p["detail"].as_str().unwrap().contains("set-parent"), "{p}");
    xtask_ok(&["set-parent", s(&child), s(&moved)]);
    let v = scan(0);
    let img = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with("child.avhdx"))
        .unwrap()
        .clone();
    assert_eq!(img["parent_status"], "ok", "{v}");
}
