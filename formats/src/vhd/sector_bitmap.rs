//! The sector bitmap in front of every data block (FORMATS.md 2.5). Bit for
//! sector k is bit `7 - k % 8` of byte `k / 8`: the most significant bit is
//! the lowest sector (VirtualBox's reading; real images follow it).

use binrw::binrw;

use super::codec;
use crate::Result;

#[binrw]
#[brw(big)]
#[br(import(len: usize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorBitmap {
    #[br(count = len)]
    pub bytes: Vec<u8>,
}

impl SectorBitmap {
    pub fn parse(bytes: &[u8], file: &str, offset: u64) -> Result<Self> {
        codec::decode_args(bytes, (bytes.len(),), file, "sector bitmap", offset)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(self, "sector bitmap")
    }

    /// Bitmap bytes on disk for a block of `sectors` sectors (whole sectors).
    pub fn disk_size(sectors_per_block: u64) -> u64 {
        (sectors_per_block.div_ceil(8) + 511) & !511
    }

    pub fn get(&self, k: u64) -> bool {
        let byte = (k / 8) as usize;
        self.bytes
            .get(byte)
            .is_some_and(|b| b & (0x80 >> (k % 8)) != 0)
    }

    pub fn set(&mut self, k: u64) {
        let byte = (k / 8) as usize;
        if let Some(b) = self.bytes.get_mut(byte) {
            *b |= 0x80 >> (k % 8);
        }
    }

    /// Runs of equal bits over sectors `[start, end)`: (first sector, count, bit).
    pub fn runs(&self, start: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut k = start;
        while k < end {
            let bit = self.get(k);
            let j = self.run_end(k + 1, end, bit);
            out.push((k, j - k, bit));
            k = j;
        }
        out
    }

    /// First sector in `[from, end)` whose bit differs from `bit` (or `end`).
    fn run_end(&self, from: u64, end: u64, bit: bool) -> u64 {
        let order = crate::bitrun::BitOrder::MsbFirst;
        from + crate::bitrun::same_bits(&self.bytes, order, from, end.saturating_sub(from), bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msb_is_lowest_sector() {
        let bm = SectorBitmap {
            bytes: vec![0x80, 0x01],
        };
        assert!(bm.get(0));
        assert!(!bm.get(1));
        assert!(bm.get(15));
        assert_eq!(
            bm.runs(0, 16),
            vec![(0, 1, true), (1, 14, false), (15, 1, true)]
        );
        assert_eq!(SectorBitmap::disk_size(4096), 512);
        assert_eq!(SectorBitmap::disk_size(8192), 1024);
        assert_eq!(SectorBitmap::disk_size(1), 512);
    }

    proptest! {
        #[test]
        fn bitmap_round_trips_and_runs_match_bits(kinds in prop::collection::vec(0u8..4, 0..80), a in 0u64..700, b in 0u64..700) {
            // Long runs (0x00 / 0xFF bytes) and short ones.
            let bytes: Vec<u8> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| match k { 0 => 0, 1 => 0xFF, 2 => 0xF0, _ => (i * 37) as u8 })
                .collect();
            let bm = SectorBitmap { bytes: bytes.clone() };
            let back = SectorBitmap::parse(&bm.to_bytes().unwrap(), "t", 0).unwrap();
            prop_assert_eq!(&back, &bm);
            let (s, e) = (a.min(b), a.max(b));
            let mut k = s;
            let mut prev: Option<bool> = None;
            for (start, len, bit) in bm.runs(s, e) {
                // Maximal runs: neighbours differ.
                prop_assert_ne!(prev, Some(bit));
                prev = Some(bit);
                prop_assert_eq!(start, k);
                prop_assert!(len > 0);
                for i in start..start + len {
                    prop_assert_eq!(bm.get(i), bit);
                }
                k += len;
            }
            prop_assert_eq!(k, e.max(s));
        }
    }
}
