//! Where a write or a zeroing lands, by the state of the block's BAT entry
//! (FORMATS.md 3.11 recipes): the one place that decides it for both
//! callers, the in-place write path (`write.rs`) and the merge batch
//! (`batch.rs`).
//!
//! For one block piece (`write_in_block`):
//!
//! - FULLY / PARTIALLY_PRESENT: the caller says how it reaches the block
//!   (`Blocks::present`): where it is, through the log, or moved into a
//!   fresh block it copied the old bytes into. The sectors go there; when
//!   the block is PARTIALLY_PRESENT afterwards, their bits are set.
//! - NOT_PRESENT in a differencing image, written in part: a fresh block
//!   (it reads zeros), the sectors in it, every bit cleared and then the
//!   written sectors' bits set (bits a NOT_PRESENT block left behind mean
//!   nothing), and the entry PARTIALLY_PRESENT: the rest still shows the
//!   parent.
//! - any other unstored state (NOT_PRESENT written whole or without a
//!   parent, ZERO, UNMAPPED, UNDEFINED): a fresh block, the sectors in it,
//!   the entry FULLY_PRESENT. The rest of the block reads zeros as before,
//!   and any parent stays hidden.
//! - a reserved state: refused.
//!
//! A zeroing (`zero`) changes nothing where the block already reads zeros
//! (and hides any parent), turns a whole block into a ZERO entry (its old
//! space is leaked; a fixed image keeps every block allocated instead),
//! and writes zeros into the rest through `write_in_block`.
//!
//! What the callers parameterise (`Blocks`) is their commit protocol: how
//! a present block is reached (the write path: in place, its metadata
//! committed through the log after the payload is durable; the batch:
//! never a live block before its commit: a block it placed itself in
//! place, a held one copied on write or spooled into the log), where new
//! entries and bits are kept until that commit (`Pending` / the batch's
//! staged entries and fresh sector-bitmap copies), how bytes reach the
//! file (directly / through the write combiner or the spool), and what
//! happens between pieces (the write path commits when an entry would
//! grow too large).

use super::bat::{self, BatEntry, BatGeometry};
use super::image::VhdxImage;
use crate::combine::Payload;
use crate::{CorruptionKind, Error, Result};

/// How a caller reaches a block whose entry says FULLY or
/// PARTIALLY_PRESENT.
pub(crate) enum Reach {
    /// The sectors go into the block where it is.
    InPlace,
    /// The sectors go into the log, which writes them into the block where
    /// it is only after the commit (a batch's journal strategy).
    ThroughLog,
    /// The caller copied the block (all of it that the write does not
    /// replace) into the fresh block at this offset: the sectors go there
    /// and the entry names it.
    Moved(u64),
}

/// A caller's view of the image and its way of changing it.
pub(crate) trait Blocks {
    fn image(&self) -> &VhdxImage;
    /// The geometry writes are placed in (a batch's may have grown).
    fn geometry(&self) -> BatGeometry;
    /// Entry `idx` as the caller sees it (committed, or changed by it).
    fn entry(&self, idx: u64) -> Result<BatEntry>;
    /// Change entry `idx` (kept by the caller until its commit).
    fn set_entry(&mut self, idx: u64, e: BatEntry);
    /// How a write of a piece of present block `blk` (entry `e`) reaches
    /// it; `whole`: the piece covers all of the block inside the disk.
    fn present(&mut self, blk: u64, e: BatEntry, whole: bool) -> Result<Reach>;
    /// A fresh block of `block_size` bytes that reads zeros.
    fn fresh_block(&mut self) -> Result<u64>;
    /// Store `data` at file offset `at` (through the log: `logged`).
    fn put(&mut self, at: u64, data: Payload<'_>, logged: bool) -> Result<()>;
    /// Set the bits of sectors `[s0, s0 + n)` of block `blk`.
    fn set_bits(&mut self, blk: u64, s0: u64, n: u64) -> Result<()>;
    /// Clear every bit of block `blk`.
    fn clear_bits(&mut self, blk: u64) -> Result<()>;
    /// Called after every block piece of a range.
    fn piece_done(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Write `len` bytes at virtual `offset`; `payload(done, n)` is the payload
/// of bytes `[done, done + n)` of the range. The range is checked by the
/// caller.
pub(crate) fn write<'p>(
    t: &mut impl Blocks,
    offset: u64,
    len: u64,
    payload: impl Fn(u64, u64) -> Payload<'p>,
) -> Result<()> {
    let g = t.geometry();
    for p in g.pieces(offset, len) {
        write_in_block(t, p.block, p.in_block, payload(p.done, p.len))?;
        t.piece_done()?;
    }
    Ok(())
}

/// Make `[offset, offset + len)` read zeros (the range is checked by the
/// caller).
pub(crate) fn zero(t: &mut impl Blocks, offset: u64, len: u64) -> Result<()> {
    let g = t.geometry();
    // A fixed image keeps every block allocated (FULLY_PRESENT).
    let fixed = t.image().file_parameters.leave_block_allocated() && !g.has_parent;
    for p in g.pieces(offset, len) {
        let idx = g.payload_index(p.block);
        if g.reads_zero(t.entry(idx)?.state()) {
            // Already zeros and hides any parent.
        } else if p.whole() && !fixed {
            // A whole block becomes ZERO; its old space is leaked (or
            // given back by a compaction).
            t.set_entry(idx, BatEntry::new(bat::PAYLOAD_ZERO, 0));
        } else {
            write_in_block(t, p.block, p.in_block, Payload::Zeros(p.len))?;
        }
        t.piece_done()?;
    }
    Ok(())
}

/// Write `data` at `in_off` inside payload block `blk` (see the module
/// comment for what each state does).
pub(crate) fn write_in_block(
    t: &mut impl Blocks,
    blk: u64,
    in_off: u64,
    data: Payload<'_>,
) -> Result<()> {
    let g = t.geometry();
    let idx = g.payload_index(blk);
    let e = t.entry(idx)?;
    let lss = g.logical_sector_size;
    let in_disk = (g.virtual_size - blk * g.block_size).min(g.block_size);
    let whole = in_off == 0 && data.len() == in_disk;
    let (s0, n) = (in_off / lss, data.len() / lss);
    match e.state() {
        s @ (bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT) => {
            let reach = t.present(blk, e, whole)?;
            let (at, state) = match reach {
                Reach::InPlace | Reach::ThroughLog => (e.file_offset(), s),
                // A copy written whole holds only new sectors: every one
                // of them is present.
                Reach::Moved(off) if whole => (off, bat::PAYLOAD_FULLY_PRESENT),
                Reach::Moved(off) => (off, s),
            };
            t.put(at + in_off, data, matches!(reach, Reach::ThroughLog))?;
            if state == bat::PAYLOAD_PARTIALLY_PRESENT {
                t.set_bits(blk, s0, n)?;
            }
            if let Reach::Moved(_) = reach {
                t.set_entry(idx, BatEntry::new(state, at));
            }
        }
        bat::PAYLOAD_NOT_PRESENT if g.has_parent && !whole => {
            // Allocate, write only the new sectors, mark them present.
            let off = t.fresh_block()?;
            t.put(off + in_off, data, false)?;
            // Bits a NOT_PRESENT block may have left behind mean nothing.
            t.clear_bits(blk)?;
            t.set_bits(blk, s0, n)?;
            t.set_entry(idx, BatEntry::new(bat::PAYLOAD_PARTIALLY_PRESENT, off));
        }
        bat::PAYLOAD_NOT_PRESENT
        | bat::PAYLOAD_ZERO
        | bat::PAYLOAD_UNMAPPED
        | bat::PAYLOAD_UNDEFINED
        | bat::PAYLOAD_UNMAPPED_V095 => {
            // Fresh space reads zeros: the rest of the block reads as the
            // old state did (zeros), hiding any parent.
            let off = t.fresh_block()?;
            t.put(off + in_off, data, false)?;
            t.set_entry(idx, BatEntry::new(bat::PAYLOAD_FULLY_PRESENT, off));
        }
        s => {
            let img = t.image();
            return Err(Error::corrupt(
                CorruptionKind::BatEntryReservedState,
                &img.name,
                "BAT entry",
                img.bat_region.0 + idx * 8,
                format!("payload block {blk} has reserved state {s}"),
            ));
        }
    }
    Ok(())
}
