//! Test support shared by the crates' tests: the real images of
//! `../shared/testdata/real` (never copied into this repository) decompressed
//! on demand into a cache under `target/`, and hashing of virtual content.

pub mod cut;
pub mod image;
pub mod loopfs;
pub mod raw;
pub mod real;
pub mod schema;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub use cut::CutStorage;
pub use real::{real_image, RealImage, REAL_IMAGES};

use sha2::{Digest, Sha256};

/// A tiny deterministic generator (xorshift64) for test patterns and
/// choices, so that a failure reproduces from its seed. A zero seed stays
/// zero: start from a nonzero one.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A draw below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The workspace root (this crate lives in `<root>/testdata`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `../shared/testdata/real` relative to the workspace root, if present.
pub fn real_dir() -> Option<PathBuf> {
    let d = workspace_root().join("../shared/testdata/real");
    d.is_dir().then_some(d)
}

/// Decompress (once) the real image `name` (e.g. `dynamic.vhdx`, found as
/// `dynamic.vhdx.gz`, `.bz2` or uncompressed) and return a path to a private
/// read-write copy in a fresh directory under `dir`. `None`, with a printed
/// reason, when the shared test data is absent.
pub fn real_image_copy(name: &str, dir: &Path) -> Option<PathBuf> {
    let cached = real_image_cached(name)?;
    let dst = dir.join(name);
    std::fs::copy(&cached, &dst).ok()?;
    Some(dst)
}

/// Path of the decompressed real image in the shared cache (read it only).
pub fn real_image_cached(name: &str) -> Option<PathBuf> {
    let Some(real) = real_dir() else {
        eprintln!("skipping: ../shared/testdata/real is absent (test data is not shipped with the repository)");
        return None;
    };
    let cache = workspace_root().join("target/testdata-cache");
    std::fs::create_dir_all(&cache).ok()?;
    let out = cache.join(name);
    if out.exists() {
        return Some(out);
    }
    let plain = real.join(name);
    let gz = real.join(format!("{name}.gz"));
    let bz = real.join(format!("{name}.bz2"));
    let mut reader: Box<dyn Read> = if gz.exists() {
        Box::new(flate2::read::GzDecoder::new(File::open(&gz).ok()?))
    } else if bz.exists() {
        Box::new(bzip2::read::BzDecoder::new(File::open(&bz).ok()?))
    } else if plain.exists() {
        Box::new(File::open(&plain).ok()?)
    } else {
        eprintln!("skipping: {name} not found in {}", real.display());
        return None;
    };
    // Decompress to a private name, then rename: test binaries run in
    // parallel and must never see a half-written cache file.
    let tmp = cache.join(format!("{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp).ok()?;
    copy_sparse(&mut reader, &mut f).ok()?;
    f.flush().ok()?;
    drop(f);
    std::fs::rename(&tmp, &out).ok()?;
    Some(out)
}

/// Copy, seeking over all-zero 64 KiB pieces so multi-GiB sparse images stay
/// sparse on disk.
fn copy_sparse(r: &mut dyn Read, f: &mut File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = r.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(&buf[..n])?;
        }
        len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.set_len(len)
}

/// SHA-256 of the whole virtual content seen through `layers` (top first).
pub fn hash_layers(layers: Vec<&dyn formats::Layer>) -> formats::Result<String> {
    let mut reader = formats::chain::ChainReader::new(layers);
    let size = reader.virtual_size();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (buf.len() as u64).min(size - off) as usize;
        reader.read(off, &mut buf[..n])?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex(&h.finalize()))
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of every regular file under `dir` (descending into real
/// subdirectories; a symbolic link to a regular file counts by its target's
/// content, other special files are passed over): what a refusal must leave
/// unchanged.
pub fn file_hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p);
            } else if p.is_file() {
                let h = sha256_file(&p).unwrap_or_else(|e| panic!("hash {}: {e}", p.display()));
                out.insert(p, h);
            }
        }
    }
    out
}

/// A fresh temporary directory (removed when the guard drops) and its
/// canonical path (symbolic links such as /tmp -> /private/tmp resolved, so
/// paths the library reports compare equal).
pub fn canonical_tempdir() -> (tempfile::TempDir, PathBuf) {
    let guard = tempfile::tempdir().expect("create a temporary directory");
    let path = guard.path().canonicalize().expect("canonicalize it");
    (guard, path)
}

/// Create the directories `names` under `root` (with their parents);
/// returns their paths.
pub fn make_dirs<const N: usize>(root: &Path, names: [&str; N]) -> [PathBuf; N] {
    names.map(|n| {
        let d = root.join(n);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    })
}

/// Run `f` on another thread: a hang (no answer in 10 s) fails the test
/// instead of blocking it, and so does an answer that took a second or more.
pub fn quickly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = std::time::Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let v = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: hung (no answer in 10 s)"));
    let t = start.elapsed();
    assert!(t < std::time::Duration::from_secs(1), "{what}: took {t:?}");
    v
}

/// Run the tests that take this one at a time. A test that spawns a
/// process forks while another test of its binary may hold an image open,
/// and the child shares the flock'd file description until it execs, so
/// the other test's next open would see a spurious "locked". (Each test
/// binary has its own lock.)
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make a FIFO at `p` (with `mkfifo`, which must succeed).
pub fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mkfifo {} failed", p.display());
}

/// SplitMix64: a seeded generator with no dependency, so a seed replays a
/// test's choices.
pub struct Rng(pub u64);

impl Rng {
    /// The next value. (Not `Iterator::next`: the sequence never ends and
    /// callers take one value at a time.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `qemu-img` on PATH?
pub fn have_qemu() -> bool {
    let ok = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping qemu interop: qemu-img not installed (.ci/run installs qemu-utils)");
    }
    ok
}

/// libvhdi's Python bindings and `../shared/tools/chain_read.py` present?
/// Prints why not when they are missing.
pub fn have_libvhdi() -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import pyvhdi"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping libvhdi interop: python3-libvhdi not installed (.ci/run installs it)");
        return false;
    }
    if !chain_read().exists() {
        eprintln!(
            "skipping libvhdi interop: {} is absent",
            chain_read().display()
        );
        return false;
    }
    true
}

/// The independent chain reader of ../shared/tools (libvhdi, dissect).
pub fn chain_read() -> PathBuf {
    workspace_root().join("../shared/tools/chain_read.py")
}

/// sha256 of the virtual content of `img` according to libvhdi, through
/// `chain_read.py`; `parents` nearest first, or empty to follow the
/// image's own locators. Panics (a test helper) when the reader fails.
pub fn libvhdi_sha(img: &Path, parents: &[&Path]) -> String {
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(chain_read())
        .args(["--backend", "libvhdi", "--json"]);
    for p in parents {
        cmd.arg("--parent").arg(p);
    }
    let out = command_ok(cmd.arg(img), &format!("chain_read.py {}", img.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // {"...", "sha256": "<hex>", ...}: the one field needed, without a JSON
    // dependency for the test-data crate.
    let at = text
        .find("\"sha256\"")
        .unwrap_or_else(|| panic!("chain_read.py printed no sha256: {text}"));
    text[at + 8..]
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("chain_read.py sha256 unreadable: {text}"))
        .to_string()
}

/// Run `check` on every case of a table, each to its end even when an
/// earlier one failed, then fail naming every case that failed (each
/// one's own panic message is printed above, after the case's name). One
/// test per table keeps the list of kinds in one place, and a failure
/// still says which case it was.
pub fn each_case<C: std::fmt::Debug>(cases: impl IntoIterator<Item = C>, check: impl Fn(&C)) {
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|case| {
            eprintln!("case {case:?}");
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&case)))
                .err()
                .map(|_| format!("{case:?}"))
        })
        .collect();
    assert!(failed.is_empty(), "failed cases: {}", failed.join(", "));
}

/// Run `cmd` to its end; a spawn failure or a failed exit fails the test
/// with `what` and everything the command printed.
pub fn command_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot spawn: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
