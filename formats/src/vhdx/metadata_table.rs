//! The metadata table: the first 64 KiB of the metadata region, naming the
//! items stored after it. No checksum: only the log protects it.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{check_reserved_flags, guid_from_le, le_codec, overlaps, read_vec};
use super::metadata_items::SYSTEM_ITEMS;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

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
        let mut h = self.header.clone();
        h.entry_count = self.entries.len() as u16;
        let entries = self.entries.iter().map(|e| e.encode());
        super::codec::table_bytes(TABLE_SIZE, &h.encode(), entries)
    }
}

impl MetadataTableHeader {
    pub const ENTRY_COUNT_OFFSET: u64 = 10;
}

impl MetadataTableEntry {
    /// Byte offsets (in the entry) of the fields that open reports on.
    pub const OFFSET_OFFSET: u64 = 16;
    pub const LENGTH_OFFSET: u64 = 20;
    pub const FLAGS_OFFSET: u64 = 24;
    const FLAGS_DEFINED: u32 = FLAG_IS_USER | FLAG_IS_VIRTUAL_DISK | FLAG_IS_REQUIRED;

    /// Offset of entry `i` in the table.
    pub fn offset_in_table(i: usize) -> u64 {
        32 + 32 * i as u64
    }
}

/// Open step: the table at the start of the metadata `region` (offset,
/// length): at most 1024 user entries; every entry unique, without
/// reserved flags, known if a required system item, and (when not empty)
/// at most 1 MiB inside the region after the table, clear of the others.
pub fn load(
    storage: &dyn Storage,
    name: &str,
    region: (u64, u64),
    findings: &mut Vec<Finding>,
) -> Result<MetadataTable> {
    const WHAT: &str = "metadata table entry";
    let moff = region.0;
    let raw = read_vec(storage, name, moff, TABLE_SIZE)?;
    let table = MetadataTable::parse(&raw).map_err(|e| match e {
        MetadataTableError::Signature => Error::corrupt(
            CorruptionKind::MetadataTableSignature,
            name,
            "metadata table",
            moff,
            "signature is not `metadata`",
        ),
        MetadataTableError::TooManyEntries(n) => Error::corrupt(
            CorruptionKind::MetadataTableEntryCount,
            name,
            "metadata table",
            moff + MetadataTableHeader::ENTRY_COUNT_OFFSET,
            format!("EntryCount {n} exceeds 2047"),
        ),
    })?;
    let users = table.entries.iter().filter(|e| e.is_user()).count();
    if users > MAX_USER_ENTRIES {
        return Err(Error::corrupt(
            CorruptionKind::MetadataTableEntryCount,
            name,
            "metadata table",
            moff,
            format!("{users} IsUser entries exceed 1024"),
        ));
    }
    let bad = |kind, offset, message: String| Error::corrupt(kind, name, WHAT, offset, message);
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (i, e) in table.entries.iter().enumerate() {
        let eoff = moff + MetadataTableEntry::offset_in_table(i);
        if table.entries[..i]
            .iter()
            .any(|o| o.item_id == e.item_id && o.is_user() == e.is_user())
        {
            return Err(bad(
                CorruptionKind::MetadataItemDuplicate,
                eoff,
                format!("duplicate item {}", e.item_id),
            ));
        }
        check_reserved_flags(
            e.flags,
            MetadataTableEntry::FLAGS_DEFINED,
            CorruptionKind::MetadataEntryReservedFlags,
            name,
            WHAT,
            eoff + MetadataTableEntry::FLAGS_OFFSET,
        )?;
        if !e.is_user() && !SYSTEM_ITEMS.contains(&e.item_id) && e.is_required() {
            return Err(Error::Unsupported {
                file: name.into(),
                message: format!(
                    "required metadata item {} is unknown (entry at {eoff:#x})",
                    e.item_id
                ),
            });
        }
        if e.length == 0 {
            if e.offset != 0 {
                findings.push(Finding::warning(
                    CorruptionKind::MetadataEmptyItemOffset,
                    name,
                    WHAT,
                    eoff,
                    "empty item with a non-zero offset",
                ));
            }
            continue;
        }
        if e.length > MAX_ITEM_LENGTH {
            return Err(bad(
                CorruptionKind::MetadataItemTooLong,
                eoff + MetadataTableEntry::LENGTH_OFFSET,
                format!("item {} Length {} exceeds 1 MiB", e.item_id, e.length),
            ));
        }
        let (o, l) = (u64::from(e.offset), u64::from(e.length));
        if o < TABLE_SIZE as u64 || o + l > region.1 {
            return Err(bad(CorruptionKind::MetadataItemOutsideRegion, eoff + MetadataTableEntry::OFFSET_OFFSET, format!(
                "item {} [{o:#x}, +{l:#x}) is not inside the metadata region after its 64 KiB table", e.item_id)));
        }
        if spans.iter().any(|s| overlaps(*s, (o, l))) {
            return Err(bad(
                CorruptionKind::MetadataItemOverlap,
                eoff,
                format!("item {} overlaps another item", e.item_id),
            ));
        }
        spans.push((o, l));
    }
    Ok(table)
}

impl MetadataTable {
    /// The system item `id` (`what` in messages) of a table at `moff`,
    /// at least `min` bytes long, read from `storage`: its bytes and
    /// absolute offset.
    pub fn read_item(
        &self,
        storage: &dyn Storage,
        name: &str,
        moff: u64,
        id: Uuid,
        (what, min): (&'static str, usize),
    ) -> Result<(Vec<u8>, u64)> {
        let (i, e) = self
            .entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.item_id == id && !e.is_user())
            .ok_or_else(|| {
                Error::corrupt(
                    CorruptionKind::MetadataItemMissing,
                    name,
                    "metadata table",
                    moff,
                    format!("required item {what} is missing"),
                )
            })?;
        let eoff = moff + MetadataTableEntry::offset_in_table(i);
        if (e.length as usize) < min {
            return Err(Error::corrupt(
                CorruptionKind::MetadataItemTooShort,
                name,
                "metadata table entry",
                eoff + MetadataTableEntry::LENGTH_OFFSET,
                format!("{what} item is {} bytes, needs {min}", e.length),
            ));
        }
        let abs = moff + u64::from(e.offset);
        Ok((read_vec(storage, name, abs, e.length as usize)?, abs))
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
