//! Writing one log entry: descriptors for whole 4 KiB target sectors,
//! always as a single-entry sequence at ring position 0 (Tail = itself).
//!
//! The callers own the ordering (entry, flush, header commit, apply);
//! this module only lays out and writes the bytes.

use uuid::Uuid;

use super::data_sector::DataSector;
use super::descriptor::{DataDescriptor, DATA_SIGNATURE};
use super::entry_header::{descriptor_sectors, LogEntryHeader, SIGNATURE};
use super::SECTOR;
use crate::error::IoContext;
use crate::{Result, Storage};

/// The target sectors of one entry, produced on demand so that large
/// entries are never held in memory at once.
pub trait SectorSource {
    fn count(&self) -> u64;
    /// The file offset of sector `i` and its new contents.
    fn sector(&self, i: u64, buf: &mut [u8; 4096]) -> Result<u64>;
}

/// A small in-memory set of sectors, sorted by file offset.
impl SectorSource for std::collections::BTreeMap<u64, Box<[u8; 4096]>> {
    fn count(&self) -> u64 {
        self.len() as u64
    }
    fn sector(&self, i: u64, buf: &mut [u8; 4096]) -> Result<u64> {
        let (off, data) = self
            .iter()
            .nth(i as usize)
            .ok_or_else(|| crate::Error::InvalidParameter("sector index".into()))?;
        buf.copy_from_slice(&data[..]);
        Ok(*off)
    }
}

/// Bytes an entry with `n` data sectors takes in the log.
pub fn entry_length(n: u64) -> u64 {
    (descriptor_sectors(n) + n) * SECTOR
}

/// Most data sectors an entry may carry in a log of `log_length` bytes.
pub fn max_sectors(log_length: u64) -> u64 {
    let total = log_length / SECTOR;
    let mut n = total.saturating_sub(1);
    while n > 0 && entry_length(n) > log_length {
        n -= 1;
    }
    n
}

pub struct EntryParams {
    pub log_guid: Uuid,
    pub sequence_number: u64,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

/// Write the entry at the start of the log area `[log_offset, +log_length)`.
/// Data sectors are written first and the descriptor sectors (with the CRC
/// over everything) last. The caller flushes.
pub fn write_entry(
    storage: &dyn Storage,
    name: &str,
    log_offset: u64,
    log_length: u64,
    p: &EntryParams,
    src: &dyn SectorSource,
) -> Result<()> {
    let n = src.count();
    let len = entry_length(n);
    if len > log_length || len > u64::from(u32::MAX) {
        return Err(crate::Error::InvalidParameter(format!(
            "log entry of {len} bytes does not fit the {log_length}-byte log"
        )));
    }
    let dsec = descriptor_sectors(n);
    let mut desc_area = vec![0u8; (dsec * SECTOR) as usize];
    let mut sector = [0u8; 4096];
    // Pass 1: descriptors (leading/trailing bytes of every target sector).
    for i in 0..n {
        let off = src.sector(i, &mut sector)?;
        let (_, lead, trail) = DataSector::split(&sector, p.sequence_number);
        let d = DataDescriptor {
            signature: DATA_SIGNATURE,
            trailing_bytes: trail,
            leading_bytes: lead,
            file_offset: off,
            sequence_number: p.sequence_number,
        };
        let at = (64 + 32 * i) as usize;
        desc_area[at..at + 32].copy_from_slice(&d.encode());
    }
    let mut h = LogEntryHeader {
        signature: SIGNATURE,
        checksum: 0,
        entry_length: len as u32,
        tail: 0,
        sequence_number: p.sequence_number,
        descriptor_count: n as u32,
        reserved: 0,
        log_guid: p.log_guid,
        flushed_file_offset: p.flushed_file_offset,
        last_file_offset: p.last_file_offset,
    };
    desc_area[..64].copy_from_slice(&h.encode());
    let mut crc = crate::checksum::crc32c(&desc_area);
    // Pass 2: data sectors, streamed to the log and into the CRC.
    for i in 0..n {
        src.sector(i, &mut sector)?;
        let (ds, _, _) = DataSector::split(&sector, p.sequence_number);
        let bytes = ds.encode();
        crc = crate::checksum::crc32c_append(crc, &bytes);
        storage
            .write_at(&bytes, log_offset + (dsec + i) * SECTOR)
            .ctx(name)?;
    }
    h.checksum = crc;
    desc_area[..64].copy_from_slice(&h.encode());
    storage.write_at(&desc_area, log_offset).ctx(name)?;
    Ok(())
}

/// Apply the same sectors in place (step 3 of the log procedure). The
/// caller flushes.
pub fn apply_in_place(storage: &dyn Storage, name: &str, src: &dyn SectorSource) -> Result<()> {
    let mut sector = [0u8; 4096];
    for i in 0..src.count() {
        let off = src.sector(i, &mut sector)?;
        storage.write_at(&sector, off).ctx(name)?;
    }
    Ok(())
}
