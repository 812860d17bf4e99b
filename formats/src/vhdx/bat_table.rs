//! `BlockAllocationTable`: a VHDX BAT in memory, held in chunks of 4096
//! entries where a chunk of zero entries (NOT_PRESENT, no offset) takes
//! no memory.
//!
//! Why chunks: a 64 TiB VHDX with 32 MiB blocks has two million entries
//! (16 MiB), and a differencing one that holds a gigabyte has a few dozen
//! that are not zero. Held flat, every open would fault in and zero the
//! whole table, and every scan would walk it; held in chunks, the memory
//! and the scans follow the entries that say something, and reading skips
//! the parts of the region the file system reports as holes.

use super::bat::{self, BatEntry};
use crate::error::IoContext;
use crate::{Result, Storage};

/// Entries per chunk: 32 KiB, eight 4 KiB BAT sectors.
pub const CHUNK_ENTRIES: usize = 4096;
const CHUNK_BYTES: u64 = CHUNK_ENTRIES as u64 * 8;
/// Chunks read per call inside an allocated part of the region.
const READ_CHUNKS: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct BlockAllocationTable {
    len: usize,
    /// `None`: every entry of the chunk is zero.
    chunks: Vec<Option<Box<[BatEntry]>>>,
}

impl BlockAllocationTable {
    /// `len` zero entries.
    pub fn zeroed(len: usize) -> Self {
        BlockAllocationTable {
            len,
            chunks: vec![None; len.div_ceil(CHUNK_ENTRIES)],
        }
    }

    pub fn from_entries(entries: &[BatEntry]) -> Self {
        let mut t = Self::zeroed(entries.len());
        for (c, piece) in entries.chunks(CHUNK_ENTRIES).enumerate() {
            t.chunks[c] = held(piece);
        }
        t
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<BatEntry> {
        if i >= self.len {
            return None;
        }
        Some(match &self.chunks[i / CHUNK_ENTRIES] {
            Some(c) => c[i % CHUNK_ENTRIES],
            None => BatEntry::default(),
        })
    }

    /// Set entry `i`; false (and nothing changes) past the end.
    pub fn set(&mut self, i: usize, e: BatEntry) -> bool {
        if i >= self.len {
            return false;
        }
        let c = i / CHUNK_ENTRIES;
        let chunk_len = self.chunk_len(c);
        match &mut self.chunks[c] {
            Some(chunk) => chunk[i % CHUNK_ENTRIES] = e,
            None if e.raw == 0 => {}
            slot @ None => {
                let mut chunk = vec![BatEntry::default(); chunk_len].into_boxed_slice();
                chunk[i % CHUNK_ENTRIES] = e;
                *slot = Some(chunk);
            }
        }
        true
    }

    /// The index of the first entry at or after `from` with any of `mask`'s
    /// bits set; chunks of zero entries are skipped whole.
    pub fn first_with_bits(&self, from: usize, mask: u64) -> Option<usize> {
        let mut at = from;
        while at < self.len {
            let c = at / CHUNK_ENTRIES;
            let base = c * CHUNK_ENTRIES;
            if let Some(chunk) = &self.chunks[c] {
                if let Some(k) = bat::first_with_bits(chunk, at - base, mask) {
                    return Some(base + k);
                }
            }
            at = base + CHUNK_ENTRIES;
        }
        None
    }

    /// Every entry in order, zero ones included.
    pub fn iter(&self) -> impl Iterator<Item = BatEntry> + '_ {
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let n = self.chunk_len(c);
            (0..n).map(move |k| chunk.as_ref().map_or(BatEntry::default(), |v| v[k]))
        })
    }

    pub fn to_vec(&self) -> Vec<BatEntry> {
        self.iter().collect()
    }

    /// Chunks that hold memory (tests and memory accounting).
    pub fn held_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }

    fn chunk_len(&self, c: usize) -> usize {
        (self.len - c * CHUNK_ENTRIES).min(CHUNK_ENTRIES)
    }

    /// Read `entries` entries at `offset` of `view`. The caller has checked
    /// that they lie inside the file. Only the allocated parts of the
    /// region are read (a hole reads as zeros, which is what a `None`
    /// chunk means), and only chunks with an entry that is not zero keep
    /// memory, so what this allocates follows the data, not the field.
    pub(crate) fn read(view: &dyn Storage, name: &str, offset: u64, entries: u64) -> Result<Self> {
        let len = usize::try_from(entries).unwrap_or(usize::MAX);
        let mut t = Self::zeroed(len);
        let need = entries.saturating_mul(8);
        let mut buf = vec![0u8; (READ_CHUNKS as u64 * CHUNK_BYTES).min(need) as usize];
        let mut at = 0u64;
        while at < need {
            let Some(data) = view.allocated_range(offset + at).ctx(name)? else {
                break;
            };
            // The chunks that overlap the allocated range, read whole.
            let start = data.start.max(offset + at) - offset;
            if start >= need {
                break;
            }
            // At least one chunk per step, whatever the storage answers.
            let end = data.end.saturating_sub(offset).min(need).max(start + 1);
            let mut c = (start / CHUNK_BYTES) as usize;
            let last = end.div_ceil(CHUNK_BYTES) as usize;
            while c < last {
                let n = (last - c).min(READ_CHUNKS);
                let from = c as u64 * CHUNK_BYTES;
                let bytes = (n as u64 * CHUNK_BYTES).min(need - from) as usize;
                view.read_at(&mut buf[..bytes], offset + from).ctx(name)?;
                for (k, piece) in buf[..bytes].chunks(CHUNK_BYTES as usize).enumerate() {
                    // Zero chunks are recognised in the bytes: no allocation.
                    t.chunks[c + k] = (piece.iter().fold(0, |a, &b| a | b) != 0).then(|| {
                        piece
                            .chunks_exact(8)
                            .map(|b| BatEntry {
                                raw: u64::from_le_bytes([
                                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                                ]),
                            })
                            .collect()
                    });
                }
                c += n;
            }
            at = last as u64 * CHUNK_BYTES;
        }
        Ok(t)
    }
}

/// A chunk's entries, or `None` when all are zero.
fn held(entries: &[BatEntry]) -> Option<Box<[BatEntry]>> {
    if entries.iter().fold(0, |acc, e| acc | e.raw) == 0 {
        None
    } else {
        Some(entries.into())
    }
}

/// Tables are equal when their entries are, however they are held.
impl PartialEq for BlockAllocationTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for BlockAllocationTable {}

/// A BAT already in memory for a file, with the region it was read from.
pub(crate) struct KnownBat {
    pub region: (u64, u64),
    pub entries: BlockAllocationTable,
}

impl BlockAllocationTable {
    /// Open step: the `total_entries` entries of the BAT at `region`:
    /// `known`'s when it describes the same region and entry count, else
    /// read from `storage`.
    pub(crate) fn load(
        storage: &dyn Storage,
        name: &str,
        region: (u64, u64),
        total_entries: u64,
        known: Option<KnownBat>,
    ) -> Result<Self> {
        match known {
            Some(k) if k.region == region && k.entries.len() as u64 == total_entries => {
                Ok(k.entries)
            }
            _ => Self::read(storage, name, region.0, total_entries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn entry(raw: u64) -> BatEntry {
        BatEntry { raw }
    }

    #[test]
    fn zero_chunks_hold_no_memory_and_read_as_zero() {
        let mut t = BlockAllocationTable::zeroed(3 * CHUNK_ENTRIES + 5);
        assert_eq!(t.held_chunks(), 0);
        assert_eq!(t.get(3 * CHUNK_ENTRIES + 4), Some(BatEntry::default()));
        assert_eq!(t.get(3 * CHUNK_ENTRIES + 5), None);
        assert!(t.set(10, BatEntry::default()));
        assert_eq!(t.held_chunks(), 0);
        assert!(t.set(3 * CHUNK_ENTRIES + 4, entry(6)));
        assert_eq!(t.held_chunks(), 1);
        assert!(!t.set(3 * CHUNK_ENTRIES + 5, entry(6)));
        assert_eq!(t.to_vec().len(), 3 * CHUNK_ENTRIES + 5);
        assert_eq!(t.first_with_bits(0, 7), Some(3 * CHUNK_ENTRIES + 4));
    }

    #[test]
    fn first_with_bits_matches_a_linear_search() {
        let n = 2 * CHUNK_ENTRIES + 100;
        let mut v = vec![BatEntry::default(); n];
        for &i in &[0, 63, 64, 4095, 4096, 5000, 2 * CHUNK_ENTRIES + 99] {
            v[i] = entry(if i % 2 == 0 { 6 } else { 1 << 20 });
        }
        let t = BlockAllocationTable::from_entries(&v);
        assert_eq!(t.to_vec(), v);
        for mask in [7, u64::MAX, 1 << 20] {
            for from in 0..=n + 1 {
                let want = (from..n).find(|&i| v[i].raw & mask != 0);
                assert_eq!(
                    t.first_with_bits(from, mask),
                    want,
                    "from {from} mask {mask:#x}"
                );
            }
        }
    }

    #[test]
    fn read_keeps_only_chunks_that_are_not_zero() {
        let n = 5 * CHUNK_ENTRIES + 7;
        let offset = 1 << 20;
        let mut v = vec![BatEntry::default(); n];
        v[1] = entry(6 | (3 << 20));
        v[4 * CHUNK_ENTRIES] = entry(2);
        v[n - 1] = entry(7 | (9 << 20));
        let mut bytes = vec![0u8; offset as usize + n * 8 + 100];
        for (i, e) in v.iter().enumerate() {
            let at = offset as usize + i * 8;
            bytes[at..at + 8].copy_from_slice(&e.raw.to_le_bytes());
        }
        let s = MemStorage::from_vec(bytes);
        let t = BlockAllocationTable::read(&s, "t.vhdx", offset, n as u64).unwrap();
        assert_eq!(t.len(), n);
        assert_eq!(t.held_chunks(), 3);
        assert_eq!(t.to_vec(), v);
    }

    /// Storage that knows one allocated range and refuses reads that do not
    /// touch it: the read must not spend time on what it knows are holes.
    #[derive(Debug)]
    struct OneExtent(MemStorage, std::ops::Range<u64>);
    impl Storage for OneExtent {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let end = offset + buf.len() as u64;
            if end <= self.1.start || offset >= self.1.end {
                return Err(std::io::Error::other(format!(
                    "read of a hole at {offset:#x}"
                )));
            }
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn allocated_range(&self, offset: u64) -> std::io::Result<Option<std::ops::Range<u64>>> {
            Ok((offset < self.1.end).then(|| self.1.start.max(offset)..self.1.end))
        }
    }

    #[test]
    fn read_skips_reported_holes() {
        let n = 64 * CHUNK_ENTRIES;
        let offset = 1u64 << 20;
        let at = offset + 30 * CHUNK_BYTES + 100 * 8;
        let mut bytes = vec![0u8; (offset + n as u64 * 8) as usize];
        bytes[at as usize..at as usize + 8].copy_from_slice(&(6u64 | 5 << 20).to_le_bytes());
        let s = OneExtent(MemStorage::from_vec(bytes), at..at + 4096);
        let t = BlockAllocationTable::read(&s, "holes.vhdx", offset, n as u64).unwrap();
        assert_eq!(t.held_chunks(), 1);
        assert_eq!(t.first_with_bits(0, 7), Some(30 * CHUNK_ENTRIES + 100));
        assert_eq!(
            t.get(30 * CHUNK_ENTRIES + 100).unwrap().file_offset(),
            5 << 20
        );
    }

    /// On a real sparse file the read skips the holes the file system
    /// reports, and what it returns is still every entry of the region.
    #[test]
    fn read_of_a_sparse_file_equals_the_entries() {
        use crate::storage::FileStorage;
        let n = 40 * CHUNK_ENTRIES;
        let offset = 1u64 << 20;
        let mut v = vec![BatEntry::default(); n];
        // Data in a few places, one of them straddling a chunk boundary.
        for &i in &[
            3,
            CHUNK_ENTRIES - 1,
            CHUNK_ENTRIES,
            17 * CHUNK_ENTRIES + 9,
            n - 1,
        ] {
            v[i] = entry(6 | ((i as u64 + 1) << 20));
        }
        let f = tempfile::tempfile().unwrap();
        f.set_len(offset + n as u64 * 8 + (1 << 20)).unwrap();
        let s = FileStorage::new(f);
        for (i, e) in v.iter().enumerate() {
            if e.raw != 0 {
                s.write_at(&e.raw.to_le_bytes(), offset + i as u64 * 8)
                    .unwrap();
            }
        }
        let t = BlockAllocationTable::read(&s, "sparse.vhdx", offset, n as u64).unwrap();
        assert_eq!(t.to_vec(), v);
        assert!(t.held_chunks() <= 4, "{} chunks held", t.held_chunks());
    }
}
