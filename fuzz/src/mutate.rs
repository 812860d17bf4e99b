//! Structure-aware corruption: find where each structure lives in an image
//! file's bytes (parsing just enough by hand, independently of the drivers),
//! overwrite bytes inside one, and recompute its checksum so the driver
//! reads past the integrity check into the fields.

use arbitrary::Arbitrary;
use formats::checksum::{crc32c_zeroed, vhd_checksum};

use crate::sparse::Pages;

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

impl Region {
    /// The checksummed structures the named mutations edit.
    fn vhd_footer(start: u64) -> Self {
        Region::new("footer", start, 512, Sum::Vhd(0x40))
    }
    fn vhd_dynamic_header(start: u64) -> Self {
        Region::new("dynamic header", start, 1024, Sum::Vhd(0x24))
    }
    fn vhdx_log(start: u64, len: u64) -> Self {
        Region::new("log", start, len, Sum::Log)
    }

    const fn new(name: &'static str, start: u64, len: u64, sum: Sum) -> Self {
        Region {
            name,
            start,
            len,
            sum,
        }
    }
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
    /// Set one named field of a known structure (VHD footer, dynamic
    /// header, parent locator entry, BAT entry; VHDX header, region table,
    /// metadata table entry or item, BAT entry, log entry header or
    /// descriptor), its checksum recomputed unless `keep_sum`.
    Named {
        field: Named,
        value: Interesting,
        keep_sum: bool,
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
    /// The file length shifted right (a length in sectors or MiB).
    FileLenShr(u8),
    /// The current value plus or minus a little (an off-by-one nudge).
    Nudge(i8),
    /// A VHDX BAT entry: state (low 3 bits) and file offset in MiB.
    BatEntry {
        state: u8,
        mb: u16,
    },
    /// The current value with one bit flipped.
    Flip(u8),
}

/// A field of a known structure, chosen by index into the tables below.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Named {
    VhdFooter { field: u8, both_copies: bool },
    VhdHeader { field: u8 },
    VhdLocator { slot: u8, field: u8 },
    VhdBat { index: u16 },
    VhdxHeader { slot: u8, field: u8 },
    VhdxRegion { copy: u8, entry: u8, field: u8 },
    VhdxMetaEntry { entry: u8, field: u8 },
    VhdxMetaItem { item: u8 },
    VhdxBat { index: u16 },
    VhdxLogEntry { field: u8 },
    VhdxLogDescriptor { desc: u8, field: u8 },
}

/// (offset, width) of the fields of each structure, from FORMATS.md.
const VHD_FOOTER_FIELDS: &[(u64, u64)] = &[
    (0x08, 4), // features
    (0x0C, 4), // file format version
    (0x10, 8), // data offset
    (0x18, 4), // time stamp
    (0x28, 8), // original size
    (0x30, 8), // current size
    (0x38, 2), // cylinders
    (0x3A, 1), // heads
    (0x3B, 1), // sectors per track
    (0x3C, 4), // disk type
    (0x44, 8), // unique id, first half
    (0x4C, 8), // unique id, second half
    (0x54, 1), // saved state
];
const VHD_HEADER_FIELDS: &[(u64, u64)] = &[
    (0x08, 8), // data offset
    (0x10, 8), // table offset
    (0x18, 4), // header version
    (0x1C, 4), // max table entries
    (0x20, 4), // block size
    (0x28, 8), // parent unique id, first half
    (0x30, 8), // parent unique id, second half
    (0x38, 4), // parent time stamp
    (0x40, 2), // parent unicode name, first code unit
    (0x3E, 2), // parent unicode name, last code unit
];
const VHD_LOCATOR_FIELDS: &[(u64, u64)] = &[
    (0, 4),  // platform code
    (4, 4),  // platform data space
    (8, 4),  // platform data length
    (12, 4), // reserved
    (16, 8), // platform data offset
];
const VHDX_HEADER_FIELDS: &[(u64, u64)] = &[
    (8, 8),  // sequence number
    (16, 8), // file write guid
    (32, 8), // data write guid
    (48, 8), // log guid, first half
    (56, 8), // log guid, second half
    (64, 2), // log version
    (66, 2), // version
    (68, 4), // log length
    (72, 8), // log offset
    (80, 4), // reserved
];
const VHDX_REGION_ENTRY_FIELDS: &[(u64, u64)] = &[
    (0, 8),  // guid, first half
    (8, 8),  // guid, second half
    (16, 8), // file offset
    (24, 4), // length
    (28, 4), // required
];
const VHDX_META_ENTRY_FIELDS: &[(u64, u64)] = &[
    (0, 8),  // item id, first half
    (16, 4), // offset
    (20, 4), // length
    (24, 4), // flags
    (28, 4), // reserved
];
const VHDX_LOG_ENTRY_FIELDS: &[(u64, u64)] = &[
    (8, 4),  // entry length
    (12, 4), // tail
    (16, 8), // sequence number
    (24, 4), // descriptor count
    (28, 4), // reserved
    (32, 8), // log guid, first half
    (48, 8), // flushed file offset
    (56, 8), // last file offset
];
const VHDX_LOG_DESC_FIELDS: &[(u64, u64)] = &[
    (0, 4),  // signature
    (4, 4),  // trailing bytes / reserved
    (8, 8),  // leading bytes / zero length
    (16, 8), // file offset
    (24, 8), // sequence number
];

fn pick(t: &[(u64, u64)], i: u8) -> (u64, u64) {
    t[usize::from(i) % t.len()]
}

/// Read access to a file's bytes, dense (`[u8]`, `Vec<u8>`) or sparse
/// ([`Pages`]), so the structures can be found in either without copying a
/// sparse file out whole.
pub trait Bytes {
    fn size(&self) -> u64;
    /// `n` bytes at `at`, or None when they are not all inside the file.
    fn at(&self, at: u64, n: usize) -> Option<Vec<u8>>;
    /// Fill `buf` from `at`; false when that is not all inside the file.
    fn read_into(&self, at: u64, buf: &mut [u8]) -> bool {
        match self.at(at, buf.len()) {
            Some(v) => {
                buf.copy_from_slice(&v);
                true
            }
            None => false,
        }
    }
}

impl Bytes for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn at(&self, at: u64, n: usize) -> Option<Vec<u8>> {
        let a = usize::try_from(at).ok()?;
        self.get(a..a.checked_add(n)?).map(<[u8]>::to_vec)
    }
}

impl Bytes for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn at(&self, at: u64, n: usize) -> Option<Vec<u8>> {
        self.as_slice().at(at, n)
    }
}

impl<T: Bytes + ?Sized> Bytes for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn at(&self, at: u64, n: usize) -> Option<Vec<u8>> {
        (**self).at(at, n)
    }
    fn read_into(&self, at: u64, buf: &mut [u8]) -> bool {
        (**self).read_into(at, buf)
    }
}

impl Bytes for Pages {
    fn size(&self) -> u64 {
        self.len()
    }
    fn at(&self, at: u64, n: usize) -> Option<Vec<u8>> {
        (at.checked_add(n as u64)? <= self.len()).then(|| self.get(at, n))
    }
    fn read_into(&self, at: u64, buf: &mut [u8]) -> bool {
        self.read_checked(at, buf)
    }
}

fn arr<const N: usize, B: Bytes + ?Sized>(b: &B, at: u64) -> Option<[u8; N]> {
    b.at(at, N)?.try_into().ok()
}
fn be_u32<B: Bytes + ?Sized>(b: &B, at: u64) -> Option<u32> {
    arr(b, at).map(u32::from_be_bytes)
}
fn be_u64<B: Bytes + ?Sized>(b: &B, at: u64) -> Option<u64> {
    arr(b, at).map(u64::from_be_bytes)
}
fn le_u16<B: Bytes + ?Sized>(b: &B, at: u64) -> Option<u16> {
    arr(b, at).map(u16::from_le_bytes)
}
fn le_u32<B: Bytes + ?Sized>(b: &B, at: u64) -> Option<u32> {
    arr(b, at).map(u32::from_le_bytes)
}
fn le_u64<B: Bytes + ?Sized>(b: &B, at: u64) -> Option<u64> {
    arr(b, at).map(u64::from_le_bytes)
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

/// Absolute offset of the VHD dynamic header named by the end footer.
fn vhd_header_at<B: Bytes + ?Sized>(b: &B) -> Option<u64> {
    be_u64(b, b.size().checked_sub(512)? + 16).filter(|h| *h < b.size())
}

/// The structures of a VHD file.
pub fn vhd_regions<B: Bytes + ?Sized>(b: &B) -> Vec<Region> {
    let n = b.size();
    let mut out = Vec::new();
    if n >= 512 {
        push(&mut out, n, "footer", n - 512, 512, Sum::Vhd(0x40));
    }
    if b.at(0, 8).as_deref() == Some(b"conectix") {
        push(&mut out, n, "footer copy", 0, 512, Sum::Vhd(0x40));
    }
    if let Some(h) = vhd_header_at(b) {
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
pub fn vhdx_region<B: Bytes + ?Sized>(b: &B, guid: &[u8; 16]) -> Option<(u64, u64)> {
    let t = VHDX_REGION_TABLES[0];
    let count = le_u32(b, t + 8)?.min(2047);
    for i in 0..u64::from(count) {
        let e = t + 16 + 32 * i;
        if b.at(e, 16)?.as_slice() == guid {
            return Some((le_u64(b, e + 16)?, u64::from(le_u32(b, e + 24)?)));
        }
    }
    None
}

/// Metadata items: (item id bytes, absolute offset, length).
pub fn vhdx_metadata_items<B: Bytes + ?Sized>(b: &B) -> Vec<([u8; 16], u64, u64)> {
    let mut out = Vec::new();
    let Some((m, _)) = vhdx_region(b, &METADATA_GUID_LE) else {
        return out;
    };
    let count = le_u16(b, m.saturating_add(10)).unwrap_or(0).min(2047);
    for i in 0..u64::from(count) {
        let e = m.saturating_add(32 + 32 * i);
        let Some(id) = arr::<16, B>(b, e) else {
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
pub fn vhdx_log<B: Bytes + ?Sized>(b: &B, slot: usize) -> Option<(u64, u64)> {
    let h = VHDX_HEADER_SLOTS[slot];
    Some((le_u64(b, h + 72)?, u64::from(le_u32(b, h + 68)?)))
}

/// The structures of a VHDX file.
pub fn vhdx_regions<B: Bytes + ?Sized>(b: &B) -> Vec<Region> {
    let n = b.size();
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

fn is_vhdx<B: Bytes + ?Sized>(b: &B) -> bool {
    b.at(0, 8).as_deref() == Some(b"vhdxfile")
}

pub fn regions<B: Bytes + ?Sized>(b: &B) -> Vec<Region> {
    if is_vhdx(b) {
        vhdx_regions(b)
    } else {
        vhd_regions(b)
    }
}

/// Recompute the checksum of `r` (in a sparse file) after bytes at
/// `touched` changed.
pub fn fix_sum(b: &mut Pages, r: &Region, touched: u64) {
    match r.sum {
        Sum::None => {}
        Sum::Vhd(f) | Sum::Crc(f) => {
            let bytes = b.get(r.start, r.len as usize);
            if bytes.len() < f + 4 {
                return;
            }
            let v = match r.sum {
                Sum::Vhd(_) => vhd_checksum(&bytes, f).to_be_bytes(),
                _ => crc32c_zeroed(&bytes, f).to_le_bytes(),
            };
            b.write(r.start + f as u64, &v);
        }
        Sum::Log => fix_log_entry_at(b, r.start, r.len, touched.saturating_sub(r.start)),
    }
}

/// Recompute the CRC of the log entry covering position `pos` of the log at
/// `log_at` (`log_len` bytes) of a sparse file, without wrapping.
fn fix_log_entry_at(b: &mut Pages, log_at: u64, log_len: u64, pos: u64) {
    // Offsets come from the file: a log "at" the end of the address space
    // is nothing to fix.
    if log_at.checked_add(log_len).is_none() {
        return;
    }
    let mut at = pos / 4096 * 4096;
    loop {
        if b.at(log_at + at, 4).as_deref() == Some(b"loge") {
            let len = le_u32(b, log_at + at + 8).unwrap_or(0) as u64;
            if len >= 4096 && at + len <= log_len && at + len > pos {
                let entry = b.get(log_at + at, len as usize);
                if entry.len() as u64 == len {
                    let v = crc32c_zeroed(&entry, 4);
                    b.write(log_at + at + 4, &v.to_le_bytes());
                }
            }
            return;
        }
        if at == 0 {
            return;
        }
        at -= 4096;
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

fn interesting(v: Interesting, file_len: u64, current: u64) -> u64 {
    match v {
        Interesting::Zero => 0,
        Interesting::One => 1,
        Interesting::Max => u64::MAX,
        Interesting::Half => u64::MAX / 2 + 1,
        Interesting::FileLen => file_len,
        Interesting::FileLenMinus(d) => file_len.saturating_sub(u64::from(d)),
        Interesting::Pow2(p) => 1u64 << (p % 64),
        Interesting::Raw(r) => r,
        Interesting::FileLenShr(s) => file_len >> (s % 64),
        Interesting::Nudge(d) => current.wrapping_add(i64::from(d) as u64),
        Interesting::BatEntry { state, mb } => (u64::from(mb) << 20) | u64::from(state & 7),
        Interesting::Flip(bit) => current ^ (1u64 << (bit % 64)),
    }
}

/// Where a named field lives: (absolute offset, width, the region whose
/// checksum covers it, big-endian).
fn locate(b: &Pages, f: &Named) -> Option<(u64, u64, Region, bool)> {
    let n = b.size();
    let none = |start, len| Region::new("field", start, len, Sum::None);
    Some(match *f {
        Named::VhdFooter { field, .. } => {
            let (o, w) = pick(VHD_FOOTER_FIELDS, field);
            let at = n.checked_sub(512)?;
            let r = Region::vhd_footer(at);
            (at + o, w, r, true)
        }
        Named::VhdHeader { field } => {
            let h = vhd_header_at(b)?;
            let (o, w) = pick(VHD_HEADER_FIELDS, field);
            let r = Region::vhd_dynamic_header(h);
            (h + o, w, r, true)
        }
        Named::VhdLocator { slot, field } => {
            let h = vhd_header_at(b)?;
            let (o, w) = pick(VHD_LOCATOR_FIELDS, field);
            let r = Region::vhd_dynamic_header(h);
            let e = h + VHD_PARENT_LOCATORS_AT + 24 * u64::from(slot % 8);
            (e + o, w, r, true)
        }
        Named::VhdBat { index } => {
            let h = vhd_header_at(b)?;
            let t = be_u64(b, h + 16)?;
            let e = u64::from(be_u32(b, h + 28)?).max(1);
            let at = t.checked_add(4 * (u64::from(index) % e))?;
            (at, 4, none(at, 4), true)
        }
        Named::VhdxHeader { slot, field } => {
            let h = VHDX_HEADER_SLOTS[usize::from(slot % 2)];
            let (o, w) = pick(VHDX_HEADER_FIELDS, field);
            let r = Region::new("header", h, 4096, Sum::Crc(4));
            (h + o, w, r, false)
        }
        Named::VhdxRegion { copy, entry, field } => {
            let t = VHDX_REGION_TABLES[usize::from(copy % 2)];
            let r = Region::new("region table", t, 64 << 10, Sum::Crc(4));
            let count = u64::from(le_u32(b, t + 8)?.min(2047));
            // One past the entries: the header's EntryCount.
            let e = u64::from(entry) % (count + 1);
            if e == count {
                (t + 8, 4, r, false)
            } else {
                let (o, w) = pick(VHDX_REGION_ENTRY_FIELDS, field);
                (t + 16 + 32 * e + o, w, r, false)
            }
        }
        Named::VhdxMetaEntry { entry, field } => {
            let (m, _) = vhdx_region(b, &METADATA_GUID_LE)?;
            let count = u64::from(le_u16(b, m.checked_add(10)?)?.min(2047));
            let e = u64::from(entry) % (count + 1);
            if e == count {
                (m + 10, 2, none(m, 64 << 10), false)
            } else {
                let (o, w) = pick(VHDX_META_ENTRY_FIELDS, field);
                let at = m.checked_add(32 + 32 * e + o)?;
                (at, w, none(at, w), false)
            }
        }
        Named::VhdxMetaItem { item } => {
            let items = vhdx_metadata_items(b);
            let (_, at, len) = *items.get(usize::from(item) % items.len().max(1))?;
            // File parameters: block size or flags; sizes: the whole value.
            let w = if len >= 8 { 4 } else { len.min(4) };
            if w == 0 {
                return None;
            }
            let at = at.checked_add(if len == 8 && item & 0x80 != 0 { 4 } else { 0 })?;
            (at, w, none(at, w), false)
        }
        Named::VhdxBat { index } => {
            let (o, l) = vhdx_region(b, &BAT_GUID_LE)?;
            let entries = (l / 8).clamp(1, 1 << 16);
            let at = o.checked_add(8 * (u64::from(index) % entries))?;
            (at, 8, none(at, 8), false)
        }
        Named::VhdxLogEntry { field } => {
            let (lo, ll) = vhdx_log(b, 0)?;
            let (o, w) = pick(VHDX_LOG_ENTRY_FIELDS, field);
            let r = Region::vhdx_log(lo, ll);
            (lo.checked_add(o)?, w, r, false)
        }
        Named::VhdxLogDescriptor { desc, field } => {
            let (lo, ll) = vhdx_log(b, 0)?;
            let (o, w) = pick(VHDX_LOG_DESC_FIELDS, field);
            let r = Region::vhdx_log(lo, ll);
            (
                lo.checked_add(64 + 32 * u64::from(desc % 126) + o)?,
                w,
                r,
                false,
            )
        }
    })
}

fn apply_named(b: &mut Pages, f: &Named, v: Interesting, keep_sum: bool) {
    let Some((at, w, r, big)) = locate(b, f) else {
        return;
    };
    let Some(cur) = b.at(at, w as usize) else {
        return;
    };
    let mut c = [0u8; 8];
    let current = if big {
        c[8 - w as usize..].copy_from_slice(&cur);
        u64::from_be_bytes(c)
    } else {
        c[..w as usize].copy_from_slice(&cur);
        u64::from_le_bytes(c)
    };
    let v = interesting(v, b.size(), current);
    let bytes: Vec<u8> = if big {
        v.to_be_bytes()[(8 - w) as usize..].to_vec()
    } else {
        v.to_le_bytes()[..w as usize].to_vec()
    };
    b.write(at, &bytes);
    if !keep_sum {
        fix_sum(b, &r, at);
    }
    // The VHD footer copy at offset 0 follows the end footer when asked.
    if let Named::VhdFooter {
        both_copies: true, ..
    } = f
    {
        if b.at(0, 8).as_deref() == Some(b"conectix") && b.size() >= 1024 {
            let rel = at - r.start;
            b.write(rel, &bytes);
            if !keep_sum {
                fix_sum(b, &Region { start: 0, ..r }, rel);
            }
        }
    }
}

/// Region number `n` (modulo how many the file has), if it has any.
fn pick_region(b: &Pages, n: u8) -> Option<Region> {
    let rs = regions(b);
    rs.get(usize::from(n) % rs.len().max(1)).copied()
}

/// Apply one mutation to a (sparse) file. The VHD footer copy at offset 0
/// and the end footer are separate regions, so a mutation can make them
/// disagree.
pub fn apply(b: &mut Pages, m: &Mutation, big_endian: bool) {
    match m {
        Mutation::Truncate { permille } => {
            let keep = b.size() * u64::from(*permille % 1001) / 1000;
            b.set_len(keep);
        }
        Mutation::Extend { sectors } => {
            b.set_len(b.size() + u64::from(*sectors) * 512);
        }
        Mutation::Patch {
            region,
            offset,
            bytes,
            fix,
        } => {
            let Some(r) = pick_region(b, *region) else {
                return;
            };
            let at = r.start + u64::from(*offset) % r.len;
            let room = (r.start + r.len - at) as usize;
            let n = bytes.len().min(room).min(64);
            b.write(at, &bytes[..n]);
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
            let Some(r) = pick_region(b, *region) else {
                return;
            };
            let w = [2u64, 4, 8][usize::from(*width % 3)];
            if r.len < w {
                return;
            }
            let at = r.start + (u64::from(*offset) % (r.len - w + 1)) / w * w;
            let v = interesting(*value, b.size(), 0);
            let bytes: Vec<u8> = if big_endian {
                v.to_be_bytes()[(8 - w) as usize..].to_vec()
            } else {
                v.to_le_bytes()[..w as usize].to_vec()
            };
            b.write(at, &bytes);
            if *fix {
                fix_sum(b, &r, at);
            }
        }
        Mutation::Named {
            field,
            value,
            keep_sum,
        } => apply_named(b, field, *value, *keep_sum),
    }
}

/// Apply mutations (at most 8) to a file.
pub fn apply_all(b: &mut Pages, ms: &[Mutation]) {
    let big_endian = !is_vhdx(b);
    for m in ms.iter().take(8) {
        apply(b, m, big_endian);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhd_footer_file() -> Pages {
        // A 1 KiB "fixed VHD": 512 data bytes and a footer with a checksum.
        let mut f = vec![0u8; 1024];
        f[512..520].copy_from_slice(b"conectix");
        f[512 + 0x30..512 + 0x38].copy_from_slice(&512u64.to_be_bytes());
        f[512 + 0x3C..512 + 0x40].copy_from_slice(&2u32.to_be_bytes());
        let s = vhd_checksum(&f[512..], 0x40);
        f[512 + 0x40..512 + 0x44].copy_from_slice(&s.to_be_bytes());
        Pages::from_bytes(&f)
    }

    /// A named field lands at its documented offset, big-endian, and the
    /// footer checksum is recomputed (or left stale when asked).
    #[test]
    fn named_vhd_footer_field_and_checksum() {
        let mut p = vhd_footer_file();
        let field = Named::VhdFooter {
            field: 5,
            both_copies: false,
        };
        apply_named(&mut p, &field, Interesting::Raw(0x1234), false);
        let f = p.to_vec();
        assert_eq!(&f[512 + 0x30..512 + 0x38], &0x1234u64.to_be_bytes());
        let stored = u32::from_be_bytes(f[512 + 0x40..512 + 0x44].try_into().unwrap());
        assert_eq!(stored, vhd_checksum(&f[512..], 0x40));
        apply_named(&mut p, &field, Interesting::Nudge(1), true);
        let f = p.to_vec();
        assert_eq!(&f[512 + 0x30..512 + 0x38], &0x1235u64.to_be_bytes());
        let stale = u32::from_be_bytes(f[512 + 0x40..512 + 0x44].try_into().unwrap());
        assert_ne!(stale, vhd_checksum(&f[512..], 0x40));
    }

    /// Offsets read from a hostile file (log, BAT, metadata at the end of
    /// the address space) never make a named mutation overflow or panic.
    #[test]
    fn named_fields_survive_hostile_offsets() {
        let mut f = vec![0u8; 320 << 10];
        f[..8].copy_from_slice(b"vhdxfile");
        for h in VHDX_HEADER_SLOTS {
            let h = h as usize;
            f[h..h + 4].copy_from_slice(b"head");
            f[h + 68..h + 72].copy_from_slice(&u32::MAX.to_le_bytes());
            f[h + 72..h + 80].copy_from_slice(&(u64::MAX - 5).to_le_bytes());
        }
        let t = VHDX_REGION_TABLES[0] as usize;
        f[t..t + 4].copy_from_slice(b"regi");
        f[t + 8..t + 12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (g, off)) in [
            (BAT_GUID_LE, u64::MAX - 3),
            (METADATA_GUID_LE, u64::MAX - 20),
        ]
        .iter()
        .enumerate()
        {
            let e = t + 16 + 32 * i;
            f[e..e + 16].copy_from_slice(g);
            f[e + 16..e + 24].copy_from_slice(&off.to_le_bytes());
            f[e + 24..e + 28].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        let base = Pages::from_bytes(&f);
        for field in 0..=255u8 {
            for named in [
                Named::VhdxMetaEntry {
                    entry: field,
                    field,
                },
                Named::VhdxMetaItem { item: field },
                Named::VhdxBat {
                    index: u16::from(field) * 257,
                },
                Named::VhdxLogEntry { field },
                Named::VhdxLogDescriptor { desc: field, field },
                Named::VhdxRegion {
                    copy: field,
                    entry: field,
                    field,
                },
            ] {
                let mut p = base.clone();
                apply_named(&mut p, &named, Interesting::Max, false);
                assert_eq!(p.len(), base.len());
            }
        }
    }

    /// A VHDX BAT entry value is composed of state and MiB offset.
    #[test]
    fn bat_entry_value() {
        let v = interesting(Interesting::BatEntry { state: 6, mb: 5 }, 0, 0);
        assert_eq!(v, (5 << 20) | 6);
        assert_eq!(interesting(Interesting::Flip(3), 0, 1), 9);
    }
}
