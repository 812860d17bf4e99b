//! Write combining for a batch's staged payload (DESIGN.md 5).
//!
//! A layer written in small runs reaches a batch as one small piece per
//! run. Staged one by one, each piece costs a system call (a 4 KiB
//! copy_file_range is about 20 µs) and leaves the page cache a scatter of
//! pages whose writeback is several times slower per byte than the same
//! bytes in sequence: on the bench machine, 512 MiB written as 4 KiB pages
//! one page apart took 5.7 s to copy and sync, 1 GiB in 1 MiB writes 2.5 s.
//! So small pieces are gathered in a window of the destination file and
//! written as few large writes, and a gap of at most one page between two
//! pieces is filled with what the file holds there (zeros where the batch
//! declared the space fresh, else read back at flush time), so the write is
//! contiguous and no byte reads differently.
//!
//! The batches only stage into fresh space that no committed structure
//! uses, and a gap between two staged pieces lies inside that space, so
//! rewriting a gap with its own bytes never touches a live structure.
//! Ordering: nothing put here is on disk before `flush`; every batch flushes
//! the combiner before the storage flush that makes its staging durable.

use std::collections::BTreeMap;
use std::io;

use crate::storage::{AlignedBuf, CopyRange, Storage};

/// Pieces at least this long go straight to the storage (copy_file_range
/// can then move them without a bounce buffer).
const SMALL: u64 = 64 << 10;
/// The file span one flush covers; the only buffer the combiner holds.
const WINDOW: u64 = 1 << 20;
/// Two pieces this close or closer are written as one (one page).
const MAX_GAP: u32 = 4096;

/// What a batch stores: bytes in memory, zeros, or a range of another file
/// (copied with `Storage::copy_from`, which lets the kernel or the
/// simulator move it without a bounce buffer).
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    Bytes(&'a [u8]),
    Zeros(u64),
    From {
        src: &'a dyn Storage,
        offset: u64,
        len: u64,
    },
}

impl Payload<'_> {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Zeros(n) => *n,
            Payload::From { len, .. } => *len,
        }
    }

    /// Store the whole payload at `at`.
    pub(crate) fn put(&self, st: &dyn Storage, at: u64) -> io::Result<()> {
        match *self {
            Payload::Bytes(b) => st.write_at(b, at),
            Payload::Zeros(n) => {
                let zeros = vec![0u8; n.min(WINDOW) as usize];
                let mut done = 0;
                while done < n {
                    let k = (zeros.len() as u64).min(n - done);
                    st.write_at(&zeros[..k as usize], at + done)?;
                    done += k;
                }
                Ok(())
            }
            Payload::From { src, offset, len } => {
                st.copy_from(src, CopyRange::new(offset, at, len))
            }
        }
    }

    /// Bytes `[skip, skip + out.len())` of the payload into `out`.
    pub(crate) fn read_part(&self, skip: u64, out: &mut [u8]) -> io::Result<()> {
        match *self {
            Payload::Bytes(b) => {
                out.copy_from_slice(&b[skip as usize..skip as usize + out.len()]);
                Ok(())
            }
            Payload::Zeros(_) => {
                out.fill(0);
                Ok(())
            }
            Payload::From { src, offset, .. } => src.read_at(out, offset + skip),
        }
    }
}

/// `WriteCombiner::written` on the map alone.
fn written(zeros: &mut BTreeMap<u64, u64>, at: u64, len: u64) {
    let end = at.saturating_add(len);
    let mut cut = Vec::new();
    if let Some((&s, &e)) = zeros.range(..at).next_back() {
        if e > at {
            cut.push((s, e));
        }
    }
    cut.extend(zeros.range(at..end).map(|(&s, &e)| (s, e)));
    for (s, e) in cut {
        zeros.remove(&s);
        if e > end {
            zeros.insert(end, e);
        }
    }
}

/// Whether `zeros` (start -> end) covers all of `[at, at + len)`.
fn known_zero(zeros: &BTreeMap<u64, u64>, at: u64, len: u64) -> bool {
    zeros
        .range(..=at)
        .next_back()
        .is_some_and(|(_, &e)| at.saturating_add(len) <= e)
}

/// Small payload pieces of one window of the destination file, kept until
/// `flush` (or until a piece outside the window arrives).
#[derive(Default)]
pub(crate) struct WriteCombiner {
    /// File offset of the window (a multiple of `WINDOW`).
    window: u64,
    /// The window's bytes; only the `pieces` ranges are meaningful. Both
    /// buffers are page-aligned: a long write from them can bypass the
    /// page cache (`FileStorage::write_at`).
    buf: Option<AlignedBuf>,
    /// Sorted, disjoint, non-touching ranges of `buf` that hold pieces.
    pieces: Vec<(u32, u32)>,
    /// A joined write's bytes: the file's span with the pieces over it.
    scratch: Option<AlignedBuf>,
    /// File ranges (start -> end) known to read zeros: declared fresh by
    /// the batch, less everything written through here since.
    zeros: BTreeMap<u64, u64>,
}

impl WriteCombiner {
    /// Declare `[at, at + len)` fresh: it reads zeros now, and from now on
    /// is written only through this combiner. Gaps inside it are then
    /// zero-filled instead of read back (reading a sparse file's holes
    /// page by page is what made combining slow at first).
    pub(crate) fn fresh_zeros(&mut self, at: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut s, mut e) = (at, at.saturating_add(len));
        // Fold the ranges it overlaps or touches.
        if let Some((&ps, &pe)) = self.zeros.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        while let Some((&ns, &ne)) = self.zeros.range(s..=e).next() {
            self.zeros.remove(&ns);
            e = e.max(ne);
        }
        self.zeros.insert(s, e);
    }

    /// `[at, at + len)` was written: no longer known to read zeros. What
    /// lies before it in the same range is forgotten too (merely read back
    /// if ever needed): batches stage in ascending order, and never
    /// splitting a range keeps the map no larger than the fresh
    /// allocations, however many small pieces arrive.
    fn written(&mut self, at: u64, len: u64) {
        written(&mut self.zeros, at, len);
    }

    /// Stage `p` at file offset `at` of `st`. A later put over the same
    /// bytes wins, as a later write would.
    pub(crate) fn put(&mut self, st: &dyn Storage, at: u64, p: Payload<'_>) -> io::Result<()> {
        let len = p.len();
        if len >= SMALL {
            // Pending pieces it overlaps must not land on top of it later.
            if self.overlaps(at, len) {
                self.flush(st)?;
            }
            self.written(at, len);
            return p.put(st, at);
        }
        let mut done = 0;
        while done < len {
            let a = at + done;
            let w = a / WINDOW * WINDOW;
            let n = (w + WINDOW - a).min(len - done);
            if w != self.window {
                self.flush(st)?;
                self.window = w;
            }
            let buf = self
                .buf
                .get_or_insert_with(|| AlignedBuf::zeroed(WINDOW as usize))
                .as_mut_slice();
            let s = (a - w) as usize;
            p.read_part(done, &mut buf[s..s + n as usize])?;
            self.insert(s as u32, (s + n as usize) as u32);
            done += n;
        }
        Ok(())
    }

    fn overlaps(&self, at: u64, len: u64) -> bool {
        match (self.pieces.first(), self.pieces.last()) {
            (Some(f), Some(l)) => {
                let (s, e) = (self.window + u64::from(f.0), self.window + u64::from(l.1));
                at < e && s < at.saturating_add(len)
            }
            _ => false,
        }
    }

    fn insert(&mut self, s: u32, e: u32) {
        match self.pieces.last_mut() {
            None => self.pieces.push((s, e)),
            // The merge stages runs in ascending order: the common cases.
            Some(last) if s == last.1 => last.1 = e,
            Some(last) if s > last.1 => self.pieces.push((s, e)),
            Some(_) => {
                // Out of order: fold every range it overlaps or touches.
                let i = self.pieces.partition_point(|r| r.1 < s);
                let j = self.pieces.partition_point(|r| r.0 <= e);
                let (mut ns, mut ne) = (s, e);
                if i < j {
                    ns = ns.min(self.pieces[i].0);
                    ne = ne.max(self.pieces[j - 1].1);
                }
                self.pieces.splice(i..j, [(ns, ne)]);
            }
        }
    }

    /// Write every pending piece, joining neighbours across small gaps.
    pub(crate) fn flush(&mut self, st: &dyn Storage) -> io::Result<()> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        let file_len = st.len()?;
        // On a file system that shares extents a block's unchanged bytes
        // are already in place (cloned, or fresh zeros): filling the gaps
        // would double the bytes written for nothing.
        let max_gap = if st.shares_extents() { 0 } else { MAX_GAP };
        let w = self.window;
        let buf = self
            .buf
            .get_or_insert_with(|| AlignedBuf::zeroed(WINDOW as usize))
            .as_slice();
        let mut i = 0;
        while i < self.pieces.len() {
            let (s, mut e) = self.pieces[i];
            let mut j = i + 1;
            while let Some(&(ns, ne)) = self.pieces.get(j) {
                // A gap is filled only with bytes the file really has, and
                // the span is read back whole, so it must end inside the file.
                if ns - e > max_gap || w + u64::from(ne) > file_len {
                    break;
                }
                e = ne;
                j += 1;
            }
            let (s, e) = (s as usize, e as usize);
            let (at, len) = (w + s as u64, (e - s) as u64);
            if j == i + 1 {
                st.write_at(&buf[s..e], at)?;
            } else {
                let known_zero = known_zero(&self.zeros, at, len);
                let scratch = self
                    .scratch
                    .get_or_insert_with(|| AlignedBuf::zeroed(WINDOW as usize))
                    .as_mut_slice();
                if known_zero {
                    scratch[s..e].fill(0);
                } else {
                    // One read of the whole span, not one per gap: each
                    // read of a hole starts a readahead that zero-fills pages.
                    st.read_at(&mut scratch[s..e], at)?;
                }
                for &(ps, pe) in &self.pieces[i..j] {
                    let r = ps as usize..pe as usize;
                    scratch[r.clone()].copy_from_slice(&buf[r]);
                }
                st.write_at(&scratch[s..e], at)?;
            }
            written(&mut self.zeros, at, len);
            i = j;
        }
        self.pieces.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use proptest::prelude::*;

    /// Each put as (offset in 512-byte units, length in units, kind);
    /// `fresh` (in units) is zeroed first and declared fresh.
    fn apply(ops: &[(u64, u64, u8)], fresh: (u64, u64), combined: bool) -> Vec<u8> {
        let src = MemStorage::from_vec((0..(8u32 << 20)).map(|i| (i * 7 + 3) as u8).collect());
        // 3.5 MiB: the largest puts reach past the end of the file.
        let mut init: Vec<u8> = (0..(7u32 << 19)).map(|i| (i % 251) as u8).collect();
        let (f0, f1) = ((fresh.0 * 512) as usize, (fresh.1 * 512) as usize);
        let (f0, f1) = (f0.min(init.len()), f1.min(init.len()));
        init[f0..f1].fill(0);
        let dst = MemStorage::from_vec(init);
        let mut c = WriteCombiner::default();
        c.fresh_zeros(f0 as u64, (f1 - f0) as u64);
        let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 13) as u8).collect();
        for &(o, n, kind) in ops {
            let (at, len) = (o * 512, n * 512);
            let p = match kind % 3 {
                0 => Payload::Bytes(&bytes[..len as usize]),
                1 => Payload::Zeros(len),
                _ => Payload::From {
                    src: &src,
                    offset: at / 2 + 512,
                    len,
                },
            };
            if combined {
                c.put(&dst, at, p).unwrap();
            } else {
                p.put(&dst, at).unwrap();
            }
        }
        c.flush(&dst).unwrap();
        dst.to_vec()
    }

    proptest! {
        // The model: every put written through at once, in order.
        #[test]
        fn combined_puts_leave_the_file_a_direct_write_would(
            ops in proptest::collection::vec(
                prop_oneof![
                    // Small pieces close together: gaps get joined.
                    (0u64..3000, 1u64..16, any::<u8>()),
                    // Small pieces around the end of the file (7168 units).
                    (7120u64..7180, 1u64..16, any::<u8>()),
                    // Anything, up to pieces that bypass the combiner.
                    (0u64..7000, 1u64..300, any::<u8>()),
                ],
                1..80,
            ),
            fresh in (0u64..7000, 0u64..4000).prop_map(|(a, n)| (a, (a + n).min(8192))),
        ) {
            prop_assert_eq!(apply(&ops, fresh, true), apply(&ops, fresh, false));
        }
    }

    #[test]
    fn ascending_small_pieces_become_one_write_per_window() {
        #[derive(Debug, Default)]
        struct Counting(MemStorage, std::sync::atomic::AtomicU64);
        impl Storage for Counting {
            fn read_at(&self, b: &mut [u8], o: u64) -> io::Result<()> {
                self.0.read_at(b, o)
            }
            fn write_at(&self, b: &[u8], o: u64) -> io::Result<()> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.write_at(b, o)
            }
            fn len(&self) -> io::Result<u64> {
                self.0.len()
            }
            fn set_len(&self, l: u64) -> io::Result<()> {
                self.0.set_len(l)
            }
            fn flush(&self) -> io::Result<()> {
                Ok(())
            }
        }
        let dst = Counting::default();
        dst.set_len(4 << 20).unwrap();
        let data = vec![0xA5u8; 4096];
        let mut c = WriteCombiner::default();
        // 4 KiB written, 4 KiB not, over 2 MiB: two windows.
        for k in 0..256u64 {
            c.put(&dst, k * 8192, Payload::Bytes(&data)).unwrap();
        }
        c.flush(&dst).unwrap();
        assert_eq!(dst.1.load(std::sync::atomic::Ordering::Relaxed), 2);
        let v = dst.0.to_vec();
        assert!(v[..4096].iter().all(|&b| b == 0xA5));
        assert!(v[4096..8192].iter().all(|&b| b == 0));
    }
}
