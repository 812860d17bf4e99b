//! The 64-byte header that starts every log entry.

use binrw::binrw;
use uuid::Uuid;

use crate::vhdx::codec::{guid_from_le, le_codec};

pub const SIGNATURE: [u8; 4] = *b"loge";
pub const CHECKSUM_FIELD: usize = 4;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryHeader {
    pub signature: [u8; 4],
    pub checksum: u32,
    pub entry_length: u32,
    pub tail: u32,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub reserved: u32,
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub log_guid: Uuid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}
le_codec!(LogEntryHeader, 64);

/// Descriptor sectors needed for `count` descriptors (the header takes the
/// room of two descriptors in the first sector).
pub fn descriptor_sectors(count: u64) -> u64 {
    (count + 2).div_ceil(128).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(sig in any::<[u8; 4]>(), a in any::<(u32, u32, u32, u64, u32, u32)>(), g in any::<[u8; 16]>(), f in any::<u64>(), l in any::<u64>()) {
            let h = LogEntryHeader {
                signature: sig, checksum: a.0, entry_length: a.1, tail: a.2,
                sequence_number: a.3, descriptor_count: a.4, reserved: a.5,
                log_guid: Uuid::from_bytes(g), flushed_file_offset: f, last_file_offset: l,
            };
            prop_assert_eq!(LogEntryHeader::decode(&h.encode()).unwrap(), h);
        }
    }

    #[test]
    fn descriptor_sector_count() {
        assert_eq!(descriptor_sectors(0), 1);
        assert_eq!(descriptor_sectors(126), 1);
        assert_eq!(descriptor_sectors(127), 2);
        assert_eq!(descriptor_sectors(254), 2);
        assert_eq!(descriptor_sectors(255), 3);
    }
}
