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
    #[br(parse_with = crate::byte_array::read)]
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
        out[8..4092].copy_from_slice(&self.data);
        unframe(&mut out, lead, trail);
        out
    }
}

/// `DataSector::split` where the sector lies (a journal frames thousands
/// of them in the buffer it writes): the target sector becomes its data
/// sector; its leading and trailing bytes are returned for the descriptor.
pub fn frame(sector: &mut [u8; SIZE], seq: u64) -> ([u8; 8], [u8; 4]) {
    let mut lead = [0u8; 8];
    lead.copy_from_slice(&sector[..8]);
    let mut trail = [0u8; 4];
    trail.copy_from_slice(&sector[4092..]);
    sector[..4].copy_from_slice(&SIGNATURE);
    sector[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
    sector[4092..].copy_from_slice(&(seq as u32).to_le_bytes());
    (lead, trail)
}

/// `DataSector::join` where the data sector lies: the descriptor's
/// leading and trailing bytes back in place of the framing.
pub fn unframe(sector: &mut [u8; SIZE], lead: &[u8; 8], trail: &[u8; 4]) {
    sector[..8].copy_from_slice(lead);
    sector[4092..].copy_from_slice(trail);
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

        #[test]
        fn frame_in_place_is_split_and_unframe_is_join(bytes in proptest::collection::vec(any::<u8>(), SIZE), seq in any::<u64>()) {
            let mut t = [0u8; SIZE];
            t.copy_from_slice(&bytes);
            let (ds, lead, trail) = DataSector::split(&t, seq);
            let mut framed = t;
            prop_assert_eq!(frame(&mut framed, seq), (lead, trail));
            prop_assert_eq!(&framed[..], &ds.encode()[..]);
            unframe(&mut framed, &lead, &trail);
            prop_assert_eq!(framed, t);
        }
    }
}
