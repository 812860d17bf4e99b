//! The two VHDX headers (64 KiB and 128 KiB): which one is current, and how
//! a new one is produced. Headers are the only structures not protected by
//! the log; their CRC plus the sequence number make a single-slot write the
//! atomic switch.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{guid_from_le, le_codec};
use crate::checksum::crc32c_zeroed;

pub const SIGNATURE: [u8; 4] = *b"head";
pub const SIZE: usize = 4096;
/// Absolute offsets of the two header slots.
pub const SLOT_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
const CHECKSUM_FIELD: usize = 4;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxHeader {
    pub signature: [u8; 4],
    pub checksum: u32,
    pub sequence_number: u64,
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub file_write_guid: Uuid,
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub data_write_guid: Uuid,
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub log_guid: Uuid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
    #[br(parse_with = crate::byte_array::read)]
    pub reserved: [u8; 4016],
}
le_codec!(VhdxHeader, SIZE);

impl VhdxHeader {
    /// Decode 4096 bytes; the flag says whether the stored CRC matches.
    pub fn parse(bytes: &[u8]) -> Option<(Self, bool)> {
        let h = Self::decode(bytes)?;
        let ok = h.checksum == crc32c_zeroed(bytes.get(..SIZE)?, CHECKSUM_FIELD);
        Some((h, ok))
    }

    /// Encode with the checksum field computed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.encode();
        let crc = crc32c_zeroed(&v, CHECKSUM_FIELD);
        v[CHECKSUM_FIELD..CHECKSUM_FIELD + 4].copy_from_slice(&crc.to_le_bytes());
        v
    }

    pub fn computed_checksum(bytes: &[u8]) -> u32 {
        crc32c_zeroed(bytes, CHECKSUM_FIELD)
    }

    pub fn new(log_offset: u64, log_length: u32) -> Self {
        VhdxHeader {
            signature: SIGNATURE,
            checksum: 0,
            sequence_number: 0,
            file_write_guid: crate::entropy::new_guid(),
            data_write_guid: crate::entropy::new_guid(),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length,
            log_offset,
            reserved: [0u8; 4016],
        }
    }

    pub fn reserved_is_zero(&self) -> bool {
        // One compare, not a byte loop (every open asks).
        self.reserved == [0u8; 4016]
    }
}

/// One slot as read from the file.
#[derive(Debug, Clone)]
pub struct HeaderSlot {
    pub header: Option<VhdxHeader>,
    pub signature_ok: bool,
    pub checksum_ok: bool,
    pub stored: u32,
    pub computed: u32,
    pub raw: Vec<u8>,
}

impl HeaderSlot {
    pub fn from_bytes(raw: Vec<u8>) -> Self {
        // `parse`, with the CRC computed once for both fields.
        match VhdxHeader::decode(&raw) {
            Some(h) => {
                let computed = VhdxHeader::computed_checksum(&raw);
                // (`decode` took the first SIZE bytes: raw holds them.)
                let checksum_ok = h.checksum
                    == if raw.len() == SIZE {
                        computed
                    } else {
                        VhdxHeader::computed_checksum(&raw[..SIZE])
                    };
                HeaderSlot {
                    signature_ok: h.signature == SIGNATURE,
                    checksum_ok,
                    stored: h.checksum,
                    computed,
                    header: Some(h),
                    raw,
                }
            }
            None => HeaderSlot {
                header: None,
                signature_ok: false,
                checksum_ok: false,
                stored: 0,
                computed: 0,
                raw,
            },
        }
    }
    fn valid(&self, ignore_checksums: bool) -> bool {
        self.signature_ok && (self.checksum_ok || ignore_checksums)
    }
}

/// Why no header could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChoiceError {
    /// Neither slot has the signature.
    NoSignature,
    /// Slots with the signature exist but none has a matching CRC; the slot
    /// index of the first such slot.
    Checksum(usize),
    /// Both valid, equal sequence numbers, different bytes.
    EqualSequence,
}

/// The current header per 3.4: the only valid one, or the valid one with
/// the strictly greater sequence number. Byte-identical headers with equal
/// sequence numbers are accepted; the flag reports that case (a warning).
pub fn choose_current(
    slots: &[HeaderSlot; 2],
    ignore_checksums: bool,
) -> Result<(usize, bool), HeaderChoiceError> {
    let v0 = slots[0].valid(false);
    let v1 = slots[1].valid(false);
    let (v0, v1) = if !v0 && !v1 && ignore_checksums {
        (slots[0].valid(true), slots[1].valid(true))
    } else {
        (v0, v1)
    };
    match (v0, v1) {
        (true, false) => Ok((0, false)),
        (false, true) => Ok((1, false)),
        (false, false) => {
            if let Some(i) = slots.iter().position(|s| s.signature_ok) {
                Err(HeaderChoiceError::Checksum(i))
            } else {
                Err(HeaderChoiceError::NoSignature)
            }
        }
        (true, true) => {
            let s0 = slots[0].header.as_ref().map_or(0, |h| h.sequence_number);
            let s1 = slots[1].header.as_ref().map_or(0, |h| h.sequence_number);
            if s0 > s1 {
                Ok((0, false))
            } else if s1 > s0 {
                Ok((1, false))
            } else if slots[0].raw == slots[1].raw {
                Ok((0, true))
            } else {
                Err(HeaderChoiceError::EqualSequence)
            }
        }
    }
}

impl VhdxHeader {
    /// Byte offsets (in the header) of the fields that open reports on.
    pub const VERSION_OFFSET: u64 = 66;
    pub const LOG_LENGTH_OFFSET: u64 = 68;
    pub const LOG_OFFSET_OFFSET: u64 = 72;
    pub const RESERVED_OFFSET: u64 = 80;

    /// The log as (offset, length).
    pub fn log_region(&self) -> (u64, u64) {
        (self.log_offset, u64::from(self.log_length))
    }

    /// Open step: the current header's Version and log version (a pending
    /// log in another version is unsupported); reserved bytes are a
    /// warning. `hoff` is the header's slot offset.
    pub fn validate(
        &self,
        name: &str,
        hoff: u64,
        findings: &mut Vec<crate::Finding>,
    ) -> crate::Result<()> {
        use crate::{CorruptionKind, Error, Finding};
        if self.version != 1 {
            return Err(Error::corrupt(
                CorruptionKind::HeaderVersion,
                name,
                "header",
                hoff + Self::VERSION_OFFSET,
                format!("Version is {}, not 1", self.version),
            ));
        }
        if !self.log_guid.is_nil() && self.log_version != 0 {
            return Err(Error::Unsupported {
                file: name.into(),
                message: format!("log version {} with a pending log", self.log_version),
            });
        }
        if !self.reserved_is_zero() {
            findings.push(Finding::warning(
                CorruptionKind::HeaderReservedNonZero,
                name,
                "header",
                hoff + Self::RESERVED_OFFSET,
                "reserved bytes are not zero",
            ));
        }
        Ok(())
    }

    /// Open step: a log that is there (a length or a LogGuid) is a
    /// non-zero 1 MiB multiple at a 1 MiB multiple >= 1 MiB, inside the
    /// file. Returns the log region.
    pub fn validate_log_region(
        &self,
        name: &str,
        hoff: u64,
        file_len: u64,
    ) -> crate::Result<(u64, u64)> {
        use super::codec::MIB;
        use crate::{CorruptionKind, Error};
        let log = self.log_region();
        if log.1 == 0 && self.log_guid.is_nil() {
            return Ok(log);
        }
        if log.1 == 0 || !log.1.is_multiple_of(MIB) {
            return Err(Error::corrupt(
                CorruptionKind::LogLengthInvalid,
                name,
                "header",
                hoff + Self::LOG_LENGTH_OFFSET,
                format!("LogLength {} is not a non-zero multiple of 1 MiB", log.1),
            ));
        }
        let at = hoff + Self::LOG_OFFSET_OFFSET;
        if log.0 < MIB || !log.0.is_multiple_of(MIB) {
            return Err(Error::corrupt(
                CorruptionKind::LogOffsetInvalid,
                name,
                "header",
                at,
                format!("LogOffset {:#x} is not a 1 MiB multiple >= 1 MiB", log.0),
            ));
        }
        if log.0.checked_add(log.1).is_none_or(|e| e > file_len) {
            return Err(Error::corrupt(
                CorruptionKind::LogOutsideFile,
                name,
                "header",
                at,
                format!(
                    "log [{:#x}, +{:#x}) extends past the end of the {file_len}-byte file",
                    log.0, log.1
                ),
            ));
        }
        Ok(log)
    }
}

/// Open step: read both slots and choose the current header (3.4), with a
/// finding for each slot that is not valid. Returns the current slot and
/// its header.
pub fn load_current(
    storage: &dyn crate::Storage,
    name: &str,
    ignore_checksums: bool,
    findings: &mut Vec<crate::Finding>,
) -> crate::Result<(usize, VhdxHeader)> {
    use crate::{CorruptionKind, Error, Finding};
    let read = |i: usize| super::codec::read_vec(storage, name, SLOT_OFFSETS[i], SIZE);
    let slots = [
        HeaderSlot::from_bytes(read(0)?),
        HeaderSlot::from_bytes(read(1)?),
    ];
    let (cur, identical) = choose_current(&slots, ignore_checksums).map_err(|e| {
        let (kind, message) = match e {
            HeaderChoiceError::Checksum(i) => {
                return Error::Checksum {
                    file: name.into(),
                    structure: "header",
                    offset: SLOT_OFFSETS[i],
                    kind: CorruptionKind::HeaderChecksum,
                    stored: slots[i].stored,
                    computed: slots[i].computed,
                }
            }
            HeaderChoiceError::NoSignature => (
                CorruptionKind::NoValidHeader,
                "neither header has the `head` signature",
            ),
            HeaderChoiceError::EqualSequence => (
                CorruptionKind::HeaderSequenceTie,
                "both headers are valid with equal sequence numbers but different contents",
            ),
        };
        Error::corrupt(kind, name, "header", SLOT_OFFSETS[0], message)
    })?;
    if identical {
        findings.push(Finding::warning(
            CorruptionKind::HeaderSequenceTie,
            name,
            "header",
            SLOT_OFFSETS[1],
            "both headers have the same sequence number (byte-identical copies accepted)",
        ));
    }
    for (i, s) in slots.iter().enumerate() {
        if !s.signature_ok {
            findings.push(Finding::warning(
                CorruptionKind::HeaderSignature,
                name,
                "header",
                SLOT_OFFSETS[i],
                "no `head` signature (the other header is used)",
            ));
        } else if !s.checksum_ok {
            let f = format!(
                "checksum mismatch (stored {:#010x}, computed {:#010x})",
                s.stored, s.computed
            );
            findings.push(if i == cur {
                Finding::error(
                    CorruptionKind::HeaderChecksum,
                    name,
                    "header",
                    SLOT_OFFSETS[i],
                    f,
                )
            } else {
                Finding::warning(
                    CorruptionKind::HeaderChecksum,
                    name,
                    "header",
                    SLOT_OFFSETS[i],
                    f + " (the other header is used)",
                )
            });
        }
    }
    let kind = CorruptionKind::NoValidHeader;
    let unreadable = super::codec::unreadable(kind, name, "header", SLOT_OFFSETS[cur]);
    let h = slots[cur].header.clone().ok_or_else(unreadable)?;
    Ok((cur, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = VhdxHeader> {
        (
            any::<[u8; 4]>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(u16, u16, u32, u64)>(),
            proptest::collection::vec(any::<u8>(), 4016),
        )
            .prop_map(|(sig, seq, a, b, c, (lv, v, ll, lo), res)| {
                let mut reserved = [0u8; 4016];
                reserved.copy_from_slice(&res);
                VhdxHeader {
                    signature: sig,
                    checksum: 0,
                    sequence_number: seq,
                    file_write_guid: Uuid::from_bytes(a),
                    data_write_guid: Uuid::from_bytes(b),
                    log_guid: Uuid::from_bytes(c),
                    log_version: lv,
                    version: v,
                    log_length: ll,
                    log_offset: lo,
                    reserved,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip_with_checksum(h in arb_header()) {
            let bytes = h.to_bytes();
            prop_assert_eq!(bytes.len(), SIZE);
            let (back, ok) = VhdxHeader::parse(&bytes).unwrap();
            prop_assert!(ok);
            prop_assert_eq!(back.to_bytes(), bytes.clone());
            let mut bad = bytes;
            bad[100] ^= 1;
            prop_assert!(!VhdxHeader::parse(&bad).unwrap().1);
        }
    }

    fn slot(seq: u64, corrupt: bool) -> HeaderSlot {
        let mut h = VhdxHeader::new(1 << 20, 1 << 20);
        h.sequence_number = seq;
        let mut b = h.to_bytes();
        if corrupt {
            b[4] ^= 0xff;
        }
        HeaderSlot::from_bytes(b)
    }

    #[test]
    fn current_header_rules() {
        assert_eq!(
            choose_current(&[slot(5, false), slot(6, false)], false),
            Ok((1, false))
        );
        assert_eq!(
            choose_current(&[slot(7, false), slot(6, false)], false),
            Ok((0, false))
        );
        assert_eq!(
            choose_current(&[slot(7, true), slot(6, false)], false),
            Ok((1, false))
        );
        assert_eq!(
            choose_current(&[slot(7, true), slot(6, true)], false),
            Err(HeaderChoiceError::Checksum(0))
        );
        assert_eq!(
            choose_current(&[slot(7, true), slot(6, true)], true),
            Ok((0, false))
        );
        assert_eq!(
            choose_current(&[slot(6, false), slot(6, false)], false),
            Err(HeaderChoiceError::EqualSequence)
        );
        let a = slot(6, false);
        assert_eq!(choose_current(&[a.clone(), a], false), Ok((0, true)));
        let none = HeaderSlot::from_bytes(vec![0u8; SIZE]);
        assert_eq!(
            choose_current(&[none.clone(), none], false),
            Err(HeaderChoiceError::NoSignature)
        );
    }

    #[test]
    fn field_offsets_match_the_schema() {
        let mut h = VhdxHeader::new(0x0102_0304_0506_0708, 0x1122_3344);
        h.version = 0xabcd;
        h.reserved[0] = 0xee;
        let b = h.encode();
        let at = |o: u64| o as usize;
        assert_eq!(
            b[at(VhdxHeader::VERSION_OFFSET)..][..2],
            0xabcdu16.to_le_bytes()
        );
        assert_eq!(
            b[at(VhdxHeader::LOG_LENGTH_OFFSET)..][..4],
            0x1122_3344u32.to_le_bytes()
        );
        assert_eq!(
            b[at(VhdxHeader::LOG_OFFSET_OFFSET)..][..8],
            0x0102_0304_0506_0708u64.to_le_bytes()
        );
        assert_eq!(b[at(VhdxHeader::RESERVED_OFFSET)], 0xee);
    }
}
