//! Every refusal returns its MergeVirtualHardDisk code and changes no byte
//! of any file (all files hashed before and after).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, FsNamespace, Namespace};
use merge::{JobHandle, MergeRequest};

fn fs() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
}

fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            m.insert(p.clone(), testdata::sha256_file(&p).unwrap());
        }
    }
    m
}

fn create(ns: &Arc<dyn Namespace>, path: &Path, parent: Option<&Path>, vhdx: bool) {
    let mut params = CreateParams {
        virtual_size: 8 << 20,
        disk_type: DiskType::Dynamic,
        block_size: Some(if vhdx { 1 << 20 } else { 512 << 10 }),
        ..Default::default()
    };
    if let Some(pp) = parent {
        let p = open_image_file(ns, pp, &ChainOptions::default()).unwrap();
        params.parent = Some(formats::create::parent_spec(ns, p.as_ref(), pp, path).unwrap());
        params.disk_type = DiskType::Differencing;
    }
    formats::create::create_file(ns, path, &params).unwrap();
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(ns, path, &opts).unwrap();
    img.write_sectors(4096, &vec![0x5a; 8192]).unwrap();
}

/// base <- mid <- top in `dir`.
fn chain(dir: &Path, vhdx: bool) -> (PathBuf, PathBuf, PathBuf) {
    let ns = fs();
    let (e, c) = if vhdx {
        ("vhdx", "avhdx")
    } else {
        ("vhd", "vhd")
    };
    let base = dir.join(format!("base.{e}"));
    let mid = dir.join(format!("mid.{c}"));
    let top = dir.join(format!("top2.{c}"));
    create(&ns, &base, None, vhdx);
    create(&ns, &mid, Some(&base), vhdx);
    create(&ns, &top, Some(&mid), vhdx);
    (base, mid, top)
}

fn merge(source: &Path, dest: Option<&Path>, force: bool) -> merge::MergeOutcome {
    merge::run(
        &fs(),
        &MergeRequest {
            source: source.to_path_buf(),
            destination: dest.map(Path::to_path_buf),
            force,
            ..Default::default()
        },
        &JobHandle::new(),
    )
}

fn refused(dir: &Path, code: u32, f: impl FnOnce() -> merge::MergeOutcome) {
    let before = hashes(dir);
    let out = f();
    assert_eq!(out.return_value, code, "{:?}", out.error);
    assert!(out.error.is_some());
    assert_eq!(hashes(dir), before, "a refused merge changed bytes");
}

#[test]
fn refusals_change_nothing() {
    for vhdx in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let (base, mid, top) = chain(d.path(), vhdx);
        // Not a differencing source.
        refused(d.path(), 32770, || merge(&base, None, false));
        // Destination not an ancestor (the source itself, an unrelated file).
        refused(d.path(), 32773, || merge(&top, Some(&top), false));
        let other = d.path().join(if vhdx { "other.vhdx" } else { "other.vhd" });
        create(&fs(), &other, None, vhdx);
        refused(d.path(), 32773, || merge(&top, Some(&other), false));
        // Missing source.
        refused(d.path(), 32779, || {
            merge(&d.path().join("nope.vhdx"), None, false)
        });
        // A file of the chain locked by someone else.
        {
            let held = FsNamespace.open(&base, Access::Read).unwrap();
            refused(d.path(), 32774, || merge(&top, Some(&base), false));
            drop(held);
        }
        // A sibling: another child of `mid`.
        let sib = d.path().join(if vhdx { "sib.avhdx" } else { "sib.vhd" });
        create(&fs(), &sib, Some(&mid), vhdx);
        refused(d.path(), 32775, || merge(&top, Some(&base), false));
        std::fs::remove_file(&sib).unwrap();
        // Broken linkage: the parent changed after the child was made.
        {
            let opts = ChainOptions {
                access: Access::Write,
                writable: true,
                ..Default::default()
            };
            let mut img = open_image_file(&fs(), &base, &opts).unwrap();
            img.write_sectors(0, &[7u8; 512]).unwrap();
        }
        if vhdx {
            // VHDX links by DataWriteGuid, which the write changed.
            refused(d.path(), 32775, || merge(&mid, None, false));
        }
        // Not an image at all.
        let junk = d.path().join("junk.vhd");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        refused(d.path(), 32776, || merge(&junk, None, false));
    }
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
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
                b[(64 << 10) + 100] ^= 1;
                b[(128 << 10) + 100] ^= 1;
            } else {
                let n = b.len();
                b[n - 512 + 64] ^= 0x55;
                b[64] ^= 0x55;
            }
        });
        let before = hashes(d.path());
        let out = merge(&top, Some(&base), false);
        assert_eq!(out.error_kind, Some("checksum"), "{:?}", out.error);
        let expect = if vhdx {
            K::HeaderChecksum
        } else {
            K::FooterChecksum
        };
        assert_eq!(out.corruption_kind, Some(expect), "{:?}", out.error);
        assert_eq!(hashes(d.path()), before);

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
        let before = hashes(d.path());
        let out = merge(&top, Some(&base), false);
        assert_eq!(out.error_kind, Some("unhealthy"), "{:?}", out.error);
        let expect = if vhdx {
            K::BatEntryReservedBits
        } else {
            K::BlockOverlap
        };
        assert_eq!(out.corruption_kind, Some(expect), "{:?}", out.error);
        assert_eq!(hashes(d.path()), before);
    }
}
