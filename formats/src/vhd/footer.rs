//! The hard disk footer (FORMATS.md 2.2): the last 512 bytes of every VHD,
//! and a byte-identical copy at offset 0 of dynamic and differencing ones.

use binrw::binrw;

use super::codec;
use crate::checksum::vhd_checksum;
use crate::params::{DiskType, Identity};
use crate::Result;

pub const FOOTER_SIZE: usize = 512;
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// Offset of the checksum field inside the footer.
pub const FOOTER_CHECKSUM_FIELD: usize = 0x40;
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// Features bit 1 is "reserved, must be set" in the spec.
pub const FEATURES_RESERVED: u32 = 0x2;
pub const DISK_TYPE_FIXED: u32 = 2;
pub const DISK_TYPE_DYNAMIC: u32 = 3;
pub const DISK_TYPE_DIFFERENCING: u32 = 4;
/// Host OS code `Wi2k`.
pub const HOST_OS_WINDOWS: u32 = 0x5769_326B;
/// Data Offset of a fixed disk: "unused", written all ones (FORMATS.md 5 #14).
pub const DATA_OFFSET_NONE: u64 = u64::MAX;

#[binrw]
#[brw(big)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardDiskFooter {
    pub cookie: [u8; 8],
    pub features: u32,
    pub file_format_version: u32,
    pub data_offset: u64,
    pub time_stamp: u32,
    pub creator_application: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: u32,
    pub original_size: u64,
    pub current_size: u64,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
    pub disk_type: u32,
    pub checksum: u32,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
    /// Kept verbatim so a footer read from a file writes back identically.
    #[br(parse_with = crate::byte_array::read)]
    pub reserved: [u8; 427],
}

impl HardDiskFooter {
    /// Decode 512 bytes; the flag says whether the stored checksum matches.
    pub fn parse(bytes: &[u8; FOOTER_SIZE], file: &str, offset: u64) -> Result<(Self, bool)> {
        let f: Self = codec::decode(bytes, file, "hard disk footer", offset)?;
        let ok = f.checksum == vhd_checksum(bytes, FOOTER_CHECKSUM_FIELD);
        Ok((f, ok))
    }

    /// Encode with the checksum field recomputed.
    pub fn to_bytes(&self) -> Result<[u8; FOOTER_SIZE]> {
        let mut out = self.to_raw_bytes()?;
        let sum = vhd_checksum(&out, FOOTER_CHECKSUM_FIELD);
        out[FOOTER_CHECKSUM_FIELD..FOOTER_CHECKSUM_FIELD + 4].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Encode exactly as stored, checksum field included.
    pub fn to_raw_bytes(&self) -> Result<[u8; FOOTER_SIZE]> {
        let v = codec::encode(self, "hard disk footer")?;
        let mut out = [0u8; FOOTER_SIZE];
        if v.len() != FOOTER_SIZE {
            return Err(crate::Error::InvalidParameter(format!(
                "hard disk footer encoded to {} bytes",
                v.len()
            )));
        }
        out.copy_from_slice(&v);
        Ok(out)
    }

    pub fn cookie_ok(&self) -> bool {
        self.cookie == FOOTER_COOKIE
    }

    pub fn kind(&self) -> Option<DiskType> {
        match self.disk_type {
            DISK_TYPE_FIXED => Some(DiskType::Fixed),
            DISK_TYPE_DYNAMIC => Some(DiskType::Dynamic),
            DISK_TYPE_DIFFERENCING => Some(DiskType::Differencing),
            _ => None,
        }
    }

    pub fn identity(&self) -> Identity {
        Identity::Vhd {
            unique_id: self.unique_id,
            timestamp: self.time_stamp,
        }
    }

    /// The creator application as text (trailing spaces/NULs trimmed).
    pub fn creator_text(&self) -> String {
        fourcc_text(&self.creator_application)
    }
}

/// A four-character code as printable text.
pub fn fourcc_text(b: &[u8; 4]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else if c == 0 {
                '\0'
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Seconds since 2000-01-01 UTC, the VHD time base.
pub fn vhd_now() -> u32 {
    const VHD_EPOCH_UNIX: u64 = 946_684_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH_UNIX);
    u32::try_from(now.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_footer() -> impl Strategy<Value = HardDiskFooter> {
        (
            (
                any::<[u8; 8]>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<[u8; 4]>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u16>(),
                any::<u8>(),
                any::<u8>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 16]>(),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 427),
            ),
        )
            .prop_map(|(a, b)| {
                let mut reserved = [0u8; 427];
                reserved.copy_from_slice(&b.9);
                HardDiskFooter {
                    cookie: a.0,
                    features: a.1,
                    file_format_version: a.2,
                    data_offset: a.3,
                    time_stamp: a.4,
                    creator_application: a.5,
                    creator_version: a.6,
                    creator_host_os: a.7,
                    original_size: b.0,
                    current_size: b.1,
                    cylinders: b.2,
                    heads: b.3,
                    sectors_per_track: b.4,
                    disk_type: b.5,
                    checksum: b.6,
                    unique_id: b.7,
                    saved_state: b.8,
                    reserved,
                }
            })
    }

    proptest! {
        #[test]
        fn footer_round_trips(f in arb_footer()) {
            let raw = f.to_raw_bytes().unwrap();
            let (back, _) = HardDiskFooter::parse(&raw, "t", 0).unwrap();
            prop_assert_eq!(&back, &f);
            let fixed = f.to_bytes().unwrap();
            let (back2, ok) = HardDiskFooter::parse(&fixed, "t", 0).unwrap();
            prop_assert!(ok);
            prop_assert_eq!(back2.current_size, f.current_size);
            // Field placement is the spec's: Current Size at 0x30, Disk Type at 0x3C.
            prop_assert_eq!(&raw[0x30..0x38], &f.current_size.to_be_bytes()[..]);
            prop_assert_eq!(&raw[0x3C..0x40], &f.disk_type.to_be_bytes()[..]);
            prop_assert_eq!(raw[0x54], f.saved_state);
        }
    }
}
