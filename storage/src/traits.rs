//! The two traits everything that touches bytes goes through: [`Storage`]
//! (one file) and [`Namespace`] (the files of a chain), with what a
//! namespace is asked for ([`Access`]) and answers ([`EntryKind`]).

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::copy::copy_by_buffer;

/// What a copy moves: `len` bytes from `src_offset` in the source to
/// `dst_offset` in the destination. One value, because every copy path
/// (the trait's, the kernel's, clones, the direct writer, the crash
/// recorder's page sharing) splits it into parts the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRange {
    pub src_offset: u64,
    pub dst_offset: u64,
    pub len: u64,
}

impl CopyRange {
    pub const fn new(src_offset: u64, dst_offset: u64, len: u64) -> Self {
        CopyRange {
            src_offset,
            dst_offset,
            len,
        }
    }

    /// The `len` bytes that start `at` bytes into this range (both sides
    /// move together).
    pub const fn part(&self, at: u64, len: u64) -> Self {
        CopyRange::new(self.src_offset + at, self.dst_offset + at, len)
    }

    /// What is left after the first `at` bytes.
    pub const fn skip(&self, at: u64) -> Self {
        self.part(at, self.len - at)
    }

    /// Whether the source and destination ranges share a byte, were they
    /// in one file (a copy within a file must then not share or reorder
    /// pieces).
    pub const fn overlaps_itself(&self) -> bool {
        self.src_offset < self.dst_offset.saturating_add(self.len)
            && self.dst_offset < self.src_offset.saturating_add(self.len)
    }
}

/// One file: positional I/O, length and a durability barrier.
pub trait Storage: Send + Sync + Debug {
    /// Fill `buf` from `offset`. Bytes past the end of the file read as an
    /// `UnexpectedEof` error, never as silent zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`, extending the file when needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Durability barrier (fdatasync). Nothing written after the last flush
    /// is promised to survive a crash.
    fn flush(&self) -> io::Result<()>;

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Copy `range.len` bytes from `src` at `range.src_offset` to `self` at
    /// `range.dst_offset`. Implementations may use kernel copy offload; the
    /// default reads and writes in 4 MiB pieces.
    fn copy_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        copy_by_buffer(src, self, range)
    }

    /// The first allocated byte range at or after `offset`, as far as the
    /// storage knows: bytes outside every such range read as zeros (file
    /// system holes). `None`: nothing allocated from `offset` on. The
    /// default knows of no holes: everything up to the end is allocated.
    fn allocated_range(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        let len = self.len()?;
        Ok((offset < len).then_some(offset..len))
    }

    /// Give `[offset, offset + len)` back: afterwards it reads as zeros and
    /// (on a real file system) holds no blocks. The length never changes;
    /// the part past the end is ignored. Callers punch only ranges that no
    /// committed structure references, so for the crash model this is a
    /// write of zeros (durable at the next flush, tearable before). The
    /// default writes those zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.len()?);
        let zeros = vec![0u8; (1u64 << 20).min(end.saturating_sub(offset)) as usize];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            self.write_at(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }

    /// A hint that `[offset, offset + len)` will be read soon: a file
    /// starts reading it in the background (many small reads scattered
    /// over a cold file then queue at the device together instead of
    /// waiting one by one). Changes nothing. Default: nothing.
    fn prefetch(&self, _offset: u64, _len: u64) {}

    /// Whether copies into this storage share extents with their source
    /// (a reflink file system): writing only the bytes that changed then
    /// beats joining small pieces into long spans (see `combine`). Default:
    /// no.
    fn shares_extents(&self) -> bool {
        false
    }

    /// The real file behind this storage, for kernel copy offload.
    fn as_file(&self) -> Option<&File> {
        None
    }

    /// This storage as `Any`, so that an implementation can recognise a
    /// source of its own kind in `copy_from` (the simulator shares pages).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// How a file of a chain is opened: shared lock for reading, exclusive for
/// writing or merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    #[default]
    Read,
    Write,
}

/// What a path names, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Device, FIFO, socket: never opened as an image.
    Other,
    Missing,
}

/// The files of a chain: open with a lock, create, remove, rename and make
/// directory changes durable.
pub trait Namespace: Send + Sync + Debug {
    /// Open an existing file. Fails with `WouldBlock` when a conflicting
    /// lock is held. The lock lives as long as the returned storage.
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>>;
    /// Create a new, empty file (fails if it exists), locked exclusively.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>>;
    /// What `path` is, not following a final symlink.
    fn kind(&self, path: &Path) -> io::Result<EntryKind>;
    /// Resolve symlinks (only called when the user allowed following them).
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make creates, removes and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes an unprivileged writer may still allocate on the file system
    /// holding `dir` (statvfs `f_bavail * f_frsize`); `None` where the
    /// namespace has no such limit (memory).
    fn free_space(&self, dir: &Path) -> io::Result<Option<u64>> {
        let _ = dir;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::CopyRange;

    #[test]
    fn copy_range_parts_move_both_sides_and_overlap_is_symmetric() {
        let r = CopyRange::new(100, 1000, 50);
        assert_eq!(r.part(10, 5), CopyRange::new(110, 1010, 5));
        assert_eq!(r.skip(20), CopyRange::new(120, 1020, 30));
        assert_eq!(r.skip(50).len, 0);
        assert!(!r.overlaps_itself());
        assert!(CopyRange::new(100, 149, 50).overlaps_itself());
        assert!(CopyRange::new(149, 100, 50).overlaps_itself());
        assert!(!CopyRange::new(100, 150, 50).overlaps_itself());
        assert!(!CopyRange::new(150, 100, 50).overlaps_itself());
        assert!(!CopyRange::new(5, 5, 0).overlaps_itself());
        // Near the top of the address space the ends saturate, not wrap.
        assert!(CopyRange::new(u64::MAX - 1, u64::MAX - 2, 10).overlaps_itself());
    }
}
