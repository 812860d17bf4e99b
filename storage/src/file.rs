//! `FileStorage`: a real file, with an advisory `flock` held for its
//! lifetime. Positional I/O; writeback started ahead of the flush; long
//! copies and long aligned writes through an O_DIRECT handle
//! (`direct_writer`); copies between files of one reflink file system
//! cloned (`clone`), the rest moved by copy_file_range or the copy
//! pipeline (`copy`); holes (SEEK_DATA/SEEK_HOLE), `punch_hole`
//! (fallocate) and `prefetch` (POSIX_FADV_WILLNEED).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use crate::aligned::{direct_aligned, DIRECT_ALIGN};
use crate::clone::{detect_clones, CloneSupport};
use crate::copy::copy_overlapped;
use crate::direct_writer::DirectWriter;
use crate::traits::{Access, CopyRange, Storage};

/// A real file, with an advisory `flock` held for its lifetime.
#[derive(Debug)]
pub struct FileStorage {
    pub(crate) file: File,
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
    pub(crate) clones: CloneSupport,
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
    pub(crate) fn settle(&self) -> io::Result<()> {
        self.direct.as_ref().map_or(Ok(()), DirectWriter::settle)
    }

    /// Wait for the queued direct writes that overlap `[at, at + len)`.
    pub(crate) fn settle_overlapping(&self, at: u64, len: u64) -> io::Result<()> {
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

    pub(crate) fn lock(file: &File, access: Access) -> io::Result<()> {
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
    fn copy_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        let Some((head, body)) = self.clonable_part(src, range) else {
            return self.copy_bytes(src, range);
        };
        // The unaligned edges are copied; between them, the block-aligned
        // body is cloned (and what a refused clone leaves is copied too).
        // The three ranges are disjoint, so their order does not matter.
        if head > 0 {
            self.copy_bytes(src, range.part(0, head))?;
        }
        let cloned = self.clone_from(src, range.part(head, body))?;
        let at = head + cloned;
        if at < range.len {
            self.copy_bytes(src, range.skip(at))?;
        }
        Ok(())
    }
}

impl FileStorage {
    /// `copy_from` without clones: a long copy to an aligned offset goes
    /// through the direct writer, the rest through copy_file_range (an
    /// in-kernel copy) or, when that cannot, buffers.
    fn copy_bytes(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        let mut done = 0u64;
        // Long copies to an aligned offset skip the page cache: the data
        // goes from one reused buffer to the device instead of being
        // copied into fresh cache pages and written back later (on the
        // bench VM that copy into new pages was 90 % of a merge's CPU).
        // O_DIRECT changes only the path, not durability: `flush` is still
        // the barrier. Anything it refuses is copied the buffered way.
        if let Some(direct) = &self.direct {
            let body = range.len / DIRECT_ALIGN * DIRECT_ALIGN;
            if body >= DIRECT_MIN
                && range.dst_offset.is_multiple_of(DIRECT_ALIGN)
                && direct.copy(src, range.part(0, body)).is_ok()
            {
                done = body;
            }
        }
        // The kernel's copy and the buffered one read and write the file
        // behind the queue's back.
        if done < range.len {
            self.settle()?;
        }
        if done == 0 {
            if let Some(src_file) = src.as_file() {
                // So does the kernel read of another handle's file.
                if let Some(src_st) = src.as_any().and_then(|a| a.downcast_ref::<FileStorage>()) {
                    src_st.settle_overlapping(range.src_offset, range.len)?;
                }
                // A failure: the buffered copy below moves the rest (and
                // reports what really fails).
                let wrote = |at, n| self.wrote(at, n);
                (done, _) = self.kernel_copy(src_file, range, COPY_PIECE, wrote);
            }
        }
        if done < range.len {
            copy_overlapped(src, self, range.skip(done))?;
        }
        Ok(())
    }

    /// copy_file_range of `range` from `src` into this file, in calls of
    /// at most `piece` bytes, each call's bytes told to `moved(dst offset,
    /// n)`. Stops at a call that moves nothing or fails: the bytes moved,
    /// and that failure (the caller copies the rest).
    pub(crate) fn kernel_copy(
        &self,
        src: &File,
        range: CopyRange,
        piece: u64,
        mut moved: impl FnMut(u64, u64),
    ) -> (u64, Option<rustix::io::Errno>) {
        let mut done = 0u64;
        while done < range.len {
            let mut off_in = range.src_offset + done;
            let mut off_out = range.dst_offset + done;
            let want = (range.len - done).min(piece) as usize;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                &self.file,
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => break,
                Ok(n) => {
                    moved(range.dst_offset + done, n as u64);
                    done += n as u64;
                }
                Err(e) => return (done, Some(e)),
            }
        }
        (done, None)
    }
}

/// Shorter copies are not worth a second path.
const DIRECT_MIN: u64 = 1 << 20;
/// Shorter writes stay buffered: metadata sectors are read back soon, and
/// the write combiner's spans (up to 1 MiB, less a page) are the long ones.
const DIRECT_WRITE_MIN: u64 = 256 << 10;

/// `path` opened for O_DIRECT writes (the handle behind direct copies).
pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedBuf;
    use crate::fs::FsNamespace;
    use crate::mem::MemStorage;
    use crate::traits::Namespace;

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
        dst.copy_from(&src, CopyRange::new(512, 1024, len as u64))
            .unwrap();
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
        dst.copy_from(&src, CopyRange::new(10 << 20, 10 << 20, 10 << 20))
            .unwrap();
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
        let (_dir, path) = crate::testing::temp_file(b"");
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
        dst.copy_from(&src, CopyRange::new(0, (1 << 20) + 4096, len as u64))
            .unwrap();
        model[(1 << 20) + 4096..][..len].copy_from_slice(&bytes);
        // Unaligned destination: buffered all the way.
        dst.copy_from(&src, CopyRange::new(512, (9 << 20) + 512, (2 << 20) + 512))
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
        d.copy(&src, CopyRange::new(4096, 0, 3 << 20)).unwrap();
        let mut got = vec![0u8; 3 << 20];
        st.read_at(&mut got, 0).unwrap();
        assert!(got == bytes[4096..4096 + (3 << 20)]);
        // Its buffers are kept, and the next copy through them (with
        // their stale bytes) is exact too.
        d.copy(&src, CopyRange::new(8192, 4096, (2 << 20) + 4096))
            .unwrap();
        let mut got = vec![0u8; (2 << 20) + 4096];
        st.read_at(&mut got, 4096).unwrap();
        assert!(got == bytes[8192..8192 + (2 << 20) + 4096]);
        assert!(d.buffers_made() <= 3, "{d:?}");
    }

    #[test]
    fn long_aligned_writes_mix_with_buffered_ones_and_read_back_exactly() {
        let (_dir, path) = crate::testing::temp_file(&vec![0x11u8; 3 << 20]);
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
}
