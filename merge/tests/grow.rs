//! A child larger than its destination: after the merge the region the
//! destination grows into reads what the source read there (zeros), even
//! when the destination's last block holds stale bytes past its old end.
//! Found by the `merge_in_memory` fuzz target (a truncated base whose last
//! block showed through after the merge).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::layer::{Run, RunKind};
use formats::params::{CreateParams, DiskType};
use formats::{MemNamespace, Namespace};
mod common;
use common::merge_into;
use testdata::image::{exts, open_writable, read_all};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Base of `base_size` bytes whose last block is full of data, with bytes
/// poked into that block past the virtual end; a differencing child 2 MiB
/// larger. Returns (base, child).
fn build(
    mem: &Arc<MemNamespace>,
    ns: &Arc<dyn Namespace>,
    vhdx: bool,
    fixed: bool,
) -> (PathBuf, PathBuf) {
    let (ext, cext, block) = if vhdx {
        ("vhdx", "avhdx", MIB)
    } else {
        ("vhd", "vhd", 2 * MIB)
    };
    let base = PathBuf::from(format!("/g/base.{ext}"));
    let child = PathBuf::from(format!("/g/child.{cext}"));
    let base_size = block + 512 * KIB;
    formats::create::create_file(
        ns,
        &base,
        &CreateParams {
            virtual_size: base_size,
            disk_type: if fixed {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            block_size: Some(block as u32),
            ..Default::default()
        },
    )
    .unwrap();
    let mut img = open_writable(ns, &base);
    img.write_sectors(block, &vec![0xA5; (base_size - block) as usize])
        .unwrap();
    drop(img);

    // Where the last block's bytes live, then stale bytes past the end.
    let stale_at = {
        let chain = Chain::open(ns, &base, &ChainOptions::default()).unwrap();
        let mut runs: Vec<Run> = Vec::new();
        chain.layers()[0].map(block, 512, &mut runs).unwrap();
        match runs[0].kind {
            RunKind::Present { file_offset } => file_offset + (base_size - block),
            k => panic!("last block not present: {k:?}"),
        }
    };
    let mut bytes = mem.get(&base).unwrap();
    let stale_len = if fixed && !vhdx {
        // A fixed VHD ends in its footer right after the data.
        0
    } else {
        64 * KIB as usize
    };
    bytes[stale_at as usize..stale_at as usize + stale_len].fill(0xEE);
    mem.insert(&base, bytes);

    create_child(
        ns,
        &base,
        &child,
        base_size,
        base_size + 2 * MIB,
        Some(block as u32),
    );
    (base, child)
}

/// A differencing `child` of `virtual_size` bytes over `base`, whose virtual
/// size is `base_size`.
fn create_child(
    ns: &Arc<dyn Namespace>,
    base: &Path,
    child: &Path,
    base_size: u64,
    virtual_size: u64,
    block_size: Option<u32>,
) {
    let pimg = open_image_file(ns, base, &ChainOptions::default()).unwrap();
    let mut parent = formats::create::parent_spec(ns, pimg.as_ref(), base, child).unwrap();
    drop(pimg);
    parent.virtual_size = base_size;
    formats::create::create_file(
        ns,
        child,
        &CreateParams {
            virtual_size,
            disk_type: DiskType::Differencing,
            block_size,
            parent: Some(parent),
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn grown_destination_reads_zeros_past_its_old_end() {
    for vhdx in [false, true] {
        for fixed in [false, true] {
            let mem = MemNamespace::new();
            let ns: Arc<dyn Namespace> = Arc::new(Arc::clone(&mem));
            let (base, child) = build(&mem, &ns, vhdx, fixed);
            let before = read_all(&ns, &child);
            let out = merge_into(&ns, &child, Some(&base));
            assert_eq!(
                out.return_value, 0,
                "vhdx {vhdx} fixed {fixed}: {:?}",
                out.error
            );
            let after = read_all(&ns, &base);
            assert_eq!(after.len(), before.len(), "vhdx {vhdx} fixed {fixed}");
            let first_diff = after.iter().zip(&before).position(|(a, b)| a != b);
            assert_eq!(
                first_diff, None,
                "vhdx {vhdx} fixed {fixed}: destination differs from the source's view"
            );
        }
    }
}

/// An ancestor larger than the source cannot take the source's view
/// without shrinking: refused (NotSupported), no byte changed. Found by the
/// `merge_in_memory` fuzz target (a corrupted Virtual Disk Size item).
#[test]
fn destination_larger_than_the_source_is_refused_unchanged() {
    for vhdx in [false, true] {
        let mem = MemNamespace::new();
        let ns: Arc<dyn Namespace> = Arc::new(Arc::clone(&mem));
        let (ext, cext) = exts(vhdx);
        let base = PathBuf::from(format!("/l/base.{ext}"));
        let child = PathBuf::from(format!("/l/child.{cext}"));
        formats::create::create_file(
            &ns,
            &base,
            &CreateParams {
                virtual_size: 4 * MIB,
                disk_type: DiskType::Dynamic,
                ..Default::default()
            },
        )
        .unwrap();
        // A child smaller than its parent (create allows it; a resize or a
        // corrupted size item produces it).
        create_child(&ns, &base, &child, 4 * MIB, 2 * MIB, None);
        let files = |m: &MemNamespace| [m.get(&base).unwrap(), m.get(&child).unwrap()];
        let before = files(&mem);
        let out = merge_into(&ns, &child, None);
        assert_eq!(out.return_value, 32770, "vhdx {vhdx}: {:?}", out.error);
        assert!(out.error.unwrap_or_default().contains("larger"));
        assert!(
            files(&mem) == before,
            "vhdx {vhdx}: a refused merge changed bytes"
        );
    }
}
