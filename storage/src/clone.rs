//! Clones: a copy between files of one file system that shares extents
//! (XFS with reflink, btrfs) clones the block-aligned middle of congruent
//! ranges instead of moving bytes. Support is probed once per destination
//! (`detect_clones`: statfs, then FICLONE between two O_TMPFILEs beside
//! it) and given up for good at the first refusal.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::file::FileStorage;
use crate::traits::{CopyRange, Storage};

/// Whether a destination file can share extents with its sources: not
/// known yet, no, or yes with the file system's block size (clones need
/// offsets and lengths that are multiples of it).
#[derive(Debug, Default)]
pub(crate) struct CloneSupport {
    /// `Some(block)` when the file system shares extents, found out once.
    pub(crate) block: std::sync::OnceLock<Option<u64>>,
    /// A clone was refused (the file system said no after all): copy from
    /// now on.
    pub(crate) refused: std::sync::atomic::AtomicBool,
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
    pub(crate) fn clonable_part(&self, src: &dyn Storage, range: CopyRange) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering;
        let src_file = src.as_file()?;
        if range.len < 4096 || self.clones.refused.load(Ordering::Relaxed) {
            return None;
        }
        let block = (*self.clones.block.get_or_init(|| detect_clones(&self.file)))?;
        if range.src_offset % block != range.dst_offset % block {
            return None;
        }
        let head = (block - range.dst_offset % block) % block;
        let body = range.len.checked_sub(head)? / block * block;
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
        if s.st_ino == d.st_ino && range.overlaps_itself() {
            return None;
        }
        Some((head, body))
    }

    /// Clone `len` block-aligned bytes from `src` (a file on this file
    /// system) with copy_file_range, which the kernel turns into a reflink
    /// for aligned ranges on XFS and btrfs. Returns how many bytes it
    /// moved; the caller copies the rest. A refusal that says the file
    /// system cannot (EOPNOTSUPP, EXDEV, EINVAL, ETXTBSY) is remembered.
    pub(crate) fn clone_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<u64> {
        use rustix::io::Errno;
        let Some(src_file) = src.as_file() else {
            return Ok(0);
        };
        // The kernel reads the source range and writes the destination
        // range behind both direct-write queues: queued writes there land
        // first (direct_writer's ordering rules). Writes queued elsewhere
        // may stay queued: their pages are not these.
        self.settle_overlapping(range.dst_offset, range.len)?;
        if let Some(src_st) = src.as_any().and_then(|a| a.downcast_ref::<FileStorage>()) {
            src_st.settle_overlapping(range.src_offset, range.len)?;
        }
        self.settle_overlapping(range.src_offset, range.len)?; // (one file: the source range)
        let (done, failed) = self.kernel_copy(src_file, range, CLONE_PIECE, |_, _| {});
        // A refusal that says the file system cannot is remembered;
        // anything else, the copy that follows reports.
        if let Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::TXTBSY) = failed {
            self.clones
                .refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(done)
    }
}

/// Whether `file`'s file system shares extents between its files, and its
/// block size (the clone granularity) if so. Asked once per destination:
/// statfs names a file system that can (XFS, btrfs), and a clone between
/// two unnamed temporary files beside `file` proves it does (an XFS made
/// without reflink says no here; there copy_file_range would only copy,
/// through the page cache). Anything that fails means no.
pub(crate) fn detect_clones(file: &File) -> Option<u64> {
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
