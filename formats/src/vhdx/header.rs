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
}
