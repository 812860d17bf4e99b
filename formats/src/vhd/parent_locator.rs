//! Parent locator entries of the dynamic disk header (FORMATS.md 2.4) and the
//! decoding of the locator data they point to.

use binrw::binrw;

use super::dynamic_header::{DynamicDiskHeader, LoadedHeader};
use crate::error::IoContext;
use crate::params::PathHint;
use crate::{CorruptionKind, Finding, Result, Storage};

/// Platform codes (big-endian four-character codes).
pub const PLATFORM_NONE: u32 = 0;
pub const PLATFORM_WI2R: u32 = 0x5769_3272;
pub const PLATFORM_WI2K: u32 = 0x5769_326B;
pub const PLATFORM_W2RU: u32 = 0x5732_7275;
pub const PLATFORM_W2KU: u32 = 0x5732_6B75;
pub const PLATFORM_MAC: u32 = 0x4D61_6320;
pub const PLATFORM_MACX: u32 = 0x4D61_6358;

/// Locator data larger than this is refused before it is read: real paths
/// are a few hundred bytes.
pub const MAX_LOCATOR_DATA: u32 = 64 * 1024;
/// Bytes of one entry in the dynamic disk header.
pub const ENTRY_SIZE: u64 = 24;

#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocatorEntry {
    pub platform_code: u32,
    /// Spec: sectors; Virtual PC / Hyper-V: bytes. Only used for overlap checks.
    pub platform_data_space: u32,
    pub platform_data_length: u32,
    pub reserved: u32,
    pub platform_data_offset: u64,
}

impl ParentLocatorEntry {
    pub fn is_used(&self) -> bool {
        self.platform_code != PLATFORM_NONE
    }

    pub fn code_text(&self) -> String {
        super::footer::fourcc_text(&self.platform_code.to_be_bytes())
    }

    /// Bytes reserved for the data, interpreting Platform Data Space the way
    /// producers do: as bytes when it is at least the data length, else as
    /// sectors.
    pub fn reserved_bytes(&self) -> u64 {
        let space = u64::from(self.platform_data_space);
        let len = u64::from(self.platform_data_length);
        if space >= len {
            space
        } else {
            space.saturating_mul(512).max(len)
        }
    }
}

/// Open step of a differencing disk: every used entry of the header, with the absolute offset of the entry and its data decoded as a
/// path. Data outside the `len`-byte file or over `MAX_LOCATOR_DATA` is an
/// error finding, not an error: the entry is kept without text (another
/// locator or the parent's name may still find the parent).
pub fn load(
    st: &dyn Storage,
    name: &str,
    loaded: &LoadedHeader,
    len: u64,
    findings: &mut Vec<Finding>,
) -> Result<Vec<(ParentLocatorEntry, u64, Option<String>)>> {
    let mut locators = Vec::new();
    for (i, e) in loaded.header.parent_locators.iter().enumerate() {
        if !e.is_used() {
            continue;
        }
        let eoff = loaded
            .place()
            .field_at(DynamicDiskHeader::locator_entry_offset(i));
        let dl = e.platform_data_length;
        let fits = e
            .platform_data_offset
            .checked_add(u64::from(dl))
            .is_some_and(|x| x <= len);
        if dl > MAX_LOCATOR_DATA || !fits {
            findings.push(Finding::error(
                CorruptionKind::LocatorOutsideFile,
                name,
                "parent locator entry",
                eoff,
                format!(
                    "{} locator data ({dl} bytes at {:#x}) lies outside the file or exceeds 64 KiB; entry ignored",
                    e.code_text(),
                    e.platform_data_offset
                ),
            ));
            locators.push((*e, eoff, None));
            continue;
        }
        let mut d = vec![0u8; dl as usize];
        st.read_at(&mut d, e.platform_data_offset).ctx(name)?;
        let text = decode_locator(e.platform_code, &d).map(|(s, _)| s);
        locators.push((*e, eoff, text));
    }
    Ok(locators)
}

/// Decode locator data to a path string, and the hint it gives.
/// Returns None for codes whose data is not a path (Mac alias) or unknown.
pub fn decode_locator(code: u32, data: &[u8]) -> Option<(String, PathHint)> {
    let path = match code {
        PLATFORM_W2RU | PLATFORM_W2KU => utf16le(data),
        PLATFORM_WI2R | PLATFORM_WI2K => single_byte(data),
        PLATFORM_MACX => file_url_to_path(String::from_utf8_lossy(data).trim_end_matches('\0')),
        _ => return None,
    };
    Some((path.clone(), path_hint(code, path)?))
}

/// What a decoded locator path says, by platform code: relative, absolute
/// Windows or POSIX; None for a code whose data is not a path.
pub fn path_hint(code: u32, path: String) -> Option<PathHint> {
    match code {
        PLATFORM_W2RU | PLATFORM_WI2R => Some(PathHint::Relative(path)),
        PLATFORM_W2KU | PLATFORM_WI2K => Some(PathHint::AbsoluteWindows(path)),
        PLATFORM_MACX => Some(PathHint::Posix(path)),
        _ => None,
    }
}

/// UTF-16LE, stopping at the first NUL.
pub fn utf16le(data: &[u8]) -> String {
    utf16_to_nul(data, u16::from_le_bytes)
}

/// UTF-16BE (Parent Unicode Name), stopping at the first NUL.
pub fn utf16be(data: &[u8]) -> String {
    utf16_to_nul(data, u16::from_be_bytes)
}

/// UTF-16 in the byte order `unit` reads, up to the first NUL (lossy:
/// hostile names still print).
fn utf16_to_nul(data: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| unit([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn single_byte(data: &[u8]) -> String {
    data.iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect()
}

/// `file://localhost/a%20b` -> `/a b`.
pub fn file_url_to_path(url: &str) -> String {
    let rest = url
        .strip_prefix("file://localhost")
        .or_else(|| url.strip_prefix("file://"))
        .unwrap_or(url);
    percent_decode(rest)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_entry() -> impl Strategy<Value = ParentLocatorEntry> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(|(a, b, c, d, e)| ParentLocatorEntry {
                platform_code: a,
                platform_data_space: b,
                platform_data_length: c,
                reserved: d,
                platform_data_offset: e,
            })
    }

    proptest! {
        #[test]
        fn entry_round_trips(e in arb_entry()) {
            let v = super::super::codec::encode(&e, "e").unwrap();
            prop_assert_eq!(v.len(), 24);
            prop_assert_eq!(&v[16..24], &e.platform_data_offset.to_be_bytes()[..]);
            let back: ParentLocatorEntry = super::super::codec::decode(&v, "t", "e", 0).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn decoders_never_panic(code in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_locator(code, &data);
            let _ = utf16be(&data);
            let _ = file_url_to_path(&String::from_utf8_lossy(&data));
        }
    }

    #[test]
    fn decodes_paths() {
        let w: Vec<u8> = ".\\p.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(
            decode_locator(PLATFORM_W2RU, &w).unwrap().1,
            PathHint::Relative(".\\p.vhd".into())
        );
        assert_eq!(
            decode_locator(PLATFORM_MACX, b"file://localhost/x/my%20disk.vhd")
                .unwrap()
                .1,
            PathHint::Posix("/x/my disk.vhd".into())
        );
        assert_eq!(file_url_to_path("file:///a%2"), "/a%2");
        assert!(decode_locator(PLATFORM_MAC, b"alias").is_none());
    }
}
