//! What the command-line tests share: run the built `xtask`, insist that
//! it succeeded (showing its output when not), read its `--json`.
//! Each test file includes this with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Run the `xtask` binary built for these tests.
pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xtask")
}

/// `xtask(args)`, which must succeed.
pub fn xtask_ok(args: &[&str]) -> Output {
    ok(xtask(args), &format!("xtask {args:?}"))
}

/// Write `bytes` at virtual `offset` of `img` with `xtask write`, through
/// an input file in `dir` (removed afterwards).
pub fn write(img: &Path, offset: u64, bytes: &[u8], dir: &Path) {
    let input = dir.join("input.bin");
    std::fs::write(&input, bytes).expect("write the input file");
    ok(
        xtask(&[
            "write",
            s(img),
            "--offset",
            &offset.to_string(),
            "--input",
            s(&input),
        ]),
        &format!("write {} at {offset}", img.display()),
    );
    let _ = std::fs::remove_file(&input);
}

/// `out`, which must have succeeded; `what` names it in the failure.
pub fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `len` bytes of seeded data without a zero byte (xorshift), so no
/// sector of it can pass for an unwritten or zeroed one.
pub fn data(seed: u64, len: u64) -> Vec<u8> {
    let mut x = testdata::XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len).map(|_| (x.next_u64() as u8) | 1).collect()
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The `--json` document on stdout.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `len` bytes of seeded xorshift data, eight at a time, so that every
/// 512-byte sector differs and nothing reads as zero.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = testdata::XorShift(seed | 1);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&x.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A file of `len` bytes of `noise`.
pub fn data_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, noise(len, seed))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The two image formats, with what the tests name and size them by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Vhd,
    Vhdx,
}

/// Both formats.
pub const FMTS: [Fmt; 2] = [Fmt::Vhd, Fmt::Vhdx];

impl Fmt {
    /// (base, differencing child) extensions: VHDX children are `.avhdx`.
    pub fn ext(self) -> (&'static str, &'static str) {
        testdata::image::exts(self == Fmt::Vhdx)
    }
    /// The extension of a base image.
    pub fn base(self) -> &'static str {
        self.ext().0
    }
    /// The extension of a differencing child.
    pub fn child(self) -> &'static str {
        self.ext().1
    }
    /// The block size `create --block-size` is given.
    pub fn block(self) -> &'static str {
        match self {
            Fmt::Vhd => "512K",
            Fmt::Vhdx => "1M",
        }
    }
    /// qemu-img's name for the format.
    pub fn qemu(self) -> &'static str {
        match self {
            Fmt::Vhd => "vpc",
            Fmt::Vhdx => "vhdx",
        }
    }
}

/// Run `xtask args` under `/usr/bin/time -f %O`: its output and the bytes
/// it wrote as the kernel counted them (file system outputs, 512-byte
/// units); no count where /usr/bin/time is not installed.
pub fn xtask_counting_writes(args: &[&str]) -> (Output, Option<u64>) {
    if !Path::new("/usr/bin/time").exists() {
        return (xtask(args), None);
    }
    let d = tempfile::tempdir().expect("temp dir");
    let report = d.path().join("time");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%O", "-o", s(&report)])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let blocks: u64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from /usr/bin/time: {text:?}"));
    (out, Some(blocks * 512))
}
