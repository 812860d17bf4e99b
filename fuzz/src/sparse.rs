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
use storage::{Access, EntryKind, Locks, MemHandle, Namespace, Storage};

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
            // the file grows again.
            if !len.is_multiple_of(PAGE) {
                if let Some(p) = self.pages.get_mut(&(len / PAGE)) {
                    Arc::make_mut(p)[(len % PAGE) as usize..].fill(0);
                }
            }
        }
        self.len = len;
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
}

/// A directory tree of sparse files (clones share the tree). Names and
/// locks follow the storage crate's in-memory rules (`storage::mem`).
#[derive(Debug, Default, Clone)]
pub struct SparseNs {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<SparseFile>>>>,
    locks: Locks<PathBuf>,
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
        Ok(Arc::new(MemHandle::open(&self.locks, path, file, access)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let file = Arc::new(SparseFile::default());
        names::create(&mut lock(&self.files), path, Arc::clone(&file))?;
        Ok(Arc::new(MemHandle::open(
            &self.locks,
            path,
            file,
            Access::Write,
        )?))
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
                _ => {
                    let want: Vec<u8> = d
                        .get(at as usize..)
                        .map(|s| s[..n.min(s.len())].to_vec())
                        .unwrap_or_default();
                    assert_eq!(p.get(at, n), want, "read {at}+{n} at step {i}");
                }
            }
            assert_eq!(p.len(), d.len() as u64);
        }
        assert_eq!(p.to_vec(), d);
    }
}
