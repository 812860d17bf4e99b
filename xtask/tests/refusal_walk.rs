//! Every command's refusal paths, walked from a table: each row builds a
//! small directory of images (copied from one set made once with the
//! project's own `create` / `write`), damages or locks what it needs, runs
//! one command and insists on
//!
//! - the documented non-zero exit status,
//! - a message (stdout or stderr) naming the file at fault,
//! - every file of the directory byte-identical afterwards (SHA-256 and
//!   length), and no file added or removed (no leftovers).
//!
//! A refusal that changes a byte is a bug in the command, not in this
//! table. Adding a case is one row of `CASES`. Damage is placed with the
//! formats crate's own schemas (headers, region tables, metadata tables,
//! BATs, footers are parsed and re-encoded with checksums recomputed, so
//! the damage itself, not a checksum, is what a command meets).
//!
//! Not walked here: `set-parent` and `rebase` (their own tests), a full
//! file system (`merge`'s preflight has its own test, `preflight.rs`).

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use formats::vhd::{BlockAllocationTable as VhdBat, DynamicDiskHeader, HardDiskFooter};
use formats::vhdx::bat::{BatEntry, PAYLOAD_FULLY_PRESENT};
use formats::vhdx::header as vhdx_header;
use formats::vhdx::metadata_table::{self as mt, MetadataTable, MetadataTableEntry};
use formats::vhdx::region_table as rt;
use sha2::{Digest, Sha256};
use testdata::schema::{vhd_footers, vhdx_headers, vhdx_region, vhdx_regions};

use common::{ok, write};

// ------------------------------------------------------------ the images

/// The images every case copies from, made once: VHDX base <- child <- gc
/// and a second child of the base (siblings), a VHD base <- child, a fixed
/// VHD and a fixed VHDX, an unrelated VHDX, and two input files. Each
/// image holds data, written before its children were made (a write gives
/// a VHDX a new DataWriteGuid), so every linkage is intact.
fn kit() -> &'static Path {
    static KIT: OnceLock<tempfile::TempDir> = OnceLock::new();
    KIT.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        let p = d.path();
        let mb = 1 << 20;
        let data = |n: usize, seed: u8| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        let create = |args: &[&str]| {
            let mut a = vec!["create"];
            a.extend_from_slice(args);
            ok(run_in(p, &a).0, &format!("create {args:?}"));
        };
        create(&["vx-base.vhdx", "--size", "8M", "--block-size", "1M"]);
        write(&p.join("vx-base.vhdx"), 0, &data(mb, 1), p);
        create(&[
            "vx-child.vhdx",
            "--parent",
            "vx-base.vhdx",
            "--block-size",
            "1M",
        ]);
        write(&p.join("vx-child.vhdx"), mb as u64, &data(mb / 2, 2), p);
        create(&[
            "vx-gc.vhdx",
            "--parent",
            "vx-child.vhdx",
            "--block-size",
            "1M",
        ]);
        write(&p.join("vx-gc.vhdx"), 2 * mb as u64, &data(4096, 3), p);
        create(&[
            "vx-sib.vhdx",
            "--parent",
            "vx-base.vhdx",
            "--block-size",
            "1M",
        ]);
        create(&["vx-other.vhdx", "--size", "8M", "--block-size", "1M"]);
        create(&["vx-fixed.vhdx", "--size", "4M", "--type", "fixed"]);
        create(&["vh-base.vhd", "--size", "4M", "--block-size", "512K"]);
        write(&p.join("vh-base.vhd"), 0, &data(mb, 4), p);
        create(&["vh-child.vhd", "--parent", "vh-base.vhd"]);
        write(&p.join("vh-child.vhd"), 4096, &data(8192, 5), p);
        create(&["vh-fixed.vhd", "--size", "2M", "--type", "fixed"]);
        std::fs::write(p.join("data.bin"), data(4096, 6)).expect("data.bin");
        std::fs::write(p.join("mib.bin"), data(mb, 7)).expect("mib.bin");
        d
    })
    .path()
}

/// Run the xtask binary with `dir` as its working directory, so a table
/// row's arguments are plain file names. (Output, exit code.)
fn run_in(dir: &Path, args: &[&str]) -> (std::process::Output, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run xtask");
    let code = out.status.code().unwrap_or(-1);
    (out, code)
}

// ------------------------------------------------- damage, by the schema

fn edit(dir: &Path, name: &str, f: impl FnOnce(&mut [u8])) {
    let p = dir.join(name);
    let mut b = std::fs::read(&p).unwrap_or_else(|e| panic!("read {name}: {e}"));
    f(&mut b);
    std::fs::write(&p, b).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

/// Both VHDX headers fail their CRC (a reserved byte changed).
fn vhdx_header_checksums(b: &mut [u8]) {
    for off in vhdx_header::SLOT_OFFSETS {
        b[off as usize + vhdx_header::SIZE - 1] ^= 0x5A;
    }
}

/// The metadata table, re-encoded (it has no checksum).
fn vhdx_metadata(b: &mut [u8], f: impl FnOnce(&mut MetadataTable)) {
    let at = vhdx_region(b, rt::METADATA_GUID) as usize;
    let mut t = MetadataTable::parse(&b[at..at + mt::TABLE_SIZE]).expect("a metadata table");
    f(&mut t);
    b[at..at + mt::TABLE_SIZE].copy_from_slice(&t.to_bytes());
}

/// A required metadata item chainfold does not know.
fn vhdx_unknown_required_item(b: &mut [u8]) {
    vhdx_metadata(b, |t| {
        t.entries.push(MetadataTableEntry {
            item_id: uuid::uuid!("0c0ffee0-1234-4567-89ab-cdef01234567"),
            offset: 0,
            length: 0,
            flags: mt::FLAG_IS_REQUIRED,
            reserved2: 0,
        })
    });
}

/// BAT entry `i` FULLY_PRESENT at 1 TiB, far past the end of the file.
fn vhdx_bat_past_end(b: &mut [u8], i: usize) {
    let at = vhdx_region(b, rt::BAT_GUID) as usize + i * BatEntry::SIZE;
    let e = BatEntry::new(PAYLOAD_FULLY_PRESENT, 1 << 40);
    b[at..at + BatEntry::SIZE].copy_from_slice(&e.encode());
}

fn vhd_footer(b: &[u8]) -> HardDiskFooter {
    let n = b.len();
    let raw: &[u8; 512] = b[n - 512..].try_into().expect("512 bytes");
    HardDiskFooter::parse(raw, "image", 0).expect("a footer").0
}

/// The dynamic disk header the end footer points at, re-encoded.
fn vhd_header(b: &mut [u8], f: impl FnOnce(&mut DynamicDiskHeader)) {
    let at = vhd_footer(b).data_offset as usize;
    let raw: &[u8; 1024] = b[at..at + 1024].try_into().expect("1024 bytes");
    let (mut h, _) = DynamicDiskHeader::parse(raw, "image", at as u64).expect("a header");
    f(&mut h);
    b[at..at + 1024].copy_from_slice(&h.to_bytes().expect("encode header"));
}

/// VHD BAT entry `i` pointing far past the end of the file.
fn vhd_bat_past_end(b: &mut [u8], i: usize) {
    let at = vhd_footer(b).data_offset as usize;
    let raw: &[u8; 1024] = b[at..at + 1024].try_into().expect("1024 bytes");
    let (h, _) = DynamicDiskHeader::parse(raw, "image", at as u64).expect("a header");
    let to = h.table_offset as usize;
    let len = h.max_table_entries as usize * 4;
    let mut bat =
        VhdBat::parse(&b[to..to + len], h.max_table_entries, "image", to as u64).expect("BAT");
    bat.entries[i] = 0x7FFF_0000;
    // The encoding is padded to whole sectors; the table is `len` bytes.
    b[to..to + len].copy_from_slice(&bat.to_bytes().expect("encode BAT")[..len]);
}

/// Hold an exclusive `flock` on a file (what chainfold's storage takes:
/// `File::try_lock` for writing, `try_lock_shared` for reading), for as
/// long as the returned handle lives.
fn lock(dir: &Path, name: &str) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .open(dir.join(name))
        .unwrap_or_else(|e| panic!("open {name} to lock it: {e}"));
    f.lock().unwrap_or_else(|e| panic!("lock {name}: {e}"));
    f
}

// ----------------------------------------------------------- the table

/// Prepares a case directory (already holding its `files`); returns the
/// locks to hold while the command runs.
type Setup = fn(&Path) -> Vec<File>;

struct Case {
    name: &'static str,
    /// Copied from the kit into the case directory first.
    files: &'static [&'static str],
    setup: Setup,
    argv: &'static [&'static str],
    /// The documented exit status.
    code: i32,
    /// The message must name this file.
    names: &'static str,
}

const fn case(
    name: &'static str,
    files: &'static [&'static str],
    setup: Setup,
    argv: &'static [&'static str],
    code: i32,
    names: &'static str,
) -> Case {
    Case {
        name,
        files,
        setup,
        argv,
        code,
        names,
    }
}

fn nothing(_: &Path) -> Vec<File> {
    Vec::new()
}

const VX: &[&str] = &["vx-base.vhdx", "vx-child.vhdx"];
const VX3: &[&str] = &["vx-base.vhdx", "vx-child.vhdx", "vx-gc.vhdx"];
const VH: &[&str] = &["vh-base.vhd", "vh-child.vhd"];
const VXD: &[&str] = &["vx-base.vhdx", "vx-child.vhdx", "data.bin"];
const VHD_D: &[&str] = &["vh-base.vhd", "vh-child.vhd", "data.bin"];

/// Exit statuses, as the commands document them.
mod exit {
    /// info: the image cannot be opened.
    pub const INFO: i32 = 2;
    /// check: errors found / could not be read.
    pub const CHECK_ERRORS: i32 = 1;
    pub const CHECK_UNREADABLE: i32 = 2;
    /// convert and map: failed / a file or parent not found.
    pub const FAILED: i32 = 1;
    pub const NOT_FOUND: i32 = 3;
    /// create and write: failed.
    pub const CREATE: i32 = 1;
    pub const WRITE: i32 = 1;
    /// compact: refused (fails check) / cannot be opened.
    pub const COMPACT_REFUSED: i32 = 1;
    pub const COMPACT_UNOPENED: i32 = 2;
    /// scan: problems found / DIR unreadable.
    pub const SCAN_PROBLEMS: i32 = 1;
    pub const SCAN_UNREADABLE: i32 = 2;
    /// merge (the MergeVirtualHardDisk table in README.md).
    pub const M_INVALID_PARAMETER: i32 = 2; // 32773
    pub const M_NOT_FOUND: i32 = 3; // 32779
    pub const M_IN_USE: i32 = 4; // 32774
    pub const M_INVALID_STATE: i32 = 5; // 32775
    pub const M_NOT_SUPPORTED: i32 = 6; // 32770
    pub const M_CORRUPT: i32 = 7; // 32776
    /// set-parent and rebase: the merge table plus 10, the new parent
    /// does not fit (identity, size, format, cycle).
    pub const R_MISMATCH: i32 = 10;
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- set-parent
    case("set-parent: identity mismatch", &["vx-base.vhdx", "vx-child.vhdx", "vx-other.vhdx"], nothing, &["set-parent", "vx-child.vhdx", "vx-other.vhdx"], exit::R_MISMATCH, "vx-other.vhdx"),
    case("set-parent: VHD identity mismatch", &["vh-base.vhd", "vh-child.vhd", "vh-fixed.vhd"], nothing, &["set-parent", "vh-child.vhd", "vh-fixed.vhd"], exit::R_MISMATCH, "vh-fixed.vhd"),
    case("set-parent: other size", &["vx-base.vhdx", "vx-child.vhdx", "vx-fixed.vhdx"], nothing, &["set-parent", "vx-child.vhdx", "vx-fixed.vhdx", "--ignore-id-mismatch"], exit::R_MISMATCH, "vx-fixed.vhdx"),
    case("set-parent: other format", &["vx-base.vhdx", "vx-child.vhdx", "vh-base.vhd"], nothing, &["set-parent", "vx-child.vhdx", "vh-base.vhd", "--ignore-id-mismatch"], exit::R_MISMATCH, "vh-base.vhd"),
    case("set-parent: cycle", &["vx-base.vhdx", "vx-child.vhdx", "vx-gc.vhdx"], nothing, &["set-parent", "vx-child.vhdx", "vx-gc.vhdx", "--ignore-id-mismatch"], exit::R_MISMATCH, "vx-child.vhdx"),
    case("set-parent: not differencing", &["vx-base.vhdx", "vx-other.vhdx"], nothing, &["set-parent", "vx-base.vhdx", "vx-other.vhdx"], exit::M_NOT_SUPPORTED, "vx-base.vhdx"),
    case("set-parent: parent missing", VX, nothing, &["set-parent", "vx-child.vhdx", "nope.vhdx"], exit::M_NOT_FOUND, "nope.vhdx"),
    case("set-parent: child locked", VX, |d| vec![lock(d, "vx-child.vhdx")], &["set-parent", "vx-child.vhdx", "vx-base.vhdx"], exit::M_IN_USE, "vx-child.vhdx"),
    case("set-parent: parent locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["set-parent", "vx-child.vhdx", "vx-base.vhdx"], exit::M_IN_USE, "vx-base.vhdx"),
    case("set-parent: corrupt child", VX, |d| { edit(d, "vx-child.vhdx", vhdx_header_checksums); vec![] }, &["set-parent", "vx-child.vhdx", "vx-base.vhdx"], exit::M_CORRUPT, "vx-child.vhdx"),
    // ---- rebase
    case("rebase: onto its own child", &["vx-base.vhdx", "vx-child.vhdx", "vx-gc.vhdx"], nothing, &["rebase", "vx-child.vhdx", "--onto", "vx-gc.vhdx"], exit::R_MISMATCH, "vx-child.vhdx"),
    case("rebase: other size", &["vx-base.vhdx", "vx-child.vhdx", "vx-fixed.vhdx"], nothing, &["rebase", "vx-child.vhdx", "--onto", "vx-fixed.vhdx"], exit::R_MISMATCH, "vx-fixed.vhdx"),
    case("rebase: not differencing", &["vx-base.vhdx", "vx-other.vhdx"], nothing, &["rebase", "vx-base.vhdx", "--onto", "vx-other.vhdx"], exit::M_NOT_SUPPORTED, "vx-base.vhdx"),
    case("rebase: old parent missing", &["vx-child.vhdx", "vx-other.vhdx"], nothing, &["rebase", "vx-child.vhdx", "--onto", "vx-other.vhdx"], exit::M_NOT_FOUND, "vx-child.vhdx"),
    case("rebase: new parent locked", &["vx-base.vhdx", "vx-child.vhdx", "vx-other.vhdx"], |d| vec![lock(d, "vx-other.vhdx")], &["rebase", "vx-child.vhdx", "--onto", "vx-other.vhdx"], exit::M_IN_USE, "vx-other.vhdx"),
    case("rebase: VHD new parent too small", &["vh-base.vhd", "vh-child.vhd", "vh-fixed.vhd"], nothing, &["rebase", "vh-child.vhd", "--onto", "vh-fixed.vhd"], exit::R_MISMATCH, "vh-fixed.vhd"),
    // ---- info
    case("info: no such file", &[], nothing, &["info", "nope.vhdx"], exit::INFO, "nope.vhdx"),
    case("info: not an image", &["data.bin"], nothing, &["info", "data.bin"], exit::INFO, "data.bin"),
    case("info: locked", VX, |d| vec![lock(d, "vx-child.vhdx")], &["info", "vx-child.vhdx"], exit::INFO, "vx-child.vhdx"),
    case("info: VHDX region past EOF", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_regions(b, |t| t.entries[0].file_offset = 1 << 40)); vec![] }, &["info", "vx-base.vhdx"], exit::INFO, "vx-base.vhdx"),
    case("info: VHDX unknown required metadata", VX, |d| { edit(d, "vx-base.vhdx", vhdx_unknown_required_item); vec![] }, &["info", "vx-base.vhdx"], exit::INFO, "vx-base.vhdx"),
    case("info: VHDX pending log of unknown version", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_headers(b, |h| { h.log_guid = uuid::Uuid::from_u128(7); h.log_version = 9; })); vec![] }, &["info", "vx-base.vhdx"], exit::INFO, "vx-base.vhdx"),
    case("info: VHD disk type 7", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_footers(b, |f| f.disk_type = 7)); vec![] }, &["info", "vh-base.vhd"], exit::INFO, "vh-base.vhd"),
    case("info: VHD header version 2", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_header(b, |h| h.header_version = 0x0002_0000)); vec![] }, &["info", "vh-base.vhd"], exit::INFO, "vh-base.vhd"),
    // ---- check
    case("check: no such file", &[], nothing, &["check", "nope.vhd"], exit::CHECK_UNREADABLE, "nope.vhd"),
    case("check: locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["check", "vx-child.vhdx"], exit::CHECK_UNREADABLE, "vx-base.vhdx"),
    case("check: missing parent", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["check", "vx-child.vhdx"], exit::CHECK_UNREADABLE, "vx-child.vhdx"),
    case("check: wrong parent", &["vx-other.vhdx", "vx-child.vhdx"], |d| { std::fs::rename(d.join("vx-other.vhdx"), d.join("vx-base.vhdx")).unwrap(); vec![] }, &["check", "vx-child.vhdx"], exit::CHECK_ERRORS, "vx-child.vhdx"),
    case("check: VHDX header checksums", VX, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["check", "vx-base.vhdx"], exit::CHECK_ERRORS, "vx-base.vhdx"),
    case("check: VHDX BAT entry past EOF", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_bat_past_end(b, 3)); vec![] }, &["check", "vx-child.vhdx"], exit::CHECK_ERRORS, "vx-base.vhdx"),
    case("check: VHD footer checksum", VH, |d| { edit(d, "vh-base.vhd", |b| { let n = b.len(); b[n - 1] ^= 1; b[511] ^= 1; }); vec![] }, &["check", "vh-base.vhd"], exit::CHECK_ERRORS, "vh-base.vhd"),
    case("check: VHD BAT entry past EOF", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_bat_past_end(b, 5)); vec![] }, &["check", "vh-base.vhd"], exit::CHECK_ERRORS, "vh-base.vhd"),
    // ---- convert
    case("convert: VHDX output exists", &["vx-base.vhdx", "vx-child.vhdx", "vx-other.vhdx"], nothing, &["convert", "vx-child.vhdx", "vx-other.vhdx"], exit::FAILED, "vx-other.vhdx"),
    case("convert: VHD output exists", &["vx-base.vhdx", "vx-child.vhdx", "vh-fixed.vhd"], nothing, &["convert", "vx-child.vhdx", "vh-fixed.vhd"], exit::FAILED, "vh-fixed.vhd"),
    case("convert: raw output exists", VXD, nothing, &["convert", "vx-child.vhdx", "data.bin"], exit::FAILED, "data.bin"),
    case("convert: missing parent", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["convert", "vx-child.vhdx", "out.raw"], exit::NOT_FOUND, "vx-child.vhdx"),
    case("convert: wrong parent", &["vx-other.vhdx", "vx-child.vhdx"], |d| { std::fs::rename(d.join("vx-other.vhdx"), d.join("vx-base.vhdx")).unwrap(); vec![] }, &["convert", "vx-child.vhdx", "out.vhdx"], exit::FAILED, "vx-child.vhdx"),
    case("convert: source locked", VX, |d| vec![lock(d, "vx-child.vhdx")], &["convert", "vx-child.vhdx", "out.raw"], exit::FAILED, "vx-child.vhdx"),
    case("convert: corrupt source", VX, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["convert", "vx-child.vhdx", "out.vhd"], exit::FAILED, "vx-base.vhdx"),
    case("convert: unsupported source", VX, |d| { edit(d, "vx-child.vhdx", vhdx_unknown_required_item); vec![] }, &["convert", "vx-child.vhdx", "out.vhdx"], exit::FAILED, "vx-child.vhdx"),
    case("convert: bad output block size", VX, nothing, &["convert", "vx-child.vhdx", "out.vhdx", "--block-size", "3M"], exit::FAILED, "out.vhdx"),
    // ---- create
    case("create: VHDX exists", &["vx-other.vhdx"], nothing, &["create", "vx-other.vhdx", "--size", "8M"], exit::CREATE, "vx-other.vhdx"),
    case("create: VHD exists", &["vh-fixed.vhd"], nothing, &["create", "vh-fixed.vhd", "--size", "8M", "--type", "fixed"], exit::CREATE, "vh-fixed.vhd"),
    case("create: child exists", VX, nothing, &["create", "vx-child.vhdx", "--parent", "vx-base.vhdx"], exit::CREATE, "vx-child.vhdx"),
    case("create: parent missing", &[], nothing, &["create", "new.vhdx", "--parent", "nope.vhdx"], exit::CREATE, "nope.vhdx"),
    case("create: parent corrupt", VX, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["create", "new.vhdx", "--parent", "vx-base.vhdx"], exit::CREATE, "vx-base.vhdx"),
    case("create: parent unsupported", VX, |d| { edit(d, "vx-base.vhdx", vhdx_unknown_required_item); vec![] }, &["create", "new.avhdx", "--parent", "vx-base.vhdx"], exit::CREATE, "vx-base.vhdx"),
    case("create: parent locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["create", "new.vhdx", "--parent", "vx-base.vhdx"], exit::CREATE, "vx-base.vhdx"),
    case("create: size below the parent's", VX, nothing, &["create", "new.vhdx", "--parent", "vx-base.vhdx", "--size", "4M"], exit::CREATE, "new.vhdx"),
    case("create: VHDX block size 3M", &[], nothing, &["create", "new.vhdx", "--size", "8M", "--block-size", "3M"], exit::CREATE, "new.vhdx"),
    case("create: VHD block size 1000", &[], nothing, &["create", "new.vhd", "--size", "8M", "--block-size", "1000"], exit::CREATE, "new.vhd"),
    case("create: sector size 1000", &[], nothing, &["create", "new.vhdx", "--size", "8M", "--logical-sector-size", "1000"], exit::CREATE, "new.vhdx"),
    case("create: VHDX over 64 TiB", &[], nothing, &["create", "new.vhdx", "--size", "65T"], exit::CREATE, "new.vhdx"),
    case("create: VHD over 2 TiB", &[], nothing, &["create", "new.vhd", "--size", "3T"], exit::CREATE, "new.vhd"),
    case("create: size not a sector multiple", &[], nothing, &["create", "new.vhdx", "--size", "1000"], exit::CREATE, "new.vhdx"),
    case("create: unknown extension", &[], nothing, &["create", "new.img", "--size", "8M"], exit::CREATE, "new.img"),
    // ---- write
    case("write: offset past the end", VXD, nothing, &["write", "vx-child.vhdx", "--offset", "9M", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: range crosses the end", VXD, nothing, &["write", "vx-child.vhdx", "--offset", "8386560", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHD range crosses the end", VHD_D, nothing, &["write", "vh-child.vhd", "--offset", "4192256", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    case("write: fixed VHD range crosses the end", &["vh-fixed.vhd", "data.bin"], nothing, &["write", "vh-fixed.vhd", "--offset", "2095104", "--input", "data.bin"], exit::WRITE, "vh-fixed.vhd"),
    case("write: no input file", VX, nothing, &["write", "vx-child.vhdx", "--offset", "0", "--input", "nope.bin"], exit::WRITE, "nope.bin"),
    case("write: VHDX missing parent", VXD, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHD missing parent", VHD_D, |d| { std::fs::remove_file(d.join("vh-base.vhd")).unwrap(); vec![] }, &["write", "vh-child.vhd", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    case("write: VHDX wrong parent", &["vx-other.vhdx", "vx-child.vhdx", "data.bin"], |d| { std::fs::rename(d.join("vx-other.vhdx"), d.join("vx-base.vhdx")).unwrap(); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHD wrong parent", &["vh-fixed.vhd", "vh-child.vhd", "data.bin"], |d| { std::fs::rename(d.join("vh-fixed.vhd"), d.join("vh-base.vhd")).unwrap(); vec![] }, &["write", "vh-child.vhd", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    case("write: image locked", VXD, |d| vec![lock(d, "vx-child.vhdx")], &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: parent locked", VXD, |d| vec![lock(d, "vx-base.vhdx")], &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-base.vhdx"),
    case("write: VHDX header checksums", VXD, |d| { edit(d, "vx-child.vhdx", vhdx_header_checksums); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: corrupt parent", VXD, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-base.vhdx"),
    case("write: VHDX unknown required metadata", VXD, |d| { edit(d, "vx-child.vhdx", vhdx_unknown_required_item); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHDX pending log of unknown version", VXD, |d| { edit(d, "vx-child.vhdx", |b| vhdx_headers(b, |h| { h.log_guid = uuid::Uuid::from_u128(7); h.log_version = 9; })); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHDX LogGuid without a log entry", VXD, |d| { edit(d, "vx-child.vhdx", |b| vhdx_headers(b, |h| h.log_guid = uuid::Uuid::from_u128(7))); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHDX BAT entry past EOF", VXD, |d| { edit(d, "vx-child.vhdx", |b| vhdx_bat_past_end(b, 0)); vec![] }, &["write", "vx-child.vhdx", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: unaligned, VHDX BAT entry past EOF", VXD, |d| { edit(d, "vx-child.vhdx", |b| vhdx_bat_past_end(b, 0)); vec![] }, &["write", "vx-child.vhdx", "--offset", "1000", "--input", "data.bin"], exit::WRITE, "vx-child.vhdx"),
    case("write: VHD header checksum", VHD_D, |d| { edit(d, "vh-child.vhd", |b| vhd_header(b, |h| h.reserved2[0] = 1)); edit(d, "vh-child.vhd", |b| { let at = vhd_footer(b).data_offset as usize; b[at + 1023] ^= 1; }); vec![] }, &["write", "vh-child.vhd", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    case("write: VHD BAT entry past EOF", VHD_D, |d| { edit(d, "vh-child.vhd", |b| vhd_bat_past_end(b, 0)); vec![] }, &["write", "vh-child.vhd", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    case("write: VHD disk type 7", VHD_D, |d| { edit(d, "vh-child.vhd", |b| vhd_footers(b, |f| f.disk_type = 7)); vec![] }, &["write", "vh-child.vhd", "--offset", "0", "--input", "data.bin"], exit::WRITE, "vh-child.vhd"),
    // ---- merge
    case("merge: source not differencing", VX, nothing, &["merge", "vx-base.vhdx"], exit::M_NOT_SUPPORTED, "vx-base.vhdx"),
    case("merge: destination not an ancestor", &["vx-base.vhdx", "vx-child.vhdx", "vx-other.vhdx"], nothing, &["merge", "vx-child.vhdx", "vx-other.vhdx"], exit::M_INVALID_PARAMETER, "vx-other.vhdx"),
    case("merge: destination is the source", VX, nothing, &["merge", "vx-child.vhdx", "vx-child.vhdx"], exit::M_INVALID_PARAMETER, "vx-child.vhdx"),
    // A destination outside the chain is not an ancestor, existing or not.
    case("merge: destination missing", VX, nothing, &["merge", "vx-child.vhdx", "nope.vhdx"], exit::M_INVALID_PARAMETER, "nope.vhdx"),
    case("merge: source missing", &[], nothing, &["merge", "nope.avhdx"], exit::M_NOT_FOUND, "nope.avhdx"),
    case("merge: siblings", &["vx-base.vhdx", "vx-child.vhdx", "vx-sib.vhdx"], nothing, &["merge", "vx-child.vhdx"], exit::M_INVALID_STATE, "vx-sib.vhdx"),
    case("merge: sibling of an intermediate", &["vx-base.vhdx", "vx-child.vhdx", "vx-gc.vhdx", "vx-sib.vhdx"], |d| { std::fs::remove_file(d.join("vx-sib.vhdx")).unwrap(); std::fs::copy(kit().join("vx-gc.vhdx"), d.join("vx-gc2.vhdx")).unwrap(); vec![] }, &["merge", "vx-gc.vhdx", "vx-base.vhdx"], exit::M_INVALID_STATE, "vx-gc2.vhdx"),
    case("merge: missing parent", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["merge", "vx-child.vhdx"], exit::M_NOT_FOUND, "vx-child.vhdx"),
    case("merge: wrong parent", &["vx-other.vhdx", "vx-child.vhdx"], |d| { std::fs::rename(d.join("vx-other.vhdx"), d.join("vx-base.vhdx")).unwrap(); vec![] }, &["merge", "vx-child.vhdx"], exit::M_INVALID_STATE, "vx-child.vhdx"),
    case("merge: VHD wrong parent", &["vh-fixed.vhd", "vh-child.vhd"], |d| { std::fs::rename(d.join("vh-fixed.vhd"), d.join("vh-base.vhd")).unwrap(); vec![] }, &["merge", "vh-child.vhd"], exit::M_INVALID_STATE, "vh-child.vhd"),
    case("merge: source locked", VX, |d| vec![lock(d, "vx-child.vhdx")], &["merge", "vx-child.vhdx"], exit::M_IN_USE, "vx-child.vhdx"),
    case("merge: destination locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["merge", "vx-child.vhdx"], exit::M_IN_USE, "vx-base.vhdx"),
    case("merge: intermediate locked", VX3, |d| vec![lock(d, "vx-child.vhdx")], &["merge", "vx-gc.vhdx", "vx-base.vhdx"], exit::M_IN_USE, "vx-child.vhdx"),
    case("merge: VHD destination locked", VH, |d| vec![lock(d, "vh-base.vhd")], &["merge", "vh-child.vhd"], exit::M_IN_USE, "vh-base.vhd"),
    case("merge: destination BAT past EOF", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_bat_past_end(b, 3)); vec![] }, &["merge", "vx-child.vhdx"], exit::M_CORRUPT, "vx-base.vhdx"),
    case("merge: source BAT past EOF", VX, |d| { edit(d, "vx-child.vhdx", |b| vhdx_bat_past_end(b, 5)); vec![] }, &["merge", "vx-child.vhdx"], exit::M_CORRUPT, "vx-child.vhdx"),
    case("merge: VHD destination BAT past EOF", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_bat_past_end(b, 5)); vec![] }, &["merge", "vh-child.vhd"], exit::M_CORRUPT, "vh-base.vhd"),
    case("merge: source header checksums", VX, |d| { edit(d, "vx-child.vhdx", vhdx_header_checksums); vec![] }, &["merge", "vx-child.vhdx"], exit::M_CORRUPT, "vx-child.vhdx"),
    case("merge: destination footer checksum", VH, |d| { edit(d, "vh-base.vhd", |b| { let n = b.len(); b[n - 1] ^= 1; b[511] ^= 1; }); vec![] }, &["merge", "vh-child.vhd"], exit::M_CORRUPT, "vh-base.vhd"),
    case("merge: destination unknown required metadata", VX, |d| { edit(d, "vx-base.vhdx", vhdx_unknown_required_item); vec![] }, &["merge", "vx-child.vhdx"], exit::M_CORRUPT, "vx-base.vhdx"),
    case("merge: destination pending log of unknown version", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_headers(b, |h| { h.log_guid = uuid::Uuid::from_u128(7); h.log_version = 9; })); vec![] }, &["merge", "vx-child.vhdx"], exit::M_CORRUPT, "vx-base.vhdx"),
    case("merge: destination larger than the source", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_metadata_virtual_size(b, 16 << 20)); vec![] }, &["merge", "vx-child.vhdx", "--ignore-linkage"], exit::M_NOT_SUPPORTED, "vx-base.vhdx"),
    case("merge: VHD destination header version 2", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_header(b, |h| h.header_version = 0x0002_0000)); vec![] }, &["merge", "vh-child.vhd"], exit::M_CORRUPT, "vh-base.vhd"),
    case("merge: dry run changes nothing", VX3, nothing, &["merge", "vx-gc.vhdx", "vx-base.vhdx", "--dry-run"], 0, "vx-base.vhdx"),
    // ---- compact
    case("compact: no such file", &[], nothing, &["compact", "nope.vhdx"], exit::COMPACT_UNOPENED, "nope.vhdx"),
    case("compact: locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["compact", "vx-base.vhdx"], exit::COMPACT_UNOPENED, "vx-base.vhdx"),
    case("compact: VHDX BAT entry past EOF", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_bat_past_end(b, 3)); vec![] }, &["compact", "vx-base.vhdx"], exit::COMPACT_REFUSED, "vx-base.vhdx"),
    case("compact: VHD BAT entry past EOF", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_bat_past_end(b, 5)); vec![] }, &["compact", "vh-base.vhd"], exit::COMPACT_REFUSED, "vh-base.vhd"),
    case("compact: VHDX header checksums", VX, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["compact", "vx-base.vhdx"], exit::COMPACT_UNOPENED, "vx-base.vhdx"),
    case("compact: VHDX unknown required metadata", VX, |d| { edit(d, "vx-base.vhdx", vhdx_unknown_required_item); vec![] }, &["compact", "vx-base.vhdx"], exit::COMPACT_UNOPENED, "vx-base.vhdx"),
    case("compact: --zero-blocks, missing parent", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["compact", "vx-child.vhdx", "--zero-blocks"], exit::COMPACT_UNOPENED, "vx-child.vhdx"),
    case("compact: --zero-blocks, parent locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["compact", "vx-child.vhdx", "--zero-blocks"], exit::COMPACT_UNOPENED, "vx-base.vhdx"),
    case("compact: --zero-blocks, VHD wrong parent", &["vh-fixed.vhd", "vh-child.vhd"], |d| { std::fs::rename(d.join("vh-fixed.vhd"), d.join("vh-base.vhd")).unwrap(); vec![] }, &["compact", "vh-child.vhd", "--zero-blocks"], exit::COMPACT_UNOPENED, "vh-child.vhd"),
    // ---- scan
    case("scan: no such directory", &[], nothing, &["scan", "nodir"], exit::SCAN_UNREADABLE, "nodir"),
    case("scan: a corrupt image", VX, |d| { edit(d, "vx-child.vhdx", vhdx_unknown_required_item); vec![] }, &["scan", "."], exit::SCAN_PROBLEMS, "vx-child.vhdx"),
    case("scan: a locked image", VX, |d| vec![lock(d, "vx-child.vhdx")], &["scan", "."], exit::SCAN_PROBLEMS, "vx-child.vhdx"),
    case("scan: an orphan", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["scan", "."], exit::SCAN_PROBLEMS, "vx-child.vhdx"),
    case("scan: siblings", &["vx-base.vhdx", "vx-child.vhdx", "vx-sib.vhdx"], nothing, &["scan", "."], exit::SCAN_PROBLEMS, "vx-base.vhdx"),
    // ---- map
    case("map: no such file", &[], nothing, &["map", "nope.vhdx"], exit::NOT_FOUND, "nope.vhdx"),
    case("map: missing parent", VX, |d| { std::fs::remove_file(d.join("vx-base.vhdx")).unwrap(); vec![] }, &["map", "vx-child.vhdx", "--svg", "map.svg"], exit::NOT_FOUND, "vx-child.vhdx"),
    case("map: wrong parent", &["vx-other.vhdx", "vx-child.vhdx"], |d| { std::fs::rename(d.join("vx-other.vhdx"), d.join("vx-base.vhdx")).unwrap(); vec![] }, &["map", "vx-child.vhdx", "--svg", "map.svg"], exit::FAILED, "vx-child.vhdx"),
    case("map: locked", VX, |d| vec![lock(d, "vx-base.vhdx")], &["map", "vx-child.vhdx", "--json"], exit::FAILED, "vx-base.vhdx"),
    case("map: corrupt", VX, |d| { edit(d, "vx-base.vhdx", vhdx_header_checksums); vec![] }, &["map", "vx-child.vhdx", "--svg", "map.svg"], exit::FAILED, "vx-base.vhdx"),
    case("map: BAT entry past EOF", VX, |d| { edit(d, "vx-base.vhdx", |b| vhdx_bat_past_end(b, 0)); vec![] }, &["map", "vx-child.vhdx", "--svg", "map.svg"], exit::FAILED, "vx-base.vhdx"),
    case("map: VHD disk type 7", VH, |d| { edit(d, "vh-base.vhd", |b| vhd_footers(b, |f| f.disk_type = 7)); vec![] }, &["map", "vh-child.vhd"], exit::FAILED, "vh-base.vhd"),
];

/// The Virtual Disk Size metadata item set to `size`.
fn vhdx_metadata_virtual_size(b: &mut [u8], size: u64) {
    let at = vhdx_region(b, rt::METADATA_GUID) as usize;
    let t = MetadataTable::parse(&b[at..at + mt::TABLE_SIZE]).expect("a metadata table");
    let e = t
        .entries
        .iter()
        .find(|e| e.item_id == formats::vhdx::metadata_items::VIRTUAL_DISK_SIZE)
        .expect("a Virtual Disk Size item");
    let item = formats::vhdx::VirtualDiskSize { size }.encode();
    let o = at + e.offset as usize;
    b[o..o + item.len()].copy_from_slice(&item);
}

// ------------------------------------------------------------ the walk

/// Name -> (length, SHA-256) of every entry of `dir` (files only; a
/// directory entry would show up as a changed listing).
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, [u8; 32])> {
    std::fs::read_dir(dir)
        .expect("list the case directory")
        .map(|e| {
            let e = e.expect("directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            // Streamed: a refusal that extended a file to a terabyte
            // (sparse) must show as a changed length, not exhaust memory.
            let mut f = File::open(e.path()).unwrap_or_else(|e| panic!("open {name}: {e}"));
            let mut h = Sha256::new();
            let len = std::io::copy(&mut f, &mut h).unwrap_or_else(|e| panic!("read {name}: {e}"));
            (name, (len, h.finalize().into()))
        })
        .collect()
}

fn differences(
    before: &BTreeMap<String, (u64, [u8; 32])>,
    after: &BTreeMap<String, (u64, [u8; 32])>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (name, (len, hash)) in before {
        match after.get(name) {
            None => d.push(format!("{name} was removed")),
            Some((l, _)) if l != len => d.push(format!("{name}: length {len} -> {l}")),
            Some((_, h)) if h != hash => d.push(format!("{name}: bytes changed")),
            Some(_) => {}
        }
    }
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        d.push(format!("{name} was left behind"));
    }
    d
}

/// Run one case in a fresh directory; `Err` says what went wrong.
fn walk(c: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path();
    for f in c.files {
        std::fs::copy(kit().join(f), dir.join(f)).map_err(|e| format!("copy {f}: {e}"))?;
    }
    let locks = (c.setup)(dir);
    let before = snapshot(dir);
    let (out, code) = run_in(dir, c.argv);
    drop(locks);
    let after = snapshot(dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut problems = Vec::new();
    if code != c.code {
        problems.push(format!("exit {code}, expected {}", c.code));
    }
    if code == 101 || text.contains("panicked") {
        problems.push("panicked".into());
    }
    if !text.contains(c.names) {
        problems.push(format!("the message does not name {}", c.names));
    }
    problems.extend(differences(&before, &after));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n    xtask {}\n    output: {}",
            problems.join("; "),
            c.argv.join(" "),
            text.trim().replace('\n', "\n            ")
        ))
    }
}

#[test]
fn every_refusal_changes_no_byte() {
    let started = std::time::Instant::now();
    kit();
    let mut per_command: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in CASES {
        *per_command.entry(c.argv[0]).or_default() += 1;
        if let Err(e) = walk(c) {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    let summary: Vec<String> = per_command
        .iter()
        .map(|(cmd, n)| format!("{cmd} {n}"))
        .collect();
    println!(
        "refusal walk: {} cases ({}), {} failed, {:.1} s",
        CASES.len(),
        summary.join(", "),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} refusals went wrong:\n  {}",
        failures.len(),
        CASES.len(),
        failures.join("\n  ")
    );
}

/// The checker itself: a command that does change a file (a successful
/// write) and one that leaves a file behind (a successful convert) are
/// both seen, so a refusal that changed bytes could not pass unnoticed.
#[test]
fn the_walk_sees_changed_and_leftover_files() {
    let changing = case(
        "write succeeds",
        VXD,
        nothing,
        &[
            "write",
            "vx-child.vhdx",
            "--offset",
            "0",
            "--input",
            "data.bin",
        ],
        1,
        "vx-child.vhdx",
    );
    let e = walk(&changing).expect_err("a write changes the image");
    assert!(e.contains("vx-child.vhdx: "), "{e}");
    let leaving = case(
        "convert succeeds",
        VX,
        nothing,
        &["convert", "vx-child.vhdx", "out.raw"],
        1,
        "vx-child.vhdx",
    );
    let e = walk(&leaving).expect_err("a convert leaves its output");
    assert!(e.contains("out.raw was left behind"), "{e}");
}
