//! Structure-aware corruption: find where each structure lives in an image
//! file's bytes (parsing just enough by hand, independently of the drivers),
//! overwrite bytes inside one, and recompute its checksum so the driver
//! reads past the integrity check into the fields.

use arbitrary::Arbitrary;
use formats::checksum::{crc32c_zeroed, vhd_checksum};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sum {
    None,
    /// VHD one's-complement sum, big-endian field at this offset.
    Vhd(usize),
    /// CRC-32C, little-endian field at this offset.
    Crc(usize),
    /// The VHDX log: each entry carries its own CRC over EntryLength bytes.
    Log,
}

#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// For humans reading a finding's Debug output.
    #[allow(dead_code)]
    pub name: &'static str,
    pub start: u64,
    pub len: u64,
    pub sum: Sum,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Mutation {
    /// Overwrite bytes at `offset` (modulo the region length) of region
    /// number `region` (modulo the count), then fix its checksum if asked.
    Patch {
        region: u8,
        offset: u32,
        bytes: Vec<u8>,
        fix: bool,
    },
    /// Overwrite one aligned integer field with an interesting value.
    Field {
        region: u8,
        offset: u32,
        width: u8,
        value: Interesting,
        fix: bool,
    },
    /// Cut the file to `permille`/1000 of its length.
    Truncate { permille: u16 },
    /// Append sectors of zeros.
    Extend { sectors: u8 },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Interesting {
    Zero,
    One,
    Max,
    Half,
    FileLen,
    FileLenMinus(u16),
    Pow2(u8),
    Raw(u64),
}

fn be_u32(b: &[u8], at: u64) -> Option<u32> {
    let a = usize::try_from(at).ok()?;
    Some(u32::from_be_bytes(
        b.get(a..a.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn be_u64(b: &[u8], at: u64) -> Option<u64> {
    let a = usize::try_from(at).ok()?;
    Some(u64::from_be_bytes(
        b.get(a..a.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn le_u32(b: &[u8], at: u64) -> Option<u32> {
    let a = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        b.get(a..a.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le_u64(b: &[u8], at: u64) -> Option<u64> {
    let a = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(
        b.get(a..a.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn push(out: &mut Vec<Region>, file_len: u64, name: &'static str, start: u64, len: u64, sum: Sum) {
    if start >= file_len || len == 0 {
        return;
    }
    let len = len.min(file_len - start);
    out.push(Region {
        name,
        start,
        len,
        sum,
    });
}

pub const VHD_PARENT_LOCATORS_AT: u64 = 0x240;

/// The structures of a VHD file.
pub fn vhd_regions(b: &[u8]) -> Vec<Region> {
    let n = b.len() as u64;
    let mut out = Vec::new();
    if n >= 512 {
        push(&mut out, n, "footer", n - 512, 512, Sum::Vhd(0x40));
    }
    if b.starts_with(b"conectix") {
        push(&mut out, n, "footer copy", 0, 512, Sum::Vhd(0x40));
    }
    let footer_at = n.saturating_sub(512);
    if let Some(h) = be_u64(b, footer_at + 16).filter(|h| *h < n) {
        push(&mut out, n, "dynamic header", h, 1024, Sum::Vhd(0x24));
        if let (Some(t), Some(e)) = (be_u64(b, h + 16), be_u32(b, h + 28)) {
            push(&mut out, n, "BAT", t, u64::from(e) * 4, Sum::None);
            // The bitmap of the first allocated block.
            for i in 0..u64::from(e).min(64) {
                match be_u32(b, t.saturating_add(4 * i)) {
                    Some(0xFFFF_FFFF) | None => {}
                    Some(s) => {
                        push(
                            &mut out,
                            n,
                            "sector bitmap",
                            u64::from(s).saturating_mul(512),
                            512,
                            Sum::None,
                        );
                        break;
                    }
                }
            }
        }
        for k in 0..8u64 {
            let e = h + VHD_PARENT_LOCATORS_AT + 24 * k;
            if be_u32(b, e).unwrap_or(0) == 0 {
                continue;
            }
            if let (Some(len), Some(off)) = (
                be_u32(b, e.saturating_add(8)),
                be_u64(b, e.saturating_add(16)),
            ) {
                push(&mut out, n, "locator data", off, u64::from(len), Sum::None);
            }
        }
    }
    push(&mut out, n, "anywhere", 0, n, Sum::None);
    out
}

pub const VHDX_HEADER_SLOTS: [u64; 2] = [64 << 10, 128 << 10];
pub const VHDX_REGION_TABLES: [u64; 2] = [192 << 10, 256 << 10];
pub const BAT_GUID_LE: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
pub const METADATA_GUID_LE: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];

/// (file offset, length) of the region with this GUID in region table copy 0.
pub fn vhdx_region(b: &[u8], guid: &[u8; 16]) -> Option<(u64, u64)> {
    let t = VHDX_REGION_TABLES[0];
    let count = le_u32(b, t + 8)?.min(2047);
    for i in 0..u64::from(count) {
        let e = t + 16 + 32 * i;
        let g = b.get(usize::try_from(e).ok()?..usize::try_from(e + 16).ok()?)?;
        if g == guid {
            return Some((le_u64(b, e + 16)?, u64::from(le_u32(b, e + 24)?)));
        }
    }
    None
}

/// Metadata items: (item id bytes, absolute offset, length).
pub fn vhdx_metadata_items(b: &[u8]) -> Vec<([u8; 16], u64, u64)> {
    let mut out = Vec::new();
    let Some((m, _)) = vhdx_region(b, &METADATA_GUID_LE) else {
        return out;
    };
    let count = b
        .get(usize::try_from(m).unwrap_or(usize::MAX).saturating_add(10)..)
        .and_then(|c| c.get(..2))
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .unwrap_or(0)
        .min(2047);
    for i in 0..u64::from(count) {
        let e = m.saturating_add(32 + 32 * i);
        let Some(id) = b
            .get(usize::try_from(e).unwrap_or(usize::MAX)..)
            .and_then(|s| s.get(..16))
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
        else {
            break;
        };
        if let (Some(o), Some(l)) = (
            le_u32(b, e.saturating_add(16)),
            le_u32(b, e.saturating_add(20)),
        ) {
            out.push((id, m.saturating_add(u64::from(o)), u64::from(l)));
        }
    }
    out
}

/// (log offset, log length) named by header slot `slot`.
pub fn vhdx_log(b: &[u8], slot: usize) -> Option<(u64, u64)> {
    let h = VHDX_HEADER_SLOTS[slot];
    Some((le_u64(b, h + 72)?, u64::from(le_u32(b, h + 68)?)))
}

/// The structures of a VHDX file.
pub fn vhdx_regions(b: &[u8]) -> Vec<Region> {
    let n = b.len() as u64;
    let mut out = Vec::new();
    push(&mut out, n, "file identifier", 0, 64 << 10, Sum::None);
    for h in VHDX_HEADER_SLOTS {
        push(&mut out, n, "header", h, 4096, Sum::Crc(4));
    }
    for t in VHDX_REGION_TABLES {
        push(&mut out, n, "region table", t, 64 << 10, Sum::Crc(4));
    }
    if let Some((o, l)) = vhdx_region(b, &BAT_GUID_LE) {
        push(&mut out, n, "BAT", o, l, Sum::None);
    }
    if let Some((o, _)) = vhdx_region(b, &METADATA_GUID_LE) {
        push(&mut out, n, "metadata table", o, 64 << 10, Sum::None);
    }
    for (_, o, l) in vhdx_metadata_items(b) {
        push(&mut out, n, "metadata item", o, l, Sum::None);
    }
    if let Some((o, l)) = vhdx_log(b, 0) {
        push(&mut out, n, "log", o, l, Sum::Log);
    }
    push(&mut out, n, "anywhere", 0, n, Sum::None);
    out
}

pub fn regions(b: &[u8]) -> Vec<Region> {
    if b.starts_with(b"vhdxfile") {
        vhdx_regions(b)
    } else {
        vhd_regions(b)
    }
}

/// Recompute the checksum of `r` after bytes at `touched` changed.
pub fn fix_sum(b: &mut [u8], r: &Region, touched: u64) {
    let (s, e) = (r.start as usize, (r.start + r.len) as usize);
    let Some(bytes) = b.get_mut(s..e) else { return };
    match r.sum {
        Sum::None => {}
        Sum::Vhd(f) => {
            if bytes.len() >= f + 4 {
                let v = vhd_checksum(bytes, f);
                bytes[f..f + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        Sum::Crc(f) => {
            if bytes.len() >= f + 4 {
                let v = crc32c_zeroed(bytes, f);
                bytes[f..f + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        Sum::Log => fix_log_entry(bytes, touched.saturating_sub(r.start)),
    }
}

/// Recompute the CRC of the log entry that covers position `pos` of the log
/// (searching back for its `loge` sector), without wrapping.
pub fn fix_log_entry(log: &mut [u8], pos: u64) {
    let mut at = pos / 4096 * 4096;
    loop {
        let a = at as usize;
        if log.get(a..a + 4) == Some(b"loge") {
            let len = log
                .get(a + 8..a + 12)
                .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .unwrap_or(0);
            if len >= 4096 && a + len <= log.len() && a + len > pos as usize {
                let v = crc32c_zeroed(&log[a..a + len], 4);
                log[a + 4..a + 8].copy_from_slice(&v.to_le_bytes());
            }
            return;
        }
        if at == 0 {
            return;
        }
        at -= 4096;
    }
}

fn interesting(v: Interesting, file_len: u64) -> u64 {
    match v {
        Interesting::Zero => 0,
        Interesting::One => 1,
        Interesting::Max => u64::MAX,
        Interesting::Half => u64::MAX / 2 + 1,
        Interesting::FileLen => file_len,
        Interesting::FileLenMinus(d) => file_len.saturating_sub(u64::from(d)),
        Interesting::Pow2(p) => 1u64 << (p % 64),
        Interesting::Raw(r) => r,
    }
}

/// Apply one mutation to a file's bytes. The VHD footer copy at offset 0
/// and the end footer are separate regions, so a mutation can make them
/// disagree.
pub fn apply(b: &mut Vec<u8>, m: &Mutation, big_endian: bool) {
    match m {
        Mutation::Truncate { permille } => {
            let keep = (b.len() as u64 * u64::from(*permille % 1001) / 1000) as usize;
            b.truncate(keep);
        }
        Mutation::Extend { sectors } => {
            b.resize(b.len() + usize::from(*sectors) * 512, 0);
        }
        Mutation::Patch {
            region,
            offset,
            bytes,
            fix,
        } => {
            let rs = regions(b);
            let Some(r) = rs.get(usize::from(*region) % rs.len().max(1)).copied() else {
                return;
            };
            let at = r.start + u64::from(*offset) % r.len;
            let room = (r.start + r.len - at) as usize;
            let n = bytes.len().min(room).min(64);
            b[at as usize..at as usize + n].copy_from_slice(&bytes[..n]);
            if *fix {
                fix_sum(b, &r, at);
            }
        }
        Mutation::Field {
            region,
            offset,
            width,
            value,
            fix,
        } => {
            let rs = regions(b);
            let Some(r) = rs.get(usize::from(*region) % rs.len().max(1)).copied() else {
                return;
            };
            let w = [2u64, 4, 8][usize::from(*width % 3)];
            if r.len < w {
                return;
            }
            let at = r.start + (u64::from(*offset) % (r.len - w + 1)) / w * w;
            let v = interesting(*value, b.len() as u64);
            let bytes: Vec<u8> = if big_endian {
                v.to_be_bytes()[(8 - w) as usize..].to_vec()
            } else {
                v.to_le_bytes()[..w as usize].to_vec()
            };
            b[at as usize..(at + w) as usize].copy_from_slice(&bytes);
            if *fix {
                fix_sum(b, &r, at);
            }
        }
    }
}

/// Apply mutations (at most 8) to a file.
pub fn apply_all(b: &mut Vec<u8>, ms: &[Mutation]) {
    let big_endian = !b.starts_with(b"vhdxfile");
    for m in ms.iter().take(8) {
        apply(b, m, big_endian);
    }
}
