//! What every target does with something that opened: ask it everything,
//! validate it, and read its virtual disk, within budgets that keep one
//! input well under libFuzzer's one-second timeout and 256 MiB limit.

use std::path::Path;
use std::sync::Arc;

use formats::chain::{Chain, ChainOptions, ChainReader, Source};
use formats::params::OpenOptions;
use formats::{Image, Layer, MemNamespace, MemStorage, Namespace, Storage};

use crate::sparse::SparseNs;

/// Virtual disks up to this size are read whole through the chain reader.
/// The templates stay below it (at most 1.5 MiB); a raw input claiming more
/// is mapped instead, so no input costs time in proportion to a size field.
pub const WHOLE_READ_LIMIT: u64 = 4 << 20;
/// Larger ones are mapped whole in this many windows, and at most this many
/// bytes of `Present` runs are read.
const MAP_WINDOWS: u64 = 256;
const PRESENT_READ_BUDGET: u64 = 1 << 20;
const CHUNK: u64 = 1 << 20;

pub fn mem_ns() -> (Arc<MemNamespace>, Arc<dyn Namespace>) {
    let m = MemNamespace::new();
    let d: Arc<dyn Namespace> = Arc::new(Arc::clone(&m));
    (m, d)
}

/// A sparse in-memory namespace (see `sparse`), for the whole-image
/// targets.
pub fn sparse_ns() -> (Arc<SparseNs>, Arc<dyn Namespace>) {
    let m = SparseNs::new();
    let d: Arc<dyn Namespace> = Arc::new(SparseNs::clone(&m));
    (m, d)
}

/// Everything read-only an image offers. Errors are fine; panics are not.
pub fn interrogate(img: &dyn Image) {
    let info = img.info();
    let _ = img.identity();
    let _ = img.parent_linkage();
    let _ = img.parent_locator();
    let _ = img.open_findings();
    let _ = img.check();
    // The Layer contract: sizes agree with info.
    assert_eq!(
        info.virtual_size,
        img.virtual_size(),
        "info/layer virtual size"
    );
    assert_eq!(
        info.logical_sector_size,
        img.logical_sector_size(),
        "info/layer sector size"
    );
}

/// Read the virtual disk seen through `layers` (top first). Small disks are
/// read whole (and compared against a second, run-by-run read); large ones
/// are mapped whole and read where present, within budgets.
pub fn read_virtual(layers: Vec<&dyn Layer>) {
    let Some(top) = layers.first() else { return };
    let size = top.virtual_size();
    let sector = layers
        .iter()
        .map(|l| u64::from(l.logical_sector_size()))
        .max()
        .unwrap_or(512)
        .max(512);
    let mut reader = ChainReader::new(layers.clone());
    if size <= WHOLE_READ_LIMIT {
        let mut buf = vec![0u8; CHUNK.min(size) as usize];
        let mut off = 0;
        while off < size {
            let n = CHUNK.min(size - off) as usize;
            if reader.read(off, &mut buf[..n]).is_err() {
                return;
            }
            off += n as u64;
        }
        // An unaligned read straddling the last sector exercises the
        // partial-sector path.
        if size > 3 {
            let mut tail = [0u8; 3];
            let _ = reader.read(size - 3, &mut tail);
        }
        return;
    }
    let window = size
        .div_ceil(MAP_WINDOWS)
        .div_ceil(CHUNK)
        .saturating_mul(CHUNK)
        .max(CHUNK);
    let mut budget = PRESENT_READ_BUDGET;
    let mut buf = Vec::new();
    let mut off = 0u64;
    while off < size {
        let len = window.min(size - off) / sector * sector;
        if len == 0 {
            break;
        }
        let runs = match reader.runs(off, len) {
            Ok(r) => r.to_vec(),
            Err(_) => return,
        };
        let mut expect = off;
        for r in &runs {
            assert_eq!(r.offset, expect, "folded runs must tile the range");
            expect = r.offset + r.len;
            if let Source::Layer { layer, file_offset } = r.source {
                let n = r.len.min(budget).min(CHUNK);
                if n == 0 {
                    continue;
                }
                buf.resize(n as usize, 0);
                budget -= n;
                let _ = layers[layer].read_file(file_offset, &mut buf);
            }
        }
        assert_eq!(expect, off + len, "folded runs must cover the range");
        off += len;
    }
}

/// Open one file's bytes as an image (read-only, and optionally tolerant of
/// checksums), interrogate it and read it.
pub fn open_bytes(bytes: Vec<u8>, ignore_checksums: bool) {
    let st: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(bytes));
    let opts = OpenOptions {
        writable: false,
        ignore_checksums,
    };
    if let Ok(img) = formats::image::open("fuzz.img", st, None, opts) {
        interrogate(img.as_ref());
        read_virtual(vec![img.as_ref() as &dyn Layer]);
    }
}

/// Open `path` in `ns` alone: read-only, then (on a copy of the namespace
/// state) writable, which replays a VHDX log on disk and rewrites headers.
pub fn open_file_both_ways(ns: &Arc<dyn Namespace>, path: &Path, flags: u8) {
    let ns = Arc::clone(ns);
    let ignore_checksums = flags & 1 != 0;
    let opts = ChainOptions {
        ignore_checksums,
        ..Default::default()
    };
    if let Ok(img) = formats::chain::open_image_file(&ns, path, &opts) {
        interrogate(img.as_ref());
        read_virtual(vec![img.as_ref() as &dyn Layer]);
    }
    if flags & 2 != 0 {
        let wopts = ChainOptions {
            ignore_checksums,
            access: formats::Access::Write,
            writable: true,
            ..Default::default()
        };
        if let Ok(img) = formats::chain::open_image_file(&ns, path, &wopts) {
            interrogate(img.as_ref());
            read_virtual(vec![img.as_ref() as &dyn Layer]);
        }
        // Whatever the writable open left behind must still be something a
        // read-only open survives.
        if let Ok(img) = formats::chain::open_image_file(&ns, path, &opts) {
            interrogate(img.as_ref());
        }
    }
}

/// Open the chain whose top is `top`, interrogate every link and read it.
pub fn open_chain(ns: &Arc<dyn Namespace>, top: &Path, opts: &ChainOptions) {
    if let Ok(chain) = Chain::open_partial(ns, top, opts) {
        for l in &chain.links {
            interrogate(l.image.as_ref());
        }
        if chain.broken.is_none() {
            read_virtual(chain.layers());
        }
    }
}

/// The oracle for an uncorrupted template: the chain with `top` opens,
/// reads exactly `model` (what was written) and every link passes `check`
/// without errors. `what` names the input kind in the panic messages.
pub fn assert_valid_chain(ns: &Arc<dyn Namespace>, top: &Path, model: &[u8], what: &str) {
    let chain = Chain::open(ns, top, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("valid {what} does not open: {e}"));
    let mut got = vec![0u8; model.len()];
    chain
        .reader()
        .read(0, &mut got)
        .unwrap_or_else(|e| panic!("valid {what} does not read: {e}"));
    assert!(got == model, "{what} reads differ from what was written");
    for l in &chain.links {
        let errs: Vec<String> = l
            .image
            .check()
            .unwrap_or_else(|e| panic!("check fails on a valid {what}: {e}"))
            .into_iter()
            .filter(|f| f.severity == formats::Severity::Error)
            .map(|f| f.to_string())
            .collect();
        assert!(errs.is_empty(), "check errors on a valid {what}: {errs:?}");
    }
}
