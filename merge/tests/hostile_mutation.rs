//! Issue 8 resource bounds: corrupted variants of the real images of
//! ../shared/testdata (bit flips, truncations, field overwrites at structure
//! offsets found by hand-parsing, independently of the drivers) are opened,
//! checked and read through `ChainReader` in memory. No variant may panic,
//! hang, take long or allocate much.
//!
//! Default run: 10,000 variants (about 40 s in the test profile on two busy
//! cores; peak extra heap per variant ~5 MiB). `HOSTILE_VARIANTS=2000` runs a
//! quicker slice (~8 s).
//! `HOSTILE_SEED` changes the seed; a failure prints the variant number and
//! mutation, and `HOSTILE_ONLY=<n>` replays just that variant.

// A counting global allocator is the only way to observe "no buffer sized by
// an unchecked field" directly; it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use formats::chain::{Chain, ChainOptions, ChainReader, Source};
use formats::params::OpenOptions;
use formats::{Image, Layer, MemNamespace, Namespace, Storage};
// Deterministic generator (SplitMix64): a seed replays every variant.
use testdata::Rng;
// The region GUIDs, as the tests' own hand-parsing knows them.
use testdata::raw::{BAT_GUID, META_GUID as METADATA_GUID};

thread_local! {
    static WHERE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run a variant with the panic hook silenced (its panic is collected).
fn quiet<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// `p`, a new allocation of `size` bytes, counted when it succeeded.
fn counted(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null() {
        let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
    p
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        counted(unsafe { System.alloc(l) }, l.size())
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        counted(unsafe { System.alloc_zeroed(l) }, l.size())
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
            LARGEST.fetch_max(new, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// How a structure's integrity value is recomputed after a patch, so that
/// the drivers read past the checksum into the corrupted fields.
#[derive(Debug, Clone, Copy)]
enum Sum {
    None,
    /// VHD one's-complement sum, big-endian at this offset of the structure.
    Vhd(u64),
    /// CRC-32C, little-endian at this offset of the structure.
    Crc(u64),
}

/// One structure in the file: where, how long, which integer fields, how
/// its checksum is made.
#[derive(Debug, Clone)]
struct Structure {
    name: &'static str,
    start: u64,
    len: u64,
    /// (offset inside the structure, width in bytes, big-endian)
    fields: Vec<(u64, u8, bool)>,
    sum: Sum,
}

/// The `width`-byte unsigned integer at `at`, big- or little-endian, if
/// `b` holds it.
fn uint(b: &[u8], at: u64, width: usize, big: bool) -> Option<u64> {
    let s = b.get(at as usize..at as usize + width)?;
    let fold = |v: u64, x: &u8| v << 8 | u64::from(*x);
    Some(if big {
        s.iter().fold(0, fold)
    } else {
        s.iter().rev().fold(0, fold)
    })
}

/// FORMATS.md 2.2-2.5, read by hand.
fn vhd_structures(b: &[u8]) -> Vec<Structure> {
    let len = b.len() as u64;
    let footer_fields = vec![
        (0x08, 4, true),
        (0x0C, 4, true),
        (0x10, 8, true),
        (0x28, 8, true),
        (0x30, 8, true),
        (0x38, 2, true),
        (0x3C, 4, true),
        (0x54, 1, true),
    ];
    let mut v = vec![Structure {
        name: "footer",
        start: len - 512,
        len: 512,
        fields: footer_fields.clone(),
        sum: Sum::Vhd(0x40),
    }];
    let Some(ho) = uint(b, len - 512 + 0x10, 8, true) else {
        return v;
    };
    if ho == u64::MAX || ho + 1024 > len {
        return v;
    }
    v.push(Structure {
        name: "footer copy",
        start: 0,
        len: 512,
        fields: footer_fields,
        sum: Sum::Vhd(0x40),
    });
    let mut hf = vec![
        (0x08, 8, true),
        (0x10, 8, true),
        (0x18, 4, true),
        (0x1C, 4, true),
        (0x20, 4, true),
        (0x38, 4, true),
    ];
    for i in 0..8u64 {
        let e = 0x240 + 24 * i;
        hf.extend([
            (e, 4, true),
            (e + 4, 4, true),
            (e + 8, 4, true),
            (e + 16, 8, true),
        ]);
    }
    v.push(Structure {
        name: "dynamic header",
        start: ho,
        len: 1024,
        fields: hf,
        sum: Sum::Vhd(0x24),
    });
    let (Some(to), Some(n)) = (uint(b, ho + 0x10, 8, true), uint(b, ho + 0x1C, 4, true)) else {
        return v;
    };
    let bat_len = n * 4;
    if to.checked_add(bat_len).is_some_and(|e| e <= len) && n > 0 {
        v.push(Structure {
            name: "BAT",
            start: to,
            len: bat_len,
            fields: (0..n.min(4096)).map(|i| (i * 4, 4, true)).collect(),
            sum: Sum::None,
        });
        // The first allocated block's bitmap.
        if let Some(e) = (0..n)
            .filter_map(|i| uint(b, to + 4 * i, 4, true))
            .find(|e| *e != u64::from(u32::MAX))
        {
            let at = e * 512;
            if at + 512 <= len {
                v.push(Structure {
                    name: "sector bitmap",
                    start: at,
                    len: 512,
                    fields: vec![(0, 8, true)],
                    sum: Sum::None,
                });
            }
        }
    }
    v
}

/// FORMATS.md 3.4-3.10, read by hand.
fn vhdx_structures(b: &[u8]) -> Vec<Structure> {
    let len = b.len() as u64;
    let mut v = Vec::new();
    for at in [64u64 << 10, 128 << 10] {
        v.push(Structure {
            name: "header",
            start: at,
            len: 4096,
            fields: vec![
                (8, 8, false),
                (48, 8, false),
                (64, 2, false),
                (66, 2, false),
                (68, 4, false),
                (72, 8, false),
            ],
            sum: Sum::Crc(4),
        });
    }
    for at in [192u64 << 10, 256 << 10] {
        let mut f = vec![(8, 4, false)];
        for i in 0..4u64 {
            let e = 16 + 32 * i;
            f.extend([(e + 16, 8, false), (e + 24, 4, false), (e + 28, 4, false)]);
        }
        v.push(Structure {
            name: "region table",
            start: at,
            len: 64 << 10,
            fields: f,
            sum: Sum::Crc(4),
        });
    }
    // Log of the header with the larger sequence number.
    let seq = |at: u64| uint(b, at + 8, 8, false).unwrap_or(0);
    let h = if seq(128 << 10) > seq(64 << 10) {
        128u64 << 10
    } else {
        64 << 10
    };
    if let (Some(ll), Some(lo)) = (uint(b, h + 68, 4, false), uint(b, h + 72, 8, false)) {
        if ll > 0 && lo.checked_add(ll).is_some_and(|e| e <= len) {
            v.push(Structure {
                name: "log entry",
                start: lo,
                len: 4096,
                fields: vec![
                    (8, 4, false),
                    (12, 4, false),
                    (16, 8, false),
                    (24, 4, false),
                    (48, 8, false),
                    (56, 8, false),
                    (64 + 8, 8, false),
                    (64 + 16, 8, false),
                ],
                // The entry CRC spans EntryLength bytes; recomputed below
                // only when the entry is one sector.
                sum: Sum::None,
            });
        }
    }
    let rt = 192u64 << 10;
    let count = uint(b, rt + 8, 4, false).unwrap_or(0).min(2047);
    for i in 0..count {
        let e = rt + 16 + 32 * i;
        let Some(guid) = b.get(e as usize..e as usize + 16) else {
            break;
        };
        let (Some(off), Some(rlen)) = (uint(b, e + 16, 8, false), uint(b, e + 24, 4, false)) else {
            break;
        };
        if off.checked_add(rlen).is_none_or(|x| x > len) {
            continue;
        }
        if guid == BAT_GUID {
            let n = rlen / 8;
            v.push(Structure {
                name: "BAT",
                start: off,
                len: rlen,
                fields: (0..n.min(4096)).map(|i| (i * 8, 8, false)).collect(),
                sum: Sum::None,
            });
        } else if guid == METADATA_GUID {
            let mut f = vec![(10, 2, false)];
            let n = uint(b, off + 10, 2, false).unwrap_or(0).min(16);
            for i in 0..n {
                let t = 32 + 32 * i;
                f.extend([(t + 16, 4, false), (t + 20, 4, false), (t + 24, 4, false)]);
            }
            // The items themselves (file parameters, sizes, locator).
            for i in 0..n {
                let t = off + 32 + 32 * i;
                if let (Some(io), Some(il)) = (uint(b, t + 16, 4, false), uint(b, t + 20, 4, false))
                {
                    for k in (0..il.min(64)).step_by(2) {
                        f.push((io + k, 2, false));
                    }
                    f.push((io, 4, false));
                    f.push((io, 8, false));
                }
            }
            v.push(Structure {
                name: "metadata",
                start: off,
                len: rlen,
                fields: f,
                sum: Sum::None,
            });
        }
    }
    v
}

/// Printed (Debug) when a variant fails, to say what was done.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Mutation {
    BitFlip {
        at: u64,
        bit: u8,
    },
    Field {
        structure: &'static str,
        at: u64,
        width: u8,
        value: u64,
        fix: bool,
    },
    Bytes {
        structure: &'static str,
        at: u64,
        len: u64,
        fix: bool,
    },
    Truncate {
        len: u64,
    },
    Extend {
        by: u64,
    },
}

fn interesting(rng: &mut Rng, file_len: u64, width: u8) -> u64 {
    let max = if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(width))) - 1
    };
    let v = match rng.below(14) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max / 2 + 1,
        4 => file_len,
        5 => file_len + 512,
        6 => file_len.saturating_sub(512),
        7 => 0xFFFF_FE00,
        8 => 0x8000_0000,
        9 => 4096,
        10 => 1 << 20,
        11 => 1 << 40,
        12 => max - 1,
        _ => rng.next(),
    };
    v & max
}

/// The bytes of one variant: the original plus an overlay of changed bytes,
/// so a variant of a 70 MiB image costs no copy of it.
struct Edit<'a> {
    base: &'a [u8],
    over: std::collections::BTreeMap<u64, u8>,
    len: u64,
}

impl<'a> Edit<'a> {
    fn new(base: &'a [u8]) -> Self {
        Edit {
            base,
            over: Default::default(),
            len: base.len() as u64,
        }
    }
    fn get(&self, i: u64) -> u8 {
        match self.over.get(&i) {
            Some(b) => *b,
            None => self.base.get(i as usize).copied().unwrap_or(0),
        }
    }
    fn set(&mut self, i: u64, b: u8) {
        if i < self.len {
            self.over.insert(i, b);
        }
    }
    fn slice(&self, s: u64, e: u64) -> Vec<u8> {
        (s..e).map(|i| self.get(i)).collect()
    }
    fn write(&mut self, at: u64, bytes: &[u8]) {
        for (k, b) in bytes.iter().enumerate() {
            self.set(at + k as u64, *b);
        }
    }
    fn truncate(&mut self, n: u64) {
        self.len = self.len.min(n);
        self.over.retain(|k, _| *k < n);
    }
    fn extend(&mut self, by: u64) {
        // New bytes read as zero (base past its end, no overlay).
        let old = self.len;
        self.len += by;
        for i in old..self.len.min(self.base.len() as u64) {
            self.over.insert(i, 0);
        }
    }
    fn into_variant(self, base: &Arc<Vec<u8>>) -> Variant {
        let mut patches: Vec<(u64, Vec<u8>)> = Vec::new();
        for (k, b) in self.over {
            match patches.last_mut() {
                Some((at, v)) if *at + v.len() as u64 == k => v.push(b),
                _ => patches.push((k, vec![b])),
            }
        }
        Variant {
            base: Arc::clone(base),
            patches,
            len: self.len,
        }
    }
    fn to_vec(&self) -> Vec<u8> {
        self.slice(0, self.len)
    }
}

fn fix_sum(b: &mut Edit, s: &Structure) {
    let (start, end) = (s.start, s.start + s.len);
    if end > b.len {
        return;
    }
    match s.sum {
        Sum::None => {}
        Sum::Vhd(f) => {
            let c = formats::checksum::vhd_checksum(&b.slice(start, end), f as usize);
            b.write(start + f, &c.to_be_bytes());
        }
        Sum::Crc(f) => {
            let c = formats::checksum::crc32c_zeroed(&b.slice(start, end), f as usize);
            b.write(start + f, &c.to_le_bytes());
        }
    }
}

/// Choose a mutation and apply it.
fn mutate(rng: &mut Rng, b: &mut Edit, structures: &[Structure]) -> Mutation {
    let len = b.len;
    let pick = rng.below(100);
    if pick < 8 {
        // Truncate: often just inside or at a structure boundary.
        let cut = if rng.chance(50) && !structures.is_empty() {
            let s = &structures[rng.below(structures.len() as u64) as usize];
            (s.start + rng.below(s.len + 1)).min(len)
        } else {
            rng.below(len)
        };
        b.truncate(cut);
        return Mutation::Truncate { len: cut };
    }
    if pick < 10 {
        let by = 512 * (1 + rng.below(16));
        b.extend(by);
        return Mutation::Extend { by };
    }
    if len == 0 {
        return Mutation::Extend { by: 0 };
    }
    if pick < 25 || structures.is_empty() {
        // Bit flip anywhere (a third) or inside a structure.
        let at = if structures.is_empty() || rng.chance(33) {
            rng.below(len)
        } else {
            let s = &structures[rng.below(structures.len() as u64) as usize];
            (s.start + rng.below(s.len)).min(len - 1)
        };
        let bit = rng.below(8) as u8;
        let old = b.get(at);
        b.set(at, old ^ (1 << bit));
        return Mutation::BitFlip { at, bit };
    }
    let s = structures[rng.below(structures.len() as u64) as usize].clone();
    let fix = rng.chance(85);
    if pick < 85 && !s.fields.is_empty() {
        let (off, width, big) = s.fields[rng.below(s.fields.len() as u64) as usize];
        let value = interesting(rng, len, width);
        let at = s.start + off;
        let w = usize::from(width);
        let bytes = if big {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        let bytes = if big { &bytes[8 - w..] } else { &bytes[..w] };
        b.write(at, bytes);
        if fix {
            fix_sum(b, &s);
        }
        return Mutation::Field {
            structure: s.name,
            at,
            width,
            value,
            fix,
        };
    }
    // A run of random bytes inside the structure.
    let n = 1 + rng.below(16);
    let at = s.start + rng.below(s.len.saturating_sub(n).max(1));
    for i in 0..n {
        let r = rng.next() as u8;
        b.set(at + i, r);
    }
    if fix {
        fix_sum(b, &s);
    }
    Mutation::Bytes {
        structure: s.name,
        at,
        len: n,
        fix,
    }
}

/// A file in memory: shared original bytes plus the few bytes a mutation
/// changed, so a variant costs no copy of a multi-MiB image.
#[derive(Debug)]
struct Variant {
    base: Arc<Vec<u8>>,
    /// Byte ranges that differ from `base`, as (offset, bytes).
    patches: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl Storage for Variant {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        let from_base = (self.base.len() as u64).min(end);
        if offset < from_base {
            buf[..(from_base - offset) as usize]
                .copy_from_slice(&self.base[offset as usize..from_base as usize]);
        }
        if end > from_base {
            let s = from_base.max(offset);
            buf[(s - offset) as usize..].fill(0);
        }
        for (at, bytes) in &self.patches {
            let (ps, pe) = (*at, at + bytes.len() as u64);
            let (s, e) = (ps.max(offset), pe.min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - ps) as usize..(e - ps) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only variant",
        ))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        self.write_at(&[], 0)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Virtual bytes read per variant at most: small disks whole, large ones
/// their first 64 MiB plus the `Present` runs of a full map, within budget.
const WHOLE_READ_LIMIT: u64 = 64 << 20;
const PRESENT_BUDGET: u64 = 16 << 20;

fn read_virtual(layers: Vec<&dyn Layer>) {
    let mut reader = ChainReader::new(layers.clone());
    let size = reader.virtual_size();
    let head = size.min(WHOLE_READ_LIMIT);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < head {
        let n = (buf.len() as u64).min(head - off) as usize;
        if reader.read(off, &mut buf[..n]).is_err() {
            return;
        }
        off += n as u64;
    }
    if size <= WHOLE_READ_LIMIT {
        return;
    }
    // Map the rest in at most 1024 windows and read what is present.
    let window = (size - head).div_ceil(1024).div_ceil(1 << 20).max(1) << 20;
    let mut budget = PRESENT_BUDGET;
    let mut off = head;
    while off < size {
        let len = window.min(size - off) / 512 * 512;
        if len == 0 {
            break;
        }
        let runs = match reader.runs(off, len) {
            Ok(r) => r.to_vec(),
            Err(_) => return,
        };
        let covered: u64 = runs.iter().map(|r| r.len).sum();
        assert_eq!(covered, len, "folded runs must cover the window");
        for r in runs {
            if let Source::Layer { layer, file_offset } = r.source {
                let n = r.len.min(budget).min(1 << 20) as usize;
                budget -= n as u64;
                if n > 0 {
                    let _ = layers[layer].read_file(file_offset, &mut buf[..n]);
                }
            }
        }
        off += len;
    }
}

fn interrogate(img: &dyn Image) {
    let _ = img.info();
    let _ = img.identity();
    let _ = img.parent_linkage();
    let _ = img.parent_locator();
    let _ = img.open_findings();
    let _ = img.check();
}

/// One variant: open (strict and with checksums ignored), check, read.
fn exercise_single(st: Arc<dyn Storage>) {
    for ignore_checksums in [false, true] {
        let opts = OpenOptions {
            writable: false,
            ignore_checksums,
        };
        if let Ok(img) = formats::image::open("variant", Arc::clone(&st), None, opts) {
            interrogate(img.as_ref());
            read_virtual(vec![img.as_ref() as &dyn Layer]);
        }
    }
}

/// A chain variant: `child` over `parent` in a memory namespace.
fn exercise_chain(child: Vec<u8>, parent: Vec<u8>) {
    let m = MemNamespace::new();
    m.insert("/d/image-differential.vhd", child);
    m.insert("/d/image.vhd", parent);
    let ns: Arc<dyn Namespace> = Arc::new(Arc::clone(&m));
    for ignore_checksums in [false, true] {
        let opts = ChainOptions {
            ignore_checksums,
            ..Default::default()
        };
        if let Ok(chain) = Chain::open_partial(&ns, Path::new("/d/image-differential.vhd"), &opts) {
            for l in &chain.links {
                interrogate(l.image.as_ref());
            }
            if chain.broken.is_none() {
                read_virtual(chain.layers());
            }
        }
    }
}

struct Subject {
    name: &'static str,
    bytes: Arc<Vec<u8>>,
    structures: Vec<Structure>,
}

fn load(name: &'static str) -> Option<Subject> {
    let p: PathBuf = testdata::real_image_cached(name)?;
    let bytes = std::fs::read(&p).ok()?;
    let vhd = name.ends_with(".vhd");
    let structures = if vhd {
        vhd_structures(&bytes)
    } else {
        vhdx_structures(&bytes)
    };
    Some(Subject {
        name,
        bytes: Arc::new(bytes),
        structures,
    })
}

/// Images small enough to mutate in memory (the multi-hundred-MiB ones add
/// no structure the others lack).
const IMAGES: &[&str] = &[
    "fixed.vhd",
    "dynamic.vhd",
    "image.vhd",
    "hyperv2012r2-dynamic.vhd",
    "virtualpc-dynamic.vhd",
    "fixed.vhdx",
    "dynamic.vhdx",
    "vhdx-log-replay.vhdx",
    "iotest-dirtylog-10G-4M.vhdx",
    "swap.vhdx",
    "differencing.avhdx",
];

/// Build variant `i`: which subject (the extra index is the differencing
/// chain) and the mutations, applied to an overlay.
fn build(subjects: &[Subject], seed: u64, i: u64) -> (usize, Vec<Mutation>, Option<Variant>) {
    let mut rng = Rng(seed ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    let si = rng.below(subjects.len() as u64 + 1) as usize;
    let Some(s) = subjects.get(si) else {
        return (si, Vec::new(), None);
    };
    let mut e = Edit::new(&s.bytes);
    let mut muts = Vec::new();
    for _ in 0..1 + rng.below(3) {
        muts.push(mutate(&mut rng, &mut e, &s.structures));
    }
    (si, muts, Some(e.into_variant(&s.bytes)))
}

struct Report {
    variants: u64,
    max_time: Duration,
    max_time_variant: u64,
    max_peak: usize,
    max_largest: usize,
    total: Duration,
    failures: Vec<String>,
}

fn run(count: u64, seed: u64, only: Option<u64>) -> Option<Report> {
    let mut subjects = Vec::new();
    for name in IMAGES {
        subjects.push(load(name)?);
    }
    let chain_child = std::fs::read(testdata::real_image_cached("image-differential.vhd")?).ok()?;
    let chain_parent = Arc::new(
        subjects
            .iter()
            .find(|s| s.name == "image.vhd")?
            .bytes
            .to_vec(),
    );
    let chain_structs = vhd_structures(&chain_child);
    let parent_structs = vhd_structures(&chain_parent);
    let subjects = Arc::new(subjects);

    // One worker runs the variants in order; the test thread watches it so
    // a hang is reported with its variant number instead of blocking.
    let (tx, rx) = mpsc::channel::<(u64, Duration, usize, usize, Result<(), String>)>();
    let worker = {
        let subjects = Arc::clone(&subjects);
        std::thread::spawn(move || {
            let range: Vec<u64> = match only {
                Some(i) => vec![i],
                None => (0..count).collect(),
            };
            for i in range {
                let (si, muts, v) = build(&subjects, seed, i);
                let baseline = LIVE.load(Ordering::Relaxed);
                PEAK.store(baseline, Ordering::Relaxed);
                LARGEST.store(0, Ordering::Relaxed);
                let t = Instant::now();
                let r = if si == subjects.len() {
                    // The chain: mutate child or parent (small files, copied).
                    let mut rng = Rng(seed ^ i ^ 0x5EED);
                    let mut c = Edit::new(&chain_child);
                    let mut p = Edit::new(&chain_parent);
                    let muts: Vec<Mutation> = if rng.chance(50) {
                        vec![mutate(&mut rng, &mut c, &chain_structs)]
                    } else {
                        vec![mutate(&mut rng, &mut p, &parent_structs)]
                    };
                    let (c, p) = (c.to_vec(), p.to_vec());
                    quiet(|| exercise_chain(c, p))
                        .map_err(|e| format!("chain {muts:?}: {}", panic_text(&e)))
                } else {
                    let st: Arc<dyn Storage> = Arc::new(v.expect("single-image variant"));
                    quiet(|| exercise_single(st))
                        .map_err(|e| format!("{} {muts:?}: {}", subjects[si].name, panic_text(&e)))
                };
                let el = t.elapsed();
                let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
                let largest = LARGEST.load(Ordering::Relaxed);
                if tx.send((i, el, peak, largest, r)).is_err() {
                    return;
                }
            }
        })
    };
    let mut rep = Report {
        variants: 0,
        max_time: Duration::ZERO,
        max_time_variant: 0,
        max_peak: 0,
        max_largest: 0,
        total: Duration::ZERO,
        failures: Vec::new(),
    };
    let start = Instant::now();
    let mut failures = Vec::new();
    let expected = if only.is_some() { 1 } else { count };
    while rep.variants < expected {
        let (i, el, peak, largest, r) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the mutation worker died after {} variants", rep.variants)
            }
            Err(_) => panic!(
                "variant {} hung (> 20 s); replay with HOSTILE_ONLY={} HOSTILE_SEED={seed}",
                rep.variants, rep.variants
            ),
        };
        rep.variants += 1;
        if el > rep.max_time {
            rep.max_time = el;
            rep.max_time_variant = i;
        }
        rep.max_peak = rep.max_peak.max(peak);
        rep.max_largest = rep.max_largest.max(largest);
        if let Err(e) = r {
            failures.push(format!(
                "variant {i} (HOSTILE_ONLY={i} HOSTILE_SEED={seed}): {e}"
            ));
        }
    }
    let _ = worker.join();
    rep.total = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} panics:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Some(rep)
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    let at = WHERE.with(|w| w.borrow().clone());
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    format!("{msg} at {at}")
}

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok()?.parse().ok()
}

#[test]
fn mutated_real_images_never_panic_hang_or_balloon() {
    let count = env_u64("HOSTILE_VARIANTS").unwrap_or(10_000);
    let seed = env_u64("HOSTILE_SEED").unwrap_or(0x00C0_FFEE);
    let only = env_u64("HOSTILE_ONLY");
    // Panics caught inside a variant are reported below, not printed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if QUIET.with(|q| q.get()) {
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            WHERE.with(|w| *w.borrow_mut() = at);
        } else {
            hook(info)
        }
    }));
    let rep = run(count, seed, only);
    let Some(rep) = rep else {
        eprintln!("skipping: real images unavailable");
        return;
    };
    eprintln!(
        "hostile mutation: {} variants in {:.1?} (seed {seed:#x}); slowest variant {} took {:.1?}; \
         peak extra live heap {} KiB; largest single allocation {} KiB",
        rep.variants,
        rep.total,
        rep.max_time_variant,
        rep.max_time,
        rep.max_peak >> 10,
        rep.max_largest >> 10
    );
    assert!(
        rep.failures.is_empty(),
        "{} of {} variants panicked:\n{}",
        rep.failures.len(),
        rep.variants,
        rep.failures.join("\n")
    );
    assert!(
        rep.max_time < Duration::from_secs(5),
        "variant {} took {:?}",
        rep.max_time_variant,
        rep.max_time
    );
    // Reading uses 1 MiB buffers; a parsed BAT or log is bounded by the
    // file (the largest subject is ~72 MiB). Anything near a gigabyte
    // means a buffer sized by an unchecked field.
    assert!(
        rep.max_largest < 128 << 20,
        "largest allocation {} bytes",
        rep.max_largest
    );
    assert!(
        rep.max_peak < 256 << 20,
        "peak extra heap {} bytes",
        rep.max_peak
    );
}
