//! The dynamic disk header (FORMATS.md 2.4): 1024 bytes at the footer's Data
//! Offset of dynamic and differencing disks.

use binrw::binrw;

use super::codec;
use super::parent_locator::ParentLocatorEntry;
use crate::checksum::vhd_checksum;
use crate::Result;

pub const HEADER_SIZE: usize = 1024;
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
pub const HEADER_CHECKSUM_FIELD: usize = 0x24;
pub const HEADER_VERSION: u32 = 0x0001_0000;

#[binrw]
#[brw(big)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicDiskHeader {
    pub cookie: [u8; 8],
    /// Unused; all ones.
    pub data_offset: u64,
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub checksum: u32,
    pub parent_unique_id: [u8; 16],
    pub parent_time_stamp: u32,
    pub reserved1: u32,
    /// UTF-16BE, NUL padded.
    #[br(parse_with = crate::byte_array::read)]
    pub parent_unicode_name: [u8; 512],
    pub parent_locators: [ParentLocatorEntry; 8],
    #[br(parse_with = crate::byte_array::read)]
    pub reserved2: [u8; 256],
}

impl DynamicDiskHeader {
    /// Decode 1024 bytes; the flag says whether the stored checksum matches.
    pub fn parse(bytes: &[u8; HEADER_SIZE], file: &str, offset: u64) -> Result<(Self, bool)> {
        let h: Self = codec::decode(bytes, file, "dynamic disk header", offset)?;
        let ok = h.checksum == vhd_checksum(bytes, HEADER_CHECKSUM_FIELD);
        Ok((h, ok))
    }

    /// Encode with the checksum recomputed.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = self.to_raw_bytes()?;
        let sum = vhd_checksum(&out, HEADER_CHECKSUM_FIELD);
        out[HEADER_CHECKSUM_FIELD..HEADER_CHECKSUM_FIELD + 4].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Encode exactly as stored.
    pub fn to_raw_bytes(&self) -> Result<Vec<u8>> {
        let v = codec::encode(self, "dynamic disk header")?;
        if v.len() != HEADER_SIZE {
            return Err(crate::Error::InvalidParameter(format!(
                "dynamic disk header encoded to {} bytes",
                v.len()
            )));
        }
        Ok(v)
    }

    pub fn parent_name(&self) -> String {
        super::parent_locator::utf16be(&self.parent_unicode_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = DynamicDiskHeader> {
        (
            (
                any::<[u8; 8]>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 16]>(),
                any::<u32>(),
                any::<u32>(),
            ),
            prop::collection::vec(any::<u8>(), 512),
            prop::collection::vec(super::super::parent_locator::tests::arb_entry(), 8),
            prop::collection::vec(any::<u8>(), 256),
        )
            .prop_map(|(a, name, locs, r2)| {
                let mut n = [0u8; 512];
                n.copy_from_slice(&name);
                let mut l = [ParentLocatorEntry::default(); 8];
                l.copy_from_slice(&locs);
                let mut r = [0u8; 256];
                r.copy_from_slice(&r2);
                DynamicDiskHeader {
                    cookie: a.0,
                    data_offset: a.1,
                    table_offset: a.2,
                    header_version: a.3,
                    max_table_entries: a.4,
                    block_size: a.5,
                    checksum: a.6,
                    parent_unique_id: a.7,
                    parent_time_stamp: a.8,
                    reserved1: a.9,
                    parent_unicode_name: n,
                    parent_locators: l,
                    reserved2: r,
                }
            })
    }

    proptest! {
        #[test]
        fn header_round_trips(h in arb_header()) {
            let raw = h.to_raw_bytes().unwrap();
            let mut arr = [0u8; HEADER_SIZE];
            arr.copy_from_slice(&raw);
            let (back, _) = DynamicDiskHeader::parse(&arr, "t", 0).unwrap();
            prop_assert_eq!(&back, &h);
            prop_assert_eq!(&raw[0x20..0x24], &h.block_size.to_be_bytes()[..]);
            prop_assert_eq!(&raw[0x240..0x244], &h.parent_locators[0].platform_code.to_be_bytes()[..]);
            let good = h.to_bytes().unwrap();
            arr.copy_from_slice(&good);
            prop_assert!(DynamicDiskHeader::parse(&arr, "t", 0).unwrap().1);
        }
    }
}
