//! Compaction of a dynamic / differencing VHD: the dynamic header and BAT
//! (which every merge writes anew at the tail) move back to the lowest gap
//! that holds them (with the parent locators' data, which a set-parent or
//! rebase writes anew, when one gap holds all), blocks move from the tail into gaps, the file is cut
//! after its last referenced sector with a footer there, and the gaps left
//! are punched.
//!
//! Ordering, and why each crash point reads the same content:
//! - header + BAT (+ locator data): copies written into a gap and flushed, then ONE 512-byte
//!   write of the end footer (Data Offset -> the copy) is the switch, then
//!   the footer copy at 0, durable with the next flush (a stale copy at 0
//!   is a repairable warning, as after a crash between the two writes).
//!   Before the switch nothing references the copy.
//! - blocks: each copied (bitmap + data) into a gap and flushed, then the
//!   changed BAT sectors written in place and flushed. Both places hold the
//!   same bytes, so every sector of the BAT, old or new or any mix of them,
//!   reads the same content.
//! - cut: a footer written just past the last referenced sector and
//!   flushed, then the length set there. Until the cut is durable the old
//!   end footer still ends the file; both describe the same image.

use super::bat::{BlockAllocationTable, BAT_UNALLOCATED};
use super::codec::align512;
use super::dynamic_header::{DynamicDiskHeader, HEADER_SIZE};
use super::footer::FOOTER_SIZE;
use super::image::{FooterSource, VhdImage};
use crate::error::IoContext;
use crate::image::{CompactReport, ParentReadsZero};
use crate::space::SpaceMap;
use crate::{CopyRange, Error, Result};

/// Bytes moved between BAT writes at most.
const ROUND_BYTES: u64 = 1 << 30;
/// Holes are punched in whole pages of this size.
const DATA_ALIGN: u64 = 4096;

fn bat_bytes(entries: usize) -> u64 {
    align512(entries as u64 * 4).unwrap_or(u64::MAX)
}

/// The committed layout's gaps (the end footer counts as used when
/// `with_footer`).
fn layout(img: &VhdImage, len: u64, with_footer: bool) -> Option<SpaceMap> {
    let s = img.sparse.as_ref()?;
    let mut used: Vec<std::ops::Range<u64>> = Vec::new();
    used.push(0..FOOTER_SIZE as u64);
    used.push(s.header_offset..s.header_offset + HEADER_SIZE as u64);
    let t = s.header.table_offset;
    used.push(t..t.saturating_add(bat_bytes(s.bat.len())));
    for (e, _, _) in &s.locators {
        let o = e.platform_data_offset;
        used.push(o..o.saturating_add(e.reserved_bytes()));
    }
    let span = s.block_span();
    for &b in &s.bat {
        if b != BAT_UNALLOCATED {
            let o = u64::from(b) * 512;
            used.push(o..o.saturating_add(span));
        }
    }
    if with_footer {
        used.push(img.footer_offset..len);
    }
    Some(SpaceMap::new(len, used, 512))
}

pub(super) fn compact(img: &mut VhdImage) -> Result<CompactReport> {
    let name = img.name.clone();
    let st = std::sync::Arc::clone(&img.storage);
    let length_before = st.len().ctx(&name)?;
    let mut report = CompactReport {
        length_before,
        length_after: length_before,
        ..CompactReport::default()
    };
    if !img.opts.writable {
        return Err(Error::PermissionDenied {
            file: name,
            message: "compaction needs a writable open".into(),
        });
    }
    // Only a dynamic image ending in its footer has a layout to pack.
    if img.sparse.is_none()
        || img.footer_source != FooterSource::End
        || img.footer_offset + FOOTER_SIZE as u64 != length_before
    {
        return Ok(report);
    }

    let mut copy_at_zero_pending = false;
    // 1. Header and BAT back to the lowest gap that holds both: together
    // with the parent locators' data when one gap below all of them holds
    // the three (after a set-parent or rebase, which write new locator data
    // at the tail), else the header and BAT alone.
    if let (Some(map), Some(s)) = (layout(img, length_before, true), img.sparse.as_ref()) {
        let tables = HEADER_SIZE as u64 + bat_bytes(s.bat.len());
        let mut limit = s.header_offset.min(s.header.table_offset);
        // (slot, old data offset, bytes reserved) of the locators.
        let tail: Vec<(usize, u64, u64)> = s
            .header
            .parent_locators
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_used() && s.differencing)
            .filter_map(|(i, e)| {
                let space = align512(e.reserved_bytes())?;
                (e.platform_data_offset.checked_add(space)? <= img.footer_offset).then_some((
                    i,
                    e.platform_data_offset,
                    space,
                ))
            })
            .collect();
        let with_locators = tables + tail.iter().map(|t| t.2).sum::<u64>();
        let lowest_locator = tail.iter().map(|t| t.1).min().unwrap_or(limit);
        let (mut with, mut without) = (map.clone(), map);
        let placed = match with.take_below(with_locators, limit.min(lowest_locator), |g| g) {
            Some(at) if !tail.is_empty() => Some((at, true)),
            _ => {
                limit = s.header_offset.min(s.header.table_offset);
                without
                    .take_below(tables, limit, |g| g)
                    .map(|at| (at, false))
            }
        };
        if let Some((at, moving_locators)) = placed {
            let mut header = s.header.clone();
            header.table_offset = at + HEADER_SIZE as u64;
            let bat = BlockAllocationTable {
                entries: s.bat.clone(),
            }
            .to_bytes()?;
            let mut unit = tables;
            if moving_locators {
                let mut next = at + tables;
                for &(i, old, space) in &tail {
                    let e = &mut header.parent_locators[i];
                    let len = u64::from(e.platform_data_length);
                    st.copy_from(st.as_ref(), CopyRange::new(old, next, len))
                        .ctx(&name)?;
                    e.platform_data_offset = next;
                    next += space;
                }
                unit = with_locators;
            }
            st.write_at(&header.to_bytes()?, at).ctx(&name)?;
            st.write_at(&bat, header.table_offset).ctx(&name)?;
            st.flush().ctx(&name)?;
            let mut f = img.footer.clone();
            f.data_offset = at;
            let bytes = f.to_bytes()?;
            // The switch: one sector.
            st.write_at(&bytes, img.footer_offset).ctx(&name)?;
            st.flush().ctx(&name)?;
            // The copy at 0 becomes durable with the next flush (a block
            // move's, the cut's, or the last one below): until then a crash
            // leaves it stale, as one between these two writes would.
            st.write_at(&bytes, 0).ctx(&name)?;
            copy_at_zero_pending = true;
            img.footer = f;
            if let Some(s) = img.sparse.as_mut() {
                if moving_locators {
                    // Rebuilt from the header just written: the layout of
                    // the next steps reads the locators' places from here.
                    let rebuilt = header
                        .parent_locators
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.is_used())
                        .map(|(i, e)| {
                            let old = tail
                                .iter()
                                .find(|t| t.0 == i)
                                .map_or(e.platform_data_offset, |t| t.1);
                            let text = s
                                .locators
                                .iter()
                                .find(|(l, _, _)| l.platform_data_offset == old)
                                .and_then(|(_, _, t)| t.clone());
                            (*e, at + DynamicDiskHeader::locator_entry_offset(i), text)
                        })
                        .collect();
                    s.locators = rebuilt;
                }
                s.header_offset = at;
                s.header = header;
            }
            report.moved += 1;
            report.bytes_moved += unit;
        }
    }

    // 2. Blocks, highest first, into the lowest gap below each.
    while let Some(mut map) = layout(img, length_before, true) {
        let Some(s) = img.sparse.as_ref() else { break };
        let span = s.block_span();
        let mut blocks: Vec<(usize, u64)> = s
            .bat
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != BAT_UNALLOCATED)
            .map(|(i, &b)| (i, u64::from(b) * 512))
            .filter(|&(_, o)| o + span <= length_before)
            .collect();
        blocks.sort_unstable_by_key(|&(_, o)| std::cmp::Reverse(o));
        // Packed tight, not data-aligned: 4 KiB alignment would cost up to
        // 3.5 KiB per block, and over a run of freed blocks the last one
        // would no longer fit (the file could not shrink back).
        let mut moves = Vec::new();
        let mut bytes = 0u64;
        for (i, o) in blocks {
            if bytes >= ROUND_BYTES {
                break;
            }
            if let Some(to) = map.take_below(span, o, |g| g) {
                moves.push((i, o, to));
                bytes += span;
            }
        }
        if moves.is_empty() {
            break;
        }
        let mut entries = s.bat.clone();
        for &(i, o, to) in &moves {
            st.copy_from(st.as_ref(), CopyRange::new(o, to, span))
                .ctx(&name)?;
            entries[i] = u32::try_from(to / 512).map_err(|_| Error::Unsupported {
                file: name.clone(),
                message: "block offset past 2 TiB".into(),
            })?;
        }
        // Copies durable before any BAT sector names them.
        st.flush().ctx(&name)?;
        let changed: Vec<usize> = moves.iter().map(|&(i, _, _)| i).collect();
        commit_bat_in_place(img, entries, &changed)?;
        report.moved += moves.len() as u64;
        report.bytes_moved += bytes;
    }

    // 3. Cut after the last referenced sector, then punch what is left.
    let Some(map) = layout(img, length_before, false) else {
        if copy_at_zero_pending {
            st.flush().ctx(&name)?;
        }
        return Ok(report);
    };
    let end = align512(map.used_end()).unwrap_or(length_before);
    let cut = end + (FOOTER_SIZE as u64) < length_before;
    if cut {
        st.write_at(&footer_bytes(img)?, end).ctx(&name)?;
        st.flush().ctx(&name)?;
        st.set_len(end + FOOTER_SIZE as u64).ctx(&name)?;
        img.footer_offset = end;
    }
    for gap in map.gaps() {
        let a = gap.start.div_ceil(DATA_ALIGN) * DATA_ALIGN;
        let b = gap.end.min(end) / DATA_ALIGN * DATA_ALIGN;
        if a < b {
            st.punch_hole(a, b - a).ctx(&name)?;
            report.bytes_punched += b - a;
        }
    }
    // The moves flushed themselves; the new length, the holes and a
    // pending copy at 0 are made durable here (an already compact file
    // has nothing to flush).
    if cut || report.bytes_punched > 0 || copy_at_zero_pending {
        st.flush().ctx(&name)?;
    }
    report.length_after = st.len().ctx(&name)?;
    Ok(report)
}

/// Make `entries` the image's BAT: the 512-byte BAT sectors holding the
/// `changed` entries are written in place, then flushed, then adopted in
/// memory. Callers change only entries whose old and new values read the
/// same content (a moved copy, a released zero block), so every sector,
/// old, new or torn between them, reads the same image.
fn commit_bat_in_place(img: &mut VhdImage, entries: Vec<u32>, changed: &[usize]) -> Result<()> {
    let name = img.name.clone();
    let Some(s) = img.sparse.as_mut() else {
        return Ok(());
    };
    let bat = BlockAllocationTable { entries };
    let table = bat.to_bytes()?;
    let mut sectors: Vec<usize> = changed.iter().map(|&i| i * 4 / 512).collect();
    sectors.sort_unstable();
    sectors.dedup();
    let st = &img.storage;
    for k in sectors {
        let a = k * 512;
        st.write_at(&table[a..a + 512], s.header.table_offset + a as u64)
            .ctx(&name)?;
    }
    st.flush().ctx(&name)?;
    s.bat = bat.entries;
    Ok(())
}

fn footer_bytes(img: &VhdImage) -> Result<[u8; FOOTER_SIZE]> {
    img.footer.to_bytes()
}

/// `compact --zero-blocks`: every allocated block whose data is all zeros
/// becomes unallocated (BAT entry 0xFFFFFFFF): a dynamic image reads zeros
/// there; a differencing image reads its parent, so there only where
/// `parent_reads_zero(virtual offset, len)` says the parent reads zeros
/// too. Content-preserving at every crash point: each changed BAT sector
/// is one 512-byte write in place (old and new entries read the same), then
/// a flush; the old places become gaps that `compact` then gives back.
pub(super) fn release_zero_blocks(
    img: &mut VhdImage,
    parent_reads_zero: &mut ParentReadsZero<'_>,
) -> Result<u64> {
    let name = img.name.clone();
    if !img.opts.writable {
        return Err(Error::PermissionDenied {
            file: name,
            message: "releasing zero blocks needs a writable open".into(),
        });
    }
    let st = std::sync::Arc::clone(&img.storage);
    let virtual_size = img.footer.current_size;
    let Some(s) = img.sparse.as_ref() else {
        return Ok(0);
    };
    let mut entries = s.bat.clone();
    let mut released = Vec::new();
    let mut buf = Vec::new();
    for (i, &b) in s.bat.iter().enumerate() {
        if b == BAT_UNALLOCATED {
            continue;
        }
        let virt = i as u64 * s.block_size;
        if virt >= virtual_size {
            break;
        }
        let len = (virtual_size - virt).min(s.block_size);
        let data = u64::from(b) * 512 + s.bitmap_bytes;
        if !crate::space::reads_zero(&*st, &name, data, len, &mut buf)? {
            continue;
        }
        if s.differencing && !parent_reads_zero(virt, len)? {
            continue;
        }
        entries[i] = BAT_UNALLOCATED;
        released.push(i);
    }
    if released.is_empty() {
        return Ok(0);
    }
    commit_bat_in_place(img, entries, &released)?;
    Ok(released.len() as u64)
}
