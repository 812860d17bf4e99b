//! The storage model (DESIGN.md section 2).
//!
//! Everything that touches bytes goes through [`Storage`] (one file) and
//! [`Namespace`] (the files of a chain), so the same code runs on real files,
//! on memory, and on the simulator's crash storage. Code above this module
//! must never reach for `std::fs` directly: the crash simulator can only
//! judge what it can see.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::direct_writer::DirectWriter;

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

    /// Copy `len` bytes from `src` at `src_offset` to `self` at `dst_offset`.
    /// Implementations may use kernel copy offload; the default reads and
    /// writes in 4 MiB pieces.
    fn copy_from(
        &self,
        src: &dyn Storage,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        copy_by_buffer(src, self, src_offset, dst_offset, len)
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

/// A real file, with an advisory `flock` held for its lifetime.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// The same file opened with O_DIRECT, for long copies (`copy_from`,
    /// written behind the caller) and long aligned writes. Its ordering
    /// rules are in `direct_writer`; every method here that touches the
    /// file first waits for the queued writes it could see or overtake.
    direct: Option<DirectWriter>,
    /// Start writeback of written bytes early (see `WRITEBACK_AHEAD`).
    writeback_ahead: bool,
    /// Written bytes whose writeback has not been started yet.
    unsubmitted: Mutex<Unsubmitted>,
    /// Whether copies into this file can share extents with their source
    /// (reflink), found out at the first long copy from a file.
    clones: CloneSupport,
}

/// Queued direct writes land before the file, and with it the lock, is
/// closed: no other process that takes the lock next sees them arrive.
/// (Their errors are lost here; a batch always flushes, which reports them.)
impl Drop for FileStorage {
    fn drop(&mut self) {
        let _ = self.settle();
    }
}

/// Writes since writeback was last started: their count and the span they
/// lie in.
#[derive(Debug, Default)]
struct Unsubmitted {
    bytes: u64,
    lo: u64,
    hi: u64,
}

/// Start writeback after this many bytes written. A merge must flush its
/// payload before the commit, and the kernel's own writeback waits for
/// gigabytes of dirty pages (10 % of memory) before it starts, so without
/// this the whole payload is written back inside that one flush, after the
/// copy: the copy and the disk took turns instead of working together.
const WRITEBACK_AHEAD: u64 = 16 << 20;

/// The most one `copy_file_range` call moves, so that writeback of a long
/// copy starts while it goes on.
const COPY_PIECE: u64 = 8 << 20;

impl FileStorage {
    pub fn new(file: File) -> Self {
        FileStorage {
            file,
            direct: None,
            writeback_ahead: false,
            unsubmitted: Mutex::default(),
            clones: CloneSupport::default(),
        }
    }

    /// A file whose writes will end in a `flush`: start their writeback
    /// as they go. For a file that is never flushed (`convert` to raw, like
    /// `cp`, leaves its output to the page cache) this only costs time.
    pub fn with_writeback_ahead(file: File) -> Self {
        let mut st = FileStorage::new(file);
        st.writeback_ahead = true;
        st
    }

    /// Also write long copies through `direct`, the same file opened with
    /// O_DIRECT.
    pub fn with_direct_copies(mut self, direct: File) -> Self {
        self.direct = Some(DirectWriter::new(direct));
        self
    }

    /// Wait for the queued direct writes (all of them).
    fn settle(&self) -> io::Result<()> {
        self.direct.as_ref().map_or(Ok(()), DirectWriter::settle)
    }

    /// Wait for the queued direct writes that overlap `[at, at + len)`.
    fn settle_overlapping(&self, at: u64, len: u64) -> io::Result<()> {
        self.direct
            .as_ref()
            .map_or(Ok(()), |d| d.settle_overlapping(at, len))
    }

    /// Note `len` bytes written at `at`; past `WRITEBACK_AHEAD` of them,
    /// start their writeback without waiting for it. This is only a hint to
    /// the kernel: durability still comes from `flush` alone.
    fn wrote(&self, at: u64, len: u64) {
        if !self.writeback_ahead {
            return;
        }
        let span = {
            let mut u = self.unsubmitted.lock().unwrap_or_else(|e| e.into_inner());
            let end = at.saturating_add(len);
            if u.bytes == 0 {
                (u.lo, u.hi) = (at, end);
            } else {
                (u.lo, u.hi) = (u.lo.min(at), u.hi.max(end));
            }
            u.bytes += len;
            if u.bytes < WRITEBACK_AHEAD {
                return;
            }
            let span = (u.lo, u.hi);
            *u = Unsubmitted::default();
            span
        };
        // POSIX_FADV_DONTNEED first starts asynchronous writeback of the
        // range's dirty pages (Linux: WB_SYNC_NONE), then drops the pages
        // that are clean; pages just submitted are not clean yet and stay.
        // (sync_file_range says this more directly, but no safe binding of
        // it exists.) Failure only loses the head start.
        let _ = rustix::fs::fadvise(
            &self.file,
            span.0,
            std::num::NonZeroU64::new(span.1 - span.0),
            rustix::fs::Advice::DontNeed,
        );
    }

    fn lock(file: &File, access: Access) -> io::Result<()> {
        let r = match access {
            Access::Read => file.try_lock_shared(),
            Access::Write => file.try_lock(),
        };
        match r {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another process",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.settle_overlapping(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.settle_overlapping(offset, buf.len() as u64)?;
        // Long aligned writes (a batch's joined spans) skip the page cache
        // like long copies do (see `copy_from`); a refusal falls back to
        // the buffered write of the same bytes.
        if let Some(direct) = &self.direct {
            if buf.len() as u64 >= DIRECT_WRITE_MIN
                && direct_aligned(buf, offset)
                && direct.file().write_all_at(buf, offset).is_ok()
            {
                return Ok(());
            }
        }
        self.file.write_all_at(buf, offset)?;
        self.wrote(offset, buf.len() as u64);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.settle()?;
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.settle()?;
        self.file.set_len(len)
    }
    fn allocated_range(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        // SEEK_DATA / SEEK_HOLE move the shared file position, which no
        // read or write here uses (all are positional). A file system
        // without them reports the whole file as data.
        use rustix::fs::{seek, SeekFrom};
        let len = self.len()?; // (settles)
        if offset >= len {
            return Ok(None);
        }
        let start = match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(s) if s >= len => return Ok(None),
            Ok(s) => s.max(offset),
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            Err(_) => return Ok(Some(offset..len)),
        };
        let end = seek(&self.file, SeekFrom::Hole(start)).unwrap_or(len);
        Ok(Some(start..end.clamp(start + 1, len)))
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        let end = offset.saturating_add(len).min(self.len()?); // (settles)
        if end <= offset {
            return Ok(());
        }
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(&self.file, flags, offset, end - offset) {
            Ok(()) => Ok(()),
            // A file system without hole punching still reads zeros there
            // once written.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; (1u64 << 20).min(end - offset) as usize];
                let mut at = offset;
                while at < end {
                    let n = (end - at).min(zeros.len() as u64);
                    self.file.write_all_at(&zeros[..n as usize], at)?;
                    at += n;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn flush(&self) -> io::Result<()> {
        self.settle()?;
        self.file.sync_data()?;
        *self.unsubmitted.lock().unwrap_or_else(|e| e.into_inner()) = Unsubmitted::default();
        Ok(())
    }
    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // POSIX_FADV_WILLNEED queues the reads and returns; a failure only
        // loses the head start.
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::WillNeed,
        );
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn shares_extents(&self) -> bool {
        !self
            .clones
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            && self
                .clones
                .block
                .get_or_init(|| detect_clones(&self.file))
                .is_some()
    }

    /// Share extents with the source where the file system can (XFS with
    /// reflink, btrfs: see `clone_from`), and copy the rest: the kernel
    /// moves the bytes (copy_file_range) or, for long aligned copies, the
    /// direct writer does; large positional reads and writes when neither
    /// can.
    fn copy_from(
        &self,
        src: &dyn Storage,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let Some((head, body)) = self.clonable_part(src, src_offset, dst_offset, len) else {
            return self.copy_bytes(src, src_offset, dst_offset, len);
        };
        // The unaligned edges are copied; between them, the block-aligned
        // body is cloned (and what a refused clone leaves is copied too).
        // The three ranges are disjoint, so their order does not matter.
        if head > 0 {
            self.copy_bytes(src, src_offset, dst_offset, head)?;
        }
        let cloned = self.clone_from(src, src_offset + head, dst_offset + head, body)?;
        let (at, rest) = (head + cloned, len - head - cloned);
        if rest > 0 {
            self.copy_bytes(src, src_offset + at, dst_offset + at, rest)?;
        }
        Ok(())
    }
}

/// Whether a destination file can share extents with its sources: not
/// known yet, no, or yes with the file system's block size (clones need
/// offsets and lengths that are multiples of it).
#[derive(Debug, Default)]
struct CloneSupport {
    /// `Some(block)` when the file system shares extents, found out once.
    block: std::sync::OnceLock<Option<u64>>,
    /// A clone was refused (the file system said no after all): copy from
    /// now on.
    refused: std::sync::atomic::AtomicBool,
}

/// `statfs` f_type of the file systems whose copy_file_range shares
/// extents between files of one file system (a reflink) when the ranges
/// are block-aligned.
const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;
/// The most one clone call asks for (the kernel stops at 2 GiB anyway).
const CLONE_PIECE: u64 = 1 << 30;

impl FileStorage {
    /// For a copy from a real file on the same file system as this one,
    /// which can share extents: the unaligned head (bytes before the first
    /// block boundary of both ranges) and the block-aligned body to clone
    /// after it. `None`: copy it all (not a file, another file system, a
    /// file system that cannot share, ranges that are not congruent modulo
    /// the block size, overlapping ranges of one file, under one block).
    fn clonable_part(
        &self,
        src: &dyn Storage,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering;
        let src_file = src.as_file()?;
        if len < 4096 || self.clones.refused.load(Ordering::Relaxed) {
            return None;
        }
        let block = (*self.clones.block.get_or_init(|| detect_clones(&self.file)))?;
        if src_offset % block != dst_offset % block {
            return None;
        }
        let head = (block - dst_offset % block) % block;
        let body = len.checked_sub(head)? / block * block;
        if body == 0 {
            return None;
        }
        // One file system (reflinks never cross one), and within one file
        // the ranges must not overlap.
        let (s, d) = (
            rustix::fs::fstat(src_file).ok()?,
            rustix::fs::fstat(&self.file).ok()?,
        );
        if s.st_dev != d.st_dev {
            return None;
        }
        let same_file = s.st_ino == d.st_ino;
        if same_file && src_offset < dst_offset + len && dst_offset < src_offset + len {
            return None;
        }
        Some((head, body))
    }

    /// Clone `len` block-aligned bytes from `src` (a file on this file
    /// system) with copy_file_range, which the kernel turns into a reflink
    /// for aligned ranges on XFS and btrfs. Returns how many bytes it
    /// moved; the caller copies the rest. A refusal that says the file
    /// system cannot (EOPNOTSUPP, EXDEV, EINVAL, ETXTBSY) is remembered.
    fn clone_from(
        &self,
        src: &dyn Storage,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<u64> {
        use rustix::io::Errno;
        let Some(src_file) = src.as_file() else {
            return Ok(0);
        };
        // The kernel reads the source range and writes the destination
        // range behind both direct-write queues: queued writes there land
        // first (direct_writer's ordering rules). Writes queued elsewhere
        // may stay queued: their pages are not these.
        self.settle_overlapping(dst_offset, len)?;
        if let Some(src_st) = src.as_any().and_then(|a| a.downcast_ref::<FileStorage>()) {
            src_st.settle_overlapping(src_offset, len)?;
        }
        self.settle_overlapping(src_offset, len)?; // (one file: the source range)
        let mut done = 0u64;
        while done < len {
            let mut off_in = src_offset + done;
            let mut off_out = dst_offset + done;
            let want = (len - done).min(CLONE_PIECE) as usize;
            match rustix::fs::copy_file_range(
                src_file,
                Some(&mut off_in),
                &self.file,
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => break,
                Ok(n) => done += n as u64,
                Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::TXTBSY) => {
                    self.clones
                        .refused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                // Anything else: the copy that follows reports it.
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// `copy_from` without clones: a long copy to an aligned offset goes
    /// through the direct writer, the rest through copy_file_range (an
    /// in-kernel copy) or, when that cannot, buffers.
    fn copy_bytes(
        &self,
        src: &dyn Storage,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let mut done = 0u64;
        // Long copies to an aligned offset skip the page cache: the data
        // goes from one reused buffer to the device instead of being
        // copied into fresh cache pages and written back later (on the
        // bench VM that copy into new pages was 90 % of a merge's CPU).
        // O_DIRECT changes only the path, not durability: `flush` is still
        // the barrier. Anything it refuses is copied the buffered way.
        if let Some(direct) = &self.direct {
            let body = len / DIRECT_ALIGN * DIRECT_ALIGN;
            if body >= DIRECT_MIN
                && dst_offset.is_multiple_of(DIRECT_ALIGN)
                && direct.copy(src, src_offset, dst_offset, body).is_ok()
            {
                done = body;
            }
        }
        // The kernel's copy and the buffered one read and write the file
        // behind the queue's back.
        if done < len {
            self.settle()?;
        }
        if done == 0 {
            if let Some(src_file) = src.as_file() {
                // So does the kernel read of another handle's file.
                if let Some(src_st) = src.as_any().and_then(|a| a.downcast_ref::<FileStorage>()) {
                    src_st.settle_overlapping(src_offset, len)?;
                }
                while done < len {
                    let mut off_in = src_offset + done;
                    let mut off_out = dst_offset + done;
                    let want = (len - done).min(COPY_PIECE) as usize;
                    match rustix::fs::copy_file_range(
                        src_file,
                        Some(&mut off_in),
                        &self.file,
                        Some(&mut off_out),
                        want,
                    ) {
                        Ok(0) => break,
                        Ok(n) => {
                            self.wrote(dst_offset + done, n as u64);
                            done += n as u64;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if done < len {
            copy_overlapped(src, self, src_offset + done, dst_offset + done, len - done)?;
        }
        Ok(())
    }
}

/// Copy through two 2 MiB buffers, a second thread reading the next piece
/// while this one writes the last: the fallback for real files when the
/// kernel cannot move the bytes itself (another filesystem, a source that
/// is not a file). Writes stay on the calling thread, in order.
pub fn copy_overlapped<D: Storage + ?Sized>(
    src: &dyn Storage,
    dst: &D,
    src_offset: u64,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    if len <= PIECE {
        return copy_by_buffer(src, dst, src_offset, dst_offset, len);
    }
    copy_pipelined(src, src_offset, len, |buf, at| {
        dst.write_at(buf, dst_offset + at)
    })
}

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's
/// logical block; a page covers every device in use.
const DIRECT_ALIGN: u64 = 4096;
/// Shorter copies are not worth a second path.
const DIRECT_MIN: u64 = 1 << 20;
/// Shorter writes stay buffered: metadata sectors are read back soon, and
/// the write combiner's spans (up to 1 MiB, less a page) are the long ones.
const DIRECT_WRITE_MIN: u64 = 256 << 10;

/// Whether O_DIRECT can take `buf` at `offset` as it is.
fn direct_aligned(buf: &[u8], offset: u64) -> bool {
    let a = DIRECT_ALIGN as usize;
    (buf.as_ptr() as usize).is_multiple_of(a)
        && buf.len().is_multiple_of(a)
        && offset.is_multiple_of(DIRECT_ALIGN)
}
/// One piece of a pipelined copy.
const PIECE: u64 = 2 << 20;

/// A zeroed buffer whose start is aligned to `DIRECT_ALIGN`, so that
/// O_DIRECT takes it: the aligned window of a slightly larger vector
/// (which keeps its address when moved).
pub(crate) struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn zeroed(len: usize) -> Self {
        let a = DIRECT_ALIGN as usize;
        let bytes = vec![0u8; len + a];
        let start = (a - bytes.as_ptr() as usize % a) % a;
        AlignedBuf { bytes, start, len }
    }
    fn new() -> Self {
        Self::zeroed(PIECE as usize)
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
    fn piece(&mut self, n: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[..n]
    }
}

/// Read `src` in `PIECE`s on a second thread while this one hands the
/// previous piece to `write(bytes, offset from the start)`, in order.
fn copy_pipelined(
    src: &dyn Storage,
    src_offset: u64,
    len: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()> + Send,
) -> io::Result<()> {
    use std::sync::mpsc::sync_channel;
    // Read pieces (with their position) one way, emptied buffers back.
    let (full_tx, full_rx) = sync_channel::<io::Result<(AlignedBuf, u64)>>(1);
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(2);
    for _ in 0..2 {
        let _ = empty_tx.send(AlignedBuf::new());
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut at = 0;
            while at < len {
                // A closed channel: the writer stopped (on an error).
                let Ok(mut buf) = empty_rx.recv() else {
                    return;
                };
                let n = PIECE.min(len - at) as usize;
                let r = src
                    .read_at(buf.piece(n), src_offset + at)
                    .map(|()| (buf, at));
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        // The writer owns its channel ends, so returning early (an error)
        // closes them and the reader stops instead of waiting forever.
        let mut write_all = move || -> io::Result<()> {
            let mut done = 0;
            while done < len {
                let (mut buf, at) = full_rx
                    .recv()
                    .map_err(|_| io::Error::other("copy: the reading thread stopped"))??;
                let n = PIECE.min(len - at) as usize;
                write(buf.piece(n), at)?;
                done = at + n as u64;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        };
        let r = write_all();
        // Dropping the writer closes its channel ends: the reader returns.
        drop(write_all);
        let _ = reader.join();
        r
    })
}

/// Copy through a bounded buffer (4 MiB pieces).
pub fn copy_by_buffer<D: Storage + ?Sized>(
    src: &dyn Storage,
    dst: &D,
    src_offset: u64,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    const PIECE: u64 = 4 << 20;
    let mut buf = vec![0u8; PIECE.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = PIECE.min(len - done) as usize;
        src.read_at(&mut buf[..n], src_offset + done)?;
        dst.write_at(&buf[..n], dst_offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Whether `file`'s file system shares extents between its files, and its
/// block size (the clone granularity) if so. Asked once per destination:
/// statfs names a file system that can (XFS, btrfs), and a clone between
/// two unnamed temporary files beside `file` proves it does (an XFS made
/// without reflink says no here; there copy_file_range would only copy,
/// through the page cache). Anything that fails means no.
fn detect_clones(file: &File) -> Option<u64> {
    use rustix::fs::{fstatfs, ioctl_ficlone, open, Mode, OFlags};
    use std::os::fd::AsRawFd;
    let st = fstatfs(file).ok()?;
    #[allow(clippy::unnecessary_cast)]
    let (kind, bsize) = (st.f_type as u64, st.f_bsize as u64);
    if kind != XFS_SUPER_MAGIC && kind != BTRFS_SUPER_MAGIC {
        return None;
    }
    let block = if bsize.is_power_of_two() && (512..=(64 << 10)).contains(&bsize) {
        bsize.max(4096)
    } else {
        4096
    };
    // The directory the file is in, for the probe's temporary files
    // (O_TMPFILE: nameless, gone when closed).
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let dir = path.parent()?;
    let tmp = || {
        open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
    };
    let (a, b) = (File::from(tmp().ok()?), File::from(tmp().ok()?));
    a.write_all_at(&vec![0x5A; block as usize], 0).ok()?;
    ioctl_ficlone(&b, &a).ok()?;
    Some(block)
}

/// `path` opened for O_DIRECT writes (the handle behind direct copies).
fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsNamespace;

impl Namespace for FsNamespace {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Write)
            .open(path)?;
        FileStorage::lock(&file, access)?;
        // An existing image opened for writing changes only through
        // batches, and every batch ends in a flush.
        Ok(Arc::new(match access {
            Access::Write => {
                let st = FileStorage::with_writeback_ahead(file);
                // Without O_DIRECT (tmpfs, some network filesystems) long
                // copies simply stay buffered.
                match open_direct(path) {
                    Ok(direct) => st.with_direct_copies(direct),
                    Err(_) => st,
                }
            }
            Access::Read => FileStorage::new(file),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        FileStorage::lock(&file, Access::Write)?;
        Ok(Arc::new(FileStorage::new(file)))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                let t = m.file_type();
                Ok(if t.is_symlink() {
                    EntryKind::Symlink
                } else if t.is_file() {
                    EntryKind::File
                } else if t.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::Other
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EntryKind::Missing),
            Err(e) => Err(e),
        }
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.path());
        }
        out.sort();
        Ok(out)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(d)?.sync_all()
    }
    fn free_space(&self, dir: &Path) -> io::Result<Option<u64>> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let s = rustix::fs::statvfs(dir)?;
        #[allow(clippy::unnecessary_cast)]
        Ok(Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64)))
    }
}

/// An in-memory file.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: Mutex<Vec<u8>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_vec(v: Vec<u8>) -> Self {
        MemStorage {
            data: Mutex::new(v),
        }
    }
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > d.len() as u64 {
            return Err(eof());
        }
        buf.copy_from_slice(&d[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= usize::MAX as u64 / 2)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write offset too large"))?;
        if end as usize > d.len() {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > usize::MAX as u64 / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length too large",
            ));
        }
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// An in-memory directory tree of files, with the same lock rules as files.
#[derive(Debug, Default)]
pub struct MemNamespace {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    files: HashMap<PathBuf, Arc<MemStorage>>,
    locks: LockTable<PathBuf>,
}

/// The advisory locks of an in-memory namespace, keyed by file, as `flock`
/// behaves between open handles: any number of shared holders, or one
/// exclusive. Every in-memory namespace (this one, the simulator's
/// recording one, the fuzzers' sparse one) keeps its locks here.
#[derive(Debug)]
pub struct LockTable<K> {
    /// key -> (shared holders, exclusive held)
    held: HashMap<K, (usize, bool)>,
}

impl<K> Default for LockTable<K> {
    fn default() -> Self {
        LockTable {
            held: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> LockTable<K> {
    /// Take a lock for `access`, or fail with `WouldBlock` as a
    /// conflicting `flock` would.
    pub fn take(&mut self, key: K, access: Access) -> io::Result<()> {
        let l = self.held.entry(key).or_default();
        let free = match access {
            Access::Read => !l.1,
            Access::Write => !l.1 && l.0 == 0,
        };
        if !free {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another handle",
            ));
        }
        match access {
            Access::Read => l.0 += 1,
            Access::Write => l.1 = true,
        }
        Ok(())
    }

    /// Give back a lock `take` granted (a handle's drop).
    pub fn release(&mut self, key: &K, access: Access) {
        if let Some(l) = self.held.get_mut(key) {
            match access {
                Access::Read => l.0 = l.0.saturating_sub(1),
                Access::Write => l.1 = false,
            }
        }
    }
}

/// A lock-holding handle onto a shared in-memory file.
#[derive(Debug)]
struct MemHandle {
    path: PathBuf,
    file: Arc<MemStorage>,
    access: Access,
    ns: Arc<MemNamespace>,
}

impl Drop for MemHandle {
    fn drop(&mut self) {
        let mut inner = self.ns.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.locks.release(&self.path, self.access);
    }
}

impl Storage for MemHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.access == Access::Read {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        self.file.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.access == Access::Read {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        self.file.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

impl MemNamespace {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Put a file with the given bytes at `path` (test setup).
    pub fn insert(&self, path: impl Into<PathBuf>, bytes: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .files
            .insert(path.into(), Arc::new(MemStorage::from_vec(bytes)));
    }

    /// The bytes of the file at `path`.
    pub fn get(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.files.get(path).map(|f| f.to_vec())
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = inner.files.keys().cloned().collect();
        v.sort();
        v
    }

    fn take_lock(inner: &mut MemInner, path: &Path, access: Access) -> io::Result<()> {
        inner.locks.take(path.to_path_buf(), access)
    }
}

/// `Namespace` is implemented on `Arc<MemNamespace>` so that handles can
/// release their locks when dropped.
impl Namespace for Arc<MemNamespace> {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let file = inner
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        MemNamespace::take_lock(&mut inner, path, access)?;
        Ok(Arc::new(MemHandle {
            path: path.to_path_buf(),
            file,
            access,
            ns: Arc::clone(self),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.files.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let file = Arc::new(MemStorage::new());
        inner.files.insert(path.to_path_buf(), Arc::clone(&file));
        MemNamespace::take_lock(&mut inner, path, Access::Write)?;
        Ok(Arc::new(MemHandle {
            path: path.to_path_buf(),
            file,
            access: Access::Write,
            ns: Arc::clone(self),
        }))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.files.contains_key(path) {
            Ok(EntryKind::File)
        } else if inner.files.keys().any(|p| p.starts_with(path)) {
            Ok(EntryKind::Dir)
        } else {
            Ok(EntryKind::Missing)
        }
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = inner
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        v.sort();
        Ok(v)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let f = inner
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        inner.files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holes in a sparse file are reported as such (where the file system
    /// can tell), and every written byte lies inside a reported range.
    #[test]
    fn allocated_ranges_cover_every_written_byte() {
        let f = tempfile::tempfile().unwrap();
        let len = 64u64 << 20;
        f.set_len(len).unwrap();
        let s = FileStorage::new(f);
        let written = [(4u64 << 20, 4096u64), (40 << 20, 1 << 20), (len - 10, 10)];
        for &(at, n) in &written {
            s.write_at(&vec![0xA5; n as usize], at).unwrap();
        }
        let mut ranges = Vec::new();
        let mut at = 0;
        while let Some(r) = s.allocated_range(at).unwrap() {
            assert!(
                r.start >= at && r.end > r.start && r.end <= len,
                "{r:?} from {at}"
            );
            at = r.end;
            ranges.push(r);
        }
        for &(off, n) in &written {
            for b in [off, off + n - 1] {
                assert!(
                    ranges.iter().any(|r| r.contains(&b)),
                    "byte {b} not in {ranges:?}"
                );
            }
        }
        assert_eq!(s.allocated_range(len).unwrap(), None);
        // The default (no hole information): everything is allocated.
        let m = MemStorage::from_vec(vec![1; 100]);
        assert_eq!(m.allocated_range(10).unwrap(), Some(10..100));
        assert_eq!(m.allocated_range(100).unwrap(), None);
    }

    /// Memory that fails every read or write reaching past `.1`.
    #[derive(Debug)]
    struct Failing(MemStorage, u64);
    impl Storage for Failing {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            if offset + buf.len() as u64 > self.1 {
                return Err(io::Error::other("injected read error"));
            }
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if offset + buf.len() as u64 > self.1 {
                return Err(io::Error::other("injected write error"));
            }
            self.0.write_at(buf, offset)
        }
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn file_copy_from_a_non_file_source_copies_every_byte() {
        // Not a file: copy_file_range cannot be used, the overlapped
        // fallback moves the bytes (several pieces and a partial last one).
        let len = (9 << 20) + 4096;
        let bytes: Vec<u8> = (0..len + 512).map(|i| (i * 31 % 253) as u8).collect();
        let src = MemStorage::from_vec(bytes.clone());
        let f = tempfile::tempfile().unwrap();
        let dst = FileStorage::new(f);
        dst.write_at(&[7u8; 1024], 0).unwrap();
        dst.copy_from(&src, 512, 1024, len as u64).unwrap();
        let mut got = vec![0u8; len + 1024];
        dst.read_at(&mut got, 0).unwrap();
        assert_eq!(&got[..1024], &[7u8; 1024][..]);
        assert_eq!(&got[1024..], &bytes[512..512 + len]);
    }

    #[test]
    fn writeback_ahead_starts_past_its_threshold_and_changes_no_byte() {
        let pending = |s: &FileStorage| s.unsubmitted.lock().map(|u| u.bytes).unwrap_or(0);
        let bytes: Vec<u8> = (0..(20u32 << 20)).map(|i| (i * 31 % 253) as u8).collect();
        let src_file = tempfile::tempfile().unwrap();
        let src = FileStorage::new(src_file);
        src.write_at(&bytes, 0).unwrap();
        // A file that is never flushed does not track its writes.
        assert_eq!(pending(&src), 0);
        let dst = FileStorage::with_writeback_ahead(tempfile::tempfile().unwrap());
        dst.write_at(&bytes[..10 << 20], 0).unwrap();
        assert_eq!(pending(&dst), 10 << 20);
        // Through copy_file_range: past 16 MiB the writeback is started
        // and the count begins again.
        dst.copy_from(&src, 10 << 20, 10 << 20, 10 << 20).unwrap();
        assert!(pending(&dst) < WRITEBACK_AHEAD, "{}", pending(&dst));
        dst.write_at(&bytes[..4096], 40 << 20).unwrap();
        assert!(pending(&dst) > 0);
        dst.flush().unwrap();
        assert_eq!(pending(&dst), 0);
        let mut got = vec![0u8; 20 << 20];
        dst.read_at(&mut got, 0).unwrap();
        assert!(got == bytes);
    }

    #[test]
    fn direct_copies_mix_with_buffered_writes_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dst");
        std::fs::write(&path, b"").unwrap();
        let ns = FsNamespace;
        let len = (5 << 20) + 1000;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        let src = MemStorage::from_vec(bytes.clone());
        let dst = ns.open(&path, Access::Write).unwrap();
        let mut model = vec![0u8; 16 << 20];
        // Dirty buffered pages that the direct copy then overwrites in part.
        dst.write_at(&[0xEE; 8192], 1 << 20).unwrap();
        model[1 << 20..(1 << 20) + 8192].fill(0xEE);
        // Aligned: a direct body and a buffered tail.
        dst.copy_from(&src, 0, (1 << 20) + 4096, len as u64)
            .unwrap();
        model[(1 << 20) + 4096..][..len].copy_from_slice(&bytes);
        // Unaligned destination: buffered all the way.
        dst.copy_from(&src, 512, (9 << 20) + 512, (2 << 20) + 512)
            .unwrap();
        model[(9 << 20) + 512..][..(2 << 20) + 512].copy_from_slice(&bytes[512..(2 << 20) + 1024]);
        dst.flush().unwrap();
        let end = (9 << 20) + 512 + (2 << 20) + 512;
        assert_eq!(dst.len().unwrap(), end as u64);
        let mut got = vec![0u8; end];
        dst.read_at(&mut got, 0).unwrap();
        assert!(got == model[..end], "contents differ");
        // And another handle, after the last one is gone, reads the same.
        drop(dst);
        assert!(std::fs::read(&path).unwrap() == model[..end]);
        // The direct path itself works here (copy_from would hide a
        // refusal behind its buffered fallback).
        let direct = match open_direct(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "skipping the direct-path check: {} refuses O_DIRECT: {e}",
                    path.display()
                );
                return;
            }
        };
        let st = FileStorage::new(OpenOptions::new().read(true).open(&path).unwrap())
            .with_direct_copies(direct);
        let d = st.direct.as_ref().unwrap();
        // The first copy is written in place, the second one queued.
        d.copy(&src, 4096, 0, 3 << 20).unwrap();
        let mut got = vec![0u8; 3 << 20];
        st.read_at(&mut got, 0).unwrap();
        assert!(got == bytes[4096..4096 + (3 << 20)]);
        // Its buffers are kept, and the next copy through them (with
        // their stale bytes) is exact too.
        d.copy(&src, 8192, 4096, (2 << 20) + 4096).unwrap();
        let mut got = vec![0u8; (2 << 20) + 4096];
        st.read_at(&mut got, 4096).unwrap();
        assert!(got == bytes[8192..8192 + (2 << 20) + 4096]);
        assert!(d.buffers_made() <= 3, "{d:?}");
    }

    #[test]
    fn long_aligned_writes_mix_with_buffered_ones_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dst");
        std::fs::write(&path, vec![0x11u8; 3 << 20]).unwrap();
        let dst = FsNamespace.open(&path, Access::Write).unwrap();
        let mut model = vec![0x11u8; 3 << 20];
        // Dirty cached pages under the long write, and one just past it.
        dst.write_at(&[0xEE; 8192], 4096).unwrap();
        dst.write_at(&[0xDD; 512], (1 << 20) + 4096).unwrap();
        model[(1 << 20) + 4096..][..512].fill(0xDD);
        let mut aligned = AlignedBuf::zeroed(1 << 20);
        assert!(direct_aligned(aligned.as_slice(), 0));
        for (i, b) in aligned.as_mut_slice().iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        dst.write_at(aligned.as_slice(), 4096).unwrap();
        model[4096..][..1 << 20].copy_from_slice(aligned.as_slice());
        // Misaligned in memory: the buffered path, same result.
        let odd = &aligned.as_slice()[512..512 + (512 << 10)];
        dst.write_at(odd, 2 << 20).unwrap();
        model[2 << 20..][..512 << 10].copy_from_slice(odd);
        // A short write over part of what went direct.
        dst.write_at(&[0xCC; 1000], 8192).unwrap();
        model[8192..9192].fill(0xCC);
        let mut got = vec![0u8; 3 << 20];
        dst.read_at(&mut got, 0).unwrap();
        assert!(got == model, "contents differ through the same handle");
        dst.flush().unwrap();
        drop(dst);
        assert!(
            std::fs::read(&path).unwrap() == model,
            "contents differ on disk"
        );
    }

    #[test]
    fn overlapped_copy_reports_either_side_failing_and_returns() {
        // A failing read, then a failing write: each is reported, and
        // neither leaves the other thread waiting (the test would hang).
        let src = Failing(MemStorage::from_vec(vec![1u8; 12 << 20]), 5 << 20);
        let e = copy_overlapped(&src, &MemStorage::new(), 0, 0, 12 << 20).unwrap_err();
        assert!(e.to_string().contains("injected read"), "{e}");
        let src = MemStorage::from_vec(vec![1u8; 12 << 20]);
        let dst = Failing(MemStorage::new(), 5 << 20);
        let e = copy_overlapped(&src, &dst, 0, 0, 12 << 20).unwrap_err();
        assert!(e.to_string().contains("injected write"), "{e}");
    }

    #[test]
    fn mem_storage_reads_past_end_fail() {
        let s = MemStorage::new();
        s.write_at(b"abc", 2).unwrap();
        assert_eq!(s.len().unwrap(), 5);
        let mut b = [0u8; 4];
        assert!(s.read_at(&mut b, 2).is_err());
        let mut b = [9u8; 5];
        s.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, &[0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn mem_namespace_locks_conflict_and_release() {
        let ns = MemNamespace::new();
        ns.insert("/d/a", vec![1, 2, 3]);
        let p = Path::new("/d/a");
        let r1 = ns.open(p, Access::Read).unwrap();
        let _r2 = ns.open(p, Access::Read).unwrap();
        assert_eq!(
            ns.open(p, Access::Write).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(r1);
        drop(_r2);
        let w = ns.open(p, Access::Write).unwrap();
        assert_eq!(
            ns.open(p, Access::Read).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(w);
        ns.open(p, Access::Read).unwrap();
    }

    #[test]
    fn file_locks_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"hello").unwrap();
        let w = FsNamespace.open(&p, Access::Write).unwrap();
        assert_eq!(
            FsNamespace.open(&p, Access::Read).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(w);
        FsNamespace.open(&p, Access::Read).unwrap();
    }
}

/// The redo-journal file beside an image (`<image>.cfjournal`), used by the
/// fixed-VHD merge commit. Carries the namespace so the driver can create,
/// sync and remove it with directory durability.
#[derive(Debug, Clone)]
pub struct JournalSlot {
    pub ns: Arc<dyn Namespace>,
    pub path: PathBuf,
}

impl JournalSlot {
    pub fn for_image(ns: Arc<dyn Namespace>, image: &Path) -> Self {
        let mut p = image.as_os_str().to_owned();
        p.push(".cfjournal");
        JournalSlot {
            ns,
            path: PathBuf::from(p),
        }
    }
    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
    /// The journal, if one exists.
    pub fn open_existing(&self, access: Access) -> io::Result<Option<Arc<dyn Storage>>> {
        match self.ns.kind(&self.path)? {
            EntryKind::File => Ok(Some(self.ns.open(&self.path, access)?)),
            EntryKind::Missing => Ok(None),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "journal path is not a regular file",
            )),
        }
    }
    /// Create a fresh journal (removing a stale one) and make the name durable.
    pub fn create(&self) -> io::Result<Arc<dyn Storage>> {
        if self.ns.kind(&self.path)? != EntryKind::Missing {
            self.ns.remove(&self.path)?;
        }
        let s = self.ns.create(&self.path)?;
        self.ns.sync_dir(&self.dir())?;
        Ok(s)
    }
    /// Remove the journal and make the removal durable.
    pub fn remove(&self) -> io::Result<()> {
        if self.ns.kind(&self.path)? != EntryKind::Missing {
            self.ns.remove(&self.path)?;
            self.ns.sync_dir(&self.dir())?;
        }
        Ok(())
    }
}
