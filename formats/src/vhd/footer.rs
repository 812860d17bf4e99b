//! The hard disk footer (FORMATS.md 2.2): the last 512 bytes of every VHD,
//! and a byte-identical copy at offset 0 of dynamic and differencing ones.

use binrw::binrw;

use super::codec;
use crate::checksum::vhd_checksum;
use crate::error::IoContext;
use crate::params::{DiskType, Identity};
use crate::{CorruptionKind, Error, Finding, Result, Storage};

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
/// Largest dynamic/differencing virtual size (FORMATS.md 1: 2040 GiB; a
/// little slack).
pub const MAX_SPARSE_SIZE: u64 = 2 << 40;
/// What errors and findings call it.
const STRUCTURE: &str = "hard disk footer";

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
    /// Byte offsets (in the footer) of the fields that open and check
    /// report on.
    pub const FEATURES_OFFSET: u64 = 0x08;
    pub const FORMAT_VERSION_OFFSET: u64 = 0x0C;
    pub const DATA_OFFSET_OFFSET: u64 = 0x10;
    pub const CURRENT_SIZE_OFFSET: u64 = 0x30;
    pub const DISK_TYPE_OFFSET: u64 = 0x3C;
    pub const SAVED_STATE_OFFSET: u64 = 0x54;

    /// Decode 512 bytes; the flag says whether the stored checksum matches.
    pub fn parse(bytes: &[u8; FOOTER_SIZE], file: &str, offset: u64) -> Result<(Self, bool)> {
        let f: Self = codec::decode(bytes, file, STRUCTURE, offset)?;
        let ok = f.checksum == vhd_checksum(bytes, FOOTER_CHECKSUM_FIELD);
        Ok((f, ok))
    }

    /// Encode with the checksum field recomputed.
    pub fn to_bytes(&self) -> Result<[u8; FOOTER_SIZE]> {
        let mut out = self.to_raw_bytes()?;
        codec::put_checksum(&mut out, FOOTER_CHECKSUM_FIELD);
        Ok(out)
    }

    /// Encode exactly as stored, checksum field included.
    pub fn to_raw_bytes(&self) -> Result<[u8; FOOTER_SIZE]> {
        let v = codec::encode_sized(self, STRUCTURE, FOOTER_SIZE)?;
        let mut out = [0u8; FOOTER_SIZE];
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

/// Where the footer in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterSource {
    /// EOF-512 (or EOF-511 for pre-2004 images).
    End,
    /// The copy at offset 0 (end footer invalid).
    CopyAtZero,
}

/// The footer an open goes on, and where it stands.
#[derive(Debug)]
pub struct LoadedFooter {
    pub footer: HardDiskFooter,
    pub source: FooterSource,
    /// Where the end footer is or, when none has its cookie, where one
    /// belongs: the end of the file rounded to a sector. A footer cut off
    /// (Xen Orchestra wrote such files) leaves the last block ending at
    /// EOF; EOF-512 would put that block's tail "under the footer" and
    /// make `check` report a false overlap. A writable open puts the
    /// footer there.
    pub end_offset: u64,
}

impl LoadedFooter {
    /// Where the footer in use lies: what its field offsets count from.
    pub fn at(&self) -> u64 {
        match self.source {
            FooterSource::End => self.end_offset,
            FooterSource::CopyAtZero => 0,
        }
    }
}

/// A footer with its cookie, read at `offset`.
struct Candidate {
    footer: HardDiskFooter,
    checksum_ok: bool,
    offset: u64,
}

/// The footer with its cookie in the `size` bytes at `offset` (511 for the
/// end footer of a pre-2004 image), or None.
fn read_candidate(
    st: &dyn Storage,
    name: &str,
    offset: u64,
    size: usize,
) -> Result<Option<Candidate>> {
    let mut b = [0u8; FOOTER_SIZE];
    st.read_at(&mut b[..size], offset).ctx(name)?;
    let (footer, checksum_ok) = HardDiskFooter::parse(&b, name, offset)?;
    Ok(footer.cookie_ok().then_some(Candidate {
        footer,
        checksum_ok,
        offset,
    }))
}

/// Open step: the end footer (EOF-512, then EOF-511), the copy at offset 0
/// of a file that has room for both, and the choice between them (FORMATS.md
/// 2.2): a valid end footer; else a valid copy of a dynamic or
/// differencing disk, with a warning; else an end footer whose checksum
/// fails, accepted only when checksums are ignored.
pub fn load(
    st: &dyn Storage,
    name: &str,
    len: u64,
    ignore_checksums: bool,
    findings: &mut Vec<Finding>,
) -> Result<LoadedFooter> {
    if len < FOOTER_SIZE as u64 - 1 {
        return Err(Error::NotAnImage {
            file: name.into(),
            message: format!("{len} bytes is too short for a VHD footer"),
        });
    }
    let mut end = None;
    for size in [FOOTER_SIZE, FOOTER_SIZE - 1] {
        if end.is_none() && len >= size as u64 {
            end = read_candidate(st, name, len - size as u64, size)?;
        }
    }
    let end_offset = end
        .as_ref()
        .map(|e| e.offset)
        .unwrap_or_else(|| codec::align512(len).unwrap_or(len));
    let copy = if len >= 2 * FOOTER_SIZE as u64 {
        read_candidate(st, name, 0, FOOTER_SIZE)?
    } else {
        None
    };
    let sparse_copy = copy
        .filter(|c| c.checksum_ok)
        .filter(|c| c.footer.kind().is_some_and(|k| k != DiskType::Fixed));
    let (footer, source) = match (end, sparse_copy) {
        (Some(e), _) if e.checksum_ok => (e.footer, FooterSource::End),
        (end, Some(c)) => {
            let (kind, why) = match &end {
                Some(_) => (CorruptionKind::FooterChecksum, "checksum mismatch"),
                None => (CorruptionKind::FooterCookie, "no `conectix` cookie"),
            };
            findings.push(Finding::warning(
                kind,
                name,
                STRUCTURE,
                end.as_ref()
                    .map_or(len.saturating_sub(FOOTER_SIZE as u64), |e| e.offset),
                format!("end footer invalid ({why}); using the copy at offset 0"),
            ));
            (c.footer, FooterSource::CopyAtZero)
        }
        (Some(e), None) => {
            let computed = vhd_checksum(&e.footer.to_raw_bytes()?, FOOTER_CHECKSUM_FIELD);
            codec::tolerate_checksum(
                Error::Checksum {
                    file: name.into(),
                    structure: STRUCTURE,
                    offset: e.offset,
                    kind: CorruptionKind::FooterChecksum,
                    stored: e.footer.checksum,
                    computed,
                },
                ignore_checksums,
                findings,
            )?;
            (e.footer, FooterSource::End)
        }
        (None, None) => {
            return Err(Error::NotAnImage {
                file: name.into(),
                message: "no `conectix` footer at EOF-512, EOF-511 or offset 0".into(),
            })
        }
    };
    Ok(LoadedFooter {
        footer,
        source,
        end_offset,
    })
}

impl LoadedFooter {
    /// The footer in use, for errors at its fields.
    pub fn place(&self) -> codec::Place {
        codec::Place {
            structure: STRUCTURE,
            offset: self.at(),
        }
    }

    /// Open step: the Disk Type is one of the three, and the Current Size
    /// a whole number of sectors.
    pub fn validate(&self, name: &str) -> Result<DiskType> {
        let f = &self.footer;
        let Some(kind) = f.kind() else {
            return Err(self.place().corrupt(
                CorruptionKind::DiskTypeInvalid,
                name,
                HardDiskFooter::DISK_TYPE_OFFSET,
                format!(
                    "Disk Type {} is not fixed (2), dynamic (3) or differencing (4)",
                    f.disk_type
                ),
            ));
        };
        if !f.current_size.is_multiple_of(512) {
            let message = format!("Current Size {} is not a multiple of 512", f.current_size);
            return Err(self.size_invalid(name, message));
        }
        Ok(kind)
    }

    /// Open step of a fixed disk: the data area in front of the end
    /// footer holds the Current Size.
    pub fn validate_fixed(&self, name: &str) -> Result<()> {
        let (size, end) = (self.footer.current_size, self.end_offset);
        if size > end {
            return Err(self.place().corrupt(
                CorruptionKind::FixedDiskTruncated,
                name,
                HardDiskFooter::CURRENT_SIZE_OFFSET,
                format!(
                    "fixed disk Current Size {size} exceeds the {end} data bytes in front of the footer"
                ),
            ));
        }
        Ok(())
    }

    /// Open step of a dynamic or differencing disk: the Data Offset leaves
    /// the 1024-byte dynamic disk header inside the `len`-byte file.
    /// Returns where the header is.
    pub fn validate_header_offset(&self, name: &str, len: u64) -> Result<u64> {
        let ho = self.footer.data_offset;
        let size = super::dynamic_header::HEADER_SIZE as u64;
        if ho.checked_add(size).is_none_or(|e| e > len) {
            return Err(self.place().corrupt(
                CorruptionKind::DynamicHeaderOutsideFile,
                name,
                HardDiskFooter::DATA_OFFSET_OFFSET,
                format!("Data Offset {ho:#x} does not leave a {size}-byte dynamic disk header inside the {len}-byte file"),
            ));
        }
        Ok(ho)
    }

    /// Open step of a dynamic or differencing disk: a Current Size the
    /// 32-bit BAT can address.
    pub fn validate_sparse_size(&self, name: &str) -> Result<()> {
        let size = self.footer.current_size;
        if size > MAX_SPARSE_SIZE {
            let message =
                format!("Current Size {size} exceeds the 2 TiB a dynamic VHD can address");
            return Err(self.size_invalid(name, message));
        }
        Ok(())
    }

    fn size_invalid(&self, name: &str, message: String) -> Error {
        let kind = CorruptionKind::VirtualSizeInvalid;
        self.place()
            .corrupt(kind, name, HardDiskFooter::CURRENT_SIZE_OFFSET, message)
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
    // Through `entropy`, so a seeded run (the simulator) stamps the same
    // time every time and one seed reproduces its files byte for byte.
    let now = crate::entropy::now_unix().max(VHD_EPOCH_UNIX);
    u32::try_from(now - VHD_EPOCH_UNIX).unwrap_or(u32::MAX)
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

    #[test]
    fn field_offsets_match_the_schema() {
        type F = HardDiskFooter;
        let (zero, _) = F::parse(&[0u8; FOOTER_SIZE], "t", 0).unwrap();
        let encode = |f: &F| f.to_raw_bytes().unwrap().to_vec();
        let at = |set: fn(&mut F)| codec::field_offset(&zero, encode, set);
        assert_eq!(at(|f| f.features = !0), Some(F::FEATURES_OFFSET));
        assert_eq!(
            at(|f| f.file_format_version = !0),
            Some(F::FORMAT_VERSION_OFFSET)
        );
        assert_eq!(at(|f| f.data_offset = !0), Some(F::DATA_OFFSET_OFFSET));
        assert_eq!(at(|f| f.current_size = !0), Some(F::CURRENT_SIZE_OFFSET));
        assert_eq!(at(|f| f.disk_type = !0), Some(F::DISK_TYPE_OFFSET));
        assert_eq!(at(|f| f.checksum = !0), Some(FOOTER_CHECKSUM_FIELD as u64));
        assert_eq!(at(|f| f.saved_state = 1), Some(F::SAVED_STATE_OFFSET));
    }
}
