//! The sparse VHD merge batch (DESIGN.md section 5, VHD bullets): shadow
//! paging. Every staged byte goes into fresh
//! space past the committed end of the file; blocks the image already holds
//! are copied on write, or, with `--held-blocks journal` (the default where
//! the file system cannot share extents), changed in place behind the redo
//! journal (below). `prepare` writes a complete new BAT and dynamic
//! header there too; `commit` switches to them with one 512-byte write of the
//! end footer (Data Offset -> new header), then refreshes the copy at 0.
//! The old BAT, header slot and copied blocks are leaked (a later compaction
//! can reclaim them).
//!
//! Crash safety: the file must end in a valid footer describing the old image
//! until the commit. Fresh space is therefore *reserved*: a copy of the
//! current footer is written (and flushed) at the end of a reserved region
//! before anything is written inside it, so whatever subset of later writes
//! survives, EOF-512 is a valid old footer and no committed structure
//! references the fresh bytes.
//!
//! Whole blocks copied from a source whose blocks lie at the same stride
//! and page phase as the fresh ones they go to are joined into one copy
//! (`Span`): on XFS (reflink) and btrfs one clone instead of one per block,
//! the source's bitmap pages between them included. It lands in fresh
//! space only, inside the reservation, like every other staged write, and
//! each destination bitmap it covered is rewritten after it unless the
//! source's bytes there already are that bitmap.
//!
//! Held blocks behind the journal: a copy on write of a block replaced in
//! part writes the whole block, and the compaction after the commit moves
//! it back: five times the new sectors on ext4. Instead, the new sectors
//! and the block's new bitmap go into `<image>.cfjournal` as records that
//! target the block where it is; the new end footer (and its copy at 0) are
//! the journal's last records. Ordering: `prepare` makes the fresh blocks,
//! the new BAT and header durable and the journal's records too (still
//! uncommitted); `commit` writes the journal's commit record (THE commit
//! point instead of the end footer write), then replays it: the end footer
//! first (`journal::apply`), then every record. A crash before the commit
//! record leaves an uncommitted journal, discarded by the next open (the
//! file still ends in the old footer); after it, the next open replays it
//! (`journal::recover`). Nothing is written into a held block before the
//! commit record is durable. The new sectors are written twice, nothing
//! else moves.

use std::collections::HashMap;
use std::sync::Arc;

use super::bat::{BlockAllocationTable, BAT_UNALLOCATED};
use super::batch::{check_grow, new_footer};
use super::codec::align512;
use super::dynamic_header::DynamicDiskHeader;
use super::footer::FOOTER_SIZE;
use super::image::{FooterSource, VhdImage, MAX_SPARSE_SIZE};
use super::journal::JournalHeader;
use super::journal_writer::JournalWriter;
use super::placement::{self, Blocks, Layout, Piece, Reach};
use super::sector_bitmap::SectorBitmap;
use crate::combine::{Payload, WriteCombiner};
use crate::error::IoContext;
use crate::image::MergeBatch;
use crate::params::{HeldBlocks, HeldBlocksChanged, Identity};
use crate::{CopyRange, Error, Result, Storage};

/// New blocks place their data on this boundary.
const DATA_ALIGN: u64 = 4096;
/// Reservations grow geometrically from this size, capped at `MAX_RESERVE`.
const MIN_RESERVE: u64 = 4 << 20;
const MAX_RESERVE: u64 = 1 << 30;
/// The most fresh space `expect_fresh` reserves at once.
const MAX_EXPECTED: u64 = 64 << 30;
/// The longest joined copy (one clone call covers 1 GiB).
const MAX_SPAN: u64 = 1 << 30;

pub(super) struct ShadowBatch<'a> {
    img: &'a mut VhdImage,
    st: Arc<dyn Storage>,
    new_bat: Vec<u32>,
    /// Blocks already moved to fresh space in this batch.
    fresh: BlockSet,
    /// Next fresh byte.
    next_free: u64,
    /// Offset of the footer copy that ends the file (reservation end).
    reserved_at: u64,
    /// Where fresh space began (the committed end of the file).
    fresh_start: u64,
    /// Superseded reservation footer copies: fresh space to zero if a new
    /// (not copied) block lands on them.
    stale: Vec<u64>,
    old_footer: [u8; FOOTER_SIZE],
    new_size: u64,
    /// (BAT offset, header offset, footer offset) once prepared.
    prepared: Option<(u64, u64, u64)>,
    /// A new parent link (`set_parent`), written into the new header.
    parent: Option<crate::params::ParentSpec>,
    /// `make_standalone` ran: the image becomes a dynamic one at the commit.
    standalone: bool,
    /// The new header and its locators, as `prepare` wrote them.
    new_header: Option<(DynamicDiskHeader, Vec<LocatorSlot>)>,
    /// Small data pieces on their way to the file (see `combine`).
    combiner: WriteCombiner,
    /// The sector bitmap of the block staged into last: a merge stages a
    /// block's runs one after another, so its bitmap is read once and
    /// written once instead of once per run.
    bitmap: Option<CachedBitmap>,
    /// Whole-block copies joined, not issued yet.
    span: Option<Span>,
    /// `expect_fresh` reserved the batch's room: the caller compacts after
    /// the commit (see `prepare`).
    expected: bool,
    /// `--held-blocks`: how a block the image already holds is changed.
    held_policy: HeldBlocks,
    /// The redo journal of changes to held blocks, created at the first.
    journal: Option<JournalWriter>,
    /// File length when the batch began (the journal header records it).
    start_len: u64,
    /// Held blocks whose new bitmap the journal holds: bitmap offset in
    /// the image -> offset of its latest copy in the journal.
    held_bitmaps: HashMap<u64, u64>,
    /// Held blocks changed behind the journal; their count and that of
    /// held blocks copied on write (`held_blocks_changed`).
    journaled: BlockSet,
    changed: HeldBlocksChanged,
}

/// Consecutive fresh blocks, each a whole-block copy from `src`, laid out
/// in the destination exactly as in the source: `[dst, dst + len)` is to
/// hold the bytes of `[src_offset, src_offset + len)`, from the first
/// block's data to the last one's end, the bitmaps (and padding) between
/// them included. Nothing else is allocated inside it, and nothing else is
/// staged until it is issued (`issue_span`).
struct Span {
    src: Arc<dyn Storage>,
    src_offset: u64,
    dst: u64,
    len: u64,
    /// Destination offsets of the bitmaps inside the span (every block's
    /// but the first, which was written when it was allocated).
    bitmaps: Vec<u64>,
}

/// A set of block numbers, one bit each (grown as blocks are added).
#[derive(Default)]
struct BlockSet(Vec<u64>);

impl BlockSet {
    fn contains(&self, b: u64) -> bool {
        self.0
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// Add `b`; whether it was new.
    fn insert(&mut self, b: u64) -> bool {
        let word = (b / 64) as usize;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & (1 << (b % 64)) == 0;
        self.0[word] |= 1 << (b % 64);
        new
    }
}

/// A used locator slot as `Sparse::locators` holds it.
type LocatorSlot = (
    super::parent_locator::ParentLocatorEntry,
    u64,
    Option<String>,
);

struct CachedBitmap {
    /// File offset of the block's bitmap (a fresh block's, or a held
    /// one's whose changes go to the journal).
    base: u64,
    bits: SectorBitmap,
    dirty: bool,
}

impl<'a> ShadowBatch<'a> {
    pub(super) fn new(img: &'a mut VhdImage) -> Result<Self> {
        let st = Arc::clone(&img.storage);
        let len = st.len().ctx(&img.name)?;
        let Some(s) = &img.sparse else {
            return Err(Error::InvalidParameter("not a dynamic VHD".into()));
        };
        let new_bat = s.bat.clone();
        let old_footer = img.footer.to_bytes()?;
        let next_free =
            align512(len).ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        let ok_end = img.footer_source == FooterSource::End;
        let new_size = img.footer.current_size;
        let mut b = ShadowBatch {
            img,
            st,
            new_bat,
            fresh: BlockSet::default(),
            next_free,
            reserved_at: len.saturating_sub(FOOTER_SIZE as u64),
            fresh_start: len.saturating_sub(FOOTER_SIZE as u64),
            stale: Vec::new(),
            old_footer,
            new_size,
            prepared: None,
            parent: None,
            standalone: false,
            new_header: None,
            combiner: WriteCombiner::default(),
            bitmap: None,
            span: None,
            expected: false,
            held_policy: HeldBlocks::default(),
            journal: None,
            start_len: len,
            held_bitmaps: HashMap::new(),
            journaled: BlockSet::default(),
            changed: HeldBlocksChanged::default(),
        };
        if !ok_end {
            // Make sure the file ends in a valid footer before anything else.
            b.reserve(b.next_free + FOOTER_SIZE as u64)?;
        }
        Ok(b)
    }

    fn name(&self) -> String {
        self.img.name.clone()
    }

    /// Make `[.., upto)` fresh space that lies before the footer copy ending
    /// the file.
    fn reserve(&mut self, upto: u64) -> Result<()> {
        if upto <= self.reserved_at {
            return Ok(());
        }
        // Each reservation costs a flush (below), so reserve as much again
        // as the batch has reserved so far: O(log n) flushes for n bytes.
        let grown = self.reserved_at.saturating_sub(self.fresh_start);
        let step = grown.clamp(MIN_RESERVE, MAX_RESERVE);
        let at = align512(upto.max(self.reserved_at.saturating_add(step)))
            .ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        self.st.write_at(&self.old_footer, at).ctx(&self.name())?;
        // Ordering: the new last sector (a copy of the committed footer) is
        // durable before any write lands in the space it covers.
        self.st.flush().ctx(&self.name())?;
        if self.reserved_at >= self.next_free {
            self.stale.push(self.reserved_at);
        }
        self.reserved_at = at;
        Ok(())
    }

    fn alloc(&mut self, bytes: u64) -> Result<u64> {
        let at = self.next_free;
        let end = at
            .checked_add(bytes)
            .and_then(align512)
            .ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        self.reserve(end)?;
        self.next_free = end;
        Ok(at)
    }

    fn is_fresh(&self, b: u64) -> bool {
        self.fresh.contains(b)
    }

    /// The fresh copy of block `b` (bitmap offset), creating it.
    fn fresh_block(&mut self, b: u64) -> Result<u64> {
        self.place_block(b, false)
    }

    /// `fresh_block`; `whole`: a new block whose bitmap and whole data area
    /// the caller writes (a span block), so neither is cleared here.
    fn place_block(&mut self, b: u64, whole: bool) -> Result<u64> {
        let name = self.name();
        let (span, bitmap_bytes) = {
            let s = self
                .img
                .sparse
                .as_ref()
                .ok_or_else(|| Error::InvalidParameter("not dynamic".into()))?;
            (s.block_span(), s.bitmap_bytes)
        };
        let entry = self.new_bat.get(b as usize).copied().ok_or_else(|| {
            Error::InvalidParameter(format!("{name}: block {b} beyond the table"))
        })?;
        if self.is_fresh(b) {
            return Ok(u64::from(entry) * 512);
        }
        // Start the block so that its data (after the bitmap) begins on a
        // 4 KiB boundary: whole-page copies can then bypass the page cache
        // (`Storage::copy_from`), and the guest's 4 KiB I/O lands on whole
        // host pages. The skipped sectors are unreferenced fresh space.
        let misaligned = (self.next_free + bitmap_bytes) % DATA_ALIGN;
        if misaligned != 0 {
            self.alloc(DATA_ALIGN - misaligned)?;
        }
        let at = self.alloc(span)?;
        let sector = super::bat::entry_for(at, &name)?;
        if entry != BAT_UNALLOCATED {
            // Copy on write: bitmap and data of the committed block.
            let old = self.held_base(b, entry)?;
            self.changed.rebuilt += 1;
            self.st
                .copy_from(self.st.as_ref(), CopyRange::new(old, at, span))
                .ctx(&name)?;
        } else if !whole {
            self.st
                .write_at(&vec![0u8; bitmap_bytes as usize], at)
                .ctx(&name)?;
            // Unwritten sectors of a new block must read zeros: clear any
            // superseded reservation footer that lies in its data area.
            for &f in &self.stale {
                if f >= at + bitmap_bytes && f < at + span {
                    self.st.write_at(&[0u8; FOOTER_SIZE], f).ctx(&name)?;
                }
            }
            // The data area now reads zeros, and only `stage` writes it.
            self.combiner
                .fresh_zeros(at + bitmap_bytes, span - bitmap_bytes);
        }
        if let Some(e) = self.new_bat.get_mut(b as usize) {
            self.fresh.insert(b);
            *e = sector;
        }
        Ok(at)
    }

    /// Where held block `b` (BAT entry `entry`) lies, checked to lie
    /// inside the file as the batch found it.
    fn held_base(&self, b: u64, entry: u32) -> Result<u64> {
        let (span, table_offset) = match &self.img.sparse {
            Some(s) => (s.block_span(), s.header.table_offset),
            None => return Err(Error::InvalidParameter("not dynamic".into())),
        };
        let old = u64::from(entry) * 512;
        if old.saturating_add(span) > self.start_len {
            return Err(placement::outside_file(
                &self.img.name,
                table_offset,
                b,
                old,
            ));
        }
        Ok(old)
    }

    /// Whether changes to held block `b` go to the journal (else the block
    /// is copied on write). Decided per batch: a journal needs its slot.
    fn journals(&self, b: u64) -> bool {
        let held = self
            .new_bat
            .get(b as usize)
            .is_some_and(|&e| e != BAT_UNALLOCATED)
            && !self.is_fresh(b);
        held && self.img.journal.is_some()
            && match self.held_policy {
                HeldBlocks::Rebuild => false,
                HeldBlocks::Journal => true,
                // Where extents are shared a copy on write is a clone plus
                // the new sectors: cheaper than writing them twice.
                HeldBlocks::Auto => !self.st.shares_extents(),
            }
    }

    /// The journal, created (its header naming the committed image) at the
    /// first change to a held block.
    fn journal(&mut self) -> Result<&mut JournalWriter> {
        if self.journal.is_none() {
            let slot = self.img.journal.clone().ok_or_else(|| {
                Error::InvalidParameter(format!("{}: no journal slot", self.img.name))
            })?;
            let h = JournalHeader::new(
                self.img.footer.unique_id,
                self.img.footer.time_stamp,
                self.start_len,
            );
            self.journal = Some(JournalWriter::create(slot, &h)?);
        }
        self.journal
            .as_mut()
            .ok_or_else(|| Error::InvalidParameter("journal".into()))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        crate::image::check_sector_range(&self.img.name, offset, len, 512, self.new_size)?;
        if self.prepared.is_some() {
            return Err(Error::InvalidParameter("batch already prepared".into()));
        }
        Ok(())
    }

    fn block_size(&self) -> (u64, u64, bool) {
        self.img
            .sparse
            .as_ref()
            .map(|s| (s.block_size, s.bitmap_bytes, s.differencing))
            .unwrap_or((512, 512, false))
    }

    /// Stage `[offset, offset+len)`; `piece(rel, n)` is the payload for
    /// bytes `[rel, rel + n)` of the range.
    fn stage<'p>(
        &mut self,
        offset: u64,
        len: u64,
        zero: bool,
        piece: impl Fn(u64, u64) -> Payload<'p>,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        self.issue_span()?;
        placement::write(self, offset, len, zero, piece)
    }

    /// The bitmap of a block whose every sector is staged: the bits of its
    /// sectors set, the rest of the bitmap sectors zero (as `fresh_block`
    /// and `set_cached_bits` leave it).
    fn full_bitmap(&self) -> Vec<u8> {
        let (bs, bitmap_bytes, _) = self.block_size();
        let mut bits = SectorBitmap {
            bytes: vec![0u8; bitmap_bytes as usize],
        };
        for k in 0..bs / 512 {
            bits.set(k);
        }
        bits.bytes
    }

    /// Stage block `b` whole from `src` at `src_offset` into a fresh block
    /// joined to the pending span when the layouts agree; `false` (nothing
    /// done) when the block is not a new one or cannot be joined or start
    /// a span, for `stage` to do instead.
    fn stage_whole_block(
        &mut self,
        b: u64,
        src: &Arc<dyn Storage>,
        src_offset: u64,
    ) -> Result<bool> {
        let (bs, bitmap_bytes, _) = self.block_size();
        if self.img.sparse.is_none()
            || self.new_bat.get(b as usize).copied() != Some(BAT_UNALLOCATED)
            || self.is_fresh(b)
        {
            return Ok(false);
        }
        // Where `fresh_block` would put its data.
        let pad = (DATA_ALIGN - (self.next_free + bitmap_bytes) % DATA_ALIGN) % DATA_ALIGN;
        let data = self.next_free + pad + bitmap_bytes;
        let joins = self.span.as_ref().is_some_and(|s| {
            let (src_end, dst_end) = (s.src_offset + s.len, s.dst + s.len);
            Arc::ptr_eq(&s.src, src)
                && self.next_free == dst_end
                && src_offset >= src_end
                && src_offset - src_end == data - dst_end
                && data - dst_end <= DATA_ALIGN
                && s.len + (data - dst_end) + bs <= MAX_SPAN
        });
        if !joins {
            self.issue_span()?;
        }
        let name = self.name();
        let at = self.place_block(b, true)?;
        debug_assert_eq!(at + bitmap_bytes, data);
        match &mut self.span {
            Some(s) if joins => {
                s.len = data + bs - s.dst;
                s.bitmaps.push(at);
            }
            _ => {
                self.span = Some(Span {
                    src: Arc::clone(src),
                    src_offset,
                    dst: data,
                    len: bs,
                    bitmaps: Vec::new(),
                });
            }
        }
        if !joins {
            // The first block's bitmap lies before the span.
            let bits = self.full_bitmap();
            self.st.write_at(&bits, at).ctx(&name)?;
        }
        Ok(true)
    }

    /// Issue the pending span: one copy (a clone where the file systems
    /// share extents), then every destination bitmap inside it that the
    /// source's bytes there do not already equal.
    fn issue_span(&mut self) -> Result<()> {
        let Some(s) = self.span.take() else {
            return Ok(());
        };
        let name = self.name();
        // The combiner flushes pending pieces the span overlaps (none: its
        // blocks are staged only here) and forgets the span's zeros.
        self.combiner
            .put(
                self.st.as_ref(),
                s.dst,
                Payload::From {
                    src: s.src.as_ref(),
                    offset: s.src_offset,
                    len: s.len,
                },
            )
            .ctx(&name)?;
        if s.bitmaps.is_empty() {
            return Ok(());
        }
        let want = self.full_bitmap();
        let mut got = vec![0u8; want.len()];
        for &at in &s.bitmaps {
            s.src
                .read_at(&mut got, s.src_offset + (at - s.dst))
                .ctx(&name)?;
            if got != want {
                self.st.write_at(&want, at).ctx(&name)?;
            }
        }
        Ok(())
    }

    /// The bitmap of the block at `base`, in the cache (the one cached
    /// before written back first).
    fn cached_bitmap(&mut self, base: u64, bitmap_bytes: u64) -> Result<&mut CachedBitmap> {
        if self.bitmap.as_ref().map(|c| c.base) != Some(base) {
            self.write_back_bitmap()?;
            let mut bytes = vec![0u8; bitmap_bytes as usize];
            match self.held_bitmaps.get(&base).copied() {
                // A held block's bitmap changed earlier in this batch.
                Some(at) => self.journal()?.read_back(&mut bytes, at)?,
                None => self.st.read_at(&mut bytes, base).ctx(&self.img.name)?,
            }
            self.bitmap = Some(CachedBitmap {
                base,
                bits: SectorBitmap { bytes },
                dirty: false,
            });
        }
        self.bitmap
            .as_mut()
            .ok_or_else(|| Error::InvalidParameter("bitmap cache".into()))
    }

    /// Set bits `[k0, k1)` of the block bitmap at `base` (a fresh block's,
    /// or a held one's whose changes go to the journal).
    fn set_cached_bits(&mut self, base: u64, bitmap_bytes: u64, k0: u64, k1: u64) -> Result<()> {
        let c = self.cached_bitmap(base, bitmap_bytes)?;
        for k in k0..k1 {
            c.bits.set(k);
        }
        c.dirty = true;
        Ok(())
    }

    fn write_back_bitmap(&mut self) -> Result<()> {
        let Some(c) = self.bitmap.take_if(|c| c.dirty) else {
            return Ok(());
        };
        if c.base < self.fresh_start {
            // A held block (fresh space starts at the committed end).
            let at = self
                .journal()?
                .record(c.base, Payload::Bytes(&c.bits.bytes))?;
            self.held_bitmaps.insert(c.base, at);
        } else {
            self.st
                .write_at(&c.bits.bytes, c.base)
                .ctx(&self.img.name)?;
        }
        self.bitmap = Some(CachedBitmap { dirty: false, ..c });
        Ok(())
    }
}

/// The batch's side of the placement (`placement.rs`): nothing live
/// changes before the commit. A new block, or a held one copied on write,
/// goes into fresh space (`fresh_block`: inside the reservation, so the
/// file still ends in the old footer); a held block whose changes the
/// journal takes is reached where it is, and its data and bitmap become
/// journal records, replayed only after the commit record. Bits collect
/// in the one cached bitmap (`set_cached_bits`).
impl Blocks for ShadowBatch<'_> {
    fn layout(&self) -> Layout {
        let (block_size, bitmap_bytes, differencing) = self.block_size();
        Layout {
            block_size,
            bitmap_bytes,
            differencing,
        }
    }

    fn entry(&self, b: u64) -> Result<u32> {
        self.new_bat.get(b as usize).copied().ok_or_else(|| {
            Error::InvalidParameter(format!("{}: block {b} beyond the table", self.img.name))
        })
    }

    fn reach(&mut self, p: Piece, entry: u32) -> Result<Reach> {
        let b = p.block;
        if self.journals(b) {
            let base = self.held_base(b, entry)?;
            if self.journaled.insert(b) {
                self.changed.journaled += 1;
            }
            return Ok(Reach::Journaled(base));
        }
        let base = self.fresh_block(b)?;
        Ok(if entry == BAT_UNALLOCATED {
            Reach::New(base)
        } else {
            // Copied on write just now, or placed earlier by this batch.
            Reach::InPlace(base)
        })
    }

    fn put(&mut self, r: Reach, at: u64, data: Payload<'_>) -> Result<()> {
        if let Reach::Journaled(_) = r {
            return self.journal()?.record(at, data).map(drop);
        }
        self.combiner
            .put(self.st.as_ref(), at, data)
            .ctx(&self.img.name)
    }

    fn set_bits(&mut self, r: Reach, p: Piece) -> Result<()> {
        let (k0, k1) = p.sectors();
        let bitmap_bytes = self.block_size().1;
        self.set_cached_bits(r.base(), bitmap_bytes, k0, k1)
    }
}

impl MergeBatch for ShadowBatch<'_> {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.stage(offset, data.len() as u64, false, |rel, n| {
            Payload::Bytes(&data[rel as usize..(rel + n) as usize])
        })
    }

    fn copy(&mut self, offset: u64, len: u64, src: &dyn Storage, src_offset: u64) -> Result<()> {
        self.stage(offset, len, false, |rel, n| Payload::From {
            src,
            offset: src_offset + rel,
            len: n,
        })
    }

    fn copy_joinable(
        &mut self,
        offset: u64,
        len: u64,
        src: &Arc<dyn Storage>,
        src_offset: u64,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        let (bs, _, _) = self.block_size();
        // Whole blocks one by one through the span; everything else (and
        // a block that cannot join) through `stage`, which issues the span
        // first.
        let mut done = 0;
        while done < len {
            let (pos, n) = (offset + done, (bs - (offset + done) % bs).min(len - done));
            if !(n == bs && self.stage_whole_block(pos / bs, src, src_offset + done)?) {
                self.copy(pos, n, src.as_ref(), src_offset + done)?;
            }
            done += n;
        }
        Ok(())
    }

    fn expect_fresh(&mut self, bytes: u64) -> Result<()> {
        if self.prepared.is_some() {
            return Ok(());
        }
        // Fresh blocks start data-aligned: up to a page of padding each,
        // which a space bound (the preflight's) leaves out.
        let (bs, _, _) = self.block_size();
        let bytes = bytes.min(MAX_EXPECTED);
        let upto = self
            .next_free
            .saturating_add(bytes)
            .saturating_add(bytes.div_ceil(bs.max(1)).saturating_mul(DATA_ALIGN))
            .saturating_add(FOOTER_SIZE as u64);
        self.expected = true;
        self.reserve(upto)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.stage(offset, len, true, |_, n| Payload::Zeros(n))
    }

    fn held_blocks(&mut self, policy: HeldBlocks) {
        self.held_policy = policy;
    }

    fn held_blocks_changed(&self) -> HeldBlocksChanged {
        self.changed
    }

    fn grow(&mut self, new_virtual_size: u64) -> Result<()> {
        check_grow(
            &self.img.name,
            self.new_size,
            new_virtual_size,
            MAX_SPARSE_SIZE,
        )?;
        self.issue_span()?;
        if self.prepared.is_some() {
            return Err(Error::InvalidParameter("batch already prepared".into()));
        }
        let (bs, _, _) = self.block_size();
        let entries = new_virtual_size.div_ceil(bs) as usize;
        if entries > self.new_bat.len() {
            self.new_bat.resize(entries, BAT_UNALLOCATED);
        }
        self.new_size = new_virtual_size;
        Ok(())
    }

    fn prepare(&mut self) -> Result<()> {
        if self.prepared.is_some() {
            return Ok(());
        }
        let name = self.name();
        self.issue_span()?;
        self.combiner.flush(self.st.as_ref()).ctx(&name)?;
        self.write_back_bitmap()?;
        let Some(s) = &self.img.sparse else {
            return Ok(());
        };
        let mut header = s.header.clone();
        let count = u32::try_from(self.new_bat.len())
            .map_err(|_| Error::InvalidParameter(format!("{name}: BAT too large")))?;
        let bat = BlockAllocationTable {
            entries: self.new_bat.clone(),
        }
        .to_bytes()?;
        let old_bat_len = s.bat.len();
        // New locator data first, so that it sits below the BAT and header
        // a later compaction moves down.
        let locator_data = match self.parent.clone() {
            Some(p) => {
                super::create::set_parent_fields(&mut header, &p, &mut |space| self.alloc(space))?
            }
            None => Vec::new(),
        };
        if self.standalone {
            header.parent_unique_id = [0; 16];
            header.parent_time_stamp = 0;
            header.parent_unicode_name = [0; 512];
            header.parent_locators = Default::default();
        }
        let tail = bat.len() as u64 + super::dynamic_header::HEADER_SIZE as u64;
        let (bat_at, header_at, footer_at) = if self.expected
            && self.new_bat.len() == old_bat_len
            && self.reserved_at >= self.next_free.saturating_add(tail)
        {
            // The reservation already ends in a durable copy of the old
            // footer: the new BAT and header go just before it and the file
            // keeps its length (no trim, no flush for it). What the
            // reservation had left over stays an unwritten hole before
            // them, which the compaction after the commit cuts off when it
            // moves them back into the old ones' place (the same size).
            let header_at = self.reserved_at - super::dynamic_header::HEADER_SIZE as u64;
            (header_at - bat.len() as u64, header_at, self.reserved_at)
        } else {
            let bat_at = self.alloc(bat.len() as u64)?;
            let header_at = self.alloc(super::dynamic_header::HEADER_SIZE as u64)?;
            (bat_at, header_at, self.alloc(FOOTER_SIZE as u64)?)
        };
        header.table_offset = bat_at;
        header.max_table_entries = count;
        for (at, data) in &locator_data {
            self.st.write_at(data, *at).ctx(&name)?;
        }
        let locators = if self.parent.is_some() || self.standalone {
            header
                .parent_locators
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_used())
                .zip(&locator_data)
                .map(|((i, e), (_, data))| {
                    let text = super::parent_locator::decode_locator(e.platform_code, data)
                        .map(|(s, _)| s);
                    (
                        *e,
                        header_at + DynamicDiskHeader::locator_entry_offset(i),
                        text,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        self.st.write_at(&bat, bat_at).ctx(&name)?;
        self.st
            .write_at(&header.to_bytes()?, header_at)
            .ctx(&name)?;
        // The old footer at the exact future footer slot, so the file can be
        // trimmed to end there.
        self.st.write_at(&self.old_footer, footer_at).ctx(&name)?;
        // Ordering: everything staged is durable (still unreferenced by the
        // committed end footer, the journal still uncommitted) before the
        // trim and the commit.
        if let Some(j) = &mut self.journal {
            j.flush()?;
        }
        self.st.flush().ctx(&name)?;
        let end = footer_at + FOOTER_SIZE as u64;
        if self.st.len().ctx(&name)? > end {
            // Either length leaves the file ending in a copy of the old footer.
            self.st.set_len(end).ctx(&name)?;
            self.st.flush().ctx(&name)?;
        }
        self.prepared = Some((bat_at, header_at, footer_at));
        self.new_header = Some((header, locators));
        Ok(())
    }

    fn set_parent(&mut self, parent: &crate::params::ParentSpec) -> Result<()> {
        if self.prepared.is_some() || self.standalone {
            return Err(Error::InvalidParameter(format!(
                "{}: set_parent after prepare or make_standalone",
                self.name()
            )));
        }
        // Every refusal now (the image's own check), before anything is
        // staged.
        crate::image::Image::check_parent_spec(&*self.img, parent)?;
        self.parent = Some(parent.clone());
        Ok(())
    }

    fn make_standalone(
        &mut self,
        parent_view: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let (bs, bitmap_bytes, differencing) = self.block_size();
        if !differencing || self.parent.is_some() {
            return Err(Error::Unsupported {
                file: self.name(),
                message: "not a differencing image (or a new parent is staged): no parent to drop"
                    .into(),
            });
        }
        // A dynamic VHD reads a stored block's data whatever its bitmap
        // says: every sector without a bit gets the parent's bytes first.
        let sectors = bs / 512;
        let mut buf = Vec::new();
        for b in 0..self.new_bat.len() as u64 {
            let entry = self.new_bat[b as usize];
            if entry == BAT_UNALLOCATED {
                continue;
            }
            let base = u64::from(entry) * 512;
            let runs = self
                .cached_bitmap(base, bitmap_bytes)?
                .bits
                .runs(0, sectors);
            for (first, n, bit) in runs {
                let off = b * bs + first * 512;
                if off >= self.new_size {
                    break;
                }
                if bit {
                    continue;
                }
                let len = (n * 512).min(self.new_size - off);
                buf.resize(len as usize, 0);
                parent_view(off, &mut buf)?;
                self.write(off, &buf)?;
            }
        }
        self.standalone = true;
        Ok(())
    }

    fn commit(mut self: Box<Self>, new_identity: Identity) -> Result<()> {
        self.prepare()?;
        let name = self.name();
        let Some((bat_at, header_at, footer_at)) = self.prepared else {
            return Err(Error::InvalidParameter("batch not prepared".into()));
        };
        let mut footer = new_footer(&self.img.footer, self.new_size, new_identity, &name)?;
        footer.data_offset = header_at;
        if self.standalone {
            footer.disk_type = super::footer::DISK_TYPE_DYNAMIC;
        }
        let bytes = footer.to_bytes()?;
        if let Some(mut journal) = self.journal.take() {
            // The footers are the journal's last records (the end footer
            // last: recovery reads the new identity from it); its commit
            // record is THE commit point, and the replay writes the end
            // footer first.
            journal.record(0, Payload::Bytes(&bytes))?;
            journal.record(footer_at, Payload::Bytes(&bytes))?;
            journal.commit_and_apply(self.st.as_ref(), &name)?;
        } else {
            // THE commit point: one 512-byte sector, the end footer now
            // points at the new header and BAT.
            self.st.write_at(&bytes, footer_at).ctx(&name)?;
            self.st.flush().ctx(&name)?;
            // Then the redundant copy at 0 (a crash before this leaves a
            // stale copy, reported as a warning and healed by the next
            // writable open).
            self.st.write_at(&bytes, 0).ctx(&name)?;
            self.st.flush().ctx(&name)?;
        }
        let img = &mut *self.img;
        img.footer = footer;
        img.footer_offset = footer_at;
        img.footer_source = FooterSource::End;
        let new_header = self.new_header.take();
        if let Some(s) = &mut img.sparse {
            match new_header {
                Some((h, locators)) => {
                    s.header = h;
                    if self.parent.is_some() || self.standalone {
                        s.locators = locators;
                    }
                    if self.standalone {
                        s.differencing = false;
                    }
                }
                None => {
                    s.header.table_offset = bat_at;
                    s.header.max_table_entries = self.new_bat.len() as u32;
                }
            }
            s.header_offset = header_at;
            s.bat = std::mem::take(&mut self.new_bat);
        }
        Ok(())
    }
}
