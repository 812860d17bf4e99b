//! `check`: the 3.12 checklist over an opened image. Problems that make an
//! image unopenable are open errors; this reports everything else.

use super::bat;
use super::image::{overlaps, VhdxImage, MIB};
use crate::{CorruptionKind, Finding, Image};

pub fn check(img: &VhdxImage) -> Vec<Finding> {
    let mut f = img.open_findings();
    let name = img.name.as_str();
    let g = img.geometry;
    let file_len = img.view.len().unwrap_or(0);
    let bat_off = img.bat_region.0;

    // Fixed objects that blocks must not overlap.
    let mut fixed: Vec<(&str, (u64, u64))> = vec![
        ("header section", (0, MIB)),
        ("BAT region", img.bat_region),
        ("metadata region", img.metadata_region),
    ];
    if img.header.log_length != 0 {
        fixed.push((
            "log",
            (img.header.log_offset, u64::from(img.header.log_length)),
        ));
    }
    for e in &img.region_table.entries {
        if e.guid != super::region_table::BAT_GUID && e.guid != super::region_table::METADATA_GUID {
            fixed.push(("unknown region", (e.file_offset, u64::from(e.length))));
        }
    }

    // Every allocated block: (offset, length, BAT index).
    let mut blocks: Vec<(u64, u64, u64)> = Vec::new();
    let mut chunk_has_partial = vec![false; g.sector_bitmap_blocks as usize];
    // An all-zero entry (NOT_PRESENT, no offset, no reserved bits) is valid
    // in either role; most of a large sparse BAT is zero, so the walk visits
    // only the others.
    let entries = &img.bat;
    let mut next = 0;
    while let Some(k) = entries.first_with_bits(next, u64::MAX) {
        if k as u64 >= g.total_entries {
            break;
        }
        next = k + 1;
        let e = entries.get(k).unwrap_or_default();
        let i = k as u64;
        let at = bat_off + i * 8;
        if e.reserved_bits() != 0 {
            f.push(Finding::error(
                CorruptionKind::BatEntryReservedBits,
                name,
                "BAT entry",
                at,
                format!("reserved bits set ({:#x})", e.raw),
            ));
        }
        if g.is_sb_index(i) {
            match e.state() {
                bat::SB_NOT_PRESENT => {}
                bat::SB_PRESENT if g.has_parent => {
                    blocks.push((e.file_offset(), super::sector_bitmap::BLOCK_SIZE, i))
                }
                bat::SB_PRESENT => f.push(Finding::error(
                    CorruptionKind::SectorBitmapInNonDifferencing,
                    name,
                    "BAT entry",
                    at,
                    "SB_BLOCK_PRESENT in a non-differencing file",
                )),
                s => f.push(Finding::error(
                    CorruptionKind::BatEntryReservedState,
                    name,
                    "BAT entry",
                    at,
                    format!("sector bitmap entry has reserved state {s}"),
                )),
            }
            continue;
        }
        let p = g.payload_block(i);
        if p >= g.payload_blocks {
            continue;
        }
        match e.state() {
            bat::PAYLOAD_FULLY_PRESENT => {
                let len = (g.virtual_size - p * g.block_size).min(g.block_size);
                blocks.push((e.file_offset(), len, i));
            }
            bat::PAYLOAD_PARTIALLY_PRESENT => {
                if !g.has_parent {
                    f.push(Finding::error(
                        CorruptionKind::PartialBlockInNonDifferencing,
                        name,
                        "BAT entry",
                        at,
                        format!(
                            "payload block {p} is PARTIALLY_PRESENT in a non-differencing file"
                        ),
                    ));
                } else if let Some(c) = chunk_has_partial.get_mut((p / g.chunk_ratio) as usize) {
                    *c = true;
                }
                let len = (g.virtual_size - p * g.block_size).min(g.block_size);
                blocks.push((e.file_offset(), len, i));
            }
            bat::PAYLOAD_UNMAPPED_V095 => f.push(Finding::warning(
                CorruptionKind::BatEntryLegacyState,
                name,
                "BAT entry",
                at,
                format!("payload block {p} uses state 5 (VHDX 0.95 UNMAPPED)"),
            )),
            bat::PAYLOAD_ZERO if e.file_offset() != 0 => f.push(Finding::warning(
                CorruptionKind::BatEntryZeroWithOffset,
                name,
                "BAT entry",
                at,
                format!("payload block {p} is ZERO with a non-zero FileOffsetMB"),
            )),
            bat::PAYLOAD_NOT_PRESENT
            | bat::PAYLOAD_ZERO
            | bat::PAYLOAD_UNMAPPED
            | bat::PAYLOAD_UNDEFINED => {}
            s => f.push(Finding::error(
                CorruptionKind::BatEntryReservedState,
                name,
                "BAT entry",
                at,
                format!("payload block {p} has reserved state {s}"),
            )),
        }
    }
    for (k, has) in chunk_has_partial.iter().enumerate() {
        if *has {
            let sbi = g.sb_index(k as u64);
            if img
                .bat
                .get(sbi as usize)
                .is_none_or(|e| e.state() != bat::SB_PRESENT)
            {
                f.push(Finding::error(CorruptionKind::SectorBitmapNotPresent, name, "BAT entry", bat_off + sbi * 8, format!(
                    "chunk {k} has PARTIALLY_PRESENT blocks but its sector bitmap block is not present")));
            }
        }
    }
    for &(off, len, i) in &blocks {
        let at = bat_off + i * 8;
        if off < MIB {
            f.push(Finding::error(
                CorruptionKind::BlockOverlapsStructure,
                name,
                "BAT entry",
                at,
                format!("block at {off:#x} lies in the header section"),
            ));
            continue;
        }
        if off.saturating_add(len) > file_len {
            f.push(Finding::error(CorruptionKind::BlockOutsideFile, name, "BAT entry", at, format!(
                "block [{off:#x}, +{len:#x}) extends past the end of the {file_len}-byte file (truncated)")));
        }
        if let Some((what, _)) = fixed.iter().find(|(_, r)| overlaps(*r, (off, len))) {
            f.push(Finding::error(
                CorruptionKind::BlockOverlapsStructure,
                name,
                "BAT entry",
                at,
                format!("block at {off:#x} overlaps the {what}"),
            ));
        }
    }
    // Overlaps between blocks (sorted by offset; bounded by the BAT size).
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        let (a, b) = (w[0], w[1]);
        let message = if a.0 == b.0 {
            format!(
                "FileOffsetMB {} is used by BAT entries {} and {}",
                b.0 >> 20,
                a.2,
                b.2
            )
        } else if a.0 + a.1 > b.0 {
            format!(
                "block at {:#x} overlaps the block of BAT entry {}",
                b.0, a.2
            )
        } else {
            continue;
        };
        f.push(Finding::error(
            CorruptionKind::BlockOverlap,
            name,
            "BAT entry",
            bat_off + b.2 * 8,
            message,
        ));
    }
    f
}
