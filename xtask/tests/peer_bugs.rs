//! Bug classes other VHD/VHDX tools have shipped, as tests (issue 19 item 5).
//!
//! Each test builds its case with `cargo xtask create/write` (and, where the
//! case needs it, the library's `Image::zero_sectors` or a patch of the
//! on-disk bytes), checks what chainfold reads against a model byte vector
//! the test computes itself, merges the chain down (top into its
//! differencing parent, then that into the base) and checks every step the
//! same way. Independent readers confirm where they can
//! (../shared/docs/ORACLES.md):
//!
//! - libvhdi (../shared/tools/chain_read.py, `--dump`) reads every
//!   differencing chain before and after the first merge. Its known bugs are
//!   kept out: VHD writes are 4 KiB aligned except where the bitmap byte is
//!   of the form 0*1* (MSB first), which it decodes correctly; disks are far
//!   under 4 GiB. Left out of the comparison (and logged, with what libvhdi
//!   read there instead): VHDX blocks in state ZERO in any layer (libvhdi
//!   returns the parent's data), UNMAPPED / UNDEFINED blocks (MS-VHDX
//!   leaves their content undefined; libvhdi returns the parent's, chainfold
//!   zeros, which the model and qemu after the merge into the base check),
//!   and NOT_PRESENT blocks of a differencing VHDX whose sector-bitmap bits,
//!   as libvhdi finds them, are not all clear: libvhdi consults the bitmap
//!   even for NOT_PRESENT blocks, taking it from file offset 0 when the
//!   chunk has no bitmap block (ORACLES.md), or using a PARTIALLY_PRESENT
//!   block's stale bits after it became NOT_PRESENT (case 2), and returns
//!   the child's bytes at file offset 0 for those sectors.
//! - qemu-img (`convert -O raw`, `check` for VHDX) reads every merged base:
//!   fixed and dynamic VHD (`-f vpc`) and VHDX only, it cannot open a
//!   differencing image.
//!
//! Each oracle is skipped with a printed reason when it is not installed.
//!
//! 1. zeros written in a child hide the parent after a merge (VirtualBox);
//! 2. VHDX BAT states ZERO / UNMAPPED / UNDEFINED / NOT_PRESENT (and the
//!    v0.95 UNMAPPED, 5) in a child, crafted by patching its BAT;
//! 3. PARTIALLY_PRESENT blocks whose sector bitmaps end at the block's edge;
//! 4. a dynamic VHD with no valid footer at its end, only the copy at 0
//!    (Xen Orchestra): opened from the copy with a warning (FORMATS.md 2.1),
//!    refused with a typed error naming the file when the copy is gone too;
//! 5. VHD block data not 4 KiB aligned (data right after a 512-byte bitmap,
//!    as Windows and chainfold's `write` place it);
//! 6. a virtual size that is not a multiple of the block size.

mod common;
use common::data;
use common::{ok, s, xtask, Fmt};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use formats::params::OpenOptions;
// The BAT states (MS-VHDX 2.5.1.1), under the names the spec gives them.
use formats::vhdx::bat::{
    PAYLOAD_FULLY_PRESENT as FULLY_PRESENT, PAYLOAD_NOT_PRESENT as NOT_PRESENT,
    PAYLOAD_PARTIALLY_PRESENT as PARTIALLY_PRESENT, PAYLOAD_UNDEFINED as UNDEFINED,
    PAYLOAD_UNMAPPED as UNMAPPED, PAYLOAD_UNMAPPED_V095 as UNMAPPED_V095, PAYLOAD_ZERO as ZERO,
};
use formats::{Access, FsNamespace, JournalSlot, Namespace};
use testdata::raw::{be32, be64, le64, vhdx_region, BAT_GUID, VHDX_HEADERS, VHDX_REGION_TABLES};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ------------------------------------------------------------ plumbing

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn create(path: &Path, size: u64, block: u64, parent: Option<&Path>) {
    let (size, block) = (size.to_string(), block.to_string());
    let mut args = vec!["create", s(path), "--block-size", &block];
    match parent {
        Some(p) => args.extend(["--parent", s(p)]),
        None => args.extend(["--size", &size]),
    }
    ok(xtask(&args), &format!("create {}", path.display()));
}

/// `cargo xtask write` (the CLI's write path: `Image::write_sectors`).
fn write(img: &Path, offset: u64, bytes: &[u8]) {
    let input = img.with_extension("input.bin");
    std::fs::write(&input, bytes).unwrap();
    let off = offset.to_string();
    ok(
        xtask(&["write", s(img), "--offset", &off, "--input", s(&input)]),
        &format!("write {} at {offset}", img.display()),
    );
    std::fs::remove_file(&input).unwrap();
}

/// The library's zero path (`Image::zero_sectors`, what a merge stages for
/// ZERO runs and what `write` has no CLI form for).
fn zero_sectors(img: &Path, offset: u64, len: u64) {
    let ns: Arc<dyn Namespace> = Arc::new(FsNamespace);
    let st = ns.open(img, Access::Write).unwrap();
    let journal = Some(JournalSlot::for_image(Arc::clone(&ns), img));
    let mut im = formats::image::open(
        s(img),
        st,
        journal,
        OpenOptions {
            writable: true,
            ignore_checksums: false,
        },
    )
    .unwrap();
    im.zero_sectors(offset, len).unwrap();
}

/// chainfold's view of `img`'s chain (`convert` to raw).
fn ours(img: &Path) -> Vec<u8> {
    let raw = img.with_extension("ours.raw");
    let _ = std::fs::remove_file(&raw);
    ok(
        xtask(&["convert", s(img), s(&raw)]),
        &format!("convert {}", img.display()),
    );
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    v
}

/// Panics at the first differing byte (never prints megabytes).
fn same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let n = got[i..]
            .iter()
            .zip(&want[i..])
            .take_while(|(a, b)| a != b)
            .count();
        panic!(
            "{what}: differs at byte {i:#x} (sector {}, {n} bytes on): got {:02x?}, want {:02x?}",
            i / 512,
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        );
    }
}

/// `check` must find no error; returns the findings.
fn check_clean(img: &Path) -> Vec<serde_json::Value> {
    let out = xtask(&["check", s(img), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json {}: {e}: {}", img.display(), text(&out)));
    assert_eq!(
        out.status.code(),
        Some(0),
        "check {}: {}",
        img.display(),
        text(&out)
    );
    v["findings"].as_array().cloned().unwrap_or_default()
}

fn merge(src: &Path) {
    ok(
        xtask(&["merge", s(src), "--json"]),
        &format!("merge {}", src.display()),
    );
}

/// Whole virtual content through qemu-img; `None` (said why) without it.
fn qemu_raw(img: &Path, fmt: &str) -> Option<Vec<u8>> {
    if !testdata::have_qemu() {
        return None;
    }
    let raw = img.with_extension("qemu.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", fmt, "-O", "raw", s(img), s(&raw)])
        .output()
        .expect("spawn qemu-img");
    ok(out, &format!("qemu-img convert {}", img.display()));
    if fmt == "vhdx" {
        let out = Command::new("qemu-img")
            .args(["check", "-f", "vhdx", s(img)])
            .output()
            .expect("spawn qemu-img");
        ok(out, &format!("qemu-img check {}", img.display()));
    }
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    Some(v)
}

/// Whole virtual content of `img`'s chain through libvhdi (`parents`
/// nearest first); `None` (said why) without it.
fn libvhdi_raw(img: &Path, parents: &[&Path]) -> Option<Vec<u8>> {
    if !testdata::have_libvhdi() {
        return None;
    }
    let raw = img.with_extension("libvhdi.raw");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(testdata::chain_read())
        .args(["--backend", "libvhdi", "--json", "--dump"])
        .arg(&raw);
    for p in parents {
        cmd.arg("--parent").arg(p);
    }
    let out = cmd.arg(img).output().expect("spawn /usr/bin/python3");
    ok(out, &format!("chain_read.py {}", img.display()));
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    Some(v)
}

// ------------------------------------------------------------ on-disk bytes

/// A VHDX file's BAT, read from its region table (block size and a
/// 512-byte logical sector known from how the test made it).
struct VhdxBat {
    path: PathBuf,
    offset: u64,
    chunk_ratio: u64,
}

impl VhdxBat {
    fn open(path: &Path, block_size: u64) -> VhdxBat {
        let f = std::fs::read(path).unwrap();
        // The current header (greater sequence number) must have an empty
        // log: a BAT patched under a live log would be undone by replay.
        let head = VHDX_HEADERS
            .into_iter()
            .filter(|&h| &f[h..h + 4] == b"head")
            .max_by_key(|&h| le64(&f, h + 8))
            .expect("a VHDX header");
        assert!(
            f[head + 48..head + 64].iter().all(|b| *b == 0),
            "{}: LogGuid is not zero",
            path.display()
        );
        let rt = VHDX_REGION_TABLES[0];
        assert_eq!(&f[rt..rt + 4], b"regi");
        let offset = vhdx_region(&f, &BAT_GUID).0 as u64;
        VhdxBat {
            path: path.to_path_buf(),
            offset,
            chunk_ratio: (1 << 23) * 512 / block_size,
        }
    }

    fn at(&self, p: u64) -> u64 {
        self.offset + 8 * (p + p / self.chunk_ratio)
    }

    fn get(&self, p: u64) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        std::fs::File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut b, self.at(p))
            .unwrap();
        u64::from_le_bytes(b)
    }

    fn state(&self, p: u64) -> u8 {
        (self.get(p) & 7) as u8
    }

    /// Whether block `p`'s bits in its chunk's sector bitmap, as libvhdi
    /// finds them, have any bit set: it consults the bitmap even for a
    /// NOT_PRESENT block, taken from file offset 0 when the chunk's bitmap
    /// block is SB_BLOCK_NOT_PRESENT (ORACLES.md), and reads the sectors
    /// whose bit is set from the child at the block's (zero) file offset.
    fn libvhdi_sees_bits(&self, p: u64, block_size: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let k = p / self.chunk_ratio;
        let mut e = [0u8; 8];
        let f = std::fs::File::open(&self.path).unwrap();
        let sb_index = k * (self.chunk_ratio + 1) + self.chunk_ratio;
        f.read_exact_at(&mut e, self.offset + 8 * sb_index).unwrap();
        let sb = u64::from_le_bytes(e) & 0xFFFF_FFFF_FFF0_0000;
        let per_block = block_size / 512 / 8;
        let mut bits = vec![0u8; per_block as usize];
        f.read_exact_at(&mut bits, sb + (p % self.chunk_ratio) * per_block)
            .unwrap();
        bits.iter().any(|b| *b != 0)
    }

    /// Set payload block `p`'s state, keeping its FileOffsetMB or clearing it.
    fn set(&self, p: u64, state: u8, keep_offset: bool) {
        use std::os::unix::fs::FileExt;
        let old = self.get(p);
        let off = if keep_offset {
            old & 0xFFFF_FFFF_FFF0_0000
        } else {
            0
        };
        let new = off | u64::from(state);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .write_all_at(&new.to_le_bytes(), self.at(p))
            .unwrap();
    }
}

/// A dynamic/differencing VHD's blocks: (block, absolute offset of its
/// data), read with the test's own parser (FORMATS.md 2.2, 2.4, 2.5).
fn vhd_blocks(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::read(path).unwrap();
    let foot = &f[f.len() - 512..];
    assert_eq!(&foot[..8], b"conectix");
    let ho = be64(foot, 0x10) as usize;
    let h = &f[ho..ho + 1024];
    assert_eq!(&h[..8], b"cxsparse");
    let (table, entries, bs) = (
        be64(h, 0x10) as usize,
        be32(h, 0x1C) as usize,
        u64::from(be32(h, 0x20)),
    );
    let bitmap = (bs / 512 / 8).div_ceil(512) * 512;
    (0..entries)
        .map(|b| (b as u64, be32(&f, table + 4 * b)))
        .filter(|(_, e)| *e != u32::MAX)
        .map(|(b, e)| (b, u64::from(e) * 512 + bitmap))
        .collect()
}

// ------------------------------------------------------------ chains

/// base (dynamic) <- mid <- top, and the model of what each reads as.
struct Chain {
    _dir: tempfile::TempDir,
    fmt: Fmt,
    block: u64,
    base: PathBuf,
    mid: PathBuf,
    top: PathBuf,
    label: String,
}

impl Chain {
    fn new(fmt: Fmt, size: u64, block: u64, label: &str) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let (eb, ec) = fmt.ext();
        let base = dir.path().join(format!("base.{eb}"));
        let mid = dir.path().join(format!("mid.{ec}"));
        let top = dir.path().join(format!("top.{ec}"));
        create(&base, size, block, None);
        Chain {
            _dir: dir,
            fmt,
            block,
            base,
            mid,
            top,
            label: format!("{label} {fmt:?} {} KiB blocks", block / KIB),
        }
    }

    /// `new`, its base filled with `data(1, ..)`, and the mid made; the
    /// model of what the mid reads.
    fn over_full_base(fmt: Fmt, size: u64, block: u64, label: &str) -> (Chain, Model) {
        let c = Chain::new(fmt, size, block, label);
        let mut m = Model(vec![0; size as usize]);
        put(&mut m, &c.base, 0, &data(1, size));
        c.make_mid();
        (c, m)
    }

    fn make_mid(&self) {
        create(&self.mid, 0, self.block, Some(&self.base));
    }
    fn make_top(&self) {
        create(&self.top, 0, self.block, Some(&self.mid));
    }

    /// VHDX payload blocks whose content libvhdi cannot be trusted with in
    /// any of `layers` (top first, the base last): ZERO (its known bug: it
    /// reads the parent), UNMAPPED / UNDEFINED (content undefined by
    /// MS-VHDX), and NOT_PRESENT in a differencing layer where libvhdi
    /// would find sector-bitmap bits set (see `libvhdi_sees_bits`).
    fn libvhdi_blind(&self, layers: &[&Path], blocks: u64) -> Vec<u64> {
        if self.fmt != Fmt::Vhdx {
            return Vec::new();
        }
        let bats: Vec<VhdxBat> = layers
            .iter()
            .map(|l| VhdxBat::open(l, self.block))
            .collect();
        let diffs = &bats[..bats.len() - 1];
        (0..blocks)
            .filter(|&p| {
                bats.iter()
                    .any(|b| matches!(b.state(p), ZERO | UNMAPPED | UNDEFINED | UNMAPPED_V095))
                    || diffs
                        .iter()
                        .any(|b| b.state(p) == NOT_PRESENT && b.libvhdi_sees_bits(p, self.block))
            })
            .collect()
    }

    /// chainfold reads `layers[0]`'s chain as `model` (and `check` finds no
    /// error); libvhdi agrees outside the blocks it cannot be trusted with.
    fn verify_diff(&self, layers: &[&Path], model: &[u8], step: &str) {
        let what = format!("{}, {step}", self.label);
        check_clean(layers[0]);
        same(&format!("{what}: chainfold"), &ours(layers[0]), model);
        let blocks = (model.len() as u64).div_ceil(self.block);
        let blind = self.libvhdi_blind(layers, blocks);
        let Some(mut got) = libvhdi_raw(layers[0], &layers[1..]) else {
            return;
        };
        let mut want = model.to_vec();
        // What libvhdi returned instead, for the log: chainfold's reading of
        // the chain below is the parent's data.
        let below = if blind.is_empty() {
            Vec::new()
        } else {
            ours(layers[1])
        };
        let mut seen = Vec::new();
        for &p in &blind {
            let a = (p * self.block) as usize;
            let b = ((p + 1) * self.block).min(model.len() as u64) as usize;
            seen.push(if got[a..b] == want[a..b] {
                format!("{p}: agrees")
            } else if got[a..b] == below[a..b] {
                format!("{p}: the parent's data")
            } else if got[a..b].iter().all(|x| *x == 0) {
                format!("{p}: zeros")
            } else {
                format!("{p}: other data")
            });
            got[a..b].fill(0);
            want[a..b].fill(0);
        }
        if !blind.is_empty() {
            eprintln!(
                "{what}: libvhdi not compared on blocks {blind:?} (ZERO/UNMAPPED/UNDEFINED, or NOT_PRESENT with bitmap bits libvhdi reads: ORACLES.md); libvhdi read {seen:?}"
            );
        }
        same(&format!("{what}: libvhdi"), &got, &want);
    }

    /// chainfold and qemu-img read the base as `model`.
    fn verify_base(&self, model: &[u8], step: &str) {
        let what = format!("{}, {step}", self.label);
        check_clean(&self.base);
        same(&format!("{what}: chainfold"), &ours(&self.base), model);
        if let Some(q) = qemu_raw(&self.base, self.fmt.qemu()) {
            same(&format!("{what}: qemu-img"), &q, model);
        }
    }

    /// Verify the top chain, merge top into mid and verify mid's chain,
    /// merge mid into the base and verify the base.
    fn merge_down(&self, model: &[u8]) {
        self.verify_diff(&[&self.top, &self.mid, &self.base], model, "top");
        merge(&self.top);
        self.verify_diff(
            &[&self.mid, &self.base],
            model,
            "mid after merging top into it",
        );
        merge(&self.mid);
        self.verify_base(model, "base after merging mid into it");
    }
}

/// The expected virtual content.
struct Model(Vec<u8>);

impl Model {
    fn put(&mut self, off: u64, bytes: &[u8]) {
        self.0[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    }
    fn zero(&mut self, off: u64, len: u64) {
        self.0[off as usize..(off + len) as usize].fill(0);
    }
}

/// Write through chainfold and into the model.
fn put(m: &mut Model, img: &Path, off: u64, bytes: &[u8]) {
    write(img, off, bytes);
    m.put(off, bytes);
}

// ------------------------------------------------------------ 1. zeros

/// VirtualBox once skipped writing all-zero blocks into a snapshot, so the
/// parent's data showed through again. Zeros written into a child, through
/// `write` (a zero-filled input) and through the library's zero path, over
/// unallocated and allocated blocks, whole and in part, must hide the
/// parent and stay zeros through both merges.
#[test]
fn zeros_written_in_a_child_hide_the_parent_after_merges() {
    for (fmt, bs) in [(Fmt::Vhd, 512 * KIB), (Fmt::Vhdx, MIB)] {
        let size = 8 * bs;
        let (c, mut m) = Chain::over_full_base(fmt, size, bs, "zeros");
        put(&mut m, &c.mid, 6 * bs, &data(2, bs));
        // A partial block too, so the middle VHDX layer has a sector
        // bitmap block (libvhdi misreads chunks without one).
        put(&mut m, &c.mid, 7 * bs + 8 * KIB, &data(9, 4 * KIB));
        c.make_top();
        let zeros = |n: u64| vec![0u8; n as usize];
        // `write` of zeros: a whole unallocated block, part of one.
        put(&mut m, &c.top, bs, &zeros(bs));
        put(&mut m, &c.top, 2 * bs + 64 * KIB, &zeros(128 * KIB));
        // The zero path: a whole unallocated block, part of one.
        zero_sectors(&c.top, 3 * bs, bs);
        m.zero(3 * bs, bs);
        zero_sectors(&c.top, 4 * bs + 4 * KIB, 8 * KIB);
        m.zero(4 * bs + 4 * KIB, 8 * KIB);
        // Both over a block the child already holds.
        put(&mut m, &c.top, 5 * bs, &data(3, bs));
        put(&mut m, &c.top, 5 * bs + bs / 4, &zeros(bs / 4));
        zero_sectors(&c.top, 5 * bs + bs / 2, 4 * KIB);
        m.zero(5 * bs + bs / 2, 4 * KIB);
        // A whole block the middle layer holds.
        zero_sectors(&c.top, 6 * bs, bs);
        m.zero(6 * bs, bs);
        c.merge_down(&m.0);
    }
}

// ------------------------------------------------------------ 2. BAT states

/// A VHDX child whose payload BAT entries were patched on disk (the BAT has
/// no checksum; the log must be empty so nothing replays over the patch):
/// ZERO, UNMAPPED, UNDEFINED and the v0.95 UNMAPPED (5) read zeros and
/// hide the parents (chainfold's documented choice, FORMATS.md 3.9; the
/// UNMAPPED / UNDEFINED entries keep their FileOffsetMB, so the stale data
/// is still in the file and must not show), NOT_PRESENT reads the parent
/// (including a block that was PARTIALLY_PRESENT, whose sector bitmap still
/// has bits set). The merges must write what the reads returned.
#[test]
fn vhdx_bat_states_read_per_ms_vhdx_and_merge_the_same() {
    let bs = MIB;
    let size = 8 * bs;
    let (c, mut m) = Chain::over_full_base(Fmt::Vhdx, size, bs, "BAT states");
    put(&mut m, &c.mid, bs, &data(2, bs));
    put(&mut m, &c.mid, 4 * bs, &data(3, bs));
    put(&mut m, &c.mid, 7 * bs, &data(4, bs / 2));
    c.make_top();
    let child = data(5, 6 * bs);
    write(&c.top, bs, &child);
    write(&c.top, 7 * bs, &data(6, 64 * KIB));
    let bat = VhdxBat::open(&c.top, bs);
    for p in 1..=6 {
        assert_eq!(bat.state(p), FULLY_PRESENT, "block {p} before the patch");
    }
    assert_eq!(bat.state(7), PARTIALLY_PRESENT, "block 7 before the patch");
    bat.set(1, ZERO, false);
    bat.set(2, UNMAPPED, true);
    bat.set(3, UNDEFINED, true);
    bat.set(4, NOT_PRESENT, false);
    bat.set(5, UNMAPPED_V095, true);
    bat.set(7, NOT_PRESENT, false);
    for p in [1, 2, 3, 5] {
        m.zero(p * bs, bs);
    }
    m.put(6 * bs, &child[5 * bs as usize..]);
    // Blocks 4 and 7 read the middle layer (and block 7's second half the
    // base), as the model already says.
    let findings = check_clean(&c.top);
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "bat_entry_legacy_state"),
        "no warning for state 5: {findings:?}"
    );
    c.merge_down(&m.0);
}

// ------------------------------------------------------------ 3. bitmap edges

/// Sector bitmaps whose runs end exactly at a block's last sector, and runs
/// that cross from one block into the next, in the child and in the layer
/// it merges into. (Every VHD bitmap byte here is 0x00, 0xff or a run
/// ending at the byte's last sector, 0x01 / 0x03 / 0x07: of the form 0*1*,
/// MSB first, which libvhdi decodes right.)
#[test]
fn partially_present_blocks_ending_at_the_block_edge_merge() {
    for (fmt, bs) in [(Fmt::Vhd, 512 * KIB), (Fmt::Vhdx, MIB)] {
        let size = 8 * bs;
        let (c, mut m) = Chain::over_full_base(fmt, size, bs, "bitmap edges");
        put(&mut m, &c.mid, 4 * bs - 4 * KIB, &data(2, 8 * KIB));
        put(&mut m, &c.mid, 7 * bs - 512, &data(3, 512));
        c.make_top();
        put(&mut m, &c.top, bs - 4 * KIB, &data(4, 4 * KIB));
        put(&mut m, &c.top, 3 * bs - 512, &data(5, 512));
        put(&mut m, &c.top, 4 * bs - 1536, &data(6, 1536 + 4 * KIB));
        put(&mut m, &c.top, 6 * bs - 64 * KIB, &data(7, 128 * KIB));
        put(&mut m, &c.top, size - 1024, &data(8, 1024));
        if fmt == Fmt::Vhdx {
            let bat = VhdxBat::open(&c.top, bs);
            for p in [0, 2, 3, 4, 5, 6, 7] {
                assert_eq!(bat.state(p), PARTIALLY_PRESENT, "block {p}");
            }
        }
        c.merge_down(&m.0);
    }
}

// ------------------------------------------------------------ 4. footerless VHD

/// Xen Orchestra wrote VHDs whose trailing footer was missing, only the
/// copy at offset 0 left. FORMATS.md 2.1 / 2.9 (the VHD spec's recovery
/// rule): a dynamic or differencing VHD whose end footer is missing or bad
/// is read from the copy at 0, with a warning; with no valid copy either
/// it is not an image (a typed error naming the file). Both the footer cut
/// off (file 512 bytes shorter) and zeroed in place, in the base and in a
/// child, then merged.
#[test]
fn footerless_vhd_opens_from_the_copy_at_zero() {
    let bs = 2 * MIB;
    let size = 4 * bs;
    for (damaged, how) in [
        ("base", "truncated"),
        ("base", "zeroed"),
        ("child", "truncated"),
        ("child", "zeroed"),
    ] {
        let label = format!("footerless {damaged} ({how})");
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.vhd");
        let child = d.path().join("child.vhd");
        create(&base, size, bs, None);
        let mut m = Model(vec![0; size as usize]);
        // Every block written, the last one last: the file ends with it.
        put(&mut m, &base, 0, &data(1, size));
        let base_model = m.0.clone();
        create(&child, 0, bs, Some(&base));
        put(&mut m, &child, bs + 4 * KIB, &data(2, 64 * KIB));
        put(&mut m, &child, size - 8 * KIB, &data(3, 8 * KIB));
        let victim = if damaged == "base" { &base } else { &child };
        let len = std::fs::metadata(victim).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(victim)
            .unwrap();
        if how == "truncated" {
            f.set_len(len - 512).unwrap();
        } else {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[0u8; 512], len - 512).unwrap();
        }
        drop(f);

        // Opened from the copy at 0, with a warning naming file and structure.
        let findings = check_clean(victim);
        assert!(
            findings.iter().any(|f| f["severity"] == "warning"
                && f["structure"] == "hard disk footer"
                && f["file"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(victim.file_name().unwrap().to_str().unwrap()))
                && f["kind"] == "footer_cookie"),
            "{label}: no warning about the footer: {findings:?}"
        );
        check_clean(&child);
        same(&format!("{label}: base"), &ours(&base), &base_model);
        same(&format!("{label}: chain"), &ours(&child), &m.0);
        if damaged == "base" {
            // qemu reads a dynamic VHD from its copy at 0 first. libvhdi
            // only looks at the end of the file (chain_read.py too):
            // it cannot read the damaged file, so it confirms only after
            // the merge below has written a footer there again.
            if let Some(q) = qemu_raw(&base, "vpc") {
                same(&format!("{label}: qemu-img, base"), &q, &base_model);
            }
        }
        // The merge into the base (whichever was damaged) works, and the
        // merged base ends in a valid footer again.
        merge(&child);
        let merged = check_clean(&base);
        assert!(
            merged.iter().all(|f| f["structure"] != "hard disk footer"),
            "{label}: merged base still has footer findings: {merged:?}"
        );
        same(&format!("{label}: merged base"), &ours(&base), &m.0);
        if let Some(q) = qemu_raw(&base, "vpc") {
            same(&format!("{label}: qemu-img, merged base"), &q, &m.0);
        }
        if let Some(l) = libvhdi_raw(&base, &[]) {
            same(&format!("{label}: libvhdi, merged base"), &l, &m.0);
        }
    }
}

/// With the copy at 0 gone as well, nothing describes the image: every
/// command refuses it with a typed error naming the file and the footer,
/// and never panics; a merge answers 32776 (not an image / corrupt).
#[test]
fn vhd_without_any_footer_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.vhd");
    let child = d.path().join("child.vhd");
    create(&base, 8 * MIB, 2 * MIB, None);
    write(&base, 0, &data(1, 4 * MIB));
    create(&child, 0, 2 * MIB, Some(&base));
    write(&child, 0, &data(2, 64 * KIB));
    for victim in [&child, &base] {
        let len = std::fs::metadata(victim).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(victim)
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0u8; 512], 0).unwrap();
        f.set_len(len - 512).unwrap();
    }
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let raw = d.path().join("out.raw");
    for (args, victim) in [
        (vec!["info", s(&base)], &base),
        (vec!["check", s(&base)], &base),
        (vec!["convert", s(&base), s(&raw)], &base),
        (vec!["info", s(&child)], &child),
    ] {
        let out = xtask(&args);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} accepted: {t}");
        assert!(!t.contains("panicked"), "{args:?} panicked: {t}");
        assert!(
            t.contains(&name(victim)) && t.contains("footer"),
            "{args:?}: the error does not name the file and the footer: {t}"
        );
    }
    let out = xtask(&["merge", s(&child), s(&base), "--json"]);
    let t = text(&out);
    assert!(!t.contains("panicked"), "merge panicked: {t}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("merge --json printed no JSON ({e}): {t}"));
    assert_eq!(v["return_value"], 32776, "{t}");
    assert!(t.contains(&name(&child)), "{t}");
}

// ------------------------------------------------------------ 5. unaligned VHD data

/// Windows places a VHD block's data right after its 512-byte bitmap at a
/// sector boundary, so the data is 512 bytes past a 4 KiB page; so does
/// chainfold's in-place `write` (a merge places new blocks on a page). A
/// chain whose every layer is laid out that way reads and merges right.
#[test]
fn vhd_with_block_data_off_the_page_merges() {
    let bs = 2 * MIB;
    let size = 16 * MIB;
    let (c, mut m) = Chain::over_full_base(Fmt::Vhd, size, bs, "unaligned data");
    put(&mut m, &c.mid, 2 * MIB + 4 * KIB, &data(2, MIB));
    put(&mut m, &c.mid, 5 * MIB, &data(3, 2 * MIB));
    c.make_top();
    put(&mut m, &c.top, MIB, &data(4, 2 * MIB));
    put(&mut m, &c.top, 9 * MIB + 8 * KIB, &data(5, 12 * KIB));
    put(&mut m, &c.top, 6 * MIB, &data(6, 4 * KIB));
    // Each block is 2 MiB + 512 bytes long, so one in eight lands on a page
    // again: most must not, the first of each layer least of all.
    for layer in [&c.base, &c.mid, &c.top] {
        let blocks = vhd_blocks(layer);
        let off = blocks
            .iter()
            .filter(|(_, at)| !at.is_multiple_of(4096))
            .count();
        eprintln!(
            "{}: {off} of {} blocks hold data off the page",
            layer.display(),
            blocks.len()
        );
        assert!(
            !blocks[0].1.is_multiple_of(4096) && 2 * off > blocks.len(),
            "{}: block data is page aligned ({blocks:x?}); the case needs it off the page",
            layer.display()
        );
    }
    c.merge_down(&m.0);
}

// ------------------------------------------------------------ 6. partial last block

/// A virtual size that is not a multiple of the block size (16 MiB +
/// 512 KiB): data in the last, partial block, written up to the disk's last
/// byte and across into it from the block before, in the child and in the
/// layer it merges into. The 32 MiB VHDX case is one partial block.
#[test]
fn partial_last_block_merges() {
    let size = 16 * MIB + 512 * KIB;
    for (fmt, bs) in [(Fmt::Vhd, 2 * MIB), (Fmt::Vhdx, MIB), (Fmt::Vhdx, 32 * MIB)] {
        let last = size / bs * bs;
        let (c, mut m) = Chain::over_full_base(fmt, size, bs, "partial last block");
        put(&mut m, &c.mid, last, &data(2, 64 * KIB));
        put(&mut m, &c.mid, size - 4 * KIB, &data(3, 4 * KIB));
        c.make_top();
        put(&mut m, &c.top, size - 256 * KIB, &data(4, 256 * KIB));
        let cross = last.saturating_sub(8 * KIB);
        put(&mut m, &c.top, cross, &data(5, 16 * KIB));
        c.merge_down(&m.0);
    }
}
