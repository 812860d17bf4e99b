//! Entry validation and the active-sequence search (3.10).

use uuid::Uuid;

use super::data_sector::DataSector;
use super::descriptor::Descriptor;
use super::entry_header::{descriptor_sectors, LogEntryHeader, CHECKSUM_FIELD, SIGNATURE};
use super::{LogRing, MAX_TARGET_END, MIN_TARGET_OFFSET, SECTOR};
use crate::checksum::crc32c_zeroed;
use crate::Result;

/// A valid entry, decoded.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Ring position of the entry.
    pub pos: u64,
    pub header: LogEntryHeader,
    pub descriptors: Vec<Descriptor>,
    /// Data sectors in descriptor order (one per data descriptor).
    pub data_sectors: Vec<DataSector>,
}

/// Validate the bytes of one whole entry (EntryLength bytes read from the
/// ring). Returns why it is invalid otherwise.
pub fn parse_entry(
    bytes: &[u8],
    pos: u64,
    log_guid: Uuid,
    log_length: u64,
) -> std::result::Result<LogEntry, String> {
    let header = LogEntryHeader::decode(bytes).ok_or("entry shorter than its header")?;
    if header.signature != SIGNATURE {
        return Err("signature is not `loge`".into());
    }
    let len = u64::from(header.entry_length);
    if len == 0 || len % SECTOR != 0 || len > log_length {
        return Err(format!(
            "EntryLength {len} is not a non-zero 4 KiB multiple within the {log_length}-byte log"
        ));
    }
    if bytes.len() as u64 != len {
        return Err("entry bytes do not match EntryLength".into());
    }
    if header.sequence_number == 0 {
        return Err("SequenceNumber is 0".into());
    }
    if header.log_guid != log_guid {
        return Err("LogGuid differs from the header's".into());
    }
    if header.reserved != 0 {
        return Err("reserved field is not zero".into());
    }
    let tail = u64::from(header.tail);
    if tail % SECTOR != 0 || tail >= log_length {
        return Err(format!(
            "Tail {tail} is not a 4 KiB position inside the log"
        ));
    }
    let count = u64::from(header.descriptor_count);
    let sectors = len / SECTOR;
    let dsec = descriptor_sectors(count);
    if dsec > sectors {
        return Err(format!(
            "DescriptorCount {count} needs {dsec} sectors but the entry has {sectors}"
        ));
    }
    let mut descriptors = Vec::with_capacity(count as usize);
    let mut data_count = 0u64;
    for k in 0..count {
        let at = (64 + 32 * k) as usize;
        let d = bytes
            .get(at..at + 32)
            .and_then(Descriptor::decode)
            .ok_or_else(|| format!("descriptor {k} has an unknown signature"))?;
        if d.sequence_number() != header.sequence_number {
            return Err(format!("descriptor {k} has a different SequenceNumber"));
        }
        let (off, n) = match &d {
            Descriptor::Zero(z) => {
                if z.zero_length % SECTOR != 0 || z.reserved != 0 {
                    return Err(format!(
                        "zero descriptor {k}: ZeroLength not a 4 KiB multiple"
                    ));
                }
                (z.file_offset, z.zero_length)
            }
            Descriptor::Data(dd) => {
                data_count += 1;
                (dd.file_offset, SECTOR)
            }
        };
        let end = off.saturating_add(n);
        if off % SECTOR != 0 || off < MIN_TARGET_OFFSET || end > MAX_TARGET_END {
            return Err(format!(
                "descriptor {k}: FileOffset {off:#x} (+{n}) is not an allowed 4 KiB-aligned target"
            ));
        }
        descriptors.push(d);
    }
    if dsec + data_count > sectors {
        return Err(format!(
            "{data_count} data sectors do not fit in the entry after {dsec} descriptor sectors"
        ));
    }
    let mut data_sectors = Vec::with_capacity(data_count as usize);
    for i in 0..data_count {
        let at = ((dsec + i) * SECTOR) as usize;
        let ds = bytes
            .get(at..)
            .and_then(DataSector::decode)
            .ok_or("data sector outside entry")?;
        if ds.signature != super::data_sector::SIGNATURE {
            return Err(format!("data sector {i} signature is not `data`"));
        }
        if ds.sequence_number() != header.sequence_number {
            return Err(format!("data sector {i} has a different sequence number"));
        }
        data_sectors.push(ds);
    }
    let computed = crc32c_zeroed(bytes, CHECKSUM_FIELD);
    if computed != header.checksum {
        return Err(format!(
            "checksum mismatch (stored {:#010x}, computed {computed:#010x})",
            header.checksum
        ));
    }
    Ok(LogEntry {
        pos,
        header,
        descriptors,
        data_sectors,
    })
}

/// Read and validate the entry at ring position `pos`.
pub fn read_entry(
    ring: &LogRing<'_>,
    pos: u64,
    log_guid: Uuid,
) -> Result<std::result::Result<LogEntry, String>> {
    let mut first = vec![0u8; SECTOR as usize];
    ring.read(pos, &mut first)?;
    let Some(h) = LogEntryHeader::decode(&first) else {
        return Ok(Err("short".into()));
    };
    if h.signature != SIGNATURE {
        return Ok(Err("signature is not `loge`".into()));
    }
    if h.log_guid != log_guid {
        return Ok(Err("LogGuid differs from the header's".into()));
    }
    let len = u64::from(h.entry_length);
    if len == 0 || len % SECTOR != 0 || len > ring.length {
        return Ok(Err(format!(
            "EntryLength {len} is not a non-zero 4 KiB multiple within the {}-byte log",
            ring.length
        )));
    }
    // The length is bounded by the log, which is bounded by the file.
    let mut bytes = vec![0u8; len as usize];
    ring.read(pos, &mut bytes)?;
    Ok(parse_entry(&bytes, pos, log_guid, ring.length))
}

/// Summary of one entry of the active sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef {
    pub pos: u64,
    pub length: u64,
    pub sequence_number: u64,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

/// What the search found.
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    /// The active sequence, tail first; empty when none was found.
    pub active: Vec<EntryRef>,
    /// Why the first candidate entry was rejected (for diagnostics).
    pub first_rejection: Option<(u64, String)>,
}

/// Find the active sequence: the complete sequence (head's Tail inside the
/// run) whose head has the greatest SequenceNumber, scanning runs of
/// consecutive entries from every 4 KiB position, with wrap-around.
pub fn find_active_sequence(ring: &LogRing<'_>, log_guid: Uuid) -> Result<SearchResult> {
    let mut out = SearchResult::default();
    let mut best_head: Option<u64> = None;
    let mut pos = 0u64;
    // Every iteration advances pos by at least one sector, so the scan
    // ends after at most length/4096 iterations.
    while pos < ring.length {
        let mut run: Vec<EntryRef> = Vec::new();
        let mut p = pos;
        let mut covered = 0u64;
        let mut head_tail = 0u64;
        loop {
            let e = match read_entry(ring, p, log_guid)? {
                Ok(e) => e,
                Err(msg) => {
                    if run.is_empty()
                        && out.first_rejection.is_none()
                        && msg != "signature is not `loge`"
                    {
                        out.first_rejection = Some((ring.offset + p, msg));
                    }
                    break;
                }
            };
            if let Some(last) = run.last() {
                if e.header.sequence_number != last.sequence_number.wrapping_add(1) {
                    break;
                }
            }
            let len = u64::from(e.header.entry_length);
            if covered + len > ring.length {
                break;
            }
            covered += len;
            run.push(EntryRef {
                pos: p,
                length: len,
                sequence_number: e.header.sequence_number,
                flushed_file_offset: e.header.flushed_file_offset,
                last_file_offset: e.header.last_file_offset,
            });
            p = (p + len) % ring.length;
            head_tail = u64::from(e.header.tail);
        }
        // Complete when the head's Tail names an entry of the run.
        if let Some(head) = run.last() {
            if let Some(ti) = run.iter().position(|r| r.pos == head_tail) {
                if best_head.is_none_or(|b| head.sequence_number > b) {
                    best_head = Some(head.sequence_number);
                    out.active = run[ti..].to_vec();
                }
            }
        }
        pos = if run.is_empty() {
            pos + SECTOR
        } else {
            pos + covered
        };
    }
    Ok(out)
}
