//! The preflight of a merge: what it will copy, the most extra space its
//! destination's file system needs before the commit, and whether that
//! space is there. `merge --dry-run` stops after it; every merge computes
//! it after its refusal checks and, unless told not to, refuses (changing
//! no byte) when the peak does not fit in the free space.
//!
//! The peak is an upper bound from the plan, not a simulation: every
//! touched destination block needs a fresh block until the commit
//! (copy-on-write, held or not before), plus the metadata a commit writes
//! anew — VHD: a new BAT, header and footer; VHDX: the sector-bitmap
//! blocks of a differencing file, and the log or BAT area when they move.
//! A fixed VHD is written in place behind a redo journal that carries the
//! data: its peak is the bytes merged; a sparse VHD's held blocks go the
//! same way under `--held-blocks journal` (bounded by their fresh copy
//! plus the records' framing). After the commit, compaction gives
//! the replaced blocks back, so the file ends about where it was. On a
//! file system that clones (XFS reflink, btrfs) a full-block merge shares
//! the child's extents and needs far less than this bound.

use serde::Serialize;

use crate::plan::MergePlan;
use formats::params::{DiskType, Format, ImageInfo};

const MIB: u64 = 1 << 20;

/// What a merge will do, computed before it writes anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// Bytes the folded layers hold (copied and zeroed).
    pub bytes_to_merge: u64,
    /// Of those, bytes copied from a layer's file.
    pub bytes_to_copy: u64,
    /// Destination blocks the merge touches, and their size.
    pub blocks: u64,
    pub block_size: u64,
    /// Upper bound of the space the destination's file system must have
    /// free before the commit.
    pub peak_extra_bytes: u64,
    /// Free space there (statvfs f_bavail), when the storage knows it.
    pub free_bytes: Option<u64>,
}

impl Preflight {
    pub fn new(plan: &MergePlan, dest: &ImageInfo, free_bytes: Option<u64>) -> Preflight {
        let block = dest.block_size;
        let blocks = plan.blocks_touched;
        let fresh = blocks.saturating_mul(block);
        let metadata = match (dest.format, dest.disk_type) {
            // In place behind a journal that holds the data.
            (Format::Vhd, DiskType::Fixed) => 0,
            (Format::Vhd, _) => {
                // A new BAT (4 bytes per block, sector-rounded), header and
                // footer, and each fresh block's sector bitmap. A journal
                // (`--held-blocks`) holds a held block's new sectors
                // instead of a fresh copy, plus a 32-byte record header
                // per run of at least a sector: at most 1/16 on top.
                let bat = plan.virtual_size.div_ceil(block.max(1)) * 4;
                let bitmaps = blocks * (block / 512 / 8).next_multiple_of(512);
                bat.next_multiple_of(512) + 2048 + 2 * bitmaps + fresh / 16
            }
            (Format::Vhdx, kind) => {
                // A differencing file copies each touched chunk's 1 MiB
                // sector-bitmap block; a grown disk needs a new BAT; any
                // commit may place its log entry outside the old log.
                let chunk = ((1u64 << 23) * 512 / block.max(1)).max(1);
                let sb = if kind == DiskType::Differencing {
                    blocks.min(plan.virtual_size.div_ceil(block.max(1)).div_ceil(chunk)) * MIB
                } else {
                    0
                };
                let bat = if plan.virtual_size > plan.destination_size {
                    (plan.virtual_size.div_ceil(block.max(1)) * 8 * (chunk + 1) / chunk)
                        .next_multiple_of(MIB)
                } else {
                    0
                };
                // A journal (`--held-blocks`) carries held blocks' sectors
                // in log entries: one descriptor sector per 128 data
                // sectors on top of the data.
                sb + bat + 2 * MIB + fresh / 64
            }
        };
        let data = if (dest.format, dest.disk_type) == (Format::Vhd, DiskType::Fixed) {
            // Journal records: the data plus a little framing per record.
            plan.bytes_total + plan.bytes_total / 64 + 4096
        } else {
            fresh
        };
        Preflight {
            bytes_to_merge: plan.bytes_total,
            bytes_to_copy: plan.bytes_copy,
            blocks,
            block_size: block,
            peak_extra_bytes: data + metadata,
            free_bytes,
        }
    }

    /// True when the free space is known and the peak does not fit in it.
    pub fn lacks_space(&self) -> bool {
        self.free_bytes.is_some_and(|f| self.peak_extra_bytes > f)
    }
}
