//! Entry validation and the active-sequence search (3.10).

use uuid::Uuid;

use super::data_sector::DataSector;
use super::descriptor::Descriptor;
use super::entry_header::{descriptor_sectors, LogEntryHeader, CHECKSUM_FIELD, SIGNATURE};
use super::{LogRing, MAX_TARGET_END, MIN_TARGET_OFFSET, SECTOR};
use crate::checksum::crc32c_zeroed;
use crate::{CorruptionKind, Result};

/// Why the bytes at a ring position are not a valid log entry (3.10's
/// rules, in the order they are checked). Typed so that callers decide on
/// the variant (an empty position is [`EntryRejection::NoSignature`], not
/// damage), and printed as the message a finding carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRejection {
    /// Fewer bytes than an entry header.
    Short,
    /// No `loge` signature: an unused or overwritten position.
    NoSignature,
    /// EntryLength is zero, not a 4 KiB multiple or longer than the log.
    EntryLength {
        len: u64,
        log_length: u64,
    },
    /// The bytes read are not EntryLength long.
    LengthMismatch,
    ZeroSequenceNumber,
    LogGuidMismatch,
    ReservedNotZero,
    /// Tail is not a 4 KiB position inside the log.
    Tail {
        tail: u64,
    },
    /// The descriptors need more sectors than the entry has.
    DescriptorCount {
        count: u64,
        needed: u64,
        sectors: u64,
    },
    DescriptorSignature {
        index: u64,
    },
    DescriptorSequenceNumber {
        index: u64,
    },
    ZeroLength {
        index: u64,
    },
    /// A descriptor's target is not an allowed 4 KiB-aligned range.
    Target {
        index: u64,
        offset: u64,
        len: u64,
    },
    /// The data sectors do not fit after the descriptor sectors.
    DataSectorCount {
        count: u64,
        descriptor_sectors: u64,
    },
    DataSectorOutside,
    DataSectorSignature {
        index: u64,
    },
    DataSectorSequenceNumber {
        index: u64,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
}

impl EntryRejection {
    /// The kind of a finding or error about an entry rejected this way.
    pub fn kind(&self) -> CorruptionKind {
        CorruptionKind::LogEntryInvalid
    }
}

impl std::fmt::Display for EntryRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use EntryRejection as R;
        match self {
            R::Short => write!(f, "entry shorter than its header"),
            R::NoSignature => write!(f, "signature is not `loge`"),
            R::EntryLength { len, log_length } => write!(
                f,
                "EntryLength {len} is not a non-zero 4 KiB multiple within the {log_length}-byte log"
            ),
            R::LengthMismatch => write!(f, "entry bytes do not match EntryLength"),
            R::ZeroSequenceNumber => write!(f, "SequenceNumber is 0"),
            R::LogGuidMismatch => write!(f, "LogGuid differs from the header's"),
            R::ReservedNotZero => write!(f, "reserved field is not zero"),
            R::Tail { tail } => write!(f, "Tail {tail} is not a 4 KiB position inside the log"),
            R::DescriptorCount {
                count,
                needed,
                sectors,
            } => write!(
                f,
                "DescriptorCount {count} needs {needed} sectors but the entry has {sectors}"
            ),
            R::DescriptorSignature { index } => {
                write!(f, "descriptor {index} has an unknown signature")
            }
            R::DescriptorSequenceNumber { index } => {
                write!(f, "descriptor {index} has a different SequenceNumber")
            }
            R::ZeroLength { index } => write!(
                f,
                "zero descriptor {index}: ZeroLength not a 4 KiB multiple"
            ),
            R::Target { index, offset, len } => write!(
                f,
                "descriptor {index}: FileOffset {offset:#x} (+{len}) is not an allowed 4 KiB-aligned target"
            ),
            R::DataSectorCount {
                count,
                descriptor_sectors,
            } => write!(
                f,
                "{count} data sectors do not fit in the entry after {descriptor_sectors} descriptor sectors"
            ),
            R::DataSectorOutside => write!(f, "data sector outside entry"),
            R::DataSectorSignature { index } => {
                write!(f, "data sector {index} signature is not `data`")
            }
            R::DataSectorSequenceNumber { index } => {
                write!(f, "data sector {index} has a different sequence number")
            }
            R::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

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
) -> std::result::Result<LogEntry, EntryRejection> {
    use EntryRejection as R;
    let header = LogEntryHeader::decode(bytes).ok_or(R::Short)?;
    if header.signature != SIGNATURE {
        return Err(R::NoSignature);
    }
    let len = u64::from(header.entry_length);
    if len == 0 || len % SECTOR != 0 || len > log_length {
        return Err(R::EntryLength { len, log_length });
    }
    if bytes.len() as u64 != len {
        return Err(R::LengthMismatch);
    }
    if header.sequence_number == 0 {
        return Err(R::ZeroSequenceNumber);
    }
    if header.log_guid != log_guid {
        return Err(R::LogGuidMismatch);
    }
    if header.reserved != 0 {
        return Err(R::ReservedNotZero);
    }
    let tail = u64::from(header.tail);
    if tail % SECTOR != 0 || tail >= log_length {
        return Err(R::Tail { tail });
    }
    let count = u64::from(header.descriptor_count);
    let sectors = len / SECTOR;
    let dsec = descriptor_sectors(count);
    if dsec > sectors {
        return Err(R::DescriptorCount {
            count,
            needed: dsec,
            sectors,
        });
    }
    let mut descriptors = Vec::with_capacity(count as usize);
    let mut data_count = 0u64;
    for k in 0..count {
        let at = (64 + 32 * k) as usize;
        let d = bytes
            .get(at..at + 32)
            .and_then(Descriptor::decode)
            .ok_or(R::DescriptorSignature { index: k })?;
        if d.sequence_number() != header.sequence_number {
            return Err(R::DescriptorSequenceNumber { index: k });
        }
        let (off, n) = match &d {
            Descriptor::Zero(z) => {
                if z.zero_length % SECTOR != 0 || z.reserved != 0 {
                    return Err(R::ZeroLength { index: k });
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
            return Err(R::Target {
                index: k,
                offset: off,
                len: n,
            });
        }
        descriptors.push(d);
    }
    if dsec + data_count > sectors {
        return Err(R::DataSectorCount {
            count: data_count,
            descriptor_sectors: dsec,
        });
    }
    let mut data_sectors = Vec::with_capacity(data_count as usize);
    for i in 0..data_count {
        let at = ((dsec + i) * SECTOR) as usize;
        let ds = bytes
            .get(at..)
            .and_then(DataSector::decode)
            .ok_or(R::DataSectorOutside)?;
        if ds.signature != super::data_sector::SIGNATURE {
            return Err(R::DataSectorSignature { index: i });
        }
        if ds.sequence_number() != header.sequence_number {
            return Err(R::DataSectorSequenceNumber { index: i });
        }
        data_sectors.push(ds);
    }
    let computed = crc32c_zeroed(bytes, CHECKSUM_FIELD);
    if computed != header.checksum {
        return Err(R::Checksum {
            stored: header.checksum,
            computed,
        });
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
) -> Result<std::result::Result<LogEntry, EntryRejection>> {
    let mut first = vec![0u8; SECTOR as usize];
    ring.read(pos, &mut first)?;
    let Some(h) = LogEntryHeader::decode(&first) else {
        return Ok(Err(EntryRejection::Short));
    };
    if h.signature != SIGNATURE {
        return Ok(Err(EntryRejection::NoSignature));
    }
    if h.log_guid != log_guid {
        return Ok(Err(EntryRejection::LogGuidMismatch));
    }
    let len = u64::from(h.entry_length);
    if len == 0 || len % SECTOR != 0 || len > ring.length {
        return Ok(Err(EntryRejection::EntryLength {
            len,
            log_length: ring.length,
        }));
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
    /// Where the first candidate entry was and why it was rejected (for
    /// diagnostics; a position without a signature is no candidate).
    pub first_rejection: Option<(u64, EntryRejection)>,
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
                Err(why) => {
                    if run.is_empty()
                        && out.first_rejection.is_none()
                        && why != EntryRejection::NoSignature
                    {
                        out.first_rejection = Some((ring.offset + p, why));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::checksum::crc32c_zeroed;
    use crate::storage::{MemStorage, Storage};
    use crate::vhdx::log::writer::{write_entry, EntryParams};

    const LOG_LENGTH: u64 = 1 << 20;

    /// The bytes of one valid entry carrying two data sectors.
    fn entry(guid: Uuid) -> Vec<u8> {
        let st = MemStorage::default();
        let mut sectors: BTreeMap<u64, Box<[u8; 4096]>> = BTreeMap::new();
        sectors.insert(MIN_TARGET_OFFSET, Box::new([7u8; 4096]));
        sectors.insert(MIN_TARGET_OFFSET + SECTOR, Box::new([9u8; 4096]));
        let p = EntryParams {
            log_guid: guid,
            sequence_number: 5,
            flushed_file_offset: 4 << 20,
            last_file_offset: 4 << 20,
        };
        write_entry(&st, "t", 0, LOG_LENGTH, &p, &sectors).expect("entry written");
        let mut b = vec![0u8; 3 * SECTOR as usize];
        st.read_at(&mut b, 0).expect("entry read");
        b
    }

    /// `bytes` with `edit` applied and the checksum made right again, so
    /// that the rule under test, not the CRC, rejects it.
    fn damaged(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = bytes.to_vec();
        edit(&mut b);
        let crc = crc32c_zeroed(&b, CHECKSUM_FIELD);
        b[CHECKSUM_FIELD..CHECKSUM_FIELD + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Each rule of 3.10 rejects with its own variant (and an empty
    /// position is told apart from damage by the variant, not by text).
    #[test]
    fn every_rule_rejects_with_its_own_variant() {
        let guid = Uuid::from_u128(0x1234);
        let good = entry(guid);
        let len = good.len() as u64;
        assert!(parse_entry(&good, 0, guid, LOG_LENGTH).is_ok());
        // One data bit changed, the stored checksum kept.
        let mut flipped = good.clone();
        flipped[4096 + 100] ^= 1;
        let cases: Vec<(&str, Vec<u8>, EntryRejection)> = vec![
            (
                "no signature",
                vec![0u8; len as usize],
                EntryRejection::NoSignature,
            ),
            (
                "other LogGuid",
                good.clone(),
                EntryRejection::LogGuidMismatch,
            ),
            (
                "sequence 0",
                damaged(&good, |b| b[16..24].fill(0)),
                EntryRejection::ZeroSequenceNumber,
            ),
            (
                "tail off a sector",
                damaged(&good, |b| b[12..16].copy_from_slice(&100u32.to_le_bytes())),
                EntryRejection::Tail { tail: 100 },
            ),
            (
                "descriptor signature",
                damaged(&good, |b| b[64..68].copy_from_slice(b"xxxx")),
                EntryRejection::DescriptorSignature { index: 0 },
            ),
            (
                "data sector signature",
                damaged(&good, |b| b[4096..4100].copy_from_slice(b"xxxx")),
                EntryRejection::DataSectorSignature { index: 0 },
            ),
            (
                "checksum",
                flipped.clone(),
                EntryRejection::Checksum {
                    stored: u32::from_le_bytes([good[4], good[5], good[6], good[7]]),
                    computed: crc32c_zeroed(&flipped, CHECKSUM_FIELD),
                },
            ),
        ];
        for (what, bytes, want) in cases {
            let g = if what == "other LogGuid" {
                Uuid::from_u128(0x9999)
            } else {
                guid
            };
            let got = parse_entry(&bytes, 0, g, LOG_LENGTH).err();
            assert_eq!(got, Some(want.clone()), "{what}");
            assert_eq!(want.kind(), CorruptionKind::LogEntryInvalid, "{what}");
        }
    }
}
