//! Log descriptors: a zero descriptor clears a range, a data descriptor
//! names the 4 KiB sector its data sector rebuilds.

use binrw::binrw;

use crate::vhdx::codec::le_codec;

pub const ZERO_SIGNATURE: [u8; 4] = *b"zero";
pub const DATA_SIGNATURE: [u8; 4] = *b"desc";

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroDescriptor {
    pub signature: [u8; 4],
    pub reserved: u32,
    pub zero_length: u64,
    pub file_offset: u64,
    pub sequence_number: u64,
}
le_codec!(ZeroDescriptor, 32);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDescriptor {
    pub signature: [u8; 4],
    /// Bytes 4092..4096 of the target sector.
    pub trailing_bytes: [u8; 4],
    /// Bytes 0..8 of the target sector.
    pub leading_bytes: [u8; 8],
    pub file_offset: u64,
    pub sequence_number: u64,
}
le_codec!(DataDescriptor, 32);

/// One decoded descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    Zero(ZeroDescriptor),
    Data(DataDescriptor),
}

impl Descriptor {
    /// Decode 32 bytes; `None` for an unknown signature.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.get(..4)? {
            s if s == ZERO_SIGNATURE => ZeroDescriptor::decode(bytes).map(Descriptor::Zero),
            s if s == DATA_SIGNATURE => DataDescriptor::decode(bytes).map(Descriptor::Data),
            _ => None,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Descriptor::Zero(z) => z.encode(),
            Descriptor::Data(d) => d.encode(),
        }
    }
    pub fn sequence_number(&self) -> u64 {
        match self {
            Descriptor::Zero(z) => z.sequence_number,
            Descriptor::Data(d) => d.sequence_number,
        }
    }
    pub fn file_offset(&self) -> u64 {
        match self {
            Descriptor::Zero(z) => z.file_offset,
            Descriptor::Data(d) => d.file_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(r in any::<u32>(), zl in any::<u64>(), fo in any::<u64>(), seq in any::<u64>(), t in any::<[u8; 4]>(), l in any::<[u8; 8]>()) {
            let z = Descriptor::Zero(ZeroDescriptor { signature: ZERO_SIGNATURE, reserved: r, zero_length: zl, file_offset: fo, sequence_number: seq });
            prop_assert_eq!(Descriptor::decode(&z.encode()).unwrap(), z);
            let d = Descriptor::Data(DataDescriptor { signature: DATA_SIGNATURE, trailing_bytes: t, leading_bytes: l, file_offset: fo, sequence_number: seq });
            prop_assert_eq!(Descriptor::decode(&d.encode()).unwrap(), d);
        }
    }

    #[test]
    fn unknown_signature() {
        assert!(Descriptor::decode(&[b'x'; 32]).is_none());
        assert!(Descriptor::decode(b"zero").is_none());
    }
}
