//! Compaction of a VHDX: payload and sector-bitmap blocks move from the
//! file's tail into gaps no committed structure references, the file is cut
//! after its last referenced MiB, and every gap left is punched.
//!
//! Ordering, per round of moves:
//! 1. copy each moving block into a gap (the gap is free in the committed
//!    state, so no reader can see these bytes);
//! 2. `commit_pending`: flush (copies durable), then ONE log entry with the
//!    changed BAT sectors, the header naming it (commit point), apply, clear.
//!    Both places hold the same bytes, so old or new BAT reads the same
//!    content at every crash point;
//! 3. only after the whole loop: cut the file (nothing past the cut is
//!    referenced by the durable BAT) and punch the remaining gaps.

use std::collections::BTreeSet;

use super::bat::{self, BatEntry};
use super::codec::round_up;
use super::image::{VhdxImage, MIB};
use super::log::writer;
use super::write::Pending;
use crate::error::IoContext;
use crate::image::{CompactReport, ParentReadsZero};
use crate::space::SpaceMap;
use crate::{CopyRange, Error, Result};

/// Bytes moved per log entry at most: bounds the work a crash repeats.
const ROUND_BYTES: u64 = 1 << 30;

/// A block that may move: BAT index, state, file offset, length.
#[derive(Debug, Clone, Copy)]
struct Movable {
    index: u64,
    state: u8,
    offset: u64,
    len: u64,
}

/// The committed layout: its gaps and the blocks that may move (highest
/// first). `with_log`: the log's area counts as used.
fn layout(img: &VhdxImage, with_log: bool) -> Result<(SpaceMap, Vec<Movable>)> {
    let len = img.storage.len().ctx(&img.name)?;
    let g = img.geometry;
    // File identifier, headers and region tables.
    let mut used: Vec<std::ops::Range<u64>> = Vec::new();
    used.push(0..MIB);
    if with_log {
        used.push(img.header.log_offset..img.header.log_offset + u64::from(img.header.log_length));
    }
    for e in &img.region_table.entries {
        used.push(e.file_offset..e.file_offset.saturating_add(u64::from(e.length)));
    }
    used.push(img.bat_region.0..img.bat_region.0.saturating_add(img.bat_region.1));
    used.push(img.metadata_region.0..img.metadata_region.0.saturating_add(img.metadata_region.1));
    let mut movable = Vec::new();
    let mut i = 0usize;
    while let Some(k) = img.bat.first_with_bits(i, u64::MAX) {
        i = k + 1;
        let Some(e) = img.bat.get(k) else { break };
        let off = e.file_offset();
        if off == 0 {
            continue;
        }
        let sb = g.is_sb_index(k as u64);
        let (present, unit) = if sb {
            (e.state() == bat::SB_PRESENT, MIB)
        } else {
            (
                matches!(
                    e.state(),
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                ),
                g.block_size,
            )
        };
        let end = off.saturating_add(unit);
        // Any offset an entry names stays reserved (an UNMAPPED block may
        // keep its space), but only present blocks inside the file move.
        used.push(off..end);
        if present && end <= len {
            movable.push(Movable {
                index: k as u64,
                state: e.state(),
                offset: off,
                len: unit,
            });
        }
    }
    movable.sort_unstable_by_key(|m| std::cmp::Reverse(m.offset));
    Ok((SpaceMap::new(len, used, MIB), movable))
}

pub(crate) fn compact(img: &mut VhdxImage) -> Result<CompactReport> {
    img.require_writable()?;
    let name = img.name.clone();
    let length_before = img.storage.len().ctx(&name)?;
    let mut report = CompactReport {
        length_before,
        ..CompactReport::default()
    };
    if relocate_tail_log(img)? {
        report.moved += 1;
        report.bytes_moved += MIB;
    }
    // BAT sectors one log entry can carry; with a log too small for any
    // entry (a 0-byte log with LogGuid zero is legal) no move is taken,
    // and the compaction only cuts and punches what nothing references.
    let max_sectors = writer::max_sectors(u64::from(img.header.log_length));
    loop {
        let (mut map, movable) = layout(img, true)?;
        let mut pending = Pending::default();
        let mut sectors = BTreeSet::new();
        let mut bytes = 0u64;
        let mut moves = Vec::new();
        for m in movable {
            let sector = m.index * 8 / 4096;
            if bytes >= ROUND_BYTES
                || (sectors.len() as u64 >= max_sectors && !sectors.contains(&sector))
            {
                break;
            }
            let Some(to) = map.take_below(m.len, m.offset, |s| s) else {
                continue;
            };
            sectors.insert(sector);
            bytes += m.len;
            moves.push((m, to));
        }
        if moves.is_empty() {
            break;
        }
        let st = &*img.storage;
        for (m, to) in &moves {
            st.copy_from(st, CopyRange::new(m.offset, *to, m.len))
                .ctx(&name)?;
            pending.bat.insert(m.index, BatEntry::new(m.state, *to));
        }
        // Flushes the copies, then commits the BAT through the log.
        img.commit_pending(&mut pending)?;
        report.moved += moves.len() as u64;
        report.bytes_moved += bytes;
    }

    let (map, _) = layout(img, true)?;
    let end = round_up(map.used_end(), MIB)
        .ok_or_else(|| Error::InvalidParameter(format!("{name}: file too large")))?;
    let st = &*img.storage;
    if end < length_before {
        // The durable BAT references nothing past `end`.
        st.set_len(end).ctx(&name)?;
    }
    for gap in map.gaps() {
        if gap.start >= end {
            break;
        }
        let n = gap.end.min(end) - gap.start;
        st.punch_hole(gap.start, n).ctx(&name)?;
        report.bytes_punched += n;
    }
    // The moves committed themselves; the cut and the holes are made
    // durable here (an already compact file has nothing to flush).
    if end < length_before || report.bytes_punched > 0 {
        st.flush().ctx(&name)?;
    }
    report.length_after = st.len().ctx(&name)?;
    Ok(report)
}

/// An empty log past every other referenced byte goes down into the
/// lowest free MiB, at MS-VHDX's default size (1 MiB): that is where a
/// merge's journal area stays named when a crash comes between the commit
/// and the header that moves the log back (`vhdx/batch.rs`, step 4); the
/// replay on the next open empties it. One header update (both slots):
/// the log is empty, so old or new header reads the same image. True
/// when it moved.
fn relocate_tail_log(img: &mut VhdxImage) -> Result<bool> {
    if !img.header.log_guid.is_nil() {
        return Ok(false);
    }
    let lo = img.header.log_offset;
    let (mut map, _) = layout(img, false)?;
    if lo < map.used_end() {
        return Ok(false);
    }
    let Some(to) = map.take_below(MIB, lo, |s| round_up(s, MIB).unwrap_or(s)) else {
        return Ok(false);
    };
    if !to.is_multiple_of(MIB) {
        return Ok(false);
    }
    img.header_update_both(|h| {
        h.log_offset = to;
        h.log_length = MIB as u32;
    })?;
    Ok(true)
}

/// `compact --zero-blocks`: every FULLY_PRESENT payload block whose data
/// is all zeros stops being stored. A dynamic image records it as ZERO
/// (reads zeros, MS-VHDX 2.5.1.1); a differencing image as NOT_PRESENT,
/// and only where `parent_reads_zero(virtual offset, len)` says its parent
/// reads zeros there too (a ZERO block in a differencing file is what
/// libvhdi misreads, ORACLES.md). A fixed image keeps every block
/// (LeaveBlockAllocated). PARTIALLY_PRESENT blocks are left alone.
///
/// Content-preserving at every crash point: the changed BAT sectors go
/// through the log in one entry per round; the old places become gaps that
/// `compact` then reuses or gives back.
pub(crate) fn release_zero_blocks(
    img: &mut VhdxImage,
    parent_reads_zero: &mut ParentReadsZero<'_>,
) -> Result<u64> {
    img.require_writable()?;
    let g = img.geometry;
    if img.file_parameters.leave_block_allocated() && !g.has_parent {
        return Ok(0);
    }
    let name = img.name.clone();
    let max_sectors = writer::max_sectors(u64::from(img.header.log_length)).max(1);
    let new_state = if g.has_parent {
        bat::PAYLOAD_NOT_PRESENT
    } else {
        bat::PAYLOAD_ZERO
    };
    let mut released = 0u64;
    let mut pending = Pending::default();
    let mut sectors = BTreeSet::new();
    let mut buf = Vec::new();
    for blk in 0..g.payload_blocks {
        let idx = g.payload_index(blk);
        let Some(e) = img.bat.get(idx as usize) else {
            break;
        };
        if e.state() != bat::PAYLOAD_FULLY_PRESENT {
            continue;
        }
        let virt = blk * g.block_size;
        let len = (g.virtual_size - virt).min(g.block_size);
        if !crate::space::reads_zero(&*img.storage, &name, e.file_offset(), len, &mut buf)? {
            continue;
        }
        if g.has_parent && !parent_reads_zero(virt, len)? {
            continue;
        }
        let sector = idx * 8 / 4096;
        if sectors.len() as u64 >= max_sectors && !sectors.contains(&sector) {
            img.commit_pending(&mut pending)?;
            sectors.clear();
        }
        sectors.insert(sector);
        pending.bat.insert(idx, BatEntry::new(new_state, 0));
        released += 1;
    }
    img.commit_pending(&mut pending)?;
    Ok(released)
}
