//! Issue 8: refused merges change no byte (extends refusals.rs with the
//! cases it does not cover): a lock on the source or an intermediate (the
//! error names the locked file), a VHD whose Parent Unique ID no longer
//! matches, a corrupt destination or source, and sources that are not
//! regular files (FIFO, directory, symlink without --follow-symlinks).

use std::path::{Path, PathBuf};

use formats::chain::ChainOptions;
use formats::{Access, FsNamespace, Namespace};
use merge::{JobHandle, MergeRequest};

/// base <- mid <- top in `dir`.
fn chain(dir: &Path, vhdx: bool) -> (PathBuf, PathBuf, PathBuf) {
    testdata::image::small_chain(dir, vhdx, "top")
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
    let before = testdata::file_hashes(dir);
    let req = MergeRequest {
        source: source.to_path_buf(),
        destination: dest.map(Path::to_path_buf),
        chain: opts,
        ..Default::default()
    };
    let out = testdata::quickly("merge::run", move || {
        merge::run(&testdata::image::fs(), &req, &JobHandle::new())
    });
    let err = out.error.clone().unwrap_or_default();
    assert!(
        codes.contains(&out.return_value),
        "{} not in {codes:?}: {err}",
        out.return_value
    );
    assert!(!err.is_empty());
    assert_eq!(
        testdata::file_hashes(dir),
        before,
        "a refused merge changed bytes ({err})"
    );
    err
}

#[test]
fn locks_on_source_or_intermediate_name_the_file() {
    let _serial = testdata::serial();
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
    let _serial = testdata::serial();
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
    let _serial = testdata::serial();
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
    let _serial = testdata::serial();
    let d = tempfile::tempdir().unwrap();
    let (base, _mid, top) = chain(d.path(), true);
    let fifo = d.path().join("fifo.avhdx");
    testdata::mkfifo(&fifo);
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
