//! The metadata table: the first 64 KiB of the metadata region, naming the
//! items stored after it. No checksum: only the log protects it.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{guid_from_le, le_codec};

pub const SIGNATURE: [u8; 8] = *b"metadata";
pub const TABLE_SIZE: usize = 64 * 1024;
pub const MAX_ENTRIES: u16 = 2047;
pub const MAX_USER_ENTRIES: usize = 1024;
pub const MAX_ITEM_LENGTH: u32 = 1024 * 1024;

pub const FLAG_IS_USER: u32 = 1;
pub const FLAG_IS_VIRTUAL_DISK: u32 = 2;
pub const FLAG_IS_REQUIRED: u32 = 4;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTableHeader {
    pub signature: [u8; 8],
    pub reserved: u16,
    pub entry_count: u16,
    pub reserved2: [u8; 20],
}
le_codec!(MetadataTableHeader, 32);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTableEntry {
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub item_id: Uuid,
    pub offset: u32,
    pub length: u32,
    pub flags: u32,
    pub reserved2: u32,
}
le_codec!(MetadataTableEntry, 32);

impl MetadataTableEntry {
    pub fn is_user(&self) -> bool {
        self.flags & FLAG_IS_USER != 0
    }
    pub fn is_virtual_disk(&self) -> bool {
        self.flags & FLAG_IS_VIRTUAL_DISK != 0
    }
    pub fn is_required(&self) -> bool {
        self.flags & FLAG_IS_REQUIRED != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTable {
    pub header: MetadataTableHeader,
    pub entries: Vec<MetadataTableEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataTableError {
    Signature,
    TooManyEntries(u16),
}

impl MetadataTable {
    pub fn new(entries: Vec<MetadataTableEntry>) -> Self {
        MetadataTable {
            header: MetadataTableHeader {
                signature: SIGNATURE,
                reserved: 0,
                entry_count: entries.len() as u16,
                reserved2: [0; 20],
            },
            entries,
        }
    }

    /// Parse the 64 KiB table (entry count bounded before any entry is read).
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataTableError> {
        let header = MetadataTableHeader::decode(bytes).ok_or(MetadataTableError::Signature)?;
        if header.signature != SIGNATURE {
            return Err(MetadataTableError::Signature);
        }
        if header.entry_count > MAX_ENTRIES {
            return Err(MetadataTableError::TooManyEntries(header.entry_count));
        }
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for i in 0..header.entry_count as usize {
            let e = bytes
                .get(32 + 32 * i..)
                .and_then(MetadataTableEntry::decode)
                .ok_or(MetadataTableError::TooManyEntries(header.entry_count))?;
            entries.push(e);
        }
        Ok(MetadataTable { header, entries })
    }

    /// The 64 KiB table.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; TABLE_SIZE];
        let mut h = self.header.clone();
        h.entry_count = self.entries.len() as u16;
        v[..32].copy_from_slice(&h.encode());
        for (i, e) in self.entries.iter().enumerate() {
            let at = 32 + 32 * i;
            if at + 32 > TABLE_SIZE {
                break;
            }
            v[at..at + 32].copy_from_slice(&e.encode());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = MetadataTableEntry> {
        (any::<[u8; 16]>(), any::<(u32, u32, u32, u32)>()).prop_map(|(g, (o, l, f, r))| {
            MetadataTableEntry {
                item_id: Uuid::from_bytes(g),
                offset: o,
                length: l,
                flags: f,
                reserved2: r,
            }
        })
    }

    proptest! {
        #[test]
        fn table_round_trip(entries in proptest::collection::vec(arb_entry(), 0..50)) {
            let t = MetadataTable::new(entries);
            let bytes = t.to_bytes();
            let back = MetadataTable::parse(&bytes).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert_eq!(back.to_bytes(), bytes);
        }
    }

    #[test]
    fn bad_signature_and_count() {
        let mut b = MetadataTable::new(vec![]).to_bytes();
        b[10..12].copy_from_slice(&3000u16.to_le_bytes());
        assert_eq!(
            MetadataTable::parse(&b),
            Err(MetadataTableError::TooManyEntries(3000))
        );
        b[0] = b'X';
        assert_eq!(MetadataTable::parse(&b), Err(MetadataTableError::Signature));
    }
}
