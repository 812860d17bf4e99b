//! The Block Allocation Table (FORMATS.md 2.5): one u32be sector number per
//! block, `0xFFFFFFFF` for a block that is not allocated.

use binrw::binrw;

use super::codec;
use super::dynamic_header::{DynamicDiskHeader, LoadedHeader};
use crate::error::IoContext;
use crate::{CorruptionKind, Result, Storage};

pub const BAT_UNALLOCATED: u32 = 0xFFFF_FFFF;

/// The BAT entry of a block placed at file offset `at`: its sector number,
/// which must fit in 32 bits and not be the unallocated marker.
pub(super) fn entry_for(at: u64, file: &str) -> Result<u32> {
    u32::try_from(at / 512)
        .ok()
        .filter(|s| *s != BAT_UNALLOCATED)
        .ok_or_else(|| crate::Error::Unsupported {
            file: file.into(),
            message: "a VHD file cannot grow past 2 TiB (32-bit BAT sector numbers)".into(),
        })
}

#[binrw]
#[brw(big)]
#[br(import(count: u32))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAllocationTable {
    #[br(count = count)]
    pub entries: Vec<u32>,
}

impl BlockAllocationTable {
    /// Decode `count` entries from `bytes` (which must hold them; the caller
    /// has checked `count` against the file size and the spec limits).
    pub fn parse(bytes: &[u8], count: u32, file: &str, offset: u64) -> Result<Self> {
        codec::decode_args(bytes, (count,), file, "block allocation table", offset)
    }

    /// The entries, padded with `0xFF` to a whole number of sectors.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = codec::encode(self, "block allocation table")?;
        let padded = codec::align512(v.len() as u64).unwrap_or(v.len() as u64) as usize;
        v.resize(padded, 0xFF);
        Ok(v)
    }

    /// Bytes the table occupies on disk (whole sectors).
    pub fn disk_size(count: u32) -> u64 {
        (u64::from(count) * 4 + 511) & !511
    }
}

/// Open step: the table the dynamic disk header names (Table Offset, Max
/// Table Entries, already bounded by the header's step), which must lie
/// inside the `len`-byte file. Returns its entries.
pub fn load(st: &dyn Storage, name: &str, loaded: &LoadedHeader, len: u64) -> Result<Vec<u32>> {
    let header = &loaded.header;
    let to = header.table_offset;
    let bat_bytes = u64::from(header.max_table_entries) * 4;
    if to.checked_add(bat_bytes).is_none_or(|e| e > len) {
        return Err(loaded.place().corrupt(
            CorruptionKind::BatOutsideFile,
            name,
            DynamicDiskHeader::TABLE_OFFSET_OFFSET,
            format!(
                "Table Offset {to:#x} + {bat_bytes} BAT bytes lies outside the {len}-byte file"
            ),
        ));
    }
    let mut bb = vec![0u8; bat_bytes as usize];
    st.read_at(&mut bb, to).ctx(name)?;
    let bat = BlockAllocationTable::parse(&bb, header.max_table_entries, name, to)?;
    Ok(bat.entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bat_round_trips(entries in prop::collection::vec(any::<u32>(), 0..600)) {
            let bat = BlockAllocationTable { entries: entries.clone() };
            let bytes = bat.to_bytes().unwrap();
            prop_assert_eq!(bytes.len() as u64, BlockAllocationTable::disk_size(entries.len() as u32));
            if let Some(first) = entries.first() {
                prop_assert_eq!(&bytes[..4], &first.to_be_bytes()[..]);
            }
            let back = BlockAllocationTable::parse(&bytes, entries.len() as u32, "t", 0).unwrap();
            prop_assert_eq!(back, bat);
        }
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        assert!(BlockAllocationTable::parse(&[0u8; 7], 2, "t", 0).is_err());
    }
}
