//! Sparse in-memory files for the whole-image targets.
//!
//! `formats::MemStorage` keeps a file as one dense `Vec<u8>`: a 4 MiB VHDX
//! (1 MiB log, BAT and metadata regions, mostly zeros) costs 4 MiB of
//! zeroing when it is created and 4 MiB of copying every time a target
//! takes its bytes out to corrupt them. Here a file is a map of 4 KiB pages
//! where a missing page reads as zeros, so creating, corrupting and
//! snapshotting an image costs what its non-zero bytes cost, not its
//! length. Lock rules are those of `formats::MemNamespace` (shared readers,
//! one exclusive writer, released when the handle drops), so chain opens
//! and merges behave the same on either.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use storage::mem::{names, not_found};
use storage::{Access, CopyRange, EntryKind, Locks, MemHandle, Namespace, Storage};

pub const PAGE: u64 = 4096;

type Page = [u8; PAGE as usize];

/// One file's contents: its length and its non-zero pages, shared between
/// copies until written (a copy of a file is a copy of its page map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pages {
    len: u64,
    pages: BTreeMap<u64, Arc<Page>>,
}

/// Files longer than this are refused (a corrupted size field must not make
/// a target think it holds an exabyte file; 16 GiB is far above anything a
/// target writes).
const MAX_LEN: u64 = 16 << 30;

impl Pages {
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut p = Pages::default();
        p.write(0, b);
        p
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes held in pages (an upper bound of what this copy owns alone).
    pub fn stored(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Dense copy (for small files and tests only).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        self.read(0, &mut v);
        v
    }

    /// Fill `buf` from `at`; the caller has checked the range.
    fn read(&self, at: u64, buf: &mut [u8]) {
        let end = at + buf.len() as u64;
        // Zero only the gaps between stored pages.
        let mut done = at;
        for (&pn, page) in self.pages.range(at / PAGE..end.div_ceil(PAGE)) {
            let ps = pn * PAGE;
            let s = ps.max(at);
            let e = (ps + PAGE).min(end);
            buf[(done - at) as usize..(s - at) as usize].fill(0);
            buf[(s - at) as usize..(e - at) as usize]
                .copy_from_slice(&page[(s - ps) as usize..(e - ps) as usize]);
            done = e;
        }
        buf[(done - at) as usize..].fill(0);
    }

    /// Fill `buf` from `at`; false (and `buf` untouched) when that range is
    /// not all inside the file.
    pub fn read_checked(&self, at: u64, buf: &mut [u8]) -> bool {
        match at.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {
                self.read(at, buf);
                true
            }
            _ => false,
        }
    }

    /// Bytes `[at, at + len)` clipped to the file (short at the end).
    pub fn get(&self, at: u64, len: usize) -> Vec<u8> {
        let end = at.saturating_add(len as u64).min(self.len);
        if at >= end {
            return Vec::new();
        }
        let mut v = vec![0u8; (end - at) as usize];
        self.read(at, &mut v);
        v
    }

    pub fn write(&mut self, at: u64, buf: &[u8]) {
        let end = at + buf.len() as u64;
        let mut off = at;
        while off < end {
            let pn = off / PAGE;
            let ps = pn * PAGE;
            let n = (ps + PAGE).min(end) - off;
            let src = &buf[(off - at) as usize..(off - at + n) as usize];
            let zero = is_zero(src);
            match self.pages.get_mut(&pn) {
                Some(page) => {
                    let dst = &page[(off - ps) as usize..(off - ps + n) as usize];
                    if dst != src {
                        Arc::make_mut(page)[(off - ps) as usize..(off - ps + n) as usize]
                            .copy_from_slice(src);
                    }
                    if zero && is_zero(&page[..]) {
                        self.pages.remove(&pn);
                    }
                }
                None if zero => {}
                None => {
                    let mut page = Arc::new([0u8; PAGE as usize]);
                    Arc::make_mut(&mut page)[(off - ps) as usize..(off - ps + n) as usize]
                        .copy_from_slice(src);
                    self.pages.insert(pn, page);
                }
            }
            off += n;
        }
        self.len = self.len.max(end);
    }

    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            let keep = len.div_ceil(PAGE);
            self.pages.split_off(&keep);
            // Bytes of the last kept page past the new end read as zeros if
            // the file grows again (and a page left all zero is dropped:
            // only non-zero pages are stored, so equal files compare equal).
            if !len.is_multiple_of(PAGE) {
                let pn = len / PAGE;
                if let Some(p) = self.pages.get_mut(&pn) {
                    Arc::make_mut(p)[(len % PAGE) as usize..].fill(0);
                    if is_zero(&p[..]) {
                        self.pages.remove(&pn);
                    }
                }
            }
        }
        self.len = len;
    }

    /// The first run of stored pages at or after `at`, clipped to the file:
    /// everything outside such runs reads as zeros.
    fn allocated_from(&self, at: u64) -> Option<std::ops::Range<u64>> {
        if at >= self.len {
            return None;
        }
        let mut run: Option<(u64, u64)> = None;
        for &pn in self.pages.range(at / PAGE..).map(|(pn, _)| pn) {
            match run {
                None => run = Some((pn, pn + 1)),
                Some((s, e)) if pn == e => run = Some((s, e + 1)),
                Some(_) => break,
            }
        }
        let (s, e) = run?;
        let start = (s * PAGE).max(at);
        let end = (e * PAGE).min(self.len);
        (start < end).then_some(start..end)
    }

    /// Make `[at, end)` read as zeros (stored pages dropped or cleared);
    /// the length does not change. The caller has clipped `end` to it.
    fn zero_range(&mut self, at: u64, end: u64) {
        let mut off = at;
        while off < end {
            let pn = off / PAGE;
            let n = ((pn + 1) * PAGE).min(end) - off;
            if n == PAGE {
                self.pages.remove(&pn);
            } else if self.pages.contains_key(&pn) {
                self.write(off, &ZEROS[..n as usize]);
            }
            off += n;
        }
    }

    /// Copy `len` bytes of `src` at `from` to `to` (the caller has checked
    /// both ranges). Whole pages at the same phase are shared, not copied;
    /// the rest goes a page at a time through a stack buffer, so nothing
    /// here allocates in proportion to `len`. `src` must not be `self`'s
    /// own map where the ranges overlap (the caller copies those apart).
    fn copy_range(&mut self, src: &Pages, from: u64, to: u64, len: u64) {
        let mut buf = [0u8; PAGE as usize];
        let mut done = 0;
        while done < len {
            let (s, d) = (from + done, to + done);
            let n = (PAGE - d % PAGE).min(len - done);
            if n == PAGE && s.is_multiple_of(PAGE) {
                match src.pages.get(&(s / PAGE)) {
                    Some(p) => {
                        self.pages.insert(d / PAGE, Arc::clone(p));
                    }
                    None => {
                        self.pages.remove(&(d / PAGE));
                    }
                }
            } else {
                src.read(s, &mut buf[..n as usize]);
                self.write(d, &buf[..n as usize]);
            }
            done += n;
        }
        self.len = self.len.max(to + len);
    }

    /// The stored pages that hold `[at, at + len)` (with the file's
    /// length), enough for [`Pages::copy_range`] from that range.
    fn range_copy(&self, at: u64, len: u64) -> Pages {
        let last = (at + len).div_ceil(PAGE);
        Pages {
            len: self.len,
            pages: self
                .pages
                .range(at / PAGE..last)
                .map(|(k, v)| (*k, Arc::clone(v)))
                .collect(),
        }
    }
}

impl Pages {
    /// Page `pn` clipped to the file, or None where it is not stored.
    fn page_in_file(&self, pn: u64) -> Option<&[u8]> {
        let n = self.len.saturating_sub(pn * PAGE).min(PAGE) as usize;
        self.pages.get(&pn).map(|p| &p[..n])
    }

    /// Whether both hold the same bytes: the same length and every page
    /// equal (a page one of them does not store reads as zeros). Costs
    /// the stored pages, not the length; shared pages compare by pointer.
    pub fn same_bytes(&self, other: &Pages) -> bool {
        if self.len != other.len {
            return false;
        }
        let keys = self
            .pages
            .keys()
            .chain(other.pages.keys().filter(|k| !self.pages.contains_key(k)));
        keys.copied()
            .all(|pn| match (self.pages.get(&pn), other.pages.get(&pn)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
                _ => {
                    let (a, b) = (self.page_in_file(pn), other.page_in_file(pn));
                    match (a, b) {
                        (Some(a), Some(b)) => a == b,
                        (Some(x), None) | (None, Some(x)) => is_zero(x),
                        (None, None) => true,
                    }
                }
            })
    }

    /// Whether these are exactly the bytes `b`.
    pub fn same_as(&self, b: &[u8]) -> bool {
        if self.len != b.len() as u64 {
            return false;
        }
        b.chunks(PAGE as usize)
            .enumerate()
            .all(|(pn, want)| match self.page_in_file(pn as u64) {
                Some(have) => have == want,
                None => is_zero(want),
            })
    }
}

static ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

/// At most one page of bytes all zero (a `memcmp`, much faster than a
/// byte loop on the megabytes of zeros a create writes).
fn is_zero(b: &[u8]) -> bool {
    b == &ZEROS[..b.len()]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shared sparse file.
#[derive(Default)]
pub struct SparseFile {
    data: Mutex<Pages>,
}

impl fmt::Debug for SparseFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SparseFile({} bytes)", lock(&self.data).len)
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "file too large")
}

impl Storage for SparseFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = lock(&self.data);
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > d.len {
            return Err(eof());
        }
        d.read(offset, buf);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_LEN)
            .ok_or_else(too_large)?;
        let _ = end;
        lock(&self.data).write(offset, buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MAX_LEN {
            return Err(too_large());
        }
        lock(&self.data).set_len(len);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn allocated_range(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        Ok(lock(&self.data).allocated_from(offset))
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = lock(&self.data);
        let end = offset.saturating_add(len).min(d.len);
        if offset < end {
            d.zero_range(offset, end);
        }
        Ok(())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
    /// From a sparse file (`src.as_any()` is one): pages shared or copied
    /// a page at a time (see `Pages::copy_range`), with what the default
    /// copy through a buffer does on errors: 4 MiB pieces, each read (past
    /// the end: an error) before it is written, so a failing copy has
    /// written the pieces before it. Overlapping ranges of one file and
    /// other sources take the default path.
    fn copy_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        let Some(s) = src.as_any().and_then(|a| a.downcast_ref::<SparseFile>()) else {
            return storage::copy_by_buffer(src, self, range);
        };
        if std::ptr::eq(s, self) && range.overlaps_itself() {
            return storage::copy_by_buffer(src, self, range);
        }
        const PIECE: u64 = 4 << 20;
        let mut done = 0;
        while done < range.len {
            let n = PIECE.min(range.len - done);
            let (from, to) = (range.src_offset + done, range.dst_offset + done);
            let piece = {
                let d = lock(&s.data);
                match from.checked_add(n) {
                    Some(end) if end <= d.len => d.range_copy(from, n),
                    _ => return Err(eof()),
                }
            };
            to.checked_add(n)
                .filter(|e| *e <= MAX_LEN)
                .ok_or_else(too_large)?;
            lock(&self.data).copy_range(&piece, from, to, n);
            done += n;
        }
        Ok(())
    }
}

/// A directory tree of sparse files (clones share the tree). Names and
/// locks follow the storage crate's in-memory rules (`storage::mem`).
#[derive(Debug, Default, Clone)]
pub struct SparseNs {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<SparseFile>>>>,
    locks: Locks<PathBuf>,
}

/// A lock-holding handle onto a shared sparse file: the storage crate's
/// `MemHandle` (its lock rules), which also passes on the sparse file's
/// page-level copies, holes and allocated runs (`MemHandle` itself takes
/// the trait's defaults for those).
#[derive(Debug)]
struct Handle {
    inner: MemHandle<SparseFile>,
    file: Arc<SparseFile>,
    access: Access,
}

impl Handle {
    fn open(ns: &SparseNs, path: &Path, file: Arc<SparseFile>, access: Access) -> io::Result<Self> {
        Ok(Handle {
            inner: MemHandle::open(&ns.locks, path, Arc::clone(&file), access)?,
            file,
            access,
        })
    }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only")
}

impl Storage for Handle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn allocated_range(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        self.file.allocated_range(offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // As the default: nothing to write (past the end) is no error.
        if self.access == Access::Read && offset < offset.saturating_add(len).min(self.len()?) {
            return Err(read_only());
        }
        self.file.punch_hole(offset, len)
    }
    /// The file, so that another sparse file's `copy_from` finds its pages.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(&*self.file)
    }
    fn copy_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        if self.access == Access::Read {
            // The default's error: the first piece read, its write refused.
            return storage::copy_by_buffer(src, self, range);
        }
        self.file.copy_from(src, range)
    }
}

impl SparseNs {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Put a file at `path` (replacing one there).
    pub fn put(&self, path: &Path, pages: Pages) {
        lock(&self.files).insert(
            path.to_path_buf(),
            Arc::new(SparseFile {
                data: Mutex::new(pages),
            }),
        );
    }

    fn file(&self, path: &Path) -> Option<Arc<SparseFile>> {
        lock(&self.files).get(path).cloned()
    }

    /// A copy of the file at `path` (cheap: its non-zero pages).
    pub fn get(&self, path: &Path) -> Option<Pages> {
        let f = self.file(path)?;
        let p = lock(&f.data).clone();
        Some(p)
    }

    /// Change the file at `path` in place, outside the lock rules (the
    /// targets corrupt files while nothing has them open).
    pub fn edit<R>(&self, path: &Path, f: impl FnOnce(&mut Pages) -> R) -> Option<R> {
        let file = self.file(path)?;
        let mut d = lock(&file.data);
        Some(f(&mut d))
    }

    /// Every file and its contents, sorted by path.
    pub fn snapshot(&self) -> Vec<(PathBuf, Pages)> {
        let files: Vec<(PathBuf, Arc<SparseFile>)> = lock(&self.files)
            .iter()
            .map(|(p, f)| (p.clone(), Arc::clone(f)))
            .collect();
        files
            .into_iter()
            .map(|(p, f)| {
                let d = lock(&f.data).clone();
                (p, d)
            })
            .collect()
    }
}

impl Namespace for SparseNs {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let file = self.file(path).ok_or_else(not_found)?;
        Ok(Arc::new(Handle::open(self, path, file, access)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let file = Arc::new(SparseFile::default());
        names::create(&mut lock(&self.files), path, Arc::clone(&file))?;
        Ok(Arc::new(Handle::open(self, path, file, Access::Write)?))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        Ok(names::kind(&lock(&self.files), path))
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(names::read_dir(&lock(&self.files), dir))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        names::remove(&mut lock(&self.files), path).map(drop)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        names::rename(&mut lock(&self.files), from, to)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sparse pages behave like a dense vector under random writes, reads,
    /// truncations and extensions.
    #[test]
    fn pages_match_a_dense_model() {
        let mut p = Pages::default();
        let mut d: Vec<u8> = Vec::new();
        let mut old = (Pages::default(), Vec::new());
        let mut x = 0x9e37_79b9_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..2000 {
            let at = next() % 40_000;
            let n = (next() % 9000) as usize;
            match next() % 5 {
                0 | 1 => {
                    let v: u8 = if i % 3 == 0 { 0 } else { next() as u8 | 1 };
                    let buf = vec![v; n];
                    p.write(at, &buf);
                    if d.len() < at as usize + n {
                        d.resize(at as usize + n, 0);
                    }
                    d[at as usize..at as usize + n].copy_from_slice(&buf);
                }
                2 => {
                    p.set_len(at);
                    d.resize(at as usize, 0);
                }
                3 if i % 2 == 0 => {
                    // Copy from another place of the file (a snapshot of
                    // it, as `copy_from` takes), sometimes page-aligned.
                    let len = n as u64 % 20_000;
                    let from = if i % 4 == 0 { at / PAGE * PAGE } else { at };
                    let to = if i % 4 == 0 {
                        next() % 40_000 / PAGE * PAGE
                    } else {
                        next() % 40_000
                    };
                    if from + len <= p.len() {
                        let src = p.range_copy(from, len);
                        p.copy_range(&src, from, to, len);
                        let bytes = d[from as usize..(from + len) as usize].to_vec();
                        if d.len() < (to + len) as usize {
                            d.resize((to + len) as usize, 0);
                        }
                        d[to as usize..(to + len) as usize].copy_from_slice(&bytes);
                    }
                }
                3 => {
                    let end = (at + n as u64).min(p.len());
                    if at < end {
                        p.zero_range(at, end);
                        d[at as usize..end as usize].fill(0);
                    }
                }
                _ => {
                    let want: Vec<u8> = d
                        .get(at as usize..)
                        .map(|s| s[..n.min(s.len())].to_vec())
                        .unwrap_or_default();
                    assert_eq!(p.get(at, n), want, "read {at}+{n} at step {i}");
                }
            }
            assert_eq!(p.len(), d.len() as u64);
            // The compares agree with the dense model: against it (and it
            // with one byte changed), and against an older state that
            // shares the pages left unchanged since.
            assert!(p.same_as(&d), "step {i}");
            if !d.is_empty() {
                let mut e = d.clone();
                e[next() as usize % d.len()] ^= 1;
                assert!(!p.same_as(&e), "step {i}");
                assert!(!p.same_bytes(&Pages::from_bytes(&e)), "step {i}");
            }
            assert_eq!(p.same_bytes(&old.0), d == old.1, "step {i}");
            assert_eq!(old.0.same_bytes(&p), d == old.1, "step {i}");
            if i % 7 == 0 {
                old = (p.clone(), d.clone());
            }
            // Only non-zero pages are stored, and the allocated runs cover
            // every non-zero byte.
            assert!(p.pages.values().all(|pg| !is_zero(&pg[..])), "step {i}");
            let mut covered = vec![false; d.len()];
            let mut at = 0;
            while let Some(r) = p.allocated_from(at) {
                assert!(r.start >= at && r.end > r.start && r.end <= p.len());
                covered[r.start as usize..r.end as usize].fill(true);
                at = r.end;
            }
            assert!(
                d.iter().zip(&covered).all(|(b, c)| *b == 0 || *c),
                "a non-zero byte outside every allocated range at step {i}"
            );
        }
        assert_eq!(p.to_vec(), d);
    }

    /// `copy_from` and `punch_hole` between sparse handles do what the
    /// trait's defaults do on dense memory files: same bytes, same errors
    /// (past the end, read-only), within one file and between two.
    #[test]
    fn copies_and_holes_match_the_defaults() {
        use storage::{copy_by_buffer, MemStorage};
        let ns = SparseNs::new();
        let names = [Path::new("/a"), Path::new("/b")];
        let mut x = 0x2545_f491_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut dense = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let v: Vec<u8> = (0..50_000u32)
                .map(|k| {
                    if (k / 4096) % 3 == i as u32 {
                        0
                    } else {
                        k as u8 | 1
                    }
                })
                .collect();
            ns.put(n, Pages::from_bytes(&v));
            dense.push(MemStorage::from_vec(v));
        }
        let w = [
            ns.open(names[0], Access::Write).unwrap(),
            ns.open(names[1], Access::Write).unwrap(),
        ];
        for step in 0..3000 {
            let (a, b) = ((next() % 2) as usize, (next() % 2) as usize);
            let aligned = next() % 3 == 0;
            let mut pick = |m: u64| {
                let v = next() % m;
                if aligned {
                    v / PAGE * PAGE
                } else {
                    v
                }
            };
            let (from, to, len) = (pick(60_000), pick(60_000), pick(20_000));
            let (got, want) = if step % 5 == 0 {
                (
                    w[b].punch_hole(to, len),
                    Storage::punch_hole(&dense[b], to, len),
                )
            } else {
                (
                    w[b].copy_from(&*w[a], CopyRange::new(from, to, len)),
                    copy_by_buffer(&dense[a], &dense[b], CopyRange::new(from, to, len)),
                )
            };
            assert_eq!(
                got.map_err(|e| e.kind()),
                want.map_err(|e| e.kind()),
                "step {step}"
            );
            for (n, d) in names.iter().zip(&dense) {
                assert!(ns.get(n).unwrap().to_vec() == d.to_vec(), "step {step}");
            }
        }
        drop(w);
        let r = ns.open(names[0], Access::Read).unwrap();
        let w1 = ns.open(names[1], Access::Write).unwrap();
        let kind = |r: io::Result<()>| r.map_err(|e| e.kind());
        assert_eq!(
            kind(r.copy_from(&*w1, CopyRange::new(0, 0, 10))),
            Err(io::ErrorKind::PermissionDenied)
        );
        assert_eq!(
            kind(r.punch_hole(0, 10)),
            Err(io::ErrorKind::PermissionDenied)
        );
        assert_eq!(kind(r.punch_hole(1 << 40, 10)), Ok(()));
    }
}
