//! The Block Allocation Table: entry layout, states, and the interleaving
//! of payload and sector-bitmap entries (3.7).

use binrw::binrw;

use super::codec::le_codec;

pub const PAYLOAD_NOT_PRESENT: u8 = 0;
pub const PAYLOAD_UNDEFINED: u8 = 1;
pub const PAYLOAD_ZERO: u8 = 2;
pub const PAYLOAD_UNMAPPED: u8 = 3;
/// VHDX 0.95 drafts (and old QEMU) used 5 for UNMAPPED; accepted with a warning.
pub const PAYLOAD_UNMAPPED_V095: u8 = 5;
pub const PAYLOAD_FULLY_PRESENT: u8 = 6;
pub const PAYLOAD_PARTIALLY_PRESENT: u8 = 7;
pub const SB_NOT_PRESENT: u8 = 0;
pub const SB_PRESENT: u8 = 6;

const MIB: u64 = 1 << 20;
const RESERVED_MASK: u64 = 0x000F_FFF8;
const OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry {
    pub raw: u64,
}
le_codec!(BatEntry, 8);

impl BatEntry {
    pub fn new(state: u8, file_offset: u64) -> Self {
        BatEntry {
            raw: (file_offset & OFFSET_MASK) | u64::from(state & 7),
        }
    }
    pub fn state(self) -> u8 {
        (self.raw & 7) as u8
    }
    pub fn file_offset(self) -> u64 {
        self.raw & OFFSET_MASK
    }
    pub fn file_offset_mb(self) -> u64 {
        self.raw >> 20
    }
    pub fn reserved_bits(self) -> u64 {
        self.raw & RESERVED_MASK
    }
}

/// The index of the first entry at or after `from` with any of `mask`'s
/// bits set. Large BATs are mostly zero: the scan ORs 64 entries at a time
/// (which the compiler vectorizes) and looks at single entries only inside
/// a group that has a bit set.
pub fn first_with_bits(entries: &[BatEntry], from: usize, mask: u64) -> Option<usize> {
    const GROUP: usize = 64;
    let mut at = from;
    while at < entries.len() {
        let end = (at - at % GROUP + GROUP).min(entries.len());
        let group = &entries[at..end];
        if group.iter().fold(0, |acc, e| acc | e.raw) & mask != 0 {
            if let Some(k) = group.iter().position(|e| e.raw & mask != 0) {
                return Some(at + k);
            }
        }
        at = end;
    }
    None
}

pub fn payload_state_name(s: u8) -> &'static str {
    match s {
        PAYLOAD_NOT_PRESENT => "NOT_PRESENT",
        PAYLOAD_UNDEFINED => "UNDEFINED",
        PAYLOAD_ZERO => "ZERO",
        PAYLOAD_UNMAPPED => "UNMAPPED",
        PAYLOAD_UNMAPPED_V095 => "UNMAPPED(v0.95)",
        PAYLOAD_FULLY_PRESENT => "FULLY_PRESENT",
        PAYLOAD_PARTIALLY_PRESENT => "PARTIALLY_PRESENT",
        _ => "reserved",
    }
}

/// Sizes and counts derived from the metadata (3.7 formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    pub block_size: u64,
    pub logical_sector_size: u64,
    pub virtual_size: u64,
    pub has_parent: bool,
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
    pub sector_bitmap_blocks: u64,
    pub total_entries: u64,
}

impl BatGeometry {
    /// `None` for parameters outside the spec's limits (callers validate
    /// them first and report which one is wrong).
    pub fn new(block_size: u64, lss: u64, virtual_size: u64, has_parent: bool) -> Option<Self> {
        if !block_size.is_power_of_two()
            || !(MIB..=256 * MIB).contains(&block_size)
            || !(lss == 512 || lss == 4096)
        {
            return None;
        }
        let chunk_ratio = ((1u64 << 23) * lss) / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        let sector_bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        let total_entries = if has_parent {
            sector_bitmap_blocks.checked_mul(chunk_ratio + 1)?
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        Some(BatGeometry {
            block_size,
            logical_sector_size: lss,
            virtual_size,
            has_parent,
            chunk_ratio,
            payload_blocks,
            sector_bitmap_blocks,
            total_entries,
        })
    }

    pub fn payload_index(&self, p: u64) -> u64 {
        p + p / self.chunk_ratio
    }

    pub fn sb_index(&self, k: u64) -> u64 {
        k * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// The payload block whose entry is BAT index `i` (the inverse of
    /// `payload_index`; meaningful when `i` is not a sector-bitmap index).
    pub fn payload_block(&self, i: u64) -> u64 {
        i - i / (self.chunk_ratio + 1)
    }

    /// Whether BAT index `i` is a sector-bitmap entry.
    pub fn is_sb_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// Sectors per payload block.
    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector_size
    }

    /// BAT region bytes needed, rounded to 1 MiB.
    pub fn region_bytes(&self) -> u64 {
        (self.total_entries * 8).div_ceil(MIB) * MIB
    }

    /// The virtual range `[offset, offset + len)` cut at payload block
    /// edges, in order: what every write path walks.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = BlockPiece> + '_ {
        let mut done = 0u64;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let v = offset + done;
            let block = v / self.block_size;
            let in_block = v % self.block_size;
            let n = (self.block_size - in_block).min(len - done);
            let piece = BlockPiece {
                block,
                in_block,
                len: n,
                in_disk: self
                    .virtual_size
                    .saturating_sub(block * self.block_size)
                    .min(self.block_size),
                done,
            };
            done += n;
            Some(piece)
        })
    }

    /// Whether a payload block in `state` reads zeros (and hides any
    /// parent) as it is.
    pub fn reads_zero(&self, state: u8) -> bool {
        matches!(
            state,
            PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED_V095
        ) || (state == PAYLOAD_NOT_PRESENT && !self.has_parent)
    }
}

/// One payload block's part of a virtual range (`BatGeometry::pieces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPiece {
    pub block: u64,
    /// Offset of the piece inside the block.
    pub in_block: u64,
    pub len: u64,
    /// Bytes of the block inside the virtual disk (less than the block
    /// size for a last, partial block).
    pub in_disk: u64,
    /// Bytes of the range before this piece.
    pub done: u64,
}

impl BlockPiece {
    /// The piece covers its whole block (as far as the disk reaches).
    pub fn whole(&self) -> bool {
        self.in_block == 0 && self.len == self.in_disk
    }
}

impl BatGeometry {
    /// Open step: the geometry the system `items` describe, whose
    /// TotalBATEntries fit the BAT region (`bat_region`: offset, length).
    pub fn load(
        items: &super::metadata_items::SystemItems,
        bat_region: (u64, u64),
        name: &str,
    ) -> crate::Result<Self> {
        use crate::{CorruptionKind, Error};
        let g = Self::new(
            u64::from(items.file_parameters.block_size),
            u64::from(items.logical_sector_size),
            items.virtual_size,
            items.file_parameters.has_parent(),
        )
        .ok_or_else(|| {
            Error::corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                "File Parameters",
                items.file_parameters_offset,
                "block size / sector size outside the spec",
            )
        })?;
        let need = g.total_entries.saturating_mul(8);
        if need > bat_region.1 {
            return Err(Error::corrupt(
                CorruptionKind::BatRegionTooSmall,
                name,
                "region table entry",
                super::region_table::COPY_OFFSETS[0],
                format!(
                    "BAT region Length {:#x} is shorter than TotalBATEntries {} x 8 = {need:#x}",
                    bat_region.1, g.total_entries
                ),
            ));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_round_trip(raw in any::<u64>()) {
            let e = BatEntry { raw };
            prop_assert_eq!(BatEntry::decode(&e.encode()).unwrap(), e);
            prop_assert_eq!(e.file_offset() | e.reserved_bits() | u64::from(e.state()), raw);
        }
    }

    proptest! {
        #[test]
        fn pieces_cut_a_range_at_block_edges(off in 0u64..(64 << 20), len in 0u64..(192 << 20)) {
            // Callers check the range against the disk first.
            prop_assume!(off + len <= 256 << 20);
            let g = BatGeometry::new(MIB, 512, 256 << 20, false).unwrap();
            let mut at = off;
            for p in g.pieces(off, len) {
                prop_assert_eq!(p.block * MIB + p.in_block, at);
                prop_assert_eq!(p.done, at - off);
                prop_assert!(p.len > 0 && p.in_block + p.len <= MIB);
                prop_assert!(p.in_block + p.len == MIB || at + p.len == off + len);
                prop_assert_eq!(p.whole(), p.in_block == 0 && p.len == MIB);
                at += p.len;
            }
            prop_assert_eq!(at, off + len);
        }
    }

    #[test]
    fn chunk_ratios_from_the_spec() {
        let g = |bs: u64, lss: u64| {
            BatGeometry::new(bs, lss, 1 << 30, false)
                .unwrap()
                .chunk_ratio
        };
        assert_eq!(g(32 * MIB, 512), 128);
        assert_eq!(g(2 * MIB, 512), 2048);
        assert_eq!(g(256 * MIB, 512), 16);
        assert_eq!(g(MIB, 4096), 32768);
    }

    #[test]
    fn counts_and_indexes() {
        // differencing.avhdx: 8 GiB, 2 MiB blocks: 4096 payload + 2 SB entries.
        let d = BatGeometry::new(2 * MIB, 512, 8 << 30, true).unwrap();
        assert_eq!(d.payload_blocks, 4096);
        assert_eq!(d.sector_bitmap_blocks, 2);
        assert_eq!(d.total_entries, 2 * 2049);
        assert_eq!(d.payload_index(2048), 2049);
        assert_eq!(d.sb_index(0), 2048);
        assert!(d.is_sb_index(2048) && !d.is_sb_index(2049));
        let f = BatGeometry::new(2 * MIB, 512, 8 << 30, false).unwrap();
        assert_eq!(f.total_entries, 4096 + 1);
        assert!(BatGeometry::new(3 * MIB, 512, 1, false).is_none());
    }

    #[test]
    fn entry_fields() {
        let e = BatEntry::new(PAYLOAD_FULLY_PRESENT, 26 * MIB);
        assert_eq!(e.state(), 6);
        assert_eq!(e.file_offset_mb(), 26);
        assert_eq!(e.reserved_bits(), 0);
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn first_with_bits_finds_the_first_match_from_any_start() {
        let mut v = vec![BatEntry::default(); 300];
        for (i, raw) in [(3usize, 6u64), (64, 1 << 20), (130, 7), (299, 2)] {
            v[i].raw = raw;
        }
        let slow = |from: usize, mask: u64| (from..v.len()).find(|&i| v[i].raw & mask != 0);
        for from in 0..=301 {
            for mask in [u64::MAX, 7, 1 << 20] {
                assert_eq!(
                    first_with_bits(&v, from, mask),
                    slow(from, mask),
                    "{from} {mask:#x}"
                );
            }
        }
        assert_eq!(first_with_bits(&[], 0, u64::MAX), None);
    }
}
