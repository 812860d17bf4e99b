//! Sectors written in place behind the log: the "journal" strategy for
//! blocks a destination already holds when a batch replaces only part of
//! them on a file system that cannot share extents.
//!
//! Rebuilding such a block copy-on-write writes it whole twice (the fresh
//! copy, then compaction's move back into the old place); through the log
//! only the replaced 4 KiB sectors are written twice (into the log, then
//! in place) and nothing moves.
//!
//! The spool writes a sequence of entries (MS-VHDX 2.3.3: data descriptors,
//! sequence numbers s, s+1, ..., every Tail at ring position 0) into a log
//! area in fresh space that nothing references before the commit. The
//! batch appends its commit entry (BAT, bitmaps, metadata) as the head of
//! the same sequence; the header that names this area and the LogGuid is
//! the commit point. Replay, after the commit or on the next open after a
//! crash, applies the entries in order, so the latest copy of a sector
//! wins: a sector rewritten after its entry went out is simply spooled
//! again.

use std::collections::HashMap;

use uuid::Uuid;

use super::data_sector::{self, DataSector};
use super::descriptor::{DataDescriptor, DATA_SIGNATURE};
use super::entry_header::{descriptor_sectors, LogEntryHeader, SIGNATURE};
use super::sequence::EntryRef;
use super::SECTOR;
use crate::combine::Payload;
use crate::error::IoContext;
use crate::storage::AlignedBuf;
use crate::{Error, Result, Storage};

/// Data sectors per spooled entry: 1022 fill exactly 8 descriptor sectors,
/// so an entry is 4 MiB of data in one write; images of blocks smaller
/// than 4 MiB take 126 (one descriptor sector, 504 KiB), so that the
/// entries of one block's sectors stay a fraction of it.
const ENTRY_SECTORS: usize = 1022;
const SMALL_ENTRY_SECTORS: usize = 126;

/// Data sectors per entry for blocks of `block_size` bytes.
pub(crate) fn entry_sectors(block_size: u64) -> usize {
    if block_size >= 4 << 20 {
        ENTRY_SECTORS
    } else {
        SMALL_ENTRY_SECTORS
    }
}

pub(crate) struct LogSpool {
    /// File offset of the log area (ring position 0).
    area: u64,
    /// Bytes of the area the spool may fill, the commit entry's room aside.
    capacity: u64,
    log_guid: Uuid,
    flushed_file_offset: u64,
    last_file_offset: u64,
    /// Entries written, in sequence order, and their data sector counts.
    entries: Vec<EntryRef>,
    counts: Vec<u64>,
    /// Ring position of the next entry.
    used: u64,
    /// Sequence number of the next entry.
    next_seq: u64,
    /// Bytes promised to admitted blocks (`admit`).
    promised: u64,
    /// Data sectors an entry carries (`entry_sectors`).
    per_entry: usize,
    /// The open entry: target sectors' new contents, slot by slot (page
    /// aligned: a whole entry's data then goes to the device directly,
    /// see `FileStorage::write_at`).
    data: Option<AlignedBuf>,
    targets: Vec<u64>,
    slot_of: HashMap<u64, u32>,
    /// Which target sectors went out in a written entry: a bit per 4 KiB
    /// sector, 64 to a word (about 32 KiB per GiB spooled, where a map
    /// of their places would take megabytes). Only a sector written in
    /// part after its entry went out needs its latest copy back, which is
    /// rare (a run edge inside a 4 KiB sector, its entry written in
    /// between): that copy is then found in the entries' descriptors.
    spooled: HashMap<u64, u64>,
}

/// Bytes a log takes for `n` data sectors spooled in full entries (the
/// descriptor sectors included).
pub(crate) fn log_bytes_for(data: u64, per_entry: usize) -> u64 {
    let sectors = data.div_ceil(SECTOR);
    let entries = sectors.div_ceil(per_entry as u64);
    (sectors + entries * descriptor_sectors(per_entry as u64)) * SECTOR
}

impl LogSpool {
    /// A spool writing at `area`, at most `capacity` bytes. The entries
    /// carry `flushed_file_offset` / `last_file_offset` of the file as it
    /// is with the area reserved.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        area: u64,
        capacity: u64,
        per_entry: usize,
        log_guid: Uuid,
        first_seq: u64,
        flushed_file_offset: u64,
        last_file_offset: u64,
    ) -> LogSpool {
        LogSpool {
            area,
            capacity,
            log_guid,
            flushed_file_offset,
            last_file_offset,
            entries: Vec::new(),
            counts: Vec::new(),
            used: 0,
            next_seq: first_seq.max(1),
            promised: 0,
            per_entry,
            data: None,
            targets: Vec::new(),
            slot_of: HashMap::new(),
            spooled: HashMap::new(),
        }
    }

    /// Promise room for `bytes` of a block's sectors; false (nothing
    /// promised) when the area cannot hold them, and the block is then
    /// rebuilt copy-on-write instead.
    pub(crate) fn admit(&mut self, bytes: u64) -> bool {
        let per = self.per_entry;
        let need = log_bytes_for(bytes, per) + descriptor_sectors(per as u64) * SECTOR;
        if self.promised.saturating_add(need) > self.capacity {
            return false;
        }
        self.promised += need;
        true
    }

    /// Stage `p` at file offset `at` (whole logical sectors) to be written
    /// in place at the commit. `st` is the image's file: a sector only
    /// partly written starts from its current contents.
    pub(crate) fn put(
        &mut self,
        st: &dyn Storage,
        name: &str,
        at: u64,
        p: Payload<'_>,
    ) -> Result<()> {
        let len = p.len();
        let mut done = 0u64;
        while done < len {
            let a = at + done;
            let sec = a / SECTOR * SECTOR;
            let within = (a - sec) as usize;
            if within == 0 && len - done >= SECTOR && !self.slot_of.contains_key(&sec) {
                // Whole sectors not in the open entry: consecutive fresh
                // slots, filled by one read.
                let room = self.per_entry - self.targets.len();
                let mut k = 0usize;
                let whole = ((len - done) / SECTOR) as usize;
                while k < whole.min(room) && !self.slot_of.contains_key(&(sec + k as u64 * SECTOR))
                {
                    k += 1;
                }
                if k == 0 {
                    self.emit(st, name)?;
                    continue;
                }
                let first = self.targets.len();
                for j in 0..k {
                    let t = sec + j as u64 * SECTOR;
                    self.slot_of.insert(t, (first + j) as u32);
                    self.targets.push(t);
                }
                let s = first * SECTOR as usize;
                let e = s + k * SECTOR as usize;
                p.read_part(done, &mut self.data()[s..e]).ctx(name)?;
                done += k as u64 * SECTOR;
                continue;
            }
            let n = (SECTOR - within as u64).min(len - done);
            let slot = self.slot(st, name, sec, within == 0 && n == SECTOR)?;
            let s = slot * SECTOR as usize + within;
            p.read_part(done, &mut self.data()[s..s + n as usize])
                .ctx(name)?;
            done += n;
        }
        Ok(())
    }

    /// The open entry's slot for target `sec`, holding its latest contents
    /// unless the caller overwrites it whole.
    fn slot(&mut self, st: &dyn Storage, name: &str, sec: u64, whole: bool) -> Result<usize> {
        if let Some(&s) = self.slot_of.get(&sec) {
            return Ok(s as usize);
        }
        if self.targets.len() == self.per_entry {
            self.emit(st, name)?;
        }
        let slot = self.targets.len();
        let s = slot * SECTOR as usize;
        if !whole {
            let mut base = [0u8; SECTOR as usize];
            let (word, bit) = (sec / SECTOR / 64, sec / SECTOR % 64);
            if self.spooled.get(&word).is_some_and(|w| w >> bit & 1 == 1) {
                self.read_back(st, name, sec, &mut base)?;
            } else {
                st.read_at(&mut base, sec).ctx(name)?;
            }
            self.data()[s..s + SECTOR as usize].copy_from_slice(&base);
        }
        self.slot_of.insert(sec, slot as u32);
        self.targets.push(sec);
        Ok(slot)
    }

    /// The latest spooled copy of target sector `sec`: the newest written
    /// entry whose descriptors name it.
    fn read_back(
        &self,
        st: &dyn Storage,
        name: &str,
        sec: u64,
        out: &mut [u8; 4096],
    ) -> Result<()> {
        let mut desc = Vec::new();
        for (e, &n) in self.entries.iter().zip(&self.counts).rev() {
            let dsec = descriptor_sectors(n);
            let base = self.area + e.pos;
            desc.resize((dsec * SECTOR) as usize, 0);
            st.read_at(&mut desc, base).ctx(name)?;
            for slot in (0..n).rev() {
                let at = (64 + 32 * slot) as usize;
                let Some(d) = DataDescriptor::decode(&desc[at..at + 32]) else {
                    continue;
                };
                if d.file_offset != sec {
                    continue;
                }
                let mut ds = [0u8; SECTOR as usize];
                st.read_at(&mut ds, base + (dsec + slot) * SECTOR)
                    .ctx(name)?;
                let ds = DataSector::decode(&ds).ok_or_else(|| {
                    Error::InvalidParameter(format!(
                        "{name}: a spooled log sector did not read back"
                    ))
                })?;
                *out = ds.join(&d.leading_bytes, &d.trailing_bytes);
                return Ok(());
            }
        }
        Err(Error::InvalidParameter(format!(
            "{name}: spooled sector {sec:#x} not found in the log area"
        )))
    }

    /// The open entry's sector contents.
    fn data(&mut self) -> &mut [u8] {
        self.data
            .get_or_insert_with(|| AlignedBuf::zeroed(self.per_entry * SECTOR as usize))
            .as_mut_slice()
    }

    /// Write the open entry now (`prepare`: staged bytes reach the file).
    pub(crate) fn write_open(&mut self, st: &dyn Storage, name: &str) -> Result<()> {
        self.emit(st, name)
    }

    /// Write the open entry into the area.
    fn emit(&mut self, st: &dyn Storage, name: &str) -> Result<()> {
        let n = self.targets.len();
        if n == 0 {
            return Ok(());
        }
        let seq = self.next_seq;
        let dsec = descriptor_sectors(n as u64);
        let len = (dsec + n as u64) * SECTOR;
        if self.used + len > self.capacity || len > u64::from(u32::MAX) {
            return Err(Error::InvalidParameter(format!(
                "{name}: the in-place log area ({} bytes) is full",
                self.capacity
            )));
        }
        let mut desc = vec![0u8; (dsec * SECTOR) as usize];
        let data = self
            .data
            .get_or_insert_with(|| AlignedBuf::zeroed(self.per_entry * SECTOR as usize))
            .as_mut_slice();
        let (sectors, _) = data.as_chunks_mut::<4096>();
        for (i, (sector, &t)) in sectors.iter_mut().zip(&self.targets).enumerate() {
            let (leading_bytes, trailing_bytes) = data_sector::frame(sector, seq);
            let d = DataDescriptor {
                signature: DATA_SIGNATURE,
                trailing_bytes,
                leading_bytes,
                file_offset: t,
                sequence_number: seq,
            };
            let at = 64 + 32 * i;
            desc[at..at + 32].copy_from_slice(&d.encode());
        }
        let data = &data[..n * SECTOR as usize];
        let mut h = LogEntryHeader {
            signature: SIGNATURE,
            checksum: 0,
            entry_length: len as u32,
            tail: 0,
            sequence_number: seq,
            descriptor_count: n as u32,
            reserved: 0,
            log_guid: self.log_guid,
            flushed_file_offset: self.flushed_file_offset,
            last_file_offset: self.last_file_offset,
        };
        desc[..64].copy_from_slice(&h.encode());
        h.checksum = crate::checksum::crc32c_append(crate::checksum::crc32c(&desc), data);
        desc[..64].copy_from_slice(&h.encode());
        let at = self.area + self.used;
        st.write_at(data, at + dsec * SECTOR).ctx(name)?;
        st.write_at(&desc, at).ctx(name)?;
        for &t in &self.targets {
            *self.spooled.entry(t / SECTOR / 64).or_insert(0) |= 1 << (t / SECTOR % 64);
        }
        self.entries.push(EntryRef {
            pos: self.used,
            length: len,
            sequence_number: seq,
            flushed_file_offset: self.flushed_file_offset,
            last_file_offset: self.last_file_offset,
        });
        self.counts.push(n as u64);
        self.used += len;
        self.next_seq += 1;
        self.targets.clear();
        self.slot_of.clear();
        Ok(())
    }

    /// Write what is still open; the spooled entries (tail first), the
    /// ring position and the sequence number the commit entry takes.
    pub(crate) fn finish(mut self, st: &dyn Storage, name: &str) -> Result<SpoolDone> {
        self.emit(st, name)?;
        Ok(SpoolDone {
            area: self.area,
            entries: self.entries,
            counts: self.counts,
            used: self.used,
            next_seq: self.next_seq,
            log_guid: self.log_guid,
        })
    }
}

/// A finished spool: what the commit entry joins.
pub(crate) struct SpoolDone {
    pub area: u64,
    pub entries: Vec<EntryRef>,
    /// Data sectors of each entry.
    pub counts: Vec<u64>,
    pub used: u64,
    pub next_seq: u64,
    pub log_guid: Uuid,
}

impl SpoolDone {
    /// Step 3 of the log procedure for the spooled entries: every sector
    /// in place, in sequence order, what a replay does (`log::replay`),
    /// but one read per entry into one reused buffer and one write per
    /// run of consecutive targets: no per-sector copies. Each entry is
    /// checked against its checksum first.
    pub(crate) fn apply(&self, st: &dyn Storage, name: &str) -> Result<()> {
        // Page aligned, so the runs (4 KiB multiples at page offsets of
        // it) go to the device directly like the entries did.
        let most = self.entries.iter().map(|e| e.length).max().unwrap_or(0);
        let mut whole = AlignedBuf::zeroed(most as usize);
        for (e, &n) in self.entries.iter().zip(&self.counts) {
            let at = self.area + e.pos;
            let buf = &mut whole.as_mut_slice()[..e.length as usize];
            st.read_at(buf, at).ctx(name)?;
            let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if crate::checksum::crc32c_zeroed(buf, super::entry_header::CHECKSUM_FIELD) != stored {
                return Err(Error::corrupt(
                    crate::CorruptionKind::LogEntryInvalid,
                    name,
                    "log entry",
                    at,
                    "a spooled entry changed before it was applied (checksum mismatch)",
                ));
            }
            let dsec = descriptor_sectors(n) as usize;
            let sec = SECTOR as usize;
            let (desc, data) = buf.split_at_mut(dsec * sec);
            let (sectors, _) = data.as_chunks_mut::<4096>();
            let mut targets = Vec::with_capacity(n as usize);
            for (i, sector) in sectors.iter_mut().take(n as usize).enumerate() {
                let d =
                    DataDescriptor::decode(&desc[64 + 32 * i..96 + 32 * i]).ok_or_else(|| {
                        Error::InvalidParameter(format!(
                            "{name}: a spooled descriptor did not read back"
                        ))
                    })?;
                data_sector::unframe(sector, &d.leading_bytes, &d.trailing_bytes);
                targets.push(d.file_offset);
            }
            let mut i = 0;
            while i < targets.len() {
                let mut j = i + 1;
                while j < targets.len() && targets[j] == targets[j - 1] + SECTOR {
                    j += 1;
                }
                st.write_at(&data[i * sec..j * sec], targets[i]).ctx(name)?;
                i = j;
            }
        }
        Ok(())
    }
}
