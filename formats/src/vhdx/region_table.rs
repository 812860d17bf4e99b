//! The region table (two 64 KiB copies at 192 KiB and 256 KiB): where the
//! BAT and metadata regions live.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{guid_from_le, le_codec};
use crate::checksum::crc32c_zeroed;

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
        let mut v = vec![0u8; SIZE];
        let mut h = self.header.clone();
        h.entry_count = self.entries.len() as u32;
        h.checksum = 0;
        v[..16].copy_from_slice(&h.encode());
        for (i, e) in self.entries.iter().enumerate() {
            let at = 16 + 32 * i;
            if at + 32 > SIZE {
                break;
            }
            v[at..at + 32].copy_from_slice(&e.encode());
        }
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
