//! Issue 8: refused merges change no byte (extends refusals.rs with the
//! cases it does not cover): a lock on the source or an intermediate (the
//! error names the locked file), a VHD whose Parent Unique ID no longer
//! matches, a corrupt destination or source, and sources that are not
//! regular files (FIFO, directory, symlink without --follow-symlinks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, FsNamespace, Namespace};
use merge::{JobHandle, MergeRequest};

/// Tests of this file run one at a time: a test that spawns a process
/// (`mkfifo`) forks while another test holds an image open, and the child
/// shares the flock'd file description until it execs, so the other test's
/// next open would see a spurious "locked".
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fs() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().file_type().is_file() {
            m.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    m
}

fn create(path: &Path, parent: Option<&Path>) {
    let ns = fs();
    let vhdx = path.extension().is_some_and(|e| e != "vhd");
    let mut params = CreateParams {
        virtual_size: 8 << 20,
        disk_type: DiskType::Dynamic,
        block_size: Some(if vhdx { 1 << 20 } else { 512 << 10 }),
        ..Default::default()
    };
    if let Some(pp) = parent {
        let p = open_image_file(&ns, pp, &ChainOptions::default()).unwrap();
        params.parent = Some(formats::create::parent_spec(&ns, p.as_ref(), pp, path).unwrap());
        params.disk_type = DiskType::Differencing;
    }
    formats::create::create_file(&ns, path, &params).unwrap();
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(&ns, path, &opts).unwrap();
    img.write_sectors(4096, &vec![0x5a; 8192]).unwrap();
}

fn chain(dir: &Path, vhdx: bool) -> (PathBuf, PathBuf, PathBuf) {
    let (e, c) = if vhdx {
        ("vhdx", "avhdx")
    } else {
        ("vhd", "vhd")
    };
    let base = dir.join(format!("base.{e}"));
    let mid = dir.join(format!("mid.{c}"));
    let top = dir.join(format!("top.{c}"));
    create(&base, None);
    create(&mid, Some(&base));
    create(&top, Some(&mid));
    (base, mid, top)
}

/// Merge `source` (into its parent, or `dest`) with `opts`; must be refused
/// with `code` within a second and leave every file of `dir` unchanged.
fn refused(
    dir: &Path,
    source: &Path,
    dest: Option<&Path>,
    opts: ChainOptions,
    code: u32,
) -> String {
    refused_with(dir, source, dest, opts, &[code])
}

fn refused_with(
    dir: &Path,
    source: &Path,
    dest: Option<&Path>,
    opts: ChainOptions,
    codes: &[u32],
) -> String {
    let before = snapshot(dir);
    let req = MergeRequest {
        source: source.to_path_buf(),
        destination: dest.map(Path::to_path_buf),
        chain: opts,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(merge::run(&fs(), &req, &JobHandle::new()));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("merge hung");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    let err = out.error.clone().unwrap_or_default();
    assert!(
        codes.contains(&out.return_value),
        "{} not in {codes:?}: {err}",
        out.return_value
    );
    assert!(!err.is_empty());
    assert_eq!(
        snapshot(dir),
        before,
        "a refused merge changed bytes ({err})"
    );
    err
}

#[test]
fn locks_on_source_or_intermediate_name_the_file() {
    let _serial = serial();
    for vhdx in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let (base, mid, top) = chain(d.path(), vhdx);
        for held in [&top, &mid, &base] {
            for access in [Access::Read, Access::Write] {
                let h = FsNamespace.open(held, access).unwrap();
                let err = refused(d.path(), &top, Some(&base), ChainOptions::default(), 32774);
                assert!(
                    err.contains(&held.display().to_string()),
                    "error does not name the locked file {}: {err}",
                    held.display()
                );
                drop(h);
            }
        }
    }
}

#[test]
fn vhd_parent_unique_id_mismatch_is_refused() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (_, mid, top) = chain(d.path(), false);
    // Flip one byte of top's Parent Unique ID and fix the header checksum:
    // a well-formed file whose parent is no longer the file it names.
    let mut b = std::fs::read(&top).unwrap();
    let ho = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
    b[ho + 0x28] ^= 0xFF;
    let c = formats::checksum::vhd_checksum(&b[ho..ho + 1024], 0x24);
    b[ho + 0x24..ho + 0x28].copy_from_slice(&c.to_be_bytes());
    std::fs::write(&top, b).unwrap();
    let err = refused(d.path(), &top, None, ChainOptions::default(), 32775);
    assert!(err.contains("Parent Unique ID"), "{err}");
    let _ = mid;
}

#[test]
fn corrupt_destination_or_source_is_refused() {
    let _serial = serial();
    for vhdx in [true, false] {
        for victim in ["base", "top"] {
            let d = tempfile::tempdir().unwrap();
            let (base, _mid, top) = chain(d.path(), vhdx);
            let p = if victim == "base" { &base } else { &top };
            let mut b = std::fs::read(p).unwrap();
            if vhdx {
                // Point the region table's BAT 1 TiB away (both copies, CRCs
                // fixed): checksums pass, the offset lies.
                for rt in [192usize << 10, 256 << 10] {
                    let n = u32::from_le_bytes(b[rt + 8..rt + 12].try_into().unwrap()) as usize;
                    for i in 0..n {
                        let e = rt + 16 + 32 * i;
                        if b[e] == 0x66 && b[e + 1] == 0x77 {
                            b[e + 16..e + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
                        }
                    }
                    let c = formats::checksum::crc32c_zeroed(&b[rt..rt + (64 << 10)], 4);
                    b[rt + 4..rt + 8].copy_from_slice(&c.to_le_bytes());
                }
            } else {
                // A BAT entry pointing 1 TiB past the end of the file.
                let ho = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
                let to = u64::from_be_bytes(b[ho + 16..ho + 24].try_into().unwrap()) as usize;
                b[to..to + 4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
            }
            std::fs::write(p, b).unwrap();
            // A corrupt ancestor is met while resolving parents, and
            // resolution reports it as "parent not found" (32779) with the
            // corruption in the list of attempts; a corrupt source is 32776.
            let codes: &[u32] = if victim == "base" {
                &[32776, 32779]
            } else {
                &[32776]
            };
            let err = refused_with(d.path(), &top, Some(&base), ChainOptions::default(), codes);
            let named = if vhdx {
                "region table"
            } else {
                "block allocation table"
            };
            assert!(
                err.contains(named),
                "error does not name the {named}: {err}"
            );
        }
    }
}

#[test]
fn sources_that_are_not_regular_files_are_refused() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (base, _mid, top) = chain(d.path(), true);
    let fifo = d.path().join("fifo.avhdx");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = refused(d.path(), &fifo, None, ChainOptions::default(), 32773);
    assert!(err.contains("not a regular file"), "{err}");
    let sub = d.path().join("dir.avhdx");
    std::fs::create_dir(&sub).unwrap();
    let err = refused(d.path(), &sub, None, ChainOptions::default(), 32773);
    assert!(err.contains("not a regular file"), "{err}");
    let link = d.path().join("link.avhdx");
    std::os::unix::fs::symlink(&top, &link).unwrap();
    let err = refused(d.path(), &link, Some(&base), ChainOptions::default(), 32773);
    assert!(err.contains("--follow-symlinks"), "{err}");
}
