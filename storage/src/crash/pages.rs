//! File contents as maps of shared 4 KiB pages.
//!
//! A [`PageMap`] is an immutable-by-convention snapshot: pages are `Arc`s, so
//! cloning a map shares every byte. An [`Overlay`] is a writable file over a
//! shared `PageMap`: every page it changes is copied into its own map first
//! and the base is never touched. Post-crash files are overlays over the
//! durable content, so building one costs only the pages the surviving
//! writes touch, never the whole file.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

pub const PAGE: usize = 4096;
const PAGE64: u64 = PAGE as u64;
pub type Page = [u8; PAGE];

/// The part of a byte range that lies in one page.
struct Piece {
    /// Its file offset.
    pos: u64,
    page: u64,
    /// Its offset within the page.
    in_page: usize,
    len: usize,
    /// Its offset within the range.
    done: usize,
}

/// Bytes `offset..end`, cut at page boundaries, in order.
fn pieces(offset: u64, end: u64) -> impl Iterator<Item = Piece> {
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_page = (pos % PAGE64) as usize;
        let piece = Piece {
            pos,
            page: pos / PAGE64,
            in_page,
            len: (PAGE - in_page).min((end - pos) as usize),
            done: (pos - offset) as usize,
        };
        pos += piece.len as u64;
        Some(piece)
    })
}

/// Simulated files are small; this bound keeps a buggy or hostile offset from
/// turning into an arithmetic overflow or an absurd page index.
pub const MAX_FILE_LEN: u64 = 1 << 48;

/// Shared, immutable file content. Invariant: every byte at or beyond `len`
/// reads as zero (no page lies wholly past `len`, the tail of the last page is
/// zero), so extending the file needs no work.
#[derive(Debug, Clone, Default)]
pub struct PageMap {
    pages: BTreeMap<u64, Arc<Page>>,
    len: u64,
}

impl PageMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pages actually stored (holes read as zeros).
    pub fn stored_pages(&self) -> usize {
        self.pages.len()
    }

    /// Whether two maps share every stored page (pointer equality), used by
    /// tests to prove that overlays never copy or mutate their base.
    pub fn shares_pages_with(&self, other: &PageMap) -> bool {
        self.len == other.len
            && self.pages.len() == other.pages.len()
            && self
                .pages
                .iter()
                .zip(other.pages.iter())
                .all(|((a, pa), (b, pb))| a == b && Arc::ptr_eq(pa, pb))
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(self.len).unwrap_or(0)];
        // The length came from our own writes, bounded by MAX_FILE_LEN; a
        // failure here would only mean the host cannot hold the file.
        let _ = Overlay::new(Arc::new(self.clone())).read_at(&mut v, 0);
        v
    }
}

/// A writable file over a shared base.
#[derive(Debug, Clone)]
pub struct Overlay {
    base: Arc<PageMap>,
    /// Base bytes at or beyond this offset are gone (a shrink happened);
    /// they read as zero without touching the base.
    limit: u64,
    /// Pages this overlay changed; `Arc` so that a whole page written by a
    /// recorded op can be shared instead of copied (copy-on-write).
    own: BTreeMap<u64, Arc<Page>>,
    len: u64,
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "offset beyond simulated limit")
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

impl Overlay {
    pub fn new(base: Arc<PageMap>) -> Self {
        let len = base.len;
        Overlay {
            base,
            limit: len,
            own: BTreeMap::new(),
            len,
        }
    }

    pub fn empty() -> Self {
        Self::new(Arc::new(PageMap::new()))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn base(&self) -> &Arc<PageMap> {
        &self.base
    }

    /// Pages copied out of the base so far (the cost of this overlay).
    pub fn own_pages(&self) -> usize {
        self.own.len()
    }

    /// Copy of page `p` as seen through the base alone (masked by `limit`).
    fn base_page(&self, p: u64) -> Page {
        let mut page = [0u8; PAGE];
        let start = p * PAGE64;
        if start < self.limit {
            if let Some(bp) = self.base.pages.get(&p) {
                let keep = (self.limit - start).min(PAGE64) as usize;
                page[..keep].copy_from_slice(&bp[..keep]);
            }
        }
        page
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        for piece in pieces(offset, end) {
            let Piece {
                pos, in_page, done, ..
            } = piece;
            let (p, n) = (piece.page, piece.len);
            let dst = &mut buf[done..done + n];
            if let Some(own) = self.own.get(&p) {
                dst.copy_from_slice(&own[in_page..in_page + n]);
            } else {
                let mut visible = 0;
                if pos < self.limit {
                    if let Some(bp) = self.base.pages.get(&p) {
                        visible = ((self.limit - pos) as usize).min(n);
                        dst[..visible].copy_from_slice(&bp[in_page..in_page + visible]);
                    }
                }
                dst[visible..].fill(0);
            }
        }
        Ok(())
    }

    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_FILE_LEN)
            .ok_or_else(too_large)?;
        for piece in pieces(offset, end) {
            let Piece { in_page, done, .. } = piece;
            let (p, n) = (piece.page, piece.len);
            if n == PAGE {
                let mut page = [0u8; PAGE];
                page.copy_from_slice(&buf[done..done + n]);
                self.own.insert(p, Arc::new(page));
            } else {
                if !self.own.contains_key(&p) {
                    let copy = Arc::new(self.base_page(p));
                    self.own.insert(p, copy);
                }
                if let Some(page) = self.own.get_mut(&p) {
                    Arc::make_mut(page)[in_page..in_page + n].copy_from_slice(&buf[done..done + n]);
                }
            }
        }
        // Bytes between the old end and `offset` already read as zero (the
        // invariant), so growing the length is all that is left.
        self.len = self.len.max(end);
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len > MAX_FILE_LEN {
            return Err(too_large());
        }
        if len < self.len {
            // Keep "bytes past the end read zero" true for a later growth.
            let first_gone = len.div_ceil(PAGE64);
            self.own.retain(|p, _| *p < first_gone);
            if !len.is_multiple_of(PAGE64) {
                if let Some(page) = self.own.get_mut(&(len / PAGE64)) {
                    Arc::make_mut(page)[(len % PAGE64) as usize..].fill(0);
                }
            }
            self.limit = self.limit.min(len);
        }
        self.len = len;
        Ok(())
    }

    /// Replace whole page `p` with a shared page (the content of a recorded
    /// write that covers it entirely): no copy.
    pub fn put_page(&mut self, p: u64, page: &Arc<Page>) -> io::Result<()> {
        let end = p
            .checked_add(1)
            .and_then(|e| e.checked_mul(PAGE64))
            .filter(|e| *e <= MAX_FILE_LEN)
            .ok_or_else(too_large)?;
        self.own.insert(p, Arc::clone(page));
        self.len = self.len.max(end);
        Ok(())
    }

    /// Page `p` as a shared page when it can be shared without copying:
    /// `Some(Some(page))` for a page held whole, `Some(None)` for a page
    /// that reads all zeros, `None` when a shrink cut it (copy bytes).
    pub fn shared_page(&self, p: u64) -> Option<Option<Arc<Page>>> {
        if let Some(own) = self.own.get(&p) {
            return Some(Some(Arc::clone(own)));
        }
        let start = p.checked_mul(PAGE64)?;
        if start >= self.limit {
            return Some(None);
        }
        match self.base.pages.get(&p) {
            None => Some(None),
            Some(bp) if start + PAGE64 <= self.limit => Some(Some(Arc::clone(bp))),
            Some(_) => None,
        }
    }

    /// Make whole page `p` read zeros (shares one zero page).
    pub fn zero_page(&mut self, p: u64) -> io::Result<()> {
        static ZERO: std::sync::OnceLock<Arc<Page>> = std::sync::OnceLock::new();
        let z = ZERO.get_or_init(|| Arc::new([0u8; PAGE]));
        self.put_page(p, z)
    }

    /// A fresh shared snapshot of the current content: base pages are
    /// shared, only pages this overlay owns (or that a shrink cut) are new.
    pub fn materialize(&self) -> PageMap {
        let mut pages = BTreeMap::new();
        let last = self.len.div_ceil(PAGE64);
        for (p, page) in self.base.pages.range(..last) {
            let start = p * PAGE64;
            if start >= self.limit || self.own.contains_key(p) {
                continue;
            }
            if start + PAGE64 <= self.limit {
                pages.insert(*p, Arc::clone(page));
            } else {
                pages.insert(*p, Arc::new(self.base_page(*p)));
            }
        }
        for (p, page) in &self.own {
            pages.insert(*p, Arc::clone(page));
        }
        PageMap {
            pages,
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum FileOp {
        Write(u64, Vec<u8>),
        SetLen(u64),
        PutPage(u64, u8),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = FileOp> {
        prop_oneof![
            (
                0u64..20_000,
                proptest::collection::vec(any::<u8>(), 1..9000)
            )
                .prop_map(|(o, d)| FileOp::Write(o, d)),
            (0u64..30_000).prop_map(FileOp::SetLen),
            (0u64..6, any::<u8>()).prop_map(|(p, b)| FileOp::PutPage(p, b)),
            Just(FileOp::Snapshot),
        ]
    }

    proptest! {
        /// The overlay behaves exactly like a plain byte vector, across
        /// snapshots (materialize + new overlay), and never changes a base
        /// someone else holds.
        #[test]
        fn overlay_matches_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut model: Vec<u8> = Vec::new();
            let mut ov = Overlay::empty();
            let mut held: Vec<(Arc<PageMap>, Vec<u8>)> = Vec::new();
            for o in ops {
                match o {
                    FileOp::Write(off, d) => {
                        let end = off as usize + d.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[off as usize..end].copy_from_slice(&d);
                        ov.write_at(&d, off).unwrap();
                    }
                    FileOp::SetLen(n) => {
                        model.resize(n as usize, 0);
                        ov.set_len(n).unwrap();
                    }
                    FileOp::PutPage(p, b) => {
                        let start = p as usize * PAGE;
                        if model.len() < start + PAGE { model.resize(start + PAGE, 0); }
                        model[start..start + PAGE].fill(b);
                        ov.put_page(p, &Arc::new([b; PAGE])).unwrap();
                    }
                    FileOp::Snapshot => {
                        let snap = Arc::new(ov.materialize());
                        held.push((Arc::clone(&snap), model.clone()));
                        ov = Overlay::new(snap);
                    }
                }
                prop_assert_eq!(ov.len(), model.len() as u64);
                let mut got = vec![0u8; model.len()];
                ov.read_at(&mut got, 0).unwrap();
                prop_assert_eq!(&got, &model);
                let mut one = [0u8; 1];
                prop_assert!(ov.read_at(&mut one, model.len() as u64).is_err());
            }
            for (snap, bytes) in held {
                prop_assert_eq!(snap.to_vec(), bytes);
            }
        }
    }

    #[test]
    fn writes_copy_only_touched_pages() {
        let mut base = Overlay::empty();
        base.write_at(&vec![7u8; 64 * PAGE], 0).unwrap();
        let base = Arc::new(base.materialize());
        let before = (*base).clone();
        let mut ov = Overlay::new(Arc::clone(&base));
        ov.write_at(&[1u8; 10], PAGE64 * 3 + 5).unwrap();
        assert_eq!(ov.own_pages(), 1);
        assert!(base.shares_pages_with(&before));
        assert_eq!(base.to_vec(), vec![7u8; 64 * PAGE]);
    }
}
