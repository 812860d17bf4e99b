//! Log data sectors: the middle 4084 bytes of a target sector, framed by
//! the entry's sequence number so a torn entry is detected.

use binrw::binrw;

use crate::vhdx::codec::le_codec;

pub const SIGNATURE: [u8; 4] = *b"data";
pub const SIZE: usize = 4096;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSector {
    pub signature: [u8; 4],
    pub sequence_high: u32,
    /// Bytes 8..4092 of the target sector.
    pub data: [u8; 4084],
    pub sequence_low: u32,
}
le_codec!(DataSector, SIZE);

impl DataSector {
    pub fn sequence_number(&self) -> u64 {
        (u64::from(self.sequence_high) << 32) | u64::from(self.sequence_low)
    }

    /// Split a target sector into its data sector and the descriptor's
    /// leading (0..8) and trailing (4092..4096) bytes.
    pub fn split(target: &[u8; SIZE], seq: u64) -> (Self, [u8; 8], [u8; 4]) {
        let mut data = [0u8; 4084];
        data.copy_from_slice(&target[8..4092]);
        let mut lead = [0u8; 8];
        lead.copy_from_slice(&target[..8]);
        let mut trail = [0u8; 4];
        trail.copy_from_slice(&target[4092..]);
        (
            DataSector {
                signature: SIGNATURE,
                sequence_high: (seq >> 32) as u32,
                data,
                sequence_low: seq as u32,
            },
            lead,
            trail,
        )
    }

    /// Reassemble the 4 KiB target sector.
    pub fn join(&self, lead: &[u8; 8], trail: &[u8; 4]) -> [u8; SIZE] {
        let mut out = [0u8; SIZE];
        out[..8].copy_from_slice(lead);
        out[8..4092].copy_from_slice(&self.data);
        out[4092..].copy_from_slice(trail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_join_round_trip(bytes in proptest::collection::vec(any::<u8>(), SIZE), seq in any::<u64>()) {
            let mut t = [0u8; SIZE];
            t.copy_from_slice(&bytes);
            let (ds, lead, trail) = DataSector::split(&t, seq);
            prop_assert_eq!(ds.sequence_number(), seq);
            let enc = ds.encode();
            prop_assert_eq!(enc.len(), SIZE);
            let back = DataSector::decode(&enc).unwrap();
            prop_assert_eq!(back.join(&lead, &trail), t);
        }
    }
}
