//! The dynamic disk header (FORMATS.md 2.4): 1024 bytes at the footer's Data
//! Offset of dynamic and differencing disks.

use binrw::binrw;

use super::codec;
use super::parent_locator::{self, ParentLocatorEntry};
use crate::checksum::vhd_checksum;
use crate::error::IoContext;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

pub const HEADER_SIZE: usize = 1024;
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
pub const HEADER_CHECKSUM_FIELD: usize = 0x24;
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Largest block size accepted (the spec names none; 256 MiB is far above
/// anything produced and keeps a bitmap at 64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Max Table Entries may exceed what Current Size needs by this much.
pub const BAT_SLACK_ENTRIES: u64 = 4096;
/// What errors and findings call it.
const STRUCTURE: &str = "dynamic disk header";

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
    /// Byte offsets (in the header) of the fields that open and check
    /// report on.
    pub const TABLE_OFFSET_OFFSET: u64 = 0x10;
    pub const VERSION_OFFSET: u64 = 0x18;
    pub const MAX_TABLE_ENTRIES_OFFSET: u64 = 0x1C;
    pub const BLOCK_SIZE_OFFSET: u64 = 0x20;
    /// The eight parent locator entries, 24 bytes each.
    pub const PARENT_LOCATORS_OFFSET: u64 = 0x240;

    /// Offset (in the header) of parent locator entry `i`.
    pub fn locator_entry_offset(i: usize) -> u64 {
        Self::PARENT_LOCATORS_OFFSET + parent_locator::ENTRY_SIZE * i as u64
    }

    /// Decode 1024 bytes; the flag says whether the stored checksum matches.
    pub fn parse(bytes: &[u8; HEADER_SIZE], file: &str, offset: u64) -> Result<(Self, bool)> {
        let h: Self = codec::decode(bytes, file, STRUCTURE, offset)?;
        let ok = h.checksum == vhd_checksum(bytes, HEADER_CHECKSUM_FIELD);
        Ok((h, ok))
    }

    /// Encode with the checksum recomputed.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = self.to_raw_bytes()?;
        codec::put_checksum(&mut out, HEADER_CHECKSUM_FIELD);
        Ok(out)
    }

    /// Encode exactly as stored.
    pub fn to_raw_bytes(&self) -> Result<Vec<u8>> {
        codec::encode_sized(self, STRUCTURE, HEADER_SIZE)
    }

    pub fn parent_name(&self) -> String {
        super::parent_locator::utf16be(&self.parent_unicode_name)
    }
}

/// Whether `bs` is a Block Size this crate opens and creates: a
/// power-of-two number of 512-byte sectors, at most `MAX_BLOCK_SIZE`.
pub fn block_size_ok(bs: u32) -> bool {
    bs >= 512 && bs.is_multiple_of(512) && (bs / 512).is_power_of_two() && bs <= MAX_BLOCK_SIZE
}

/// A dynamic disk header as open read it, and where: the steps after it
/// (its own checks, the BAT, the locators) report at its fields.
#[derive(Debug)]
pub struct LoadedHeader {
    pub header: DynamicDiskHeader,
    pub offset: u64,
}

/// Open step: the header at `ho` (inside the file: the footer's step
/// checked it) with its cookie; a checksum that does not match is an
/// error unless checksums are ignored.
pub fn load(
    st: &dyn Storage,
    name: &str,
    ho: u64,
    ignore_checksums: bool,
    findings: &mut Vec<Finding>,
) -> Result<LoadedHeader> {
    let mut hb = [0u8; HEADER_SIZE];
    st.read_at(&mut hb, ho).ctx(name)?;
    let (header, checksum_ok) = DynamicDiskHeader::parse(&hb, name, ho)?;
    if header.cookie != HEADER_COOKIE {
        return Err(Error::corrupt(
            CorruptionKind::DynamicHeaderCookie,
            name,
            STRUCTURE,
            ho,
            "cookie is not `cxsparse`",
        ));
    }
    if !checksum_ok {
        let mismatch = Error::Checksum {
            file: name.into(),
            structure: STRUCTURE,
            offset: ho,
            kind: CorruptionKind::DynamicHeaderChecksum,
            stored: header.checksum,
            computed: vhd_checksum(&hb, HEADER_CHECKSUM_FIELD),
        };
        codec::tolerate_checksum(mismatch, ignore_checksums, findings)?;
    }
    Ok(LoadedHeader { header, offset: ho })
}

impl LoadedHeader {
    /// This header, for errors at its fields.
    pub fn place(&self) -> codec::Place {
        codec::Place {
            structure: STRUCTURE,
            offset: self.offset,
        }
    }

    /// Open step: the Header Version, and a Block Size this crate handles
    /// (`block_size_ok`).
    pub fn validate(&self, name: &str) -> Result<()> {
        let h = &self.header;
        if h.header_version != HEADER_VERSION {
            return Err(self.place().corrupt(
                CorruptionKind::DynamicHeaderVersion,
                name,
                DynamicDiskHeader::VERSION_OFFSET,
                format!(
                    "Header Version {:#010x} is not 0x00010000",
                    h.header_version
                ),
            ));
        }
        let bs = h.block_size;
        if !block_size_ok(bs) {
            return Err(self.place().corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                DynamicDiskHeader::BLOCK_SIZE_OFFSET,
                format!("Block Size {bs} is not a power-of-two number of 512-byte sectors between 512 B and 256 MiB"),
            ));
        }
        Ok(())
    }

    /// Open step: Max Table Entries covers a disk of `size` bytes, and by
    /// no more than `BAT_SLACK_ENTRIES` (it sizes the BAT read). Call
    /// after `validate` (a valid Block Size).
    pub fn validate_table_entries(&self, name: &str, size: u64) -> Result<()> {
        let bs = self.header.block_size;
        let needed = size.div_ceil(u64::from(bs));
        let entries = u64::from(self.header.max_table_entries);
        let message = if entries < needed {
            format!("Max Table Entries {entries} x Block Size {bs} does not cover Current Size {size} ({needed} entries needed)")
        } else if entries > needed + BAT_SLACK_ENTRIES {
            format!("Max Table Entries {entries} is far more than the {needed} Current Size needs")
        } else {
            return Ok(());
        };
        Err(self.place().corrupt(
            CorruptionKind::MaxTableEntriesInvalid,
            name,
            DynamicDiskHeader::MAX_TABLE_ENTRIES_OFFSET,
            message,
        ))
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

    #[test]
    fn field_offsets_match_the_schema() {
        type H = DynamicDiskHeader;
        let (zero, _) = H::parse(&[0u8; HEADER_SIZE], "t", 0).unwrap();
        let at = |set: fn(&mut H)| codec::field_offset(&zero, |h| h.to_raw_bytes().unwrap(), set);
        assert_eq!(at(|h| h.table_offset = !0), Some(H::TABLE_OFFSET_OFFSET));
        assert_eq!(at(|h| h.header_version = !0), Some(H::VERSION_OFFSET));
        assert_eq!(
            at(|h| h.max_table_entries = !0),
            Some(H::MAX_TABLE_ENTRIES_OFFSET)
        );
        assert_eq!(at(|h| h.block_size = !0), Some(H::BLOCK_SIZE_OFFSET));
        assert_eq!(at(|h| h.checksum = !0), Some(HEADER_CHECKSUM_FIELD as u64));
        // Entry 0 starts the locator table; entry 7's Platform Data Offset
        // is the last 8 bytes of it (24-byte entries).
        let first = at(|h| h.parent_locators[0].platform_code = !0);
        assert_eq!(first, Some(H::locator_entry_offset(0)));
        let last = at(|h| h.parent_locators[7].platform_data_offset = !0);
        assert_eq!(last, Some(H::locator_entry_offset(8) - 8));
    }
}
