//! The merge's atomic write path (DESIGN.md 5, VHDX).
//!
//! Staging never touches a live byte: payload goes to fresh space past the
//! committed end of the file (blocks the image already holds are copied on
//! write into fresh blocks, and so are the sector-bitmap blocks whose bits
//! change), a grown BAT is written whole into fresh space, and only the
//! new BAT entries are remembered in memory. `commit` turns the changed BAT
//! sectors (or the region table, when the BAT moved) and metadata sectors
//! into ONE log entry; the header write that names its LogGuid is the single
//! commit point.
//!
//! The journal strategy (`HeldBlocks`, `expect_fresh`): where rebuilding a
//! held block would copy it whole twice (no extent sharing), the sectors
//! replacing part of it go through the log instead (`log::spool`): spooled
//! entries in a log area reserved past the fresh room, the commit entry
//! appended as the head of the same sequence, one header naming that area
//! as the commit point, then replay in place. Nothing before that header
//! references the area, so a crash before it leaves the old image.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::bat::{self, BatEntry, BatGeometry};
use super::bat_table::BlockAllocationTable;
use super::codec::round_up;
use super::image::{KnownBat, VhdxImage, MIB};
use super::log::spool::{self, LogSpool, SpoolDone};
use super::log::writer::{self, SectorSource};
use super::metadata_items as items;
use super::placement::{self, Blocks, Reach};
use super::region_table::{self as rt};
use super::sector_bitmap;
use crate::combine::{Payload, WriteCombiner};
use crate::error::IoContext;
use crate::image::MergeBatch;
use crate::params::{HeldBlocks, Identity};
use crate::storage::Storage;
use crate::{CopyRange, CorruptionKind, Error, Result};

pub(crate) fn begin(img: &mut VhdxImage) -> Result<Box<dyn MergeBatch + '_>> {
    img.require_writable()?;
    let committed_end = img.storage.len().ctx(&img.name)?;
    let geometry = img.geometry;
    Ok(Box::new(VhdxBatch {
        img,
        geometry,
        staged: BTreeMap::new(),
        sb_copies: BTreeMap::new(),
        committed_end,
        combiner: WriteCombiner::default(),
        metadata: None,
        standalone: false,
        done: false,
        held_blocks: HeldBlocks::default(),
        reserved: None,
        spool: None,
        in_place: HashSet::new(),
        rebuilt: 0,
    }))
}

/// Metadata staged by `set_parent` / `make_standalone`: item bytes to
/// write (offset inside the metadata region, bytes) and the metadata table
/// that names the items then.
struct StagedMetadata {
    items: Vec<(u64, Vec<u8>)>,
    table: super::metadata_table::MetadataTable,
}

struct VhdxBatch<'a> {
    img: &'a mut VhdxImage,
    /// Geometry after any staged growth.
    geometry: BatGeometry,
    /// New BAT entries by index. A staged FULLY/PARTIALLY_PRESENT entry
    /// always names a fresh block owned by this batch.
    staged: BTreeMap<u64, BatEntry>,
    /// Chunk -> fresh copy of its sector-bitmap block.
    sb_copies: BTreeMap<u64, u64>,
    committed_end: u64,
    /// Small payload pieces on their way to the file (see `combine`).
    combiner: WriteCombiner,
    /// A new parent locator (or no parent at all), written with the
    /// commit's log entry.
    metadata: Option<StagedMetadata>,
    /// `make_standalone` ran: the image loses its parent at the commit.
    standalone: bool,
    done: bool,
    held_blocks: HeldBlocks,
    /// The journal's log area, kept by `expect_fresh`.
    reserved: Option<Reserved>,
    /// Sectors of held blocks written in place at the commit.
    spool: Option<LogSpool>,
    /// Payload blocks whose changes go through `spool`.
    in_place: HashSet<u64>,
    /// Held blocks copied on write (`held_blocks_changed`).
    rebuilt: u64,
}

/// Fresh room `[committed end, area)` for blocks and bitmaps (allocated
/// from `VhdxImage::fresh_below`), then the log area `[area, end)`: sparse
/// until written, and nothing references it before the commit.
#[derive(Clone, Copy)]
struct Reserved {
    area: u64,
    end: u64,
}

impl Drop for VhdxBatch<'_> {
    fn drop(&mut self) {
        self.img.fresh_below = None;
        if !self.done {
            // Nothing references the staged space: give it back (best effort;
            // leaked space past the end is harmless too).
            let _ = self.img.storage.set_len(self.committed_end);
        }
    }
}

impl VhdxBatch<'_> {
    fn name(&self) -> String {
        self.img.name.clone()
    }

    fn old_entry(&self, idx: u64) -> BatEntry {
        // Entries past the old BAT (after growth) are NOT_PRESENT.
        self.img.bat.get(idx as usize).unwrap_or_default()
    }

    fn entry(&self, idx: u64) -> BatEntry {
        self.staged
            .get(&idx)
            .copied()
            .unwrap_or_else(|| self.old_entry(idx))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let g = self.geometry;
        crate::image::check_sector_range(
            &self.img.name,
            offset,
            len,
            g.logical_sector_size,
            g.virtual_size,
        )
    }

    /// The fresh, writable copy of chunk `k`'s sector bitmap block.
    fn sb_copy(&mut self, k: u64) -> Result<u64> {
        if let Some(o) = self.sb_copies.get(&k) {
            return Ok(*o);
        }
        let g = self.geometry;
        let off = self.img.allocate(sector_bitmap::BLOCK_SIZE)?;
        let old = self.old_entry(g.sb_index(k));
        if old.state() == bat::SB_PRESENT {
            let s = &*self.img.storage;
            s.copy_from(
                s,
                CopyRange::new(old.file_offset(), off, sector_bitmap::BLOCK_SIZE),
            )
            .ctx(&self.img.name)?;
        }
        self.staged
            .insert(g.sb_index(k), BatEntry::new(bat::SB_PRESENT, off));
        self.sb_copies.insert(k, off);
        Ok(off)
    }

    /// The sector bits of block `blk` as staged so far: its chunk's fresh
    /// bitmap copy when the batch made one, else the committed bitmap.
    fn block_bits(&mut self, blk: u64) -> Result<Vec<u8>> {
        let g = self.geometry;
        let spb = g.sectors_per_block();
        match self.sb_copies.get(&(blk / g.chunk_ratio)) {
            Some(&sb) => {
                // Pieces on their way must not hide bits from this read.
                self.combiner
                    .flush(&*self.img.storage)
                    .ctx(&self.img.name)?;
                let mut bytes = vec![0u8; (spb / 8) as usize];
                let at = sb + (blk % g.chunk_ratio) * spb / 8;
                self.img
                    .storage
                    .read_at(&mut bytes, at)
                    .ctx(&self.img.name)?;
                Ok(bytes)
            }
            None => self.img.block_bitmap(blk),
        }
    }

    /// Take held block `blk` into the journal when the spool has room for
    /// all of its `in_disk` bytes.
    fn admit(&mut self, blk: u64, in_disk: u64) -> bool {
        let ok = self.spool.as_mut().is_some_and(|sp| sp.admit(in_disk));
        if ok {
            self.in_place.insert(blk);
        }
        ok
    }
}

/// The batch's side of the placement (`placement.rs`). Staging never
/// changes a live byte: a block the batch placed itself is written where it
/// is; a block the committed image holds is either copied on write into a
/// fresh block or, with the journal strategy, changed through the spool
/// (the log replays it in place only after the commit); new entries stay
/// in `staged` and bits go into fresh sector-bitmap copies until the
/// commit's log entry.
impl Blocks for VhdxBatch<'_> {
    fn image(&self) -> &VhdxImage {
        self.img
    }

    fn geometry(&self) -> BatGeometry {
        self.geometry
    }

    fn entry(&self, idx: u64) -> Result<BatEntry> {
        Ok(VhdxBatch::entry(self, idx))
    }

    fn set_entry(&mut self, idx: u64, e: BatEntry) {
        self.staged.insert(idx, e);
    }

    fn present(&mut self, blk: u64, e: BatEntry, whole: bool) -> Result<Reach> {
        let g = self.geometry;
        // A staged present entry always names a fresh block of this batch.
        if self.staged.contains_key(&g.payload_index(blk)) {
            return Ok(Reach::InPlace);
        }
        let in_disk = (g.virtual_size - blk * g.block_size).min(g.block_size);
        // Only a block wholly inside the committed file is journaled: past
        // the end lies the fresh room, and what a BAT entry names there (a
        // file cut short) must not meet a fresh block.
        let inside = e
            .file_offset()
            .checked_add(g.block_size)
            .is_some_and(|end| end <= self.committed_end);
        if self.in_place.contains(&blk) || (!whole && inside && self.admit(blk, in_disk)) {
            // Journal: the live block changes only by the log's replay
            // after the commit.
            return Ok(Reach::ThroughLog);
        }
        // Copy on write: the live block is never touched.
        let off = self.img.allocate(g.block_size)?;
        self.rebuilt += 1;
        if !whole {
            let st = &*self.img.storage;
            st.copy_from(st, CopyRange::new(e.file_offset(), off, in_disk))
                .ctx(&self.img.name)?;
        }
        Ok(Reach::Moved(off))
    }

    fn fresh_block(&mut self) -> Result<u64> {
        let bs = self.geometry.block_size;
        let off = self.img.allocate(bs)?;
        self.combiner.fresh_zeros(off, bs);
        Ok(off)
    }

    fn put(&mut self, at: u64, data: Payload<'_>, logged: bool) -> Result<()> {
        let st = &*self.img.storage;
        match self.spool.as_mut() {
            Some(sp) if logged => sp.put(st, &self.img.name, at, data),
            _ => self.combiner.put(st, at, data).ctx(&self.img.name),
        }
    }

    /// Set the bits of sectors `[s0, s0 + n)` of block `blk` in its chunk's
    /// fresh bitmap copy (read-modify-write of the bytes involved).
    fn set_bits(&mut self, blk: u64, s0: u64, n: u64) -> Result<()> {
        let g = self.geometry;
        let sb = self.sb_copy(blk / g.chunk_ratio)?;
        let first = (blk % g.chunk_ratio) * g.sectors_per_block() + s0;
        let (b0, b1) = (first / 8, (first + n).div_ceil(8));
        let mut bytes = vec![0u8; (b1 - b0) as usize];
        self.img
            .storage
            .read_at(&mut bytes, sb + b0)
            .ctx(&self.img.name)?;
        sector_bitmap::set_bits(&mut bytes, first - b0 * 8, n, true);
        self.img
            .storage
            .write_at(&bytes, sb + b0)
            .ctx(&self.img.name)
    }

    /// Clear every bit of block `blk` in its chunk's fresh bitmap copy.
    fn clear_bits(&mut self, blk: u64) -> Result<()> {
        let g = self.geometry;
        let sb = self.sb_copy(blk / g.chunk_ratio)?;
        let spb = g.sectors_per_block();
        let start = (blk % g.chunk_ratio) * spb / 8;
        let zeros = vec![0u8; (spb / 8) as usize];
        self.img
            .storage
            .write_at(&zeros, sb + start)
            .ctx(&self.img.name)
    }
}

/// BAT sector `k` (of a region laid out from index 0) with staged entries
/// applied over the committed ones.
fn bat_sector(
    old: &BlockAllocationTable,
    staged: &BTreeMap<u64, BatEntry>,
    k: u64,
    buf: &mut [u8; 4096],
) {
    buf.fill(0);
    let first = k * 512;
    for j in 0..512u64 {
        let e = old.get((first + j) as usize).unwrap_or_default();
        buf[(j * 8) as usize..(j * 8 + 8) as usize].copy_from_slice(&e.raw.to_le_bytes());
    }
    for (&i, e) in staged.range(first..first + 512) {
        let at = ((i - first) * 8) as usize;
        buf[at..at + 8].copy_from_slice(&e.raw.to_le_bytes());
    }
}

/// The sectors of the commit entry: BAT sectors generated on demand from
/// the in-memory BAT plus staged entries, then a few small ones.
struct CommitSectors<'b> {
    old: &'b BlockAllocationTable,
    staged: &'b BTreeMap<u64, BatEntry>,
    bat_base: u64,
    bat_sectors: Vec<u64>,
    extra: Vec<(u64, Box<[u8; 4096]>)>,
}

impl SectorSource for CommitSectors<'_> {
    fn count(&self) -> u64 {
        (self.bat_sectors.len() + self.extra.len()) as u64
    }
    fn sector(&self, i: u64, buf: &mut [u8; 4096]) -> Result<u64> {
        let n = self.bat_sectors.len() as u64;
        if i < n {
            let k = self.bat_sectors[i as usize];
            bat_sector(self.old, self.staged, k, buf);
            Ok(self.bat_base + k * 4096)
        } else {
            let (off, b) = self
                .extra
                .get((i - n) as usize)
                .ok_or_else(|| Error::InvalidParameter("commit sector index".into()))?;
            buf.copy_from_slice(&b[..]);
            Ok(*off)
        }
    }
}

/// Read-modify-write the 4 KiB sectors covering `[abs, abs + bytes.len())`.
fn patched_sectors(
    img: &VhdxImage,
    abs: u64,
    bytes: &[u8],
    out: &mut Vec<(u64, Box<[u8; 4096]>)>,
) -> Result<()> {
    let first = abs / 4096 * 4096;
    let end = abs + bytes.len() as u64;
    let mut sec = first;
    while sec < end {
        // Two patches of one sector (say the locator and the table entry
        // naming it) must both land: patch the sector already collected.
        let at = match out.iter().position(|(o, _)| *o == sec) {
            Some(i) => i,
            None => {
                let mut b = Box::new([0u8; 4096]);
                img.storage.read_at(&mut b[..], sec).ctx(&img.name)?;
                out.push((sec, b));
                out.len() - 1
            }
        };
        let b = &mut out[at].1;
        for (i, v) in bytes.iter().enumerate() {
            let a = abs + i as u64;
            if a >= sec && a < sec + 4096 {
                b[(a - sec) as usize] = *v;
            }
        }
        sec += 4096;
    }
    Ok(())
}

impl MergeBatch for VhdxBatch<'_> {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        placement::write(self, offset, data.len() as u64, |done, n| {
            Payload::Bytes(&data[done as usize..(done + n) as usize])
        })
    }

    fn copy(&mut self, offset: u64, len: u64, src: &dyn Storage, src_offset: u64) -> Result<()> {
        self.check_range(offset, len)?;
        placement::write(self, offset, len, |done, n| Payload::From {
            src,
            offset: src_offset + done,
            len: n,
        })
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        placement::zero(self, offset, len)
    }

    fn grow(&mut self, new_virtual_size: u64) -> Result<()> {
        let g = self.geometry;
        if new_virtual_size < g.virtual_size {
            return Err(Error::InvalidParameter(
                "a batch never shrinks the virtual size".into(),
            ));
        }
        if !new_virtual_size.is_multiple_of(g.logical_sector_size)
            || new_virtual_size > items::MAX_VIRTUAL_SIZE
        {
            return Err(Error::InvalidParameter(format!(
                "virtual size {new_virtual_size} must be a multiple of {} and at most 64 TiB",
                g.logical_sector_size
            )));
        }
        self.geometry = BatGeometry::new(
            g.block_size,
            g.logical_sector_size,
            new_virtual_size,
            g.has_parent,
        )
        .ok_or_else(|| Error::InvalidParameter("bad geometry".into()))?;
        Ok(())
    }

    fn set_parent(&mut self, parent: &crate::params::ParentSpec) -> Result<()> {
        if self.standalone {
            return Err(Error::InvalidParameter(format!(
                "{}: set_parent after make_standalone",
                self.img.name
            )));
        }
        self.metadata = Some(stage_locator(self.img, parent)?);
        Ok(())
    }

    fn make_standalone(
        &mut self,
        parent_view: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let table = standalone_metadata(self.img)?;
        let g = self.geometry;
        let (bs, lss) = (g.block_size, g.logical_sector_size);
        let payload_blocks = g.virtual_size.div_ceil(bs);
        let mut buf = Vec::new();
        // Every PARTIALLY_PRESENT block becomes FULLY_PRESENT: its sectors
        // without a bit get the parent's bytes (a dynamic image has no
        // sector bitmaps, and no such state).
        for blk in 0..payload_blocks {
            let idx = g.payload_index(blk);
            if self.entry(idx).state() != bat::PAYLOAD_PARTIALLY_PRESENT {
                continue;
            }
            let bits = self.block_bits(blk)?;
            let in_disk = (g.virtual_size - blk * bs).min(bs) / lss;
            let mut k = 0;
            while k < in_disk {
                let n = sector_bitmap::run_length(&bits, k, in_disk - k);
                if !sector_bitmap::get_bit(&bits, k) {
                    buf.resize((n * lss) as usize, 0);
                    parent_view(blk * bs + k * lss, &mut buf)?;
                    placement::write_in_block(self, blk, k * lss, Payload::Bytes(&buf))?;
                }
                k += n;
            }
            let e = self.entry(idx);
            self.staged.insert(
                idx,
                BatEntry::new(bat::PAYLOAD_FULLY_PRESENT, e.file_offset()),
            );
        }
        // No sector bitmap blocks any more.
        for k in 0..payload_blocks.div_ceil(g.chunk_ratio) {
            self.staged
                .insert(g.sb_index(k), BatEntry::new(bat::SB_NOT_PRESENT, 0));
        }
        self.metadata = Some(table);
        self.standalone = true;
        Ok(())
    }

    fn held_blocks(&mut self, policy: HeldBlocks) {
        self.held_blocks = policy;
    }

    fn held_blocks_changed(&self) -> crate::params::HeldBlocksChanged {
        crate::params::HeldBlocksChanged {
            journaled: self.in_place.len() as u64,
            rebuilt: self.rebuilt,
        }
    }

    fn expect_fresh(&mut self, bytes: u64) -> Result<()> {
        let journal = match self.held_blocks {
            HeldBlocks::Rebuild => false,
            HeldBlocks::Journal => true,
            // Where extents are shared a rebuild is a clone plus the new
            // sectors: cheaper than writing them twice.
            HeldBlocks::Auto => !self.img.storage.shares_extents(),
        };
        if !journal || self.reserved.is_some() {
            return Ok(());
        }
        let name = self.name();
        let too_large = || Error::InvalidParameter(format!("{name}: file too large"));
        let end = self.img.storage.len().ctx(&name)?;
        // Room for the commit entry: every sector of the BAT region (a
        // grown disk's BAT moves and logs only the region table) and a
        // few metadata sectors.
        let commit_room = round_up(writer::entry_length(self.img.bat_region.1 / 4096 + 64), MIB)
            .ok_or_else(too_large)?;
        let max = u64::from(u32::MAX) / MIB * MIB;
        let per_entry = spool::entry_sectors(self.geometry.block_size);
        let data_room = round_up(spool::log_bytes_for(bytes, per_entry) + bytes / 64, MIB)
            .ok_or_else(too_large)?
            .min(max.saturating_sub(commit_room));
        if data_room < MIB {
            return Ok(());
        }
        let area = end
            .checked_add(bytes)
            .and_then(|e| round_up(e, MIB))
            .ok_or_else(too_large)?;
        let area_end = area + data_room + commit_room;
        if self.img.storage.set_len(area_end).is_err() {
            // A file system that cannot make the file that long (ext4
            // stops at 16 TiB): no journal, every held block rebuilt.
            self.img.storage.set_len(end).ctx(&name)?;
            return Ok(());
        }
        self.img.fresh_below = Some((end, area));
        self.spool = Some(LogSpool::new(
            area,
            data_room,
            per_entry,
            crate::entropy::new_guid(),
            self.img.header.sequence_number,
            area_end / MIB * MIB,
            area_end,
        ));
        self.reserved = Some(Reserved {
            area,
            end: area_end,
        });
        Ok(())
    }

    fn prepare(&mut self) -> Result<()> {
        // Every staged byte durable before the commit can reference it.
        let st = &*self.img.storage;
        self.combiner.flush(st).ctx(&self.img.name)?;
        if let Some(sp) = self.spool.as_mut() {
            sp.write_open(st, &self.img.name)?;
        }
        st.flush().ctx(&self.img.name)
    }

    fn commit(mut self: Box<Self>, new_identity: Identity) -> Result<()> {
        let Identity::Vhdx {
            data_write_guid: g_new,
        } = new_identity
        else {
            return Err(Error::InvalidParameter(
                "a VHDX needs a VHDX identity (DataWriteGuid)".into(),
            ));
        };
        // Pieces still in the combiner (a commit without prepare) reach the
        // file before commit_steps' first flush.
        self.combiner
            .flush(&*self.img.storage)
            .ctx(&self.img.name)?;
        let spooled = match self.spool.take() {
            Some(sp) => Some(sp.finish(&*self.img.storage, &self.img.name)?),
            None => None,
        };
        // From here on the staged space may be referenced: never give it back.
        self.done = true;
        // The committed BAT and the staged entries are read while the image
        // header changes; take them out of the batch for the duration.
        let mut old = std::mem::take(&mut self.img.bat);
        let staged = std::mem::take(&mut self.staged);
        let metadata = self.metadata.take();
        let journal = Journal {
            spooled: spooled.filter(|d| !d.entries.is_empty()),
            reserved: self.reserved,
            committed_end: self.committed_end,
        };
        if let Err(e) = commit_steps(
            self.img,
            &old,
            &staged,
            self.geometry,
            metadata.as_ref(),
            g_new,
            journal,
        ) {
            self.img.bat = old;
            self.staged = staged;
            return Err(e);
        }
        let name = self.name();
        // Without a resize the committed BAT is the old one with the staged
        // entries in place (`bat_sector` writes exactly that), so it is
        // adopted in memory instead of read back; `load` still reads it
        // when the region moved. A resize changes the entry count: the BAT
        // is freed before the load reads it, so a 64 TiB image's BAT is
        // never held twice.
        let old_region = self.img.bat_region;
        // A standalone image's BAT has another shape (no trailing sector
        // bitmap entry): read back, like a resized one.
        let known =
            if self.geometry.virtual_size == self.img.geometry.virtual_size && !self.standalone {
                for (&i, &e) in &staged {
                    old.set(i as usize, e);
                }
                Some(KnownBat {
                    region: old_region,
                    entries: old,
                })
            } else {
                drop(old);
                None
            };
        drop(staged);

        // Adopt the committed state from disk.
        let opts = self.img.opts;
        let storage = std::sync::Arc::clone(&self.img.storage);
        let findings = std::mem::take(&mut self.img.findings);
        let mut fresh = VhdxImage::load(&name, storage, opts, known)?;
        fresh.findings = findings;
        fresh.data_write_guid_renewed = true;
        *self.img = fresh;
        Ok(())
    }
}

/// What the journal strategy hands the commit.
struct Journal {
    /// Spooled entries the commit entry joins as their head.
    spooled: Option<SpoolDone>,
    reserved: Option<Reserved>,
    committed_end: u64,
}

/// The commit protocol; see the ordering comments inline.
fn commit_steps(
    img: &mut VhdxImage,
    old: &BlockAllocationTable,
    staged: &BTreeMap<u64, BatEntry>,
    geometry: BatGeometry,
    metadata: Option<&StagedMetadata>,
    g_new: Uuid,
    journal: Journal,
) -> Result<()> {
    let name = img.name.clone();
    let g = geometry;
    let grown = g.virtual_size != img.geometry.virtual_size;
    let mut extra = Vec::new();

    // A BAT that no longer fits moves, whole, into fresh space; only the
    // region table changes through the log then.
    let need = g.total_entries.saturating_mul(8);
    let (bat_base, bat_sectors) = if need > img.bat_region.1 {
        let len = g.region_bytes();
        if len > u64::from(u32::MAX) / MIB * MIB {
            return Err(Error::Unsupported {
                file: name,
                message: "BAT region too large".into(),
            });
        }
        let off = img.allocate(len)?;
        let mut buf = [0u8; 4096];
        for k in 0..need.div_ceil(4096) {
            bat_sector(old, staged, k, &mut buf);
            img.storage.write_at(&buf, off + k * 4096).ctx(&name)?;
        }
        let mut table = img.region_table.clone();
        if let Some(e) = table.find_mut(rt::BAT_GUID) {
            e.file_offset = off;
            e.length = len as u32;
        }
        let bytes = table.to_bytes();
        for copy in rt::COPY_OFFSETS {
            let mut cur = vec![0u8; rt::SIZE];
            img.storage.read_at(&mut cur, copy).ctx(&name)?;
            for (k, (new_s, old_s)) in bytes.chunks(4096).zip(cur.chunks(4096)).enumerate() {
                if new_s != old_s {
                    let mut b = Box::new([0u8; 4096]);
                    b.copy_from_slice(new_s);
                    extra.push((copy + k as u64 * 4096, b));
                }
            }
        }
        (off, Vec::new())
    } else {
        let mut sectors = changed_bat_sectors(staged);
        if grown {
            // Entries past the old BAT become live with the new size. The
            // batch took them as NOT_PRESENT (`old_entry`); whatever the
            // region holds there (stale or hostile) must read so too.
            let first = (old.len() as u64).saturating_mul(8) / 4096;
            sectors.extend(first..need.div_ceil(4096));
            sectors.sort_unstable();
            sectors.dedup();
        }
        (img.bat_region.0, sectors)
    };
    if grown {
        let at = system_item(
            img,
            &img.metadata_table,
            items::VIRTUAL_DISK_SIZE,
            "Virtual Disk Size",
        )?;
        let abs = img.metadata_region.0 + at;
        patched_sectors(
            img,
            abs,
            &items::VirtualDiskSize {
                size: g.virtual_size,
            }
            .encode(),
            &mut extra,
        )?;
    }

    if let Some(m) = metadata {
        // The items first, then only the table sectors that change: all
        // reach the file through the log entry, so a reader sees the old
        // metadata or the new, never a mix.
        let base = img.metadata_region.0;
        for (offset, bytes) in &m.items {
            patched_sectors(img, base + offset, bytes, &mut extra)?;
        }
        let table = m.table.to_bytes();
        let mut cur = vec![0u8; table.len()];
        img.storage.read_at(&mut cur, base).ctx(&name)?;
        for (k, (new_s, old_s)) in table.chunks(4096).zip(cur.chunks(4096)).enumerate() {
            if new_s != old_s {
                patched_sectors(img, base + k as u64 * 4096, new_s, &mut extra)?;
            }
        }
    }

    // Payload, copies, SB copies and a moved BAT durable before the
    // entry that references them.
    img.storage.flush().ctx(&name)?;

    let src = CommitSectors {
        old,
        staged,
        bat_base,
        bat_sectors,
        extra,
    };
    let entry_len = writer::entry_length(src.count());
    let (orig_lo, orig_ll) = (img.header.log_offset, img.header.log_length);
    let max_log = u64::from(u32::MAX) / MIB * MIB;
    // The entry goes into the existing log when it fits, else into a
    // fresh 1 MiB-aligned area at the end of the file; with spooled
    // entries, after them in the reserved area (ring position `pos`).
    let (lo, ll, pos) = if let Some(d) = &journal.spooled {
        let ll = d
            .used
            .checked_add(entry_len)
            .and_then(|e| round_up(e, MIB))
            .filter(|&l| l <= max_log && journal.reserved.is_some_and(|r| d.area + l <= r.end))
            .ok_or_else(|| Error::Unsupported {
                file: name.clone(),
                message: "the commit entry does not fit the journal's log area".into(),
            })?;
        (d.area, ll, d.used)
    } else if entry_len <= u64::from(orig_ll) {
        (orig_lo, u64::from(orig_ll), 0)
    } else if let Some(r) = journal.reserved.filter(|r| r.area + entry_len <= r.end) {
        // The journal's area is kept for exactly this and unused.
        (
            r.area,
            round_up(entry_len, MIB)
                .unwrap_or(r.end - r.area)
                .min(r.end - r.area),
            0,
        )
    } else {
        let len = round_up(entry_len, MIB)
            .ok_or_else(|| Error::InvalidParameter("log too large".into()))?;
        if len > u64::from(u32::MAX) / MIB * MIB {
            return Err(Error::Unsupported {
                file: name,
                message: "commit entry larger than 4 GiB".into(),
            });
        }
        (img.allocate(len)?, len, 0)
    };
    let mut params = img.entry_params(crate::entropy::new_guid())?;
    if let Some(d) = &journal.spooled {
        // The head of the spooled sequence.
        params.log_guid = d.log_guid;
        params.sequence_number = d.next_seq;
    }
    let l = params.log_guid;
    writer::write_entry(&*img.storage, &name, lo + pos, ll - pos, &params, &src)?;
    // (1) The entry is durable before any header names its LogGuid.
    img.storage.flush().ctx(&name)?;
    // (2) THE commit point: one header write into the non-current slot
    // (sequence + 1, LogGuid L, DataWriteGuid G, the log's location);
    // header_update flushes it. Torn, it fails its CRC and the old
    // header stays current; complete, every replaying reader sees new.
    img.header_update(|h| {
        h.log_guid = l;
        h.data_write_guid = g_new;
        h.log_offset = lo;
        h.log_length = ll as u32;
    })?;
    // (3) Apply in place, flush: from here a crash replays the entry
    // (the whole sequence, spooled entries first, as this does).
    if let Some(d) = &journal.spooled {
        d.apply(&*img.storage, &name)?;
    }
    writer::apply_in_place(&*img.storage, &name, &src)?;
    drop(src);
    img.storage.flush().ctx(&name)?;
    // (4) Log empty again, back at its original place; header_update flushes.
    img.header_update(|h| {
        h.log_guid = Uuid::nil();
        h.log_offset = orig_lo;
        h.log_length = orig_ll;
    })?;
    // (5) Only after that header is durable may a temporary log area go.
    if let Some(r) = journal.reserved {
        // Cut after the last byte of fresh room used, unless something
        // landed past the area (the room ran out): then only punch the
        // area and leave the rest to compaction.
        let st = &*img.storage;
        if st.len().ctx(&name)? <= r.end {
            let used = img.fresh_below.map_or(r.area, |(cursor, _)| cursor);
            st.set_len(used.max(journal.committed_end)).ctx(&name)?;
        } else {
            st.punch_hole(r.area, r.end - r.area).ctx(&name)?;
        }
        st.flush().ctx(&name)?;
    } else if lo != orig_lo {
        img.storage.set_len(lo).ctx(&name)?;
        img.storage.flush().ctx(&name)?;
    }
    Ok(())
}

/// Validate and place a new parent locator item (nothing is written
/// here). It stays where the old one is when it fits before the next
/// item, else it goes after the last item; a locator that fits nowhere in
/// the metadata region is refused.
/// `stage_locator`'s checks alone (`Image::check_parent_spec`).
pub(crate) fn check_locator(img: &VhdxImage, parent: &crate::params::ParentSpec) -> Result<()> {
    stage_locator(img, parent).map(|_| ())
}

fn stage_locator(img: &VhdxImage, parent: &crate::params::ParentSpec) -> Result<StagedMetadata> {
    let name = &img.name;
    let bytes = super::create::parent_locator_item(parent)?;
    let region_len = img.metadata_region.1;
    let mut table = img.metadata_table.clone();
    let Some(idx) = table
        .entries
        .iter()
        .position(|e| e.item_id == items::PARENT_LOCATOR && !e.is_user())
    else {
        return Err(Error::Unsupported {
            file: name.clone(),
            message: "not a differencing image (no parent locator item): it has no parent to set"
                .into(),
        });
    };
    let old = table.entries[idx].clone();
    let len = bytes.len() as u64;
    let next_item = table
        .entries
        .iter()
        .map(|e| u64::from(e.offset))
        .filter(|&o| o > u64::from(old.offset))
        .min()
        .unwrap_or(region_len);
    let last_end = table
        .entries
        .iter()
        .map(|e| u64::from(e.offset) + u64::from(e.length))
        .max()
        .unwrap_or(0);
    let offset = if u64::from(old.offset) + len <= next_item {
        u64::from(old.offset)
    } else {
        let at = round_up(last_end, 4096).unwrap_or(u64::MAX);
        if at.saturating_add(len) > region_len {
            return Err(Error::Unsupported {
                file: name.clone(),
                message: format!(
                    "the new parent locator ({len} bytes) does not fit in the {region_len}-byte metadata region"
                ),
            });
        }
        at
    };
    let e = &mut table.entries[idx];
    e.offset = offset as u32;
    e.length = len as u32;
    Ok(StagedMetadata {
        items: vec![(offset, bytes)],
        table,
    })
}

/// The metadata of the image without a parent: the parent locator's table
/// entry gone, File Parameters without HasParent.
fn standalone_metadata(img: &VhdxImage) -> Result<StagedMetadata> {
    let name = &img.name;
    let mut table = img.metadata_table.clone();
    let before = table.entries.len();
    table
        .entries
        .retain(|e| e.item_id != items::PARENT_LOCATOR || e.is_user());
    if table.entries.len() == before || !img.file_parameters.has_parent() {
        return Err(Error::Unsupported {
            file: name.clone(),
            message: "not a differencing image: it has no parent to drop".into(),
        });
    }
    let fp_at = system_item(img, &table, items::FILE_PARAMETERS, "File Parameters")?;
    let fp = items::FileParameters {
        block_size: img.file_parameters.block_size,
        flags: img.file_parameters.flags & !items::HAS_PARENT,
    };
    Ok(StagedMetadata {
        items: vec![(fp_at, fp.encode())],
        table,
    })
}

/// Where system item `id` (`what`, for the error) lies inside the metadata
/// region, as `table` names it.
fn system_item(
    img: &VhdxImage,
    table: &super::metadata_table::MetadataTable,
    id: Uuid,
    what: &str,
) -> Result<u64> {
    table
        .entries
        .iter()
        .find(|e| e.item_id == id && !e.is_user())
        .map(|e| u64::from(e.offset))
        .ok_or_else(|| {
            Error::corrupt(
                CorruptionKind::MetadataItemMissing,
                &img.name,
                "metadata table",
                img.metadata_region.0,
                format!("no {what} item"),
            )
        })
}

/// Sectors of the BAT region that hold staged entries.
fn changed_bat_sectors(staged: &BTreeMap<u64, BatEntry>) -> Vec<u64> {
    let mut v: Vec<u64> = staged.keys().map(|i| i * 8 / 4096).collect();
    v.dedup();
    v
}
