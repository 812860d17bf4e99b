//! Writable sessions: header updates, on-disk replay, and the 3.11 write
//! recipes (payload first, then BAT / sector-bitmap sectors through one
//! log entry).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::bat::{self, BatEntry, BatGeometry};
use super::codec::round_up;
use super::header::{VhdxHeader, SLOT_OFFSETS};
use super::image::{VhdxImage, MIB};
use super::log::writer::{self, EntryParams, SectorSource};
use super::log::{replay, sequence, LogRing};
use super::placement::{self, Blocks, Reach};
use super::sector_bitmap;
use crate::combine::Payload;
use crate::error::IoContext;
use crate::{CorruptionKind, Error, Result};

/// Metadata changes collected for one log entry.
#[derive(Default)]
pub(crate) struct Pending {
    /// New BAT entries by index.
    pub bat: BTreeMap<u64, BatEntry>,
    /// Changed sector-bitmap sectors by file offset.
    pub sb: BTreeMap<u64, Box<[u8; 4096]>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.bat.is_empty() && self.sb.is_empty()
    }
    /// Upper bound of the sectors the entry will carry.
    fn sector_estimate(&self) -> u64 {
        let mut bat_sectors: Vec<u64> = self.bat.keys().map(|i| i / 512).collect();
        bat_sectors.dedup();
        bat_sectors.len() as u64 + self.sb.len() as u64
    }
}

impl VhdxImage {
    pub(crate) fn require_writable(&self) -> Result<()> {
        if !self.opts.writable {
            return Err(Error::PermissionDenied {
                file: self.name.clone(),
                message: "image opened read-only".into(),
            });
        }
        Ok(())
    }

    /// Write `h` (sequence = current + 1) into the non-current slot and
    /// flush. Once the flush returns it is the current header; a torn
    /// write fails its CRC and leaves the old header current.
    pub(crate) fn header_update(&mut self, change: impl FnOnce(&mut VhdxHeader)) -> Result<()> {
        let mut h = self.header.clone();
        change(&mut h);
        h.sequence_number = self.header.sequence_number.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                CorruptionKind::HeaderSequenceOverflow,
                &self.name,
                "header",
                SLOT_OFFSETS[self.current_slot] + 8,
                "sequence number overflow",
            )
        })?;
        let slot = 1 - self.current_slot;
        self.storage
            .write_at(&h.to_bytes(), SLOT_OFFSETS[slot])
            .ctx(&self.name)?;
        self.storage.flush().ctx(&self.name)?;
        self.header = h;
        self.current_slot = slot;
        Ok(())
    }

    /// Update, then copy into the other slot too, so that losing either
    /// slot later still leaves the new contents.
    pub(crate) fn header_update_both(
        &mut self,
        change: impl FnOnce(&mut VhdxHeader),
    ) -> Result<()> {
        self.header_update(change)?;
        self.header_update(|_| {})
    }

    /// First writes of a writable open: a new FileWriteGuid in both
    /// headers, before any other write (replay included).
    pub(crate) fn start_write_session(&mut self) -> Result<()> {
        self.header_update_both(|h| h.file_write_guid = crate::entropy::new_guid())
    }

    /// Replay the pending log on disk: entries in place, extend, flush, and
    /// only then declare the log empty (LogGuid = 0).
    pub(crate) fn replay_on_disk(&mut self) -> Result<()> {
        let h = self.header.clone();
        let ring = LogRing {
            storage: &*self.storage,
            name: &self.name,
            offset: h.log_offset,
            length: u64::from(h.log_length),
        };
        let found = sequence::find_active_sequence(&ring, h.log_guid)?;
        if found.active.is_empty() {
            return Err(Error::corrupt(
                CorruptionKind::LogSequenceInvalid,
                &self.name,
                "log",
                h.log_offset,
                "no valid log sequence to replay",
            ));
        }
        let mut sink = replay::StorageSink::new(&*self.storage, &self.name);
        replay::replay(&ring, h.log_guid, &found.active, &mut sink)?;
        // The replayed sectors must be durable before the header stops
        // pointing at the log.
        self.storage.flush().ctx(&self.name)?;
        self.header_update_both(|h| h.log_guid = Uuid::nil())?;
        self.replayed_in_memory = false;
        Ok(())
    }

    /// Before the first change a reader could see: a new DataWriteGuid.
    pub(crate) fn renew_data_write_guid(&mut self) -> Result<()> {
        if !self.data_write_guid_renewed {
            self.header_update_both(|h| h.data_write_guid = crate::entropy::new_guid())?;
            self.data_write_guid_renewed = true;
        }
        Ok(())
    }

    /// Fresh space at the end of the file, 1 MiB aligned, extended to hold
    /// `len` bytes (reads as zeros).
    pub(crate) fn allocate(&mut self, len: u64) -> Result<u64> {
        if let Some((cursor, limit)) = self.fresh_below {
            // Room a batch kept below its log area (holes: reads zeros).
            let off = round_up(cursor, MIB)
                .ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
            if off.checked_add(len).is_some_and(|e| e <= limit) {
                self.fresh_below = Some((off + len, limit));
                return Ok(off);
            }
        }
        let end = self.storage.len().ctx(&self.name)?;
        let off =
            round_up(end, MIB).ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        self.storage.set_len(off + len).ctx(&self.name)?;
        Ok(off)
    }

    pub(crate) fn entry_params(&self, log_guid: Uuid) -> Result<EntryParams> {
        let len = self.storage.len().ctx(&self.name)?;
        Ok(EntryParams {
            log_guid,
            sequence_number: self.header.sequence_number.max(1),
            flushed_file_offset: len / MIB * MIB,
            last_file_offset: round_up(len, MIB).unwrap_or(len),
        })
    }

    /// The log procedure for one entry. Ordering:
    /// 1. (caller) payload written and flushed;
    /// 2. entry stamped with a fresh LogGuid L written into the log, flush —
    ///    the header still says LogGuid 0 (or an older L), so nobody replays it;
    /// 3. one header write with LogGuid = L (and the new DataWriteGuid if
    ///    given), flush — THE commit point;
    /// 4. the same sectors in place, flush;
    /// 5. header with LogGuid = 0, flush. A crash before it replays the
    ///    (idempotent) entry again on the next open.
    pub(crate) fn commit_through_log(
        &mut self,
        src: &dyn SectorSource,
        new_data_write_guid: Option<Uuid>,
    ) -> Result<()> {
        let l = crate::entropy::new_guid();
        let params = self.entry_params(l)?;
        let (lo, ll) = (self.header.log_offset, u64::from(self.header.log_length));
        writer::write_entry(&*self.storage, &self.name, lo, ll, &params, src)?;
        self.storage.flush().ctx(&self.name)?;
        self.header_update(|h| {
            h.log_guid = l;
            if let Some(g) = new_data_write_guid {
                h.data_write_guid = g;
            }
        })?;
        writer::apply_in_place(&*self.storage, &self.name, src)?;
        self.storage.flush().ctx(&self.name)?;
        self.header_update(|h| h.log_guid = Uuid::nil())?;
        Ok(())
    }

    /// Turn pending BAT entries and SB sectors into 4 KiB target sectors.
    pub(crate) fn pending_sectors(&self, p: &Pending) -> Result<BTreeMap<u64, Box<[u8; 4096]>>> {
        let mut out: BTreeMap<u64, Box<[u8; 4096]>> = BTreeMap::new();
        for (&idx, &e) in &p.bat {
            let sec = self.bat_region.0 + idx * 8 / 4096 * 4096;
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(sec) {
                let mut b = Box::new([0u8; 4096]);
                self.storage.read_at(&mut b[..], sec).ctx(&self.name)?;
                // Every entry of the sector from memory, then pending ones.
                let first = (sec - self.bat_region.0) / 8;
                for j in 0..512u64 {
                    if let Some(m) = self.bat.get((first + j) as usize) {
                        b[(j * 8) as usize..(j * 8 + 8) as usize]
                            .copy_from_slice(&m.raw.to_le_bytes());
                    }
                }
                slot.insert(b);
            }
            if let Some(b) = out.get_mut(&sec) {
                let at = ((self.bat_region.0 + idx * 8) - sec) as usize;
                b[at..at + 8].copy_from_slice(&e.raw.to_le_bytes());
            }
        }
        for (&off, s) in &p.sb {
            out.insert(off, s.clone());
        }
        Ok(out)
    }

    /// Flush payload, then commit pending metadata through the log and
    /// adopt it in memory.
    pub(crate) fn commit_pending(&mut self, p: &mut Pending) -> Result<()> {
        if p.is_empty() {
            return Ok(());
        }
        // Payload (and the file extension) durable before any metadata
        // that references it.
        self.storage.flush().ctx(&self.name)?;
        let sectors = self.pending_sectors(p)?;
        self.commit_through_log(&sectors, None)?;
        for (&i, &e) in &p.bat {
            self.bat.set(i as usize, e);
        }
        p.bat.clear();
        p.sb.clear();
        self.invalidate_sb_cache();
        Ok(())
    }

    fn entry_with(&self, p: &Pending, idx: u64) -> Result<BatEntry> {
        if let Some(e) = p.bat.get(&idx) {
            return Ok(*e);
        }
        self.bat.get(idx as usize).ok_or_else(|| {
            Error::corrupt(
                CorruptionKind::BatIndexOutOfRange,
                &self.name,
                "BAT",
                self.bat_region.0 + idx * 8,
                "entry outside the BAT",
            )
        })
    }

    /// Set the bitmap bits of `[s0, s0 + n)` (sectors inside block `p`),
    /// allocating the chunk's SB block when it has none.
    fn set_block_bits(
        &mut self,
        pend: &mut Pending,
        blk: u64,
        s0: u64,
        n: u64,
        value: bool,
    ) -> Result<()> {
        let g = self.geometry;
        let chunk = blk / g.chunk_ratio;
        let sbi = g.sb_index(chunk);
        let mut sb = self.entry_with(pend, sbi)?;
        if sb.state() != bat::SB_PRESENT {
            let off = self.allocate(super::sector_bitmap::BLOCK_SIZE)?;
            sb = BatEntry::new(bat::SB_PRESENT, off);
            pend.bat.insert(sbi, sb);
        }
        let first_bit = (blk % g.chunk_ratio) * g.sectors_per_block() + s0;
        let mut bit = first_bit;
        let end = first_bit + n;
        while bit < end {
            let sec = sb.file_offset() + bit / 8 / 4096 * 4096;
            let sec_first_bit = (sec - sb.file_offset()) * 8;
            let upto = end.min(sec_first_bit + 4096 * 8);
            if let std::collections::btree_map::Entry::Vacant(slot) = pend.sb.entry(sec) {
                let mut b = Box::new([0u8; 4096]);
                self.storage.read_at(&mut b[..], sec).ctx(&self.name)?;
                slot.insert(b);
            }
            if let Some(b) = pend.sb.get_mut(&sec) {
                sector_bitmap::set_bits(&mut b[..], bit - sec_first_bit, upto - bit, value);
            }
            bit = upto;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let g = self.geometry;
        crate::image::check_sector_range(
            &self.name,
            offset,
            len,
            g.logical_sector_size,
            g.virtual_size,
        )
    }

    /// Sectors an entry may carry, with room for one more block's changes.
    fn commit_threshold(&self) -> u64 {
        writer::max_sectors(u64::from(self.header.log_length)).saturating_sub(24)
    }
}

/// The write path's side of the placement (`placement.rs`): blocks change
/// in place, payload first; new BAT entries and sector-bitmap sectors
/// collect in `pend` until `commit_pending` logs them, which it does
/// between pieces when the entry would grow past the log.
struct WritePath<'a> {
    img: &'a mut VhdxImage,
    pend: Pending,
}

impl Blocks for WritePath<'_> {
    fn image(&self) -> &VhdxImage {
        self.img
    }

    fn geometry(&self) -> BatGeometry {
        self.img.geometry
    }

    fn entry(&self, idx: u64) -> Result<BatEntry> {
        self.img.entry_with(&self.pend, idx)
    }

    fn set_entry(&mut self, idx: u64, e: BatEntry) {
        self.pend.bat.insert(idx, e);
    }

    fn present(&mut self, blk: u64, e: BatEntry, _whole: bool) -> Result<Reach> {
        // Overwrite in place. The entry's offset is a file field: a block
        // outside the file is refused, not written (which would extend the
        // file to it).
        self.img.check_present(blk, e)?;
        Ok(Reach::InPlace)
    }

    fn fresh_block(&mut self) -> Result<u64> {
        // Fresh space at EOF reads zeros.
        self.img.allocate(self.img.geometry.block_size)
    }

    fn put(&mut self, at: u64, data: Payload<'_>, _logged: bool) -> Result<()> {
        data.put(&*self.img.storage, at).ctx(&self.img.name)
    }

    fn set_bits(&mut self, blk: u64, s0: u64, n: u64) -> Result<()> {
        self.img.set_block_bits(&mut self.pend, blk, s0, n, true)
    }

    fn clear_bits(&mut self, blk: u64) -> Result<()> {
        let spb = self.img.geometry.sectors_per_block();
        self.img.set_block_bits(&mut self.pend, blk, 0, spb, false)
    }

    fn piece_done(&mut self) -> Result<()> {
        if self.pend.sector_estimate() >= self.img.commit_threshold() {
            self.img.commit_pending(&mut self.pend)?;
        }
        Ok(())
    }
}

/// The checks and first step both write-path calls share; `None`: nothing
/// to do.
fn begin(img: &mut VhdxImage, offset: u64, len: u64) -> Result<Option<WritePath<'_>>> {
    img.require_writable()?;
    img.check_range(offset, len)?;
    if len == 0 {
        return Ok(None);
    }
    if img.commit_threshold() == 0 {
        return Err(Error::Unsupported {
            file: img.name.clone(),
            message: "log too small to write through".into(),
        });
    }
    // Before the first change a reader could see.
    img.renew_data_write_guid()?;
    Ok(Some(WritePath {
        img,
        pend: Pending::default(),
    }))
}

impl WritePath<'_> {
    fn finish(mut self) -> Result<()> {
        if self.pend.is_empty() {
            // In-place payload writes only: make them durable.
            self.img.storage.flush().ctx(&self.img.name)?;
        }
        self.img.commit_pending(&mut self.pend)
    }
}

pub(crate) fn write_sectors(img: &mut VhdxImage, offset: u64, data: &[u8]) -> Result<()> {
    let Some(mut w) = begin(img, offset, data.len() as u64)? else {
        return Ok(());
    };
    placement::write(&mut w, offset, data.len() as u64, |done, n| {
        Payload::Bytes(&data[done as usize..(done + n) as usize])
    })?;
    w.finish()
}

pub(crate) fn zero_sectors(img: &mut VhdxImage, offset: u64, len: u64) -> Result<()> {
    let Some(mut w) = begin(img, offset, len)? else {
        return Ok(());
    };
    placement::zero(&mut w, offset, len)?;
    w.finish()
}
