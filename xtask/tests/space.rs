//! Space-neutral merges: a merge leaves its destination no larger than an
//! in-place merge would (the blocks the commit released are punched and the
//! destination compacted), whatever the destination kind, and repeated
//! merges into one base do not grow it. Also `compact` on an image that a
//! merge already left compact (a no-op that keeps the content), and on
//! images with unreferenced junk before their end (given back).
//!
//! Sizes are the destination file's `len()` (apparent, `stat -c %s`) and
//! `blocks() * 512` (allocated, `stat -c %b` times 512), each printed with
//! `eprintln!` so a test log shows them (`cargo test -p chainfold-xtask
//! --test space -- --nocapture`).
//!
//! The workload: a 16 MiB disk filled with non-zero data, a child over it
//! that overwrites the whole virtual disk with different data, merged into
//! it. A full overwrite of a full disk allocates nothing new in place, so
//! an in-place merge would leave the destination at exactly its old size;
//! the assertions allow one block more (the place a compacted copy-on-write
//! merge may need for the block in flight), plus, for the allocated size
//! only, a little metadata slack (see `Kind::alloc_slack`).
//!
//! Content is always checked against the child's pre-merge view (converted
//! to raw before the merge), with chainfold's `convert` and, when
//! libvhdi is installed, its reading through ../shared/tools/chain_read.py
//! (every kind), and when `qemu-img` is installed, `qemu-img compare` (fixed and dynamic
//! destinations only: qemu cannot open differencing images, see
//! ../shared/docs/ORACLES.md) and `qemu-img check` (VHDX only: qemu has no
//! VHD check).

mod common;
use common::{json, ok, s, write, xtask, xtask_counting_writes, xtask_ok};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testdata::Rng;

const MIB: u64 = 1 << 20;
/// Virtual size of every test disk.
const SIZE: u64 = 16 * MIB;

/// (apparent, allocated) bytes of a file: `stat -c '%s'` and `%b * 512`.
fn sizes(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.len(), m.blocks() * 512)
}

fn mib(b: u64) -> String {
    format!("{b} ({:.3} MiB)", b as f64 / MIB as f64)
}

/// A file's `sizes`, as the logs show them.
fn shown((apparent, allocated): (u64, u64)) -> String {
    format!("apparent {} allocated {}", mib(apparent), mib(allocated))
}

/// `len` bytes of pseudo-random data in which no byte is zero (so no
/// sector of it could be taken for an unwritten or ZERO one).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        let x = r.next() | 0x0101_0101_0101_0101;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

/// sha256 of the virtual content of `img`'s chain (chainfold's `convert`
/// to a raw file `out`, kept for `qemu-img compare`).
fn content_sha(img: &Path, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    ok(
        xtask(&["convert", s(img), s(out)]),
        &format!("convert {}", img.display()),
    );
    testdata::sha256_file(out).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VhdxFixed,
    VhdxDynamic,
    VhdxDifferencing,
    VhdFixed,
    VhdDynamic,
    VhdDifferencing,
}

use Kind::*;

/// Every destination kind.
const ALL: [Kind; 6] = [
    VhdxFixed,
    VhdxDynamic,
    VhdxDifferencing,
    VhdFixed,
    VhdDynamic,
    VhdDifferencing,
];
/// The kinds with blocks to give back: all but a fixed VHD, which has none.
fn blocked() -> impl Iterator<Item = Kind> {
    ALL.into_iter().filter(|&k| k != VhdFixed)
}

impl Kind {
    fn vhdx(self) -> bool {
        matches!(
            self,
            Kind::VhdxFixed | Kind::VhdxDynamic | Kind::VhdxDifferencing
        )
    }

    fn fixed(self) -> bool {
        matches!(self, Kind::VhdxFixed | Kind::VhdFixed)
    }

    fn differencing(self) -> bool {
        matches!(self, Kind::VhdxDifferencing | Kind::VhdDifferencing)
    }

    /// Block size: 1 MiB VHDX blocks (the smallest `create` allows, so
    /// "one block" of allowance is tight), 2 MiB VHD blocks (the usual
    /// one). A fixed VHD has no blocks; its length must not change at all.
    fn block(self) -> u64 {
        if self.vhdx() {
            MIB
        } else {
            2 * MIB
        }
    }

    /// Allowance on the allocated size beyond one block, for metadata:
    /// VHDX allocates its structures (log, BAT, metadata, new log areas)
    /// in 1 MiB units, so 1 MiB; a VHD's new BAT, dynamic header, footer
    /// and sector bitmaps are a few sectors each, rounded to 4 KiB file
    /// system blocks: 64 KiB covers them many times over.
    fn alloc_slack(self) -> u64 {
        if self.vhdx() {
            MIB
        } else {
            64 << 10
        }
    }

    fn base_ext(self) -> &'static str {
        if self.vhdx() {
            "vhdx"
        } else {
            "vhd"
        }
    }

    fn child_ext(self) -> &'static str {
        if self.vhdx() {
            "avhdx"
        } else {
            "vhd"
        }
    }

    /// qemu-img's format name, for destinations qemu can open.
    fn qemu_fmt(self) -> Option<&'static str> {
        match (self.differencing(), self.vhdx()) {
            (true, _) => None,
            (false, true) => Some("vhdx"),
            (false, false) => Some("vpc"),
        }
    }
}

fn create(path: &Path, kind: &str, block: u64) {
    let (size, block) = (SIZE.to_string(), block.to_string());
    xtask_ok(&[
        "create",
        s(path),
        "--size",
        &size,
        "--type",
        kind,
        "--block-size",
        &block,
    ]);
}

fn create_child(child: &Path, parent: &Path, block: u64) {
    let block = block.to_string();
    xtask_ok(&[
        "create",
        s(child),
        "--parent",
        s(parent),
        "--block-size",
        &block,
    ]);
}

/// The destination of `kind`, filled completely with non-zero data (a
/// differencing destination over a base that is full too).
fn make_destination(dir: &Path, kind: Kind) -> PathBuf {
    let b = kind.block();
    if kind.differencing() {
        let base = dir.join(format!("base.{}", kind.base_ext()));
        create(&base, "dynamic", b);
        write(&base, 0, &data(1, SIZE as usize), dir);
        let dest = dir.join(format!("dest.{}", kind.child_ext()));
        create_child(&dest, &base, b);
        write(&dest, 0, &data(2, SIZE as usize), dir);
        dest
    } else {
        let dest = dir.join(format!("dest.{}", kind.base_ext()));
        create(&dest, if kind.fixed() { "fixed" } else { "dynamic" }, b);
        write(&dest, 0, &data(2, SIZE as usize), dir);
        dest
    }
}

fn merge(child: &Path, dest: &Path) -> Value {
    let out = xtask(&["merge", s(child), s(dest), "--json"]);
    let v = json(&out);
    assert_eq!(
        v["return_value"],
        0,
        "merge {} into {} failed: {v}",
        child.display(),
        dest.display()
    );
    v
}

/// `check` (exit 0), libvhdi's view equal to `expect_raw`, and qemu-img
/// `check` (VHDX) and `compare` against it (fixed and dynamic
/// destinations).
fn verify_image(kind: Kind, dest: &Path, expect_raw: &Path) {
    ok(
        xtask(&["check", s(dest)]),
        &format!("xtask check {}", dest.display()),
    );
    // libvhdi reads every kind, differencing chains included (their
    // parents found by the images' own locators).
    if testdata::have_libvhdi() {
        assert_eq!(
            testdata::libvhdi_sha(dest, &[]),
            testdata::sha256_file(expect_raw).unwrap(),
            "{kind:?}: libvhdi reads {} differently",
            dest.display()
        );
    }
    let Some(fmt) = kind.qemu_fmt() else {
        eprintln!(
            "{kind:?}: skipping qemu-img check/compare: qemu cannot open differencing images"
        );
        return;
    };
    if !testdata::have_qemu() {
        return;
    }
    if fmt == "vhdx" {
        testdata::command_ok(
            Command::new("qemu-img").args(["check", "-f", "vhdx", s(dest)]),
            &format!("qemu-img check {}", dest.display()),
        );
    } else {
        eprintln!("{kind:?}: skipping qemu-img check: qemu has no VHD check");
    }
    testdata::command_ok(
        Command::new("qemu-img").args(["compare", "-f", fmt, "-F", "raw", s(dest), s(expect_raw)]),
        &format!(
            "qemu-img compare {} {}",
            dest.display(),
            expect_raw.display()
        ),
    );
}

/// No merge leftovers beside the images (record, fixed-VHD journal).
fn no_leftovers(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !n.ends_with(".cfmerge") && !n.ends_with(".cfjournal"),
            "merge left {} behind",
            p.display()
        );
    }
}

struct Merged {
    dest: PathBuf,
    expect_raw: PathBuf,
    expect_sha: String,
    before: (u64, u64),
    after: (u64, u64),
}

/// Destination of `kind`, full; a child overwriting all of it; the merge.
fn full_overwrite_merge(dir: &Path, kind: Kind) -> Merged {
    let dest = make_destination(dir, kind);
    let child = dir.join(format!("child.{}", kind.child_ext()));
    create_child(&child, &dest, kind.block());
    write(&child, 0, &data(3, SIZE as usize), dir);
    let expect_raw = dir.join("expect.raw");
    let expect_sha = content_sha(&child, &expect_raw);
    let before = sizes(&dest);
    let v = merge(&child, &dest);
    let after = sizes(&dest);
    eprintln!(
        "{kind:?}: {} MiB disk, block {}: before merge {}; after {} (apparent {:+} B, allocated {:+} B); merge said {v}",
        SIZE / MIB,
        mib(kind.block()),
        shown(before),
        shown(after),
        after.0 as i64 - before.0 as i64,
        after.1 as i64 - before.1 as i64,
    );
    Merged {
        dest,
        expect_raw,
        expect_sha,
        before,
        after,
    }
}

fn full_overwrite(kind: Kind) {
    let d = tempfile::tempdir().unwrap();
    let m = full_overwrite_merge(d.path(), kind);
    // Content first: a small destination that lost data proves nothing.
    let got = content_sha(&m.dest, &d.path().join("merged.raw"));
    assert_eq!(
        got, m.expect_sha,
        "{kind:?}: merged destination's content differs from the child's pre-merge view"
    );
    no_leftovers(d.path());
    verify_image(kind, &m.dest, &m.expect_raw);

    let ((ab, lb), (aa, la)) = (m.before, m.after);
    let block = kind.block();
    if kind.fixed() {
        // A fixed image's length is its virtual size plus fixed metadata:
        // a merge that compacts what it released ends exactly where the
        // image ended before.
        assert_eq!(
            aa,
            ab,
            "{kind:?}: a fixed destination must end at exactly its old length: before {}, after {} ({:+} B)",
            mib(ab),
            mib(aa),
            aa as i64 - ab as i64
        );
    }
    assert!(
        aa <= ab + block,
        "{kind:?}: apparent size grew by more than one block: before {}, after {} ({:+} B), limit {} (before + one block of {})",
        mib(ab),
        mib(aa),
        aa as i64 - ab as i64,
        mib(ab + block),
        mib(block)
    );
    let slack = kind.alloc_slack();
    assert!(
        la <= lb + block + slack,
        "{kind:?}: allocated size grew by more than one block + metadata slack: before {}, after {} ({:+} B), limit {} (before + block {} + slack {})",
        mib(lb),
        mib(la),
        la as i64 - lb as i64,
        mib(lb + block + slack),
        mib(block),
        mib(slack)
    );
}

#[test]
fn full_overwrite_merge_into_every_kind_is_space_neutral() {
    testdata::each_case(ALL, |&case| full_overwrite(case));
}

/// 10 cycles of (new child, overwrite 25 % of the disk in 1 MiB pieces at
/// distinct random 1 MiB-aligned offsets from a seeded RNG, merge into the
/// base) on a full dynamic base: the base ends within one block of its size
/// after the first cycle, and holds exactly the modelled content.
fn cycles(kind: Kind) {
    const CYCLES: usize = 10;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let base = make_destination(dir, kind);
    let mut model = data(2, SIZE as usize);
    let mut rng = Rng(0xC0FF_EE00 + kind as u64);
    let slots = (SIZE / MIB) as usize;
    let mut after = Vec::new();
    let initial = sizes(&base);
    for cycle in 0..CYCLES {
        let child = dir.join(format!("c{cycle}.{}", kind.child_ext()));
        create_child(&child, &base, kind.block());
        // Pick slots / 4 distinct 1 MiB slots (partial Fisher-Yates).
        let mut order: Vec<usize> = (0..slots).collect();
        for i in 0..slots / 4 {
            let j = i + (rng.next() % (slots - i) as u64) as usize;
            order.swap(i, j);
        }
        for (k, &slot) in order[..slots / 4].iter().enumerate() {
            let piece = data(1000 + (cycle * 100 + k) as u64, MIB as usize);
            let off = slot as u64 * MIB;
            write(&child, off, &piece, dir);
            model[off as usize..(off + MIB) as usize].copy_from_slice(&piece);
        }
        merge(&child, &base);
        let _ = std::fs::remove_file(&child);
        let sz = sizes(&base);
        eprintln!("{kind:?} cycle {}: {}", cycle + 1, shown(sz));
        after.push(sz);
    }
    let expect_raw = dir.join("expect.raw");
    std::fs::write(&expect_raw, &model).unwrap();
    let got = content_sha(&base, &dir.join("merged.raw"));
    assert_eq!(
        got,
        testdata::sha256(&model),
        "{kind:?}: after {CYCLES} cycles the base's content differs from the model"
    );
    no_leftovers(dir);
    verify_image(kind, &base, &expect_raw);

    let (first, last) = (after[0], after[CYCLES - 1]);
    let block = kind.block();
    eprintln!(
        "{kind:?}: {CYCLES} cycles: before {}; after cycle 1 {}; after cycle {CYCLES} {} (apparent {:+} B, allocated {:+} B since cycle 1)",
        shown(initial),
        shown(first),
        shown(last),
        last.0 as i64 - first.0 as i64,
        last.1 as i64 - first.1 as i64
    );
    assert!(
        last.0 <= first.0 + block,
        "{kind:?}: base grew over {CYCLES} cycles: apparent after cycle 1 {}, after cycle {CYCLES} {} ({:+} B), limit one block ({}); per cycle: {:?}",
        mib(first.0),
        mib(last.0),
        last.0 as i64 - first.0 as i64,
        mib(block),
        after.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    // The first cycle itself, with partial blocks (1 MiB pieces in 2 MiB
    // VHD blocks are copied on write), must not grow a full base by more
    // than the full-overwrite tests allow either.
    assert!(
        first.0 <= initial.0 + block,
        "{kind:?}: the first cycle grew the base by more than one block: before {}, after cycle 1 {} ({:+} B), limit {}",
        mib(initial.0),
        mib(first.0),
        first.0 as i64 - initial.0 as i64,
        mib(initial.0 + block)
    );
}

#[test]
fn ten_merge_cycles_do_not_grow_a_dynamic_image() {
    testdata::each_case([VhdxDynamic, VhdDynamic], |&case| cycles(case));
}

/// `compact IMAGE --json` on a destination a space-neutral merge just left
/// compact: exit 0, the four size fields present and equal to the file's
/// sizes, nothing to reclaim (apparent size unchanged), content and
/// `check` unchanged; and a second plain `compact IMAGE` also exits 0.
fn compact_after_merge(kind: Kind) {
    let d = tempfile::tempdir().unwrap();
    let m = full_overwrite_merge(d.path(), kind);
    let pre = sizes(&m.dest);
    let out = xtask(&["compact", s(&m.dest), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{kind:?}: `xtask compact {} --json` failed (stat before: apparent {}, allocated {}): {}{}",
        m.dest.display(),
        mib(pre.0),
        mib(pre.1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let field = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{kind:?}: compact --json lacks an integer {k:?}: {v}"))
    };
    let (ab, aa) = (field("apparent_before"), field("apparent_after"));
    let (lb, la) = (field("allocated_before"), field("allocated_after"));
    let post = sizes(&m.dest);
    eprintln!(
        "{kind:?}: compact after merge: stat before {}, after {}; compact said apparent {ab} -> {aa}, allocated {lb} -> {la}",
        shown(pre),
        shown(post)
    );
    assert_eq!(
        ab, pre.0,
        "{kind:?}: apparent_before is not the file's length: {v}"
    );
    assert_eq!(
        aa, post.0,
        "{kind:?}: apparent_after is not the file's length: {v}"
    );
    assert_eq!(
        post.0,
        pre.0,
        "{kind:?}: compact changed the length of a freshly merged (already compact) image: {} -> {} ({:+} B)",
        mib(pre.0),
        mib(post.0),
        post.0 as i64 - pre.0 as i64
    );
    assert!(
        post.1 <= pre.1,
        "{kind:?}: compact allocated more: {} -> {}",
        mib(pre.1),
        mib(post.1)
    );
    let got = content_sha(&m.dest, &d.path().join("compacted.raw"));
    assert_eq!(got, m.expect_sha, "{kind:?}: compact changed the content");
    verify_image(kind, &m.dest, &m.expect_raw);
    ok(
        xtask(&["compact", s(&m.dest)]),
        &format!("{kind:?}: second compact"),
    );
    assert_eq!(
        sizes(&m.dest).0,
        pre.0,
        "{kind:?}: a second compact changed the length"
    );
    let got = content_sha(&m.dest, &d.path().join("compacted2.raw"));
    assert_eq!(
        got, m.expect_sha,
        "{kind:?}: a second compact changed the content"
    );
}

#[test]
fn compact_of_a_merged_image_is_a_no_op() {
    testdata::each_case(
        [VhdxDynamic, VhdDynamic, VhdxDifferencing, VhdDifferencing],
        |&case| compact_after_merge(case),
    );
}

/// Appends `len` bytes of non-zero junk that no structure references
/// before the image's end: past the end of a VHDX, and between the last
/// block and the footer of a VHD (whose footer moves to the new end), as
/// a merge killed while staging, or another tool, leaves a file.
fn bloat(img: &Path, kind: Kind, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(img)
        .unwrap();
    let end = f.metadata().unwrap().len();
    let junk = data(9, len as usize);
    if kind.vhdx() {
        f.write_all_at(&junk, end).unwrap();
    } else {
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, end - 512).unwrap();
        f.write_all_at(&junk, end - 512).unwrap();
        f.write_all_at(&footer, end - 512 + len).unwrap();
    }
    f.sync_all().unwrap();
}

fn compact_gives_back_unreferenced_space(kind: Kind) {
    let d = tempfile::tempdir().unwrap();
    let img = make_destination(d.path(), kind);
    let expect_raw = d.path().join("expect.raw");
    let expect_sha = content_sha(&img, &expect_raw);
    let lean = sizes(&img);
    bloat(&img, kind, 40 * MIB);
    let fat = sizes(&img);
    assert!(fat.0 >= lean.0 + 40 * MIB && fat.1 >= lean.1 + 40 * MIB);
    ok(xtask(&["check", s(&img)]), "check of the bloated image");
    let out = ok(xtask(&["compact", s(&img), "--json"]), "compact");
    let v = json(&out);
    let after = sizes(&img);
    eprintln!(
        "{kind:?}: lean {}; bloated {}; compacted {}; compact said {v}",
        shown(lean),
        shown(fat),
        shown(after)
    );
    assert_eq!(v["apparent_before"].as_u64(), Some(fat.0), "{v}");
    assert_eq!(v["apparent_after"].as_u64(), Some(after.0), "{v}");
    // Back to (about) what the image was before the junk: the length to
    // the MiB boundary compaction rounds to.
    assert!(
        after.0 <= lean.0.next_multiple_of(MIB),
        "{kind:?}: compact left {} of a {} image bloated to {}",
        mib(after.0),
        mib(lean.0),
        mib(fat.0)
    );
    assert!(
        after.1 <= lean.1 + kind.alloc_slack(),
        "{kind:?}: compact left {} allocated (lean image: {})",
        mib(after.1),
        mib(lean.1)
    );
    assert_eq!(
        content_sha(&img, &d.path().join("compacted.raw")),
        expect_sha,
        "{kind:?}: compact changed the content"
    );
    verify_image(kind, &img, &expect_raw);
}

#[test]
fn compact_gives_back_unreferenced_space_of_every_blocked_kind() {
    testdata::each_case(blocked(), |&case| {
        compact_gives_back_unreferenced_space(case)
    });
}

/// `compact --zero-blocks`: blocks whose data is all zeros stop being
/// stored and their space is given back, content unchanged. A
/// differencing image keeps a zero block where its parent holds data (the
/// zeros hide it), and releases one where the parent reads zeros too. A
/// fixed VHDX keeps every block.
fn zero_blocks(kind: Kind) {
    let d = tempfile::tempdir().unwrap();
    let b = kind.block();
    let img = if kind.differencing() {
        // Parent: data in its first half only.
        let base = d.path().join(format!("base.{}", kind.base_ext()));
        create(&base, "dynamic", b);
        write(&base, 0, &data(1, (SIZE / 2) as usize), d.path());
        let img = d.path().join(format!("dest.{}", kind.child_ext()));
        create_child(&img, &base, b);
        write(&img, 0, &data(2, SIZE as usize), d.path());
        img
    } else {
        make_destination(d.path(), kind)
    };
    // Zeros over blocks 1 and 2 (the parent holds data there) and over the
    // second-to-last two (the parent reads zeros there).
    let zeros = vec![0u8; 2 * b as usize];
    write(&img, b, &zeros, d.path());
    write(&img, SIZE - 3 * b, &zeros, d.path());
    let expect_raw = d.path().join("expect.raw");
    let expect_sha = content_sha(&img, &expect_raw);
    let before = sizes(&img);
    let out = ok(
        xtask(&["compact", s(&img), "--zero-blocks", "--json"]),
        "compact --zero-blocks",
    );
    let v = json(&out);
    let after = sizes(&img);
    eprintln!(
        "{kind:?}: compact --zero-blocks: before {}, after {}; {v}",
        shown(before),
        shown(after)
    );
    let want = match kind {
        Kind::VhdxFixed | Kind::VhdFixed => 0,
        Kind::VhdxDifferencing | Kind::VhdDifferencing => 2,
        _ => 4,
    };
    assert_eq!(
        v["zero_blocks_released"].as_u64(),
        Some(want),
        "{kind:?}: {v}"
    );
    assert_eq!(
        content_sha(&img, &d.path().join("after.raw")),
        expect_sha,
        "{kind:?}: compact --zero-blocks changed the content"
    );
    if want == 0 {
        assert_eq!(after.0, before.0, "{kind:?}: length changed");
    } else {
        assert!(
            after.0 + want * b <= before.0 && after.1 + want * b <= before.1 + kind.alloc_slack(),
            "{kind:?}: {want} released blocks of {} were not given back: apparent {} -> {}, allocated {} -> {}",
            mib(b),
            mib(before.0),
            mib(after.0),
            mib(before.1),
            mib(after.1)
        );
    }
    verify_image(kind, &img, &expect_raw);
}

/// Dynamic: released; differencing: released only over parent zeros;
/// fixed VHDX: kept (`zero_blocks` says why).
#[test]
fn zero_blocks_are_released_or_kept_as_each_kind_allows() {
    testdata::each_case(
        [
            VhdxDynamic,
            VhdxDifferencing,
            VhdxFixed,
            VhdDynamic,
            VhdDifferencing,
        ],
        |&case| zero_blocks(case),
    );
}

/// A refused `compact` changes no byte: an image whose BAT names a block
/// past the end of the file fails `check` (exit 1), and `--zero-blocks` on
/// a differencing image whose parent is gone cannot judge the parent
/// (exit 2).
#[test]
fn refused_compactions_change_no_byte() {
    let d = tempfile::tempdir().unwrap();
    // A dynamic VHD with a BAT entry pointing far past the end.
    let img = make_destination(d.path(), Kind::VhdDynamic);
    let mut bytes = std::fs::read(&img).unwrap();
    let header = u64::from_be_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let table = u64::from_be_bytes(bytes[header + 16..header + 24].try_into().unwrap()) as usize;
    bytes[table..table + 4].copy_from_slice(&0x00F0_0000u32.to_be_bytes());
    std::fs::write(&img, &bytes).unwrap();
    compact_refused(&img, &[], 1, "refused");

    // A differencing VHDX without its parent, with --zero-blocks.
    let d = tempfile::tempdir().unwrap();
    let child = make_destination(d.path(), Kind::VhdxDifferencing);
    std::fs::remove_file(d.path().join("base.vhdx")).unwrap();
    compact_refused(&child, &["--zero-blocks"], 2, "parent");
}

/// `compact IMAGE --json` with `extra` must exit `code` with an error
/// that says `says`, and leave every byte of `img` as it was.
fn compact_refused(img: &Path, extra: &[&str], code: i32, says: &str) {
    let before = std::fs::read(img).unwrap();
    let out = xtask(&[&["compact", s(img), "--json"], extra].concat());
    let v = json(&out);
    assert_eq!(out.status.code(), Some(code), "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains(says), "{v}");
    assert!(
        std::fs::read(img).unwrap() == before,
        "a refused compact changed the image"
    );
}

/// A full destination of `kind`; a child replacing the first half of
/// every block and, in every fourth block, 1536 bytes starting 512 bytes
/// into a 4 KiB sector of the other half (log sectors written in part);
/// merged with `--held-blocks journal` and with `rebuild`, each from a
/// copy of the same files. Both give the child's view (chainfold, libvhdi,
/// qemu-img) and a destination that checks clean; the journal leaves the
/// file exactly as long as before (nothing moves) and writes about twice
/// the child's data (log, then in place), the rebuild writes every
/// touched block whole twice (fresh copy, then compaction's move back),
/// as the kernel counts them.
fn half_blocks(kind: Kind) {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let dest = make_destination(&src, kind);
    let child = src.join(format!("child.{}", kind.child_ext()));
    let b = kind.block();
    create_child(&child, &dest, b);
    let half = data(7, (b / 2) as usize);
    let edge = data(8, 1536);
    let mut child_data = 0;
    for k in 0..SIZE / b {
        write(&child, k * b, &half, &src);
        child_data += b / 2;
        if k % 4 == 0 {
            write(&child, k * b + b / 2 + 8192 + 512, &edge, &src);
            child_data += 1536;
        }
    }
    let expect_raw = root.path().join("expect.raw");
    let expect_sha = content_sha(&child, &expect_raw);
    let mut written = Vec::new();
    for mode in ["journal", "rebuild"] {
        let dir = root.path().join(mode);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        let (dest, child) = (
            dir.join(dest.file_name().unwrap()),
            dir.join(child.file_name().unwrap()),
        );
        let before = sizes(&dest);
        let (out, bytes) = xtask_counting_writes(&[
            "merge",
            s(&child),
            s(&dest),
            "--held-blocks",
            mode,
            "--json",
        ]);
        let v = json(&out);
        assert_eq!(v["return_value"], 0, "{kind:?} {mode}: {v}");
        // Every block is held and replaced in part: all go the asked way.
        let (journaled, rebuilt) = (
            v["held_blocks"]["journaled"].as_u64(),
            v["held_blocks"]["rebuilt"].as_u64(),
        );
        let blocks = SIZE / b;
        let want = if mode == "journal" {
            (Some(blocks), Some(0))
        } else {
            (Some(0), Some(blocks))
        };
        assert_eq!((journaled, rebuilt), want, "{kind:?} {mode}: {v}");
        let after = sizes(&dest);
        eprintln!(
            "{kind:?} --held-blocks {mode}: child data {}, wrote {:?} B; before apparent {} allocated {}; after apparent {} allocated {}",
            mib(child_data),
            bytes,
            mib(before.0),
            mib(before.1),
            mib(after.0),
            mib(after.1)
        );
        let got = content_sha(&dest, &dir.join("merged.raw"));
        assert_eq!(got, expect_sha, "{kind:?} {mode}: merged content differs");
        no_leftovers(&dir);
        verify_image(kind, &dest, &expect_raw);
        let limit = if mode == "journal" { 0 } else { b };
        assert!(
            after.0 <= before.0 + limit,
            "{kind:?} {mode}: apparent size grew: before {}, after {}",
            mib(before.0),
            mib(after.0)
        );
        assert!(
            after.1 <= before.1 + limit + kind.alloc_slack(),
            "{kind:?} {mode}: allocated size grew: before {}, after {}",
            mib(before.1),
            mib(after.1)
        );
        written.push(bytes);
    }
    let (Some(journal), Some(rebuild)) = (written[0], written[1]) else {
        eprintln!("{kind:?}: skipping the bytes-written comparison: /usr/bin/time is not installed (apt-get install time)");
        return;
    };
    // Twice the data, plus (VHDX) the log entries' descriptors (1 in 128),
    // the 4 KiB sectors the edges fill, headers, BAT / bitmap sectors and
    // (a differencing destination) its 1 MiB sector-bitmap block; (VHD)
    // the redo records' headers, the bitmaps, BAT, header and footers.
    let most = 2 * child_data + child_data / 64 + 3 * MIB;
    assert!(
        journal <= most,
        "{kind:?}: the journal wrote {journal} B for {child_data} B of child data (limit {most})"
    );
    assert!(
        journal < rebuild,
        "{kind:?}: the journal wrote {journal} B, the rebuild {rebuild} B"
    );
}

#[test]
fn half_blocks_over_a_full_image_journal_and_rebuild() {
    testdata::each_case(blocked(), |&case| half_blocks(case));
}
