//! The region table (two 64 KiB copies at 192 KiB and 256 KiB): where the
//! BAT and metadata regions live.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{guid_from_le, le_codec, overlaps, read_vec, MIB};
use crate::checksum::crc32c_zeroed;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

pub const SIGNATURE: [u8; 4] = *b"regi";
pub const SIZE: usize = 64 * 1024;
pub const COPY_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
pub const MAX_ENTRIES: u32 = 2047;
const CHECKSUM_FIELD: usize = 4;

pub const BAT_GUID: Uuid = uuid::uuid!("2DC27766-F623-4200-9D64-115E9BFD4A08");
pub const METADATA_GUID: Uuid = uuid::uuid!("8B7CA206-4790-4B9A-B8FE-575F050F886E");

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableHeader {
    pub signature: [u8; 4],
    pub checksum: u32,
    pub entry_count: u32,
    pub reserved: u32,
}
le_codec!(RegionTableHeader, 16);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableEntry {
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub guid: Uuid,
    pub file_offset: u64,
    pub length: u32,
    pub required: u32,
}
le_codec!(RegionTableEntry, 32);

impl RegionTableEntry {
    pub fn is_required(&self) -> bool {
        self.required & 1 != 0
    }
}

/// A whole region table copy: header, entries, and the raw 64 KiB (kept so
/// that unknown reserved bytes survive a rewrite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    pub header: RegionTableHeader,
    pub entries: Vec<RegionTableEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionTableError {
    Signature,
    Checksum { stored: u32, computed: u32 },
    TooManyEntries(u32),
}

impl RegionTable {
    pub fn new(entries: Vec<RegionTableEntry>) -> Self {
        RegionTable {
            header: RegionTableHeader {
                signature: SIGNATURE,
                checksum: 0,
                entry_count: entries.len() as u32,
                reserved: 0,
            },
            entries,
        }
    }

    /// Parse a 64 KiB copy. With `ignore_checksums` a CRC mismatch is
    /// returned alongside the table instead of failing.
    pub fn parse(
        bytes: &[u8],
        ignore_checksums: bool,
    ) -> Result<(Self, Option<RegionTableError>), RegionTableError> {
        let bytes = bytes.get(..SIZE).ok_or(RegionTableError::Signature)?;
        let header = RegionTableHeader::decode(bytes).ok_or(RegionTableError::Signature)?;
        if header.signature != SIGNATURE {
            return Err(RegionTableError::Signature);
        }
        let computed = crc32c_zeroed(bytes, CHECKSUM_FIELD);
        let mut soft = None;
        if computed != header.checksum {
            let e = RegionTableError::Checksum {
                stored: header.checksum,
                computed,
            };
            if !ignore_checksums {
                return Err(e);
            }
            soft = Some(e);
        }
        if header.entry_count > MAX_ENTRIES {
            return Err(RegionTableError::TooManyEntries(header.entry_count));
        }
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for i in 0..header.entry_count as usize {
            let at = 16 + 32 * i;
            let e = bytes
                .get(at..)
                .and_then(RegionTableEntry::decode)
                .ok_or(RegionTableError::TooManyEntries(header.entry_count))?;
            entries.push(e);
        }
        Ok((RegionTable { header, entries }, soft))
    }

    /// The 64 KiB copy with entry count and checksum filled in.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = self.header.clone();
        h.entry_count = self.entries.len() as u32;
        h.checksum = 0;
        let entries = self.entries.iter().map(|e| e.encode());
        let mut v = super::codec::table_bytes(SIZE, &h.encode(), entries);
        let crc = crc32c_zeroed(&v, CHECKSUM_FIELD);
        v[4..8].copy_from_slice(&crc.to_le_bytes());
        v
    }

    pub fn find(&self, guid: Uuid) -> Option<&RegionTableEntry> {
        self.entries.iter().find(|e| e.guid == guid)
    }

    pub fn find_mut(&mut self, guid: Uuid) -> Option<&mut RegionTableEntry> {
        self.entries.iter_mut().find(|e| e.guid == guid)
    }
}

impl RegionTableHeader {
    pub const ENTRY_COUNT_OFFSET: u64 = 8;
}

impl RegionTableEntry {
    /// Offset of entry `i` in a copy.
    pub fn offset_in_table(i: usize) -> u64 {
        16 + 32 * i as u64
    }
}

impl RegionTableError {
    pub fn kind(&self) -> CorruptionKind {
        match self {
            RegionTableError::Signature => CorruptionKind::RegionTableSignature,
            RegionTableError::Checksum { .. } => CorruptionKind::RegionTableChecksum,
            RegionTableError::TooManyEntries(_) => CorruptionKind::RegionTableEntryCount,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RegionTableError::Signature => "signature is not `regi`".into(),
            RegionTableError::Checksum { stored, computed } => {
                format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            RegionTableError::TooManyEntries(n) => format!("EntryCount {n} exceeds 2047"),
        }
    }

    /// The error for the copy at `off`.
    pub fn to_error(&self, name: &str, off: u64) -> Error {
        match *self {
            RegionTableError::Checksum { stored, computed } => Error::Checksum {
                file: name.into(),
                structure: "region table",
                offset: off,
                kind: CorruptionKind::RegionTableChecksum,
                stored,
                computed,
            },
            RegionTableError::TooManyEntries(_) => Error::corrupt(
                self.kind(),
                name,
                "region table",
                off + RegionTableHeader::ENTRY_COUNT_OFFSET,
                self.describe(),
            ),
            RegionTableError::Signature => {
                Error::corrupt(self.kind(), name, "region table", off, self.describe())
            }
        }
    }
}

/// The copy at `COPY_OFFSETS[i]`, or why it is not one (with its offset).
fn parse_copy(
    storage: &dyn Storage,
    name: &str,
    i: usize,
    ignore_checksums: bool,
) -> Result<(RegionTable, Option<RegionTableError>), (RegionTableError, u64)> {
    let off = COPY_OFFSETS[i];
    let raw = read_vec(storage, name, off, SIZE).map_err(|_| (RegionTableError::Signature, off))?;
    RegionTable::parse(&raw, ignore_checksums).map_err(|e| (e, off))
}

/// Open step: the region table, copy 1 falling back to copy 2, with a
/// finding for a copy that is invalid or differs (and for a checksum
/// mismatch `ignore_checksums` let through).
pub fn load(
    storage: &dyn Storage,
    name: &str,
    ignore_checksums: bool,
    findings: &mut Vec<Finding>,
) -> Result<RegionTable> {
    const WHAT: &str = "region table";
    let c1 = parse_copy(storage, name, 0, ignore_checksums);
    let c2 = parse_copy(storage, name, 1, ignore_checksums);
    // The copy used, its table and any checksum mismatch let through,
    // and (when copy 1 is used) what copy 2 was.
    let (used, (table, soft), other) = match (c1, c2) {
        (Ok(t1), other) => (0, t1, Some(other)),
        (Err((e1, off1)), Ok(t2)) => {
            findings.push(Finding::warning(
                e1.kind(),
                name,
                WHAT,
                off1,
                format!("copy 1 is invalid ({}); copy 2 is used", e1.describe()),
            ));
            (1, t2, None)
        }
        (Err((e1, off1)), Err(_)) => return Err(e1.to_error(name, off1)),
    };
    if let Some(s) = soft {
        findings.push(Finding::error(
            s.kind(),
            name,
            WHAT,
            COPY_OFFSETS[used],
            s.describe(),
        ));
    }
    match other {
        Some(Ok((t2, _))) if t2.entries != table.entries => findings.push(Finding::warning(
            CorruptionKind::RegionTableCopyMismatch,
            name,
            WHAT,
            COPY_OFFSETS[1],
            "copy 2 differs from copy 1",
        )),
        Some(Err((e, off))) => findings.push(Finding::warning(
            e.kind(),
            name,
            WHAT,
            off,
            format!("copy 2 is invalid ({}); copy 1 is used", e.describe()),
        )),
        _ => {}
    }
    Ok(table)
}

impl RegionTable {
    /// Open step: every entry unique, known if required, 1 MiB aligned,
    /// inside the `file_len`-byte file and clear of the `log` region and of
    /// the other regions; the BAT and metadata regions present. Returns
    /// the (offset, length) of the BAT and metadata regions.
    pub fn validate_entries(
        &self,
        name: &str,
        log: (u64, u64),
        file_len: u64,
    ) -> Result<((u64, u64), (u64, u64))> {
        const WHAT: &str = "region table entry";
        let toff = COPY_OFFSETS[0];
        let mut regions: Vec<(&'static str, (u64, u64))> = Vec::new();
        if log.1 != 0 {
            regions.push(("log", log));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let eoff = toff + RegionTableEntry::offset_in_table(i);
            if self.entries[..i].iter().any(|o| o.guid == e.guid) {
                return Err(Error::corrupt(
                    CorruptionKind::RegionDuplicate,
                    name,
                    WHAT,
                    eoff,
                    format!("duplicate region {}", e.guid),
                ));
            }
            let known = e.guid == BAT_GUID || e.guid == METADATA_GUID;
            if !known && e.is_required() {
                return Err(Error::Unsupported {
                    file: name.into(),
                    message: format!(
                        "required region {} is unknown (region table entry at {eoff:#x})",
                        e.guid
                    ),
                });
            }
            let len = u64::from(e.length);
            if e.file_offset < MIB || e.file_offset % MIB != 0 || len % MIB != 0 || len == 0 {
                return Err(Error::corrupt(CorruptionKind::RegionAlignment, name, WHAT, eoff, format!(
                    "region {} at {:#x} length {:#x}: offset must be a 1 MiB multiple >= 1 MiB and length a non-zero 1 MiB multiple",
                    e.guid, e.file_offset, len)));
            }
            if e.file_offset
                .checked_add(len)
                .is_none_or(|end| end > file_len)
            {
                return Err(Error::corrupt(CorruptionKind::RegionOutsideFile, name, WHAT, eoff, format!(
                    "region {} [{:#x}, +{len:#x}) extends past the end of the {file_len}-byte file", e.guid, e.file_offset)));
            }
            let what = if e.guid == BAT_GUID {
                "BAT region"
            } else if e.guid == METADATA_GUID {
                "metadata region"
            } else {
                "unknown region"
            };
            if let Some((other, _)) = regions
                .iter()
                .find(|(_, r)| overlaps(*r, (e.file_offset, len)))
            {
                return Err(Error::corrupt(
                    CorruptionKind::RegionOverlap,
                    name,
                    WHAT,
                    eoff,
                    format!("{what} overlaps the {other}"),
                ));
            }
            regions.push((what, (e.file_offset, len)));
        }
        let region = |guid: Uuid, missing: &str| {
            self.find(guid)
                .map(|e| (e.file_offset, u64::from(e.length)))
                .ok_or_else(|| {
                    Error::corrupt(
                        CorruptionKind::RegionMissing,
                        name,
                        "region table",
                        toff,
                        missing,
                    )
                })
        };
        Ok((
            region(BAT_GUID, "no BAT region")?,
            region(METADATA_GUID, "no metadata region")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = RegionTableEntry> {
        (any::<[u8; 16]>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(g, o, l, r)| {
            RegionTableEntry {
                guid: Uuid::from_bytes(g),
                file_offset: o,
                length: l,
                required: r,
            }
        })
    }

    proptest! {
        #[test]
        fn entry_round_trip(e in arb_entry()) {
            prop_assert_eq!(RegionTableEntry::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn table_round_trip(entries in proptest::collection::vec(arb_entry(), 0..40)) {
            let t = RegionTable::new(entries);
            let bytes = t.to_bytes();
            let (back, soft) = RegionTable::parse(&bytes, false).unwrap();
            prop_assert!(soft.is_none());
            prop_assert_eq!(&back.entries, &t.entries);
            prop_assert_eq!(back.to_bytes(), bytes.clone());
            let mut bad = bytes;
            bad[60000] ^= 1;
            let is_checksum_err = matches!(
                RegionTable::parse(&bad, false),
                Err(RegionTableError::Checksum { .. })
            );
            prop_assert!(is_checksum_err);
        }
    }

    #[test]
    fn huge_count_is_rejected() {
        let mut b = RegionTable::new(vec![]).to_bytes();
        b[8..12].copy_from_slice(&5000u32.to_le_bytes());
        let crc = crc32c_zeroed(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            RegionTable::parse(&b, false).unwrap_err(),
            RegionTableError::TooManyEntries(5000)
        );
    }
}
