//! Full validation (FORMATS.md 2.9). Everything open refused is already an
//! error; this adds what open tolerates: warnings, blocks outside the file,
//! overlapping structures, a stale footer copy.

use super::bat::{BlockAllocationTable, BAT_UNALLOCATED};
use super::dynamic_header::{DynamicDiskHeader, HEADER_SIZE};
use super::footer::{HardDiskFooter, FEATURES_RESERVED, FILE_FORMAT_VERSION, FOOTER_SIZE};
use super::image::{FooterSource, VhdImage};
use crate::error::IoContext;
use crate::{CorruptionKind, Finding, Result};

/// Findings of one kind beyond this are summarised.
const MAX_PER_KIND: usize = 50;

pub(super) fn check(img: &VhdImage) -> Result<Vec<Finding>> {
    let name = img.name.as_str();
    let mut out = img.findings.clone();
    let f = &img.footer;
    let foff = match img.footer_source {
        FooterSource::End => img.footer_offset,
        FooterSource::CopyAtZero => 0,
    };
    if f.file_format_version != FILE_FORMAT_VERSION {
        out.push(Finding::warning(
            CorruptionKind::FooterFormatVersion,
            name,
            "hard disk footer",
            foff + HardDiskFooter::FORMAT_VERSION_OFFSET,
            format!(
                "File Format Version {:#010x} is not 0x00010000",
                f.file_format_version
            ),
        ));
    }
    if f.features & FEATURES_RESERVED == 0 {
        out.push(Finding::warning(
            CorruptionKind::FooterFeatures,
            name,
            "hard disk footer",
            foff + HardDiskFooter::FEATURES_OFFSET,
            "Features bit 1 (reserved, must be set) is clear",
        ));
    }
    if f.features & !0x3 != 0 {
        out.push(Finding::warning(
            CorruptionKind::FooterFeatures,
            name,
            "hard disk footer",
            foff + HardDiskFooter::FEATURES_OFFSET,
            format!("Features {:#010x} has undefined bits set", f.features),
        ));
    }
    if f.saved_state != 0 {
        out.push(Finding::warning(
            CorruptionKind::SavedState,
            name,
            "hard disk footer",
            foff + HardDiskFooter::SAVED_STATE_OFFSET,
            "Saved State is set: the disk belongs to a saved VM; structural changes are refused",
        ));
    }
    let len = img.storage.len().ctx(name)?;
    let Some(s) = &img.sparse else {
        if img.footer_offset > f.current_size {
            out.push(Finding::warning(
                CorruptionKind::FixedDiskGap,
                name,
                "hard disk footer",
                img.footer_offset,
                format!(
                    "{} bytes between the end of the {}-byte data area and the footer",
                    img.footer_offset - f.current_size,
                    f.current_size
                ),
            ));
        }
        return Ok(out);
    };

    // The footer copy at 0 must equal the footer in use.
    if img.footer_source == FooterSource::End && len >= 2 * FOOTER_SIZE as u64 {
        let mut b = [0u8; FOOTER_SIZE];
        img.storage.read_at(&mut b, 0).ctx(name)?;
        let (copy, ok) = HardDiskFooter::parse(&b, name, 0)?;
        if !copy.cookie_ok() || !ok {
            out.push(Finding::warning(
                CorruptionKind::FooterCopyInvalid,
                name,
                "hard disk footer copy",
                0u64,
                "the footer copy at offset 0 is missing or has a bad checksum (repairable)",
            ));
        } else if copy != *f {
            out.push(Finding::warning(
                CorruptionKind::FooterCopyMismatch,
                name,
                "hard disk footer copy",
                0u64,
                "the footer copy at offset 0 differs from the end footer (repairable)",
            ));
        }
    }

    // Metadata extents: (start, end, what, where the describing field is).
    let mut meta: Vec<(u64, u64, String, u64)> = vec![
        (0, FOOTER_SIZE as u64, "footer copy".into(), 0),
        (
            s.header_offset,
            s.header_offset + HEADER_SIZE as u64,
            "dynamic disk header".into(),
            foff + HardDiskFooter::DATA_OFFSET_OFFSET,
        ),
        (
            s.header.table_offset,
            s.header.table_offset + BlockAllocationTable::disk_size(s.header.max_table_entries),
            "block allocation table".into(),
            s.header_offset + DynamicDiskHeader::TABLE_OFFSET_OFFSET,
        ),
    ];
    for (e, eoff, _) in &s.locators {
        let start = e.platform_data_offset;
        let end = start.saturating_add(u64::from(e.platform_data_length));
        if end > len {
            continue; // already reported at open
        }
        meta.push((
            start,
            end,
            format!("{} parent locator data", e.code_text()),
            *eoff,
        ));
    }
    if !s.differencing {
        for (i, e) in s.header.parent_locators.iter().enumerate() {
            if e.is_used() {
                out.push(Finding::warning(
                    CorruptionKind::LocatorInNonDifferencing,
                    name,
                    "parent locator entry",
                    s.header_offset + DynamicDiskHeader::locator_entry_offset(i),
                    "a dynamic (non-differencing) disk has a parent locator entry",
                ));
            }
        }
    }
    for i in 0..meta.len() {
        for j in i + 1..meta.len() {
            let (a, b) = (&meta[i], &meta[j]);
            if a.0 < b.1 && b.0 < a.1 {
                out.push(Finding::error(
                    CorruptionKind::StructureOverlap,
                    name,
                    "file layout",
                    b.3,
                    format!(
                        "{} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})",
                        b.2, b.0, b.1, a.2, a.0, a.1
                    ),
                ));
            }
        }
    }

    // Blocks: inside the file (before the end footer), no overlaps. Each
    // finding names the block's BAT entry (a summary: the table).
    let span = s.block_span();
    let entry_at = |b: u64| s.header.table_offset + 4 * b;
    let bat_error = |kind, at: u64, message: String| {
        Finding::error(kind, name, "block allocation table", at, message)
    };
    let mut blocks: Vec<(u64, u32)> = Vec::new();
    let mut outside = 0usize;
    for (b, &e) in s.bat.iter().enumerate() {
        if e == BAT_UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * 512;
        let end = start + span;
        if end > img.footer_offset {
            outside += 1;
            if outside <= MAX_PER_KIND {
                let (kind, what) = if end > len {
                    (CorruptionKind::BlockOutsideFile, "lies outside the file")
                } else {
                    (
                        CorruptionKind::BlockOverlapsStructure,
                        "overlaps the end footer",
                    )
                };
                let footer = img.footer_offset;
                out.push(bat_error(
                    kind,
                    entry_at(b as u64),
                    format!("block {b} [{start:#x}, {end:#x}) {what} (footer at {footer:#x}, file {len} bytes)"),
                ));
            }
        }
        blocks.push((start, b as u32));
    }
    // Past MAX_PER_KIND findings of a kind, one more counts the rest.
    let rest = |count: usize, kind, what: &str| {
        let more = count.checked_sub(MAX_PER_KIND).filter(|n| *n > 0)?;
        Some(bat_error(kind, entry_at(0), format!("{more} more {what}")))
    };
    out.extend(rest(
        outside,
        CorruptionKind::BlockOutsideFile,
        "blocks outside the file",
    ));
    blocks.sort_unstable();
    let mut overlaps = 0usize;
    for w in blocks.windows(2) {
        if w[1].0 < w[0].0 + span {
            overlaps += 1;
            if overlaps <= MAX_PER_KIND {
                out.push(bat_error(
                    CorruptionKind::BlockOverlap,
                    entry_at(u64::from(w[1].1)),
                    format!(
                        "block {} at {:#x} overlaps block {} at {:#x}",
                        w[1].1, w[1].0, w[0].1, w[0].0
                    ),
                ));
            }
        }
    }
    for m in &meta {
        let first = blocks.partition_point(|b| b.0 + span <= m.0);
        for b in blocks[first..].iter().take_while(|b| b.0 < m.1) {
            overlaps += 1;
            if overlaps <= MAX_PER_KIND {
                out.push(bat_error(
                    CorruptionKind::BlockOverlapsStructure,
                    entry_at(u64::from(b.1)),
                    format!(
                        "block {} [{:#x}, {:#x}) overlaps the {} [{:#x}, {:#x})",
                        b.1,
                        b.0,
                        b.0 + span,
                        m.2,
                        m.0,
                        m.1
                    ),
                ));
            }
        }
    }
    out.extend(rest(
        overlaps,
        CorruptionKind::BlockOverlap,
        "overlapping blocks",
    ));
    Ok(out)
}
