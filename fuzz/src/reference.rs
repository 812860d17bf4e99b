//! A small, independent reader of VHD and VHDX images, written from the
//! specifications (FORMATS.md sections 2 and 3: the VHD footer, dynamic
//! header, BAT and MSB-first sector bitmaps; the VHDX file identifier,
//! headers chosen by sequence number, region table, metadata items and the
//! BAT with its payload / sector-bitmap interleave), sharing no code with
//! the `formats` crate — not even its checksums.
//!
//! It folds a chain (top first) into the bytes of the top's virtual disk,
//! the oracle of the differential `merge_in_memory` target. It declines
//! (`Err`) rather than guesses wherever the specifications leave a choice
//! (a dirty VHDX log, a region table copy 1 that fails its CRC, reserved
//! states, sizes that shrink up the chain, data outside the file), so a
//! comparison is only made where the answer is defined.

use crate::mutate::Bytes;

/// Disks above this size are not folded (the fold is a dense vector).
pub const FOLD_LIMIT: u64 = 16 << 20;

type R<T> = Result<T, String>;

fn get<B: Bytes + ?Sized>(b: &B, at: u64, n: usize, what: &str) -> R<Vec<u8>> {
    b.at(at, n)
        .ok_or_else(|| format!("{what}: {n} bytes at {at} outside the file"))
}
/// Whether `[at, at + n)` lies inside the file.
fn inside<B: Bytes + ?Sized>(b: &B, at: u64, n: u64, what: &str) -> R<()> {
    match at.checked_add(n) {
        Some(e) if e <= b.size() => Ok(()),
        _ => Err(format!("{what}: {n} bytes at {at} outside the file")),
    }
}
fn u16le(v: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([v[at], v[at + 1]])
}
fn u32le(v: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(v[at..at + 4].try_into().expect("4 bytes"))
}
fn u64le(v: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(v[at..at + 8].try_into().expect("8 bytes"))
}
fn u32be(v: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(v[at..at + 4].try_into().expect("4 bytes"))
}
fn u64be(v: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(v[at..at + 8].try_into().expect("8 bytes"))
}

/// VHD checksum: one's complement of the byte sum, the field counted as 0.
fn vhd_sum_ok(v: &[u8], field: usize) -> bool {
    // The bytes before and after the field, each a plain (vectorisable)
    // sum rather than one loop testing every index against the field.
    let sum = |b: &[u8]| b.iter().fold(0u32, |s, x| s.wrapping_add(u32::from(*x)));
    !sum(&v[..field]).wrapping_add(sum(&v[field + 4..])) == u32be(v, field)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing by 8:
/// table `k` advances a byte that sits `k` bytes before the end of an
/// 8-byte group.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

fn crc32c_update(mut c: u32, bytes: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut groups = bytes.chunks_exact(8);
    for g in &mut groups {
        let lo = c ^ u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
        c = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][g[4] as usize]
            ^ t[2][g[5] as usize]
            ^ t[1][g[6] as usize]
            ^ t[0][g[7] as usize];
    }
    for b in groups.remainder() {
        c = t[0][((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c
}

/// Zero bytes skipped a page at a time (a region table is 64 KiB, mostly
/// zeros, and the reference checks one per VHDX file it folds).
const ZERO_PAGE: usize = 4096;
static ZEROS: [u8; ZERO_PAGE] = [0; ZERO_PAGE];

/// The CRC register after a page of zero bytes, as a linear map (zeros
/// only shift and reduce the register): column `i` is where the register
/// `1 << i` goes, computed by feeding a zero page through the tables.
fn zero_page_map() -> &'static [u32; 32] {
    static MAP: std::sync::OnceLock<[u32; 32]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| std::array::from_fn(|i| crc32c_update(1 << i, &ZEROS)))
}

/// `crc32c_update(c, bytes)`, a trailing run of whole zero pages applied
/// through [`zero_page_map`].
fn crc32c_update_sparse(c: u32, bytes: &[u8]) -> u32 {
    let zero_pages = bytes
        .rchunks_exact(ZERO_PAGE)
        .take_while(|p| *p == &ZEROS[..])
        .count();
    let head = &bytes[..bytes.len() - zero_pages * ZERO_PAGE];
    let map = zero_page_map();
    (0..zero_pages).fold(crc32c_update(c, head), |c, _| {
        (0..32)
            .filter(|i| c & (1 << i) != 0)
            .fold(0, |acc, i| acc ^ map[i])
    })
}

/// The CRC-32C over `v` with its field at `field` counted as zeros
/// matches the field.
fn crc32c_ok(v: &[u8], field: usize) -> bool {
    let c = crc32c_update(!0, &v[..field]);
    let c = crc32c_update(c, &[0; 4]);
    let c = crc32c_update_sparse(c, &v[field + 4..]);
    !c == u32le(v, field)
}

/// What one layer says about a range of its virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    /// The bytes at this file offset.
    Data(u64),
    Zero,
    /// Whatever the layers below show.
    Below,
}

/// One parsed image: its geometry and, per allocation unit, what it holds.
#[derive(Debug)]
pub struct RefImage {
    pub virtual_size: u64,
    pub sector: u64,
    pub differencing: bool,
    /// Runs: (virtual offset, length, paint), tiling [0, virtual_size).
    runs: Vec<(u64, u64, Paint)>,
}

fn push_run(runs: &mut Vec<(u64, u64, Paint)>, off: u64, len: u64, p: Paint) {
    if len == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        let contiguous = match (last.2, p) {
            (Paint::Data(a), Paint::Data(b)) => a + last.1 == b,
            (a, b) => a == b,
        };
        if contiguous && last.0 + last.1 == off {
            last.1 += len;
            return;
        }
    }
    runs.push((off, len, p));
}

/// Parse an image file (VHD or VHDX) into its runs.
pub fn open<B: Bytes + ?Sized>(b: &B) -> R<RefImage> {
    if b.at(0, 8).as_deref() == Some(b"vhdxfile") {
        open_vhdx(b)
    } else {
        open_vhd(b)
    }
}

fn open_vhd<B: Bytes + ?Sized>(b: &B) -> R<RefImage> {
    let n = b.size();
    let fo = n.checked_sub(512).ok_or("shorter than a footer")?;
    let f = get(b, fo, 512, "footer")?;
    if &f[..8] != b"conectix" || !vhd_sum_ok(&f, 0x40) {
        return Err("end footer not valid (the copy at 0 is not modelled)".into());
    }
    let size = u64be(&f, 0x30);
    let disk_type = u32be(&f, 0x3C);
    if size == 0 || !size.is_multiple_of(512) || size > FOLD_LIMIT {
        return Err(format!("current size {size}"));
    }
    let mut runs = Vec::new();
    match disk_type {
        2 => {
            if n != size + 512 {
                return Err(format!("fixed: file {n} bytes for {size}"));
            }
            push_run(&mut runs, 0, size, Paint::Data(0));
            return Ok(RefImage {
                virtual_size: size,
                sector: 512,
                differencing: false,
                runs,
            });
        }
        3 | 4 => {}
        t => return Err(format!("disk type {t}")),
    }
    let diff = disk_type == 4;
    let ho = u64be(&f, 0x10);
    let h = get(b, ho, 1024, "dynamic header")?;
    if &h[..8] != b"cxsparse" || !vhd_sum_ok(&h, 0x24) {
        return Err("dynamic header not valid".into());
    }
    let table = u64be(&h, 0x10);
    let entries = u64::from(u32be(&h, 0x1C));
    let block = u64::from(u32be(&h, 0x20));
    if block < 512 || !block.is_multiple_of(512) || !(block / 512).is_power_of_two() {
        return Err(format!("block size {block}"));
    }
    let blocks = size.div_ceil(block);
    if entries < blocks {
        return Err(format!("{entries} BAT entries for {blocks} blocks"));
    }
    let bat = get(b, table, (blocks * 4) as usize, "BAT")?;
    let spb = block / 512;
    let bitmap_bytes = spb.div_ceil(8).div_ceil(512) * 512;
    for i in 0..blocks {
        let voff = i * block;
        let vlen = block.min(size - voff);
        let e = u32be(&bat, (i * 4) as usize);
        if e == 0xFFFF_FFFF {
            push_run(
                &mut runs,
                voff,
                vlen,
                if diff { Paint::Below } else { Paint::Zero },
            );
            continue;
        }
        let bm_at = u64::from(e) * 512;
        let data_at = bm_at + bitmap_bytes;
        let bm = get(b, bm_at, bitmap_bytes as usize, "sector bitmap")?;
        inside(b, data_at, vlen, "block data")?;
        let mut sector = [0u8; 512];
        for k in 0..vlen / 512 {
            // Most significant bit first: sector k is bit 7 - k % 8.
            let set = bm[(k / 8) as usize] & (0x80 >> (k % 8)) != 0;
            let at = data_at + k * 512;
            let p = if set {
                Paint::Data(at)
            } else if diff {
                Paint::Below
            } else {
                // A dynamic disk's unmarked sectors must be zeros on disk,
                // and readers may use the bitmap or not: only then defined.
                if !b.read_into(at, &mut sector) || sector.iter().any(|x| *x != 0) {
                    return Err("dynamic: unmarked sector holds data".into());
                }
                Paint::Zero
            };
            push_run(&mut runs, voff + k * 512, 512, p);
        }
    }
    Ok(RefImage {
        virtual_size: size,
        sector: 512,
        differencing: diff,
        runs,
    })
}

const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
const META_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
const FILE_PARAMETERS: [u8; 16] = [
    0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
];
const VIRTUAL_DISK_SIZE: [u8; 16] = [
    0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8,
];
const LOGICAL_SECTOR_SIZE: [u8; 16] = [
    0x1D, 0xBF, 0x41, 0x81, 0x6F, 0xA9, 0x09, 0x47, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
];
const MIB: u64 = 1 << 20;

fn open_vhdx<B: Bytes + ?Sized>(b: &B) -> R<RefImage> {
    // Headers: valid = signature and CRC; current = greater sequence.
    let mut best: Option<Vec<u8>> = None;
    for at in [64 << 10, 128 << 10] {
        let Some(h) = b.at(at, 4096) else { continue };
        if &h[..4] != b"head" || !crc32c_ok(&h, 4) {
            continue;
        }
        best = match best {
            None => Some(h),
            Some(o) if u64le(&h, 8) > u64le(&o, 8) => Some(h),
            Some(o) if u64le(&h, 8) == u64le(&o, 8) && h != o => {
                return Err("headers with equal sequence numbers differ".into())
            }
            Some(o) => Some(o),
        };
    }
    let h = best.ok_or("no valid header")?;
    if u16le(&h, 66) != 1 {
        return Err("header version".into());
    }
    if h[48..64].iter().any(|x| *x != 0) {
        return Err("LogGuid set: a log replay is not modelled".into());
    }
    // Region table copy 1.
    let rt = get(b, 192 << 10, 64 << 10, "region table")?;
    if &rt[..4] != b"regi" || !crc32c_ok(&rt, 4) {
        return Err("region table copy 1 not valid".into());
    }
    let count = u32le(&rt, 8) as usize;
    if count > 2047 {
        return Err("region entry count".into());
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count {
        let e = &rt[16 + 32 * i..48 + 32 * i];
        let place = (u64le(e, 16), u64::from(u32le(e, 24)));
        let slot = if e[..16] == BAT_GUID {
            &mut bat
        } else if e[..16] == META_GUID {
            &mut meta
        } else if u32le(e, 28) & 1 != 0 {
            return Err("unknown required region".into());
        } else {
            continue;
        };
        if slot.replace(place).is_some() {
            return Err("duplicate region".into());
        }
    }
    let (bat_at, bat_len) = bat.ok_or("no BAT region")?;
    let (meta_at, meta_len) = meta.ok_or("no metadata region")?;
    // Metadata table and the three items the data layout depends on.
    let mt = get(b, meta_at, 64 << 10, "metadata table")?;
    if &mt[..8] != b"metadata" {
        return Err("metadata signature".into());
    }
    let mcount = usize::from(u16le(&mt, 10));
    if mcount > 2047 {
        return Err("metadata entry count".into());
    }
    let (mut fp, mut vs, mut ls) = (None, None, None);
    for i in 0..mcount {
        let e = &mt[32 + 32 * i..64 + 32 * i];
        let (off, len, flags) = (
            u64::from(u32le(e, 16)),
            u64::from(u32le(e, 20)),
            u32le(e, 24),
        );
        if off + len > meta_len {
            return Err("metadata item outside its region".into());
        }
        if flags & 1 != 0 {
            // User items never drive the layout.
            continue;
        }
        let want = match &e[..16] {
            id if id == FILE_PARAMETERS => (&mut fp, 8),
            id if id == VIRTUAL_DISK_SIZE => (&mut vs, 8),
            id if id == LOGICAL_SECTOR_SIZE => (&mut ls, 4),
            _ if flags & 4 != 0 => match &e[..16] {
                // Known system items the layout does not depend on.
                [0xAB, 0x12, 0xCA, 0xBE, ..]
                | [0xC7, 0x48, 0xA3, 0xCD, ..]
                | [0x2D, 0x5F, 0xD3, 0xA8, ..] => continue,
                _ => return Err("unknown required metadata item".into()),
            },
            _ => continue,
        };
        if len != want.1 {
            return Err("metadata item length".into());
        }
        let v = get(b, meta_at + off, len as usize, "metadata item")?;
        if want.0.replace(v).is_some() {
            return Err("duplicate metadata item".into());
        }
    }
    let fp = fp.ok_or("no file parameters")?;
    let bs = u64::from(u32le(&fp, 0));
    let has_parent = u32le(&fp, 4) & 2 != 0;
    let size = u64le(&vs.ok_or("no virtual disk size")?, 0);
    let lss = u64::from(u32le(&ls.ok_or("no logical sector size")?, 0));
    if !bs.is_power_of_two() || !(MIB..=256 * MIB).contains(&bs) {
        return Err(format!("block size {bs}"));
    }
    if lss != 512 && lss != 4096 {
        return Err(format!("logical sector size {lss}"));
    }
    if size == 0 || !size.is_multiple_of(lss) || size > FOLD_LIMIT {
        return Err(format!("virtual size {size}"));
    }
    let ratio = (1u64 << 23) * lss / bs;
    let blocks = size.div_ceil(bs);
    let entry = |i: u64| -> R<u64> {
        if (i + 1) * 8 > bat_len {
            return Err("BAT index outside the region".into());
        }
        Ok(u64le(&get(b, bat_at + i * 8, 8, "BAT entry")?, 0))
    };
    let mut runs = Vec::new();
    for p in 0..blocks {
        let e = entry(p + p / ratio)?;
        let (state, off) = (e & 7, e & !0xF_FFFF);
        if e & 0xF_FFF8 != 0 {
            return Err("BAT entry reserved bits".into());
        }
        let voff = p * bs;
        let vlen = bs.min(size - voff);
        match state {
            0 => push_run(
                &mut runs,
                voff,
                vlen,
                if has_parent {
                    Paint::Below
                } else {
                    Paint::Zero
                },
            ),
            1..=3 => push_run(&mut runs, voff, vlen, Paint::Zero),
            6 | 7 => {
                if off < MIB {
                    return Err("payload block inside the header section".into());
                }
                inside(b, off, vlen, "payload block")?;
                if state == 6 {
                    push_run(&mut runs, voff, vlen, Paint::Data(off));
                    continue;
                }
                if !has_parent {
                    return Err("PARTIALLY_PRESENT without a parent".into());
                }
                let k = p / ratio;
                let sb = entry(k * (ratio + 1) + ratio)?;
                if sb & 7 != 6 || sb & 0xF_FFF8 != 0 {
                    return Err("PARTIALLY_PRESENT without its bitmap block".into());
                }
                let sb_at = sb & !0xF_FFFF;
                // Bits of this block, least significant bit first.
                let first = (p % ratio) * (bs / lss);
                let sectors = vlen / lss;
                let bits = get(
                    b,
                    sb_at + first / 8,
                    sectors.div_ceil(8) as usize + 1,
                    "sector bitmap",
                )?;
                for j in 0..sectors {
                    let bit = first % 8 + j;
                    let set = bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0;
                    let paint = if set {
                        Paint::Data(off + j * lss)
                    } else {
                        Paint::Below
                    };
                    push_run(&mut runs, voff + j * lss, lss, paint);
                }
            }
            s => return Err(format!("payload state {s}")),
        }
    }
    Ok(RefImage {
        virtual_size: size,
        sector: lss,
        differencing: has_parent,
        runs,
    })
}

/// A chain's virtual disk as the reference reads it: the parsed layers
/// (top first) over their files, painted a range at a time, so that
/// comparing it costs no buffer the size of the disk.
pub struct Folded<B> {
    imgs: Vec<RefImage>,
    files: Vec<B>,
}

impl<B: Bytes> Folded<B> {
    pub fn size(&self) -> u64 {
        self.imgs[0].virtual_size
    }

    /// Whether any layer paints file bytes inside `[off, off + len)`; where
    /// none does, [`Folded::read`] gives zeros there (the caller may skip
    /// such a range of a disk it keeps sparse).
    pub fn holds_data(&self, off: u64, len: u64) -> bool {
        let end = off + len;
        self.imgs.iter().any(|img| {
            let first = img.runs.partition_point(|&(o, l, _)| o + l <= off);
            img.runs[first..]
                .iter()
                .take_while(|r| r.0 < end)
                .any(|r| matches!(r.2, Paint::Data(_)))
        })
    }

    /// Bytes `[off, off + buf.len())` of the virtual disk (inside it):
    /// every layer's runs there painted over the ones below, from the base
    /// up, over zeros.
    pub fn read(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        buf.fill(0);
        for (img, file) in self.imgs.iter().zip(&self.files).rev() {
            let first = img.runs.partition_point(|&(o, l, _)| o + l <= off);
            for &(o, l, p) in img.runs[first..].iter().take_while(|r| r.0 < end) {
                let (s, e) = (o.max(off), (o + l).min(end));
                let dst = &mut buf[(s - off) as usize..(e - off) as usize];
                match p {
                    Paint::Below => {}
                    Paint::Zero => dst.fill(0),
                    // Checked inside the file when folded.
                    Paint::Data(at) => {
                        let ok = file.read_into(at + (s - o), dst);
                        debug_assert!(ok, "data run checked inside the file");
                    }
                }
            }
        }
    }
}

/// The virtual disk of a chain, top first (see [`Folded`]), or why the
/// reference declines it.
pub fn fold_view<B: Bytes>(files: Vec<B>) -> R<Folded<B>> {
    let imgs: Vec<RefImage> = files.iter().map(open).collect::<R<_>>()?;
    let top = imgs.first().ok_or("empty chain")?;
    for (i, img) in imgs.iter().enumerate() {
        if img.sector != top.sector {
            return Err("sector sizes differ along the chain".into());
        }
        if img.differencing != (i + 1 < imgs.len()) {
            return Err("only the base may be (and must be) a non-differencing image".into());
        }
        if i > 0 && img.virtual_size > imgs[i - 1].virtual_size {
            return Err("a parent larger than its child".into());
        }
    }
    for (img, file) in imgs.iter().zip(&files) {
        for &(_, len, p) in &img.runs {
            if let Paint::Data(at) = p {
                if at.checked_add(len).is_none_or(|e| e > file.size()) {
                    return Err(format!("data: {len} bytes at {at} outside the file"));
                }
            }
        }
    }
    Ok(Folded { imgs, files })
}

/// The virtual disk of a chain, top first, as one vector.
#[cfg(test)]
pub fn fold<B: Bytes + ?Sized>(files: &[&B]) -> R<Vec<u8>> {
    let f = fold_view(files.to_vec())?;
    let mut out = vec![0u8; f.size() as usize];
    f.read(0, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness;
    use crate::sparse::Pages;
    use crate::template::{self, BaseSpec, ChildSpec, Op};

    fn ops(seed: u8) -> Vec<Op> {
        vec![
            Op::Write {
                at: 1,
                len: 30,
                seed,
            },
            Op::Write {
                at: 2100,
                len: 255,
                seed: seed ^ 0x33,
            },
            Op::Zero { at: 5, len: 2 },
            Op::Write {
                at: 3000,
                len: 3,
                seed: seed.wrapping_add(7),
            },
        ]
    }

    fn chain(vhdx: bool, fixed: bool, big: bool, block: u8, kids: usize) -> Vec<Pages> {
        let base = BaseSpec {
            vhdx,
            fixed,
            big_sector: big,
            size_units: 400,
            block,
            ops: ops(3),
        };
        let children: Vec<ChildSpec> = (0..kids)
            .map(|i| ChildSpec {
                block: block.wrapping_add(i as u8),
                grow: i as u8,
                ops: ops(0x40 + i as u8),
            })
            .collect();
        let (m, ns) = harness::sparse_ns();
        let (paths, model) = template::build_chain(&ns, &base, &children);
        let mut files: Vec<Pages> = paths.iter().rev().map(|p| m.get(p).unwrap()).collect();
        let got = fold(&files.iter().collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("reference declines {base:?}: {e}"));
        assert!(got == model, "reference fold differs from the model");
        files.shrink_to_fit();
        files
    }

    /// A range of the folded view reads what the same range of the whole
    /// fold holds, wherever it starts and ends.
    #[test]
    fn ranges_read_as_the_whole_fold() {
        for vhdx in [false, true] {
            let files = chain(vhdx, false, vhdx, 2, 2);
            let whole = fold(&files.iter().collect::<Vec<_>>()).unwrap();
            let view = fold_view(files.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(view.size(), whole.len() as u64);
            let mut x = 0x1234_5678_u64;
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = x % whole.len() as u64;
                let len = (x >> 32) % (whole.len() as u64 - off).min(70_000);
                let mut buf = vec![0xEE; len as usize];
                view.read(off, &mut buf);
                assert!(buf[..] == whole[off as usize..(off + len) as usize]);
                // A range said to hold no data reads as zeros.
                if !view.holds_data(off, len) {
                    assert!(buf.iter().all(|b| *b == 0));
                }
            }
            // ... and a range holding written data is said to hold some.
            let first = whole.iter().position(|b| *b != 0).expect("written") as u64;
            assert!(view.holds_data(first, 1));
        }
    }

    /// Images made by formats, with known contents, read by the reference
    /// exactly as written: every format, type, sector and block size.
    #[test]
    fn reads_what_formats_wrote() {
        for vhdx in [false, true] {
            for block in 0..4 {
                for kids in 0..3 {
                    chain(vhdx, false, false, block, kids);
                    if vhdx {
                        chain(vhdx, false, true, block, kids);
                    }
                }
                chain(vhdx, true, false, block, 0);
                chain(vhdx, true, false, block, 1);
            }
        }
    }

    fn top_bat_entry(f: &Pages) -> (u64, usize) {
        if f.at(0, 8).as_deref() == Some(b"vhdxfile") {
            let (o, _) = crate::mutate::vhdx_region(f, &BAT_GUID).unwrap();
            (o, 8)
        } else {
            let n = f.len();
            let h = u64be(&f.get(n - 512, 512), 0x10);
            (u64be(&f.get(h, 1024), 0x10), 4)
        }
    }

    /// Clearing the first BAT entry of a written dynamic image makes the
    /// reference read zeros there (VHD: 0xFFFFFFFF; VHDX: NOT_PRESENT), so
    /// it differs from the model: the reference really reads the BAT.
    #[test]
    fn a_changed_bat_entry_changes_the_fold() {
        for vhdx in [false, true] {
            let mut files = chain(vhdx, false, false, 0, 0);
            let (bat, w) = top_bat_entry(&files[0]);
            let before = fold(&[&files[0]]).unwrap();
            let cleared: Vec<u8> = if w == 4 { vec![0xFF; 4] } else { vec![0; 8] };
            files[0].write(bat, &cleared);
            let after = fold(&[&files[0]]).unwrap();
            assert_ne!(before, after, "vhdx {vhdx}: BAT entry ignored");
            assert!(after[512..1024].iter().all(|b| *b == 0));
            assert!(before[512..1024].iter().any(|b| *b != 0));
        }
    }

    /// In a differencing child, moving a present block's BAT entry to the
    /// parent (VHD: unallocated; VHDX: NOT_PRESENT) shows the parent's data.
    #[test]
    fn a_child_bat_entry_falls_through_to_the_parent() {
        for vhdx in [false, true] {
            let mut files = chain(vhdx, false, false, 0, 1);
            let base_only = fold(&[&files[1]]).unwrap();
            let (bat, w) = top_bat_entry(&files[0]);
            let cleared: Vec<u8> = if w == 4 { vec![0xFF; 4] } else { vec![0; 8] };
            files[0].write(bat, &cleared);
            let got = fold(&[&files[0], &files[1]]).unwrap();
            assert_eq!(got[..4096], base_only[..4096], "vhdx {vhdx}");
        }
    }

    #[test]
    fn checksums_known_answers() {
        let mut v = b"123456789\0\0\0\0".to_vec();
        // CRC-32C("123456789") = 0xE3069283 (FORMATS.md section 4).
        assert_eq!(!crc32c_update(!0, &v[..9]), 0xE306_9283);
        // Groups of 8 and the byte-wise tail agree: the same bytes fed in
        // any split give the same CRC.
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = crc32c_update(!0, &long);
        for cut in [1, 7, 8, 9, 500, 999] {
            let split = crc32c_update(crc32c_update(!0, &long[..cut]), &long[cut..]);
            assert_eq!(split, whole, "cut at {cut}");
        }
        // Trailing zero pages skipped by their map give the same CRC.
        for (len, data) in [(0, 0), (4096, 0), (4096, 4096), (5000, 3), (70_000, 700)] {
            let b: Vec<u8> = (0..len)
                .map(|i| if i < data { (i * 7 + 3) as u8 | 1 } else { 0 })
                .collect();
            for c in [!0, 0, 0x1234_5678] {
                assert_eq!(crc32c_update_sparse(c, &b), crc32c_update(c, &b), "{len}");
            }
        }
        let mut h = vec![0u8; 64];
        h[..9].copy_from_slice(b"123456789");
        let full = !crc32c_update(!0, &h);
        h[20..24].copy_from_slice(&full.to_le_bytes());
        // Stored at 20, the CRC is checked with those bytes as zeros.
        assert!(crc32c_ok(&h, 20));
        h[3] ^= 0x10;
        assert!(!crc32c_ok(&h, 20));
        // A VHD-style sum over a tiny structure.
        let sum = !v[..9].iter().map(|b| u32::from(*b)).sum::<u32>();
        v[9..13].copy_from_slice(&sum.to_be_bytes());
        assert!(vhd_sum_ok(&v, 9));
        v[0] ^= 1;
        assert!(!vhd_sum_ok(&v, 9));
    }
}
