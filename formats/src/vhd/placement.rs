//! Where a write or a zeroing of a sparse VHD lands, block by block
//! (FORMATS.md 2.7): the one walk both callers go through, the in-place
//! write path (`write.rs`) and the shadow-paging merge batch
//! (`shadow_batch.rs`).
//!
//! For each block a range touches:
//!
//! - an unallocated block of a dynamic disk already reads zeros: a zeroing
//!   leaves it alone. In a differencing disk it shows the parent, so a
//!   zeroing places it like a write does.
//! - otherwise the caller reaches the block (`Blocks::reach`): a new one
//!   (its data area reads zeros, its bitmap is clear), one it may write
//!   where it is, or a held one it changes through the redo journal.
//! - the bytes go to the block's data area (`bitmap + in_block`), except
//!   zeros into a new block, which already reads them;
//! - the bits of the written sectors are set: the sectors now hide the
//!   parent (a dynamic disk keeps its bitmap in step too).
//!
//! What the callers parameterise (`Blocks`) is their protocol, and with it
//! the ordering that keeps each crash point consistent: the write path
//! moves the footer, writes the new block and flushes before the BAT entry
//! names it, and writes data durably before the bit that exposes it; the
//! batch writes nothing into a live block before its commit (new blocks
//! and copies on write in fresh space, held blocks through the journal),
//! and the end-footer write or the journal's commit record is its commit
//! point. Fixed disks (no blocks) are not placed here: the write path
//! writes them in place, the fixed batch journals every change.

use super::bat::BAT_UNALLOCATED;
use crate::combine::Payload;
use crate::{CorruptionKind, Error, Result};

/// The block layout the walk needs.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub block_size: u64,
    pub bitmap_bytes: u64,
    pub differencing: bool,
}

/// One block's part of a range.
#[derive(Clone, Copy)]
pub(super) struct Piece {
    pub block: u64,
    /// Offset of the piece inside the block's data.
    pub in_block: u64,
    pub len: u64,
}

impl Piece {
    /// The sectors of the block the piece covers, `[k0, k1)`.
    pub fn sectors(&self) -> (u64, u64) {
        (self.in_block / 512, (self.in_block + self.len) / 512)
    }
}

/// How a caller reaches a block for one piece: each carries the file
/// offset of the block (its bitmap; the data follows it).
#[derive(Clone, Copy)]
pub(super) enum Reach {
    /// A block placed for this piece: its data reads zeros, its bitmap is
    /// clear but for what the caller wrote placing it.
    New(u64),
    /// A block written where it is.
    InPlace(u64),
    /// A held block changed through the redo journal: nothing is written
    /// into it before the journal's commit record is durable.
    Journaled(u64),
}

impl Reach {
    pub fn base(self) -> u64 {
        match self {
            Reach::New(b) | Reach::InPlace(b) | Reach::Journaled(b) => b,
        }
    }
}

/// A caller's view of the image and its protocol for changing it.
pub(super) trait Blocks {
    fn layout(&self) -> Layout;
    /// Block `b`'s BAT entry as the caller sees it.
    fn entry(&self, b: u64) -> Result<u32>;
    /// Reach block `b` (entry `entry`) for piece `p`.
    fn reach(&mut self, p: Piece, entry: u32) -> Result<Reach>;
    /// Store `data` at file offset `at` of the block reached by `r`.
    fn put(&mut self, r: Reach, at: u64, data: Payload<'_>) -> Result<()>;
    /// Set the bits of `p`'s sectors in the block reached by `r`.
    fn set_bits(&mut self, r: Reach, p: Piece) -> Result<()>;
    /// The piece is written and its bits set.
    fn piece_done(&mut self, _r: Reach, _p: Piece) -> Result<()> {
        Ok(())
    }
}

/// Write (`zero`: zero) `[offset, offset + len)`; `payload(rel, n)` is the
/// payload of bytes `[rel, rel + n)` of the range. The range is checked by
/// the caller.
pub(super) fn write<'p>(
    t: &mut impl Blocks,
    offset: u64,
    len: u64,
    zero: bool,
    payload: impl Fn(u64, u64) -> Payload<'p>,
) -> Result<()> {
    let l = t.layout();
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let p = Piece {
            block: pos / l.block_size,
            in_block: pos % l.block_size,
            len: (l.block_size - pos % l.block_size).min(end - pos),
        };
        pos += p.len;
        let entry = t.entry(p.block)?;
        if zero && entry == BAT_UNALLOCATED && !l.differencing {
            // Dynamic: an unallocated block already reads zeros.
            continue;
        }
        let r = t.reach(p, entry)?;
        // A new block's data area reads zeros already.
        if !(zero && matches!(r, Reach::New(_))) {
            let at = r.base() + l.bitmap_bytes + p.in_block;
            t.put(r, at, payload(pos - p.len - offset, p.len))?;
        }
        t.set_bits(r, p)?;
        t.piece_done(r, p)?;
    }
    Ok(())
}

/// The error for held block `b` at `base` reaching past the file.
pub(super) fn outside_file(name: &str, table_offset: u64, b: u64, base: u64) -> Error {
    Error::corrupt(
        CorruptionKind::BlockOutsideFile,
        name,
        "block allocation table",
        table_offset + 4 * b,
        format!("block {b} at {base:#x} lies outside the file"),
    )
}
