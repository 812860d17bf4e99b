//! Every refusal returns its MergeVirtualHardDisk code and changes no byte
//! of any file (all files hashed before and after).

use std::path::{Path, PathBuf};

use formats::{Access, CorruptionKind, FsNamespace, Namespace};
mod common;
use common::merge_into;
use testdata::image::{fs, small_with_data as create};
use testdata::{file_hashes, raw};

/// base <- mid <- top2 in `dir`.
fn chain(dir: &Path, vhdx: bool) -> (PathBuf, PathBuf, PathBuf) {
    testdata::image::small_chain(dir, vhdx, "top2")
}

fn refused(dir: &Path, code: u32, f: impl FnOnce() -> merge::MergeOutcome) {
    let before = file_hashes(dir);
    let out = f();
    assert_eq!(out.return_value, code, "{:?}", out.error);
    assert!(out.error.is_some());
    assert_eq!(file_hashes(dir), before, "a refused merge changed bytes");
}

#[test]
fn refusals_change_nothing() {
    for vhdx in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let (base, mid, top) = chain(d.path(), vhdx);
        // Not a differencing source.
        refused(d.path(), 32770, || merge_into(&fs(), &base, None));
        // Destination not an ancestor (the source itself, an unrelated file).
        refused(d.path(), 32773, || merge_into(&fs(), &top, Some(&top)));
        let other = d.path().join(if vhdx { "other.vhdx" } else { "other.vhd" });
        create(&fs(), &other, None, vhdx);
        refused(d.path(), 32773, || merge_into(&fs(), &top, Some(&other)));
        // Missing source.
        refused(d.path(), 32779, || {
            merge_into(&fs(), &d.path().join("nope.vhdx"), None)
        });
        // A file of the chain locked by someone else.
        {
            let held = FsNamespace.open(&base, Access::Read).unwrap();
            refused(d.path(), 32774, || merge_into(&fs(), &top, Some(&base)));
            drop(held);
        }
        // A sibling: another child of `mid`.
        let sib = d.path().join(if vhdx { "sib.avhdx" } else { "sib.vhd" });
        create(&fs(), &sib, Some(&mid), vhdx);
        refused(d.path(), 32775, || merge_into(&fs(), &top, Some(&base)));
        std::fs::remove_file(&sib).unwrap();
        // Broken linkage: the parent changed after the child was made.
        testdata::image::open_writable(&fs(), &base)
            .write_sectors(0, &[7u8; 512])
            .unwrap();
        if vhdx {
            // VHDX links by DataWriteGuid, which the write changed.
            refused(d.path(), 32775, || merge_into(&fs(), &mid, None));
        }
        // Not an image at all.
        let junk = d.path().join("junk.vhd");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        refused(d.path(), 32776, || merge_into(&fs(), &junk, None));
    }
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

/// Merge `top` into `base`: refused as `error_kind` with the violation
/// `kind`, no byte under `dir` changed.
fn refused_as(dir: &Path, top: &Path, base: &Path, error_kind: &str, kind: CorruptionKind) {
    let before = file_hashes(dir);
    let out = merge_into(&fs(), top, Some(base));
    assert_eq!(out.error_kind, Some(error_kind), "{:?}", out.error);
    assert_eq!(out.corruption_kind, Some(kind), "{:?}", out.error);
    assert_eq!(file_hashes(dir), before);
}

/// A refusal because of damaged bytes carries the violation's kind, both
/// for an image that does not open (checksum) and for one that opens but
/// fails validation (unhealthy).
#[test]
fn corrupt_refusals_name_the_violation() {
    use formats::CorruptionKind as K;
    for vhdx in [true, false] {
        // Checksums: both VHDX headers / both VHD footers.
        let d = tempfile::tempdir().unwrap();
        let (base, _mid, top) = chain(d.path(), vhdx);
        damage(&base, |b| {
            if vhdx {
                raw::break_vhdx_header_checksums(b);
            } else {
                raw::break_vhd_footer_checksums(b);
            }
        });
        let expect = if vhdx {
            K::HeaderChecksum
        } else {
            K::FooterChecksum
        };
        refused_as(d.path(), &top, &base, "checksum", expect);

        // Opens, fails validation: VHDX BAT entry reserved bits, VHD two
        // BAT entries on one block.
        let d = tempfile::tempdir().unwrap();
        let (base, _mid, top) = chain(d.path(), vhdx);
        damage(&base, |b| {
            if vhdx {
                // vhdx::create puts the BAT at 3 MiB; entry 0 is block 0.
                let at = 3 << 20;
                let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                b[at..at + 8].copy_from_slice(&(v | 1 << 3).to_le_bytes());
            } else {
                let n = b.len();
                let ho = u64::from_be_bytes(b[n - 512 + 16..n - 512 + 24].try_into().unwrap());
                let ho = ho as usize;
                let table = u64::from_be_bytes(b[ho + 16..ho + 24].try_into().unwrap()) as usize;
                let first: [u8; 4] = b[table..table + 4].try_into().unwrap();
                b[table + 4..table + 8].copy_from_slice(&first);
            }
        });
        let expect = if vhdx {
            K::BatEntryReservedBits
        } else {
            K::BlockOverlap
        };
        refused_as(d.path(), &top, &base, "unhealthy", expect);
    }
}
