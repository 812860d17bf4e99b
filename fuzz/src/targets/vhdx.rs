//! VHDX structure families (identifier + headers, region table, metadata
//! table and items, parent locator, BAT, log entries) and `replay_log`.
//! Inputs are spliced into valid template images at the structure's real
//! place, checksums recomputed on request, then opened read-only and
//! writable. Byte 0 is a flag byte: bit 0 ignore checksums, bit 1 also
//! open writable, bit 2 ignore linkage, bit 3 leave the checksum as given,
//! bits 4-5 template (fixed, dynamic, differencing), bits 6-7 target-specific.
//!
//! The structures are located and encoded here by hand from FORMATS.md
//! (independently of the driver), so these targets do not depend on the
//! driver's internal types.

use arbitrary::{Arbitrary, Unstructured};
use formats::checksum::crc32c_zeroed;

use super::splice::{self, Instance, DIFFERENCING};
use crate::mutate::{self, VHDX_HEADER_SLOTS, VHDX_REGION_TABLES};

fn set_crc(b: &mut [u8], field: usize) {
    let v = crc32c_zeroed(b, field);
    b[field..field + 4].copy_from_slice(&v.to_le_bytes());
}

fn instance(flags: u8) -> Option<Instance> {
    let ts = splice::templates(true)?;
    Some(splice::instantiate(&ts[usize::from((flags >> 4) & 3) % 3]))
}

/// One of the two headers (bit 6: slot 2), or the file identifier (bit 7).
pub fn headers(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    inst.splice_and_exercise(flags, |file| {
        if flags & 0x80 != 0 {
            splice::overlay(file, 0, rest, 64 << 10);
        } else {
            let at = VHDX_HEADER_SLOTS[usize::from((flags >> 6) & 1)] as usize;
            splice::overlay(file, at as u64, rest, 4096);
            if flags & 8 == 0 {
                set_crc(&mut file[at..at + 4096], 4);
            }
        }
    });
}

/// Region table copy 1 (bit 6 clear) or 2, or both (bit 7).
pub fn region_table(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    inst.splice_and_exercise(flags, |file| {
        let copies: &[u64] = if flags & 0x80 != 0 {
            &VHDX_REGION_TABLES
        } else {
            &VHDX_REGION_TABLES[usize::from((flags >> 6) & 1)..][..1]
        };
        for &at in copies {
            splice::overlay(file, at, rest, 64 << 10);
            if flags & 8 == 0 {
                set_crc(&mut file[at as usize..at as usize + (64 << 10)], 4);
            }
        }
    });
}

/// The metadata region from its start (table, then items).
pub fn metadata(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    inst.splice_and_exercise(flags, |file| {
        if let Some((o, l)) = mutate::vhdx_region(file, &mutate::METADATA_GUID_LE) {
            let max = usize::try_from(l).unwrap_or(0);
            if flags & 0x40 != 0 {
                // Items only: keep the table, write over what it points at.
                for (i, (_, at, len)) in mutate::vhdx_metadata_items(file).into_iter().enumerate() {
                    let chunk = rest.get(i * 64..).unwrap_or(&[]);
                    splice::overlay(file, at, chunk, len.min(64) as usize);
                }
            } else {
                splice::overlay(file, o, rest, max);
            }
        }
    });
}

const PARENT_LOCATOR_ITEM_LE: [u8; 16] = [
    0x2D, 0x5F, 0xD3, 0xA8, 0x0B, 0xB3, 0x4D, 0x45, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C,
];
const LOCATOR_TYPE_LE: [u8; 16] = [
    0xB7, 0xEF, 0x4A, 0xB0, 0x9E, 0xD1, 0x81, 0x4A, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13,
];

#[derive(Debug, Arbitrary)]
struct KeyValue {
    key: u8,
    raw_key: String,
    value: u8,
    raw_value: String,
}

#[derive(Debug, Arbitrary)]
struct LocatorInput {
    pairs: Vec<KeyValue>,
    wrong_type: bool,
}

const KEYS: [&str; 5] = [
    "parent_linkage",
    "parent_linkage2",
    "relative_path",
    "volume_path",
    "absolute_win32_path",
];

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Encode a parent locator item (FORMATS.md 3.6) from key/value strings.
fn encode_locator(pairs: &[(String, String)], wrong_type: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(if wrong_type {
        &[0u8; 16]
    } else {
        &LOCATOR_TYPE_LE
    });
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + 12 * pairs.len();
    let mut entries = Vec::new();
    for (k, v) in pairs {
        let (kb, vb) = (utf16(k), utf16(v));
        let ko = base + strings.len();
        strings.extend_from_slice(&kb);
        let vo = base + strings.len();
        strings.extend_from_slice(&vb);
        entries.extend_from_slice(&(ko as u32).to_le_bytes());
        entries.extend_from_slice(&(vo as u32).to_le_bytes());
        entries.extend_from_slice(&(kb.len() as u16).to_le_bytes());
        entries.extend_from_slice(&(vb.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&entries);
    out.extend_from_slice(&strings);
    out
}

/// The parent locator metadata item of the differencing template: raw
/// bytes (bit 6) or structured key/value pairs; the item length in the
/// table follows the new item (bit 7: keep the old length).
pub fn parent_locator(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(ts) = splice::templates(true) else {
        return;
    };
    let inst = splice::instantiate(&ts[DIFFERENCING]);
    inst.splice_and_exercise(flags, |file| {
        let item = if flags & 0x40 != 0 {
            rest.to_vec()
        } else {
            let mut u = Unstructured::new(rest);
            let Ok(input) = LocatorInput::arbitrary(&mut u) else {
                return;
            };
            let parent_guid = linkage_of_parent(&inst);
            let pairs: Vec<(String, String)> = input
                .pairs
                .iter()
                .take(16)
                .map(|kv| {
                    let k = if kv.key < 200 {
                        KEYS[usize::from(kv.key) % KEYS.len()].to_string()
                    } else {
                        kv.raw_key.clone()
                    };
                    let v = match kv.value % 4 {
                        0 => parent_guid.clone(),
                        1 => ".\\base.vhdx".to_string(),
                        _ => kv.raw_value.clone(),
                    };
                    (k, v)
                })
                .collect();
            encode_locator(&pairs, input.wrong_type)
        };
        let Some((m, _)) = mutate::vhdx_region(file, &mutate::METADATA_GUID_LE) else {
            return;
        };
        let count = u16::from_le_bytes([file[m as usize + 10], file[m as usize + 11]]).min(2047);
        for i in 0..u64::from(count) {
            let e = (m + 32 + 32 * i) as usize;
            if file[e..e + 16] != PARENT_LOCATOR_ITEM_LE {
                continue;
            }
            let off = u32::from_le_bytes(file[e + 16..e + 20].try_into().expect("4 bytes"));
            let old_len = u32::from_le_bytes(file[e + 20..e + 24].try_into().expect("4 bytes"));
            // Room for the new item: the template item has its region to itself.
            let room = 64u64 << 10;
            splice::overlay(file, m + u64::from(off), &item, room as usize);
            if flags & 0x80 == 0 {
                let len = (item.len() as u64).min(room) as u32;
                file[e + 20..e + 24].copy_from_slice(&len.to_le_bytes());
            } else {
                file[e + 20..e + 24].copy_from_slice(&old_len.to_le_bytes());
            }
        }
    });
}

/// The parent's DataWriteGuid as the braced string a locator carries.
fn linkage_of_parent(inst: &Instance) -> String {
    let at = VHDX_HEADER_SLOTS[0] + 32;
    let b = inst
        .m
        .get(&inst.paths[0])
        .map(|p| p.get(at, 16))
        .unwrap_or_default();
    match b.get(..16).and_then(|g| <[u8; 16]>::try_from(g).ok()) {
        Some(g) => format!("{{{}}}", uuid::Uuid::from_bytes_le(g)),
        None => String::new(),
    }
}

/// BAT entries (little-endian u64: state in bits 0-2, file offset in MiB
/// from bit 20) over the template's BAT; bit 6 reads the input as
/// structured (state, MiB) pairs kept plausible for the file length.
pub fn bat(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    inst.splice_and_exercise(flags, |file| {
        let Some((o, l)) = mutate::vhdx_region(file, &mutate::BAT_GUID_LE) else {
            return;
        };
        let bytes = if flags & 0x40 != 0 {
            let file_mb = (file.len() as u64 >> 20) + 2;
            rest.chunks(3)
                .flat_map(|c| {
                    let state = u64::from(c[0] % 8);
                    let mb = u64::from(u16::from_le_bytes([
                        c.get(1).copied().unwrap_or(0),
                        c.get(2).copied().unwrap_or(0),
                    ])) % file_mb;
                    (state | (mb << 20)).to_le_bytes()
                })
                .collect()
        } else {
            rest.to_vec()
        };
        splice::overlay(file, o, &bytes, usize::try_from(l).unwrap_or(0));
    });
}

/// Raw bytes over the log region, with the headers' LogGuid set to the
/// GUID at bytes 32..48 of the input (bit 6 clear) so entries are live,
/// entry CRCs recomputed unless bit 3.
pub fn log(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    inst.splice_and_exercise(flags, |file| {
        let Some((lo, ll)) = mutate::vhdx_log(file, 0) else {
            return;
        };
        let (lo, ll) = (lo as usize, ll as usize);
        if lo >= file.len() || ll == 0 {
            return;
        }
        splice::overlay(file, lo as u64, rest, ll);
        let end = (lo + ll).min(file.len());
        if flags & 8 == 0 {
            let mut pos = 0;
            while pos < rest.len().min(ll) {
                mutate::fix_log_entry(&mut file[lo..end], pos as u64);
                pos += 4096;
            }
        }
        if flags & 0x40 == 0 {
            if let Some(g) = rest.get(32..48) {
                let g: [u8; 16] = g.try_into().expect("16 bytes");
                set_log_guid(file, g);
            }
        }
    });
}

/// Set LogGuid in both headers (CRC recomputed).
fn set_log_guid(file: &mut [u8], g: [u8; 16]) {
    for h in VHDX_HEADER_SLOTS {
        let h = h as usize;
        if file.len() >= h + 4096 {
            file[h + 48..h + 64].copy_from_slice(&g);
            set_crc(&mut file[h..h + 4096], 4);
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Target {
    /// Inside the BAT region, at this 4 KiB sector.
    Bat(u8),
    /// Inside the metadata region.
    Metadata(u8),
    /// A region table copy.
    RegionTable(bool),
    /// Payload area: MiB and sector within.
    Payload(u8, u8),
    /// Anything (4 KiB aligned).
    Raw(u32),
}

#[derive(Debug, Arbitrary)]
enum Descriptor {
    Zero {
        target: Target,
        sectors: u8,
    },
    Data {
        target: Target,
        fill: u8,
        patches: Vec<(u16, u64)>,
    },
}

#[derive(Debug, Arbitrary)]
struct Entry {
    descriptors: Vec<Descriptor>,
    /// Sequence number step from the previous entry (1 is a valid sequence).
    seq_step: u8,
    /// Tail: None points at the first entry; Some is a raw sector index.
    tail: Option<u8>,
    /// Flushed/Last file offsets: None is the file length in MiB.
    flushed: Option<u32>,
    last: Option<u32>,
    corrupt_crc: bool,
}

#[derive(Debug, Arbitrary)]
struct LogInput {
    entries: Vec<Entry>,
    /// Start position of the first entry (4 KiB sectors into the log).
    start: u8,
    first_seq: u64,
}

fn target_offset(file: &[u8], t: &Target) -> u64 {
    let region = |g| mutate::vhdx_region(file, g).unwrap_or((1 << 20, 1 << 20));
    match t {
        Target::Bat(s) => {
            let (o, l) = region(&mutate::BAT_GUID_LE);
            o + (u64::from(*s) * 4096) % l.max(4096)
        }
        Target::Metadata(s) => {
            let (o, l) = region(&mutate::METADATA_GUID_LE);
            o + (u64::from(*s) * 4096) % l.max(4096)
        }
        Target::RegionTable(b) => VHDX_REGION_TABLES[usize::from(*b)],
        Target::Payload(mb, s) => (4 + u64::from(*mb % 16)) * (1 << 20) + u64::from(*s) * 4096,
        Target::Raw(x) => u64::from(*x) * 4096,
    }
}

/// Encode one log entry (FORMATS.md 3.10) with a valid CRC.
fn encode_entry(file: &[u8], e: &Entry, seq: u64, tail: u64, guid: &[u8; 16]) -> Vec<u8> {
    let descs: Vec<&Descriptor> = e.descriptors.iter().take(200).collect();
    let count = descs.len();
    let desc_sectors = (count + 2).div_ceil(128).max(1);
    let data_count = descs
        .iter()
        .filter(|d| matches!(d, Descriptor::Data { .. }))
        .count();
    let len = (desc_sectors + data_count) * 4096;
    let mut out = vec![0u8; len];
    let file_mb = (file.len() as u64).div_ceil(1 << 20) << 20;
    out[0..4].copy_from_slice(b"loge");
    out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    out[12..16].copy_from_slice(&(tail as u32).to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..28].copy_from_slice(&(count as u32).to_le_bytes());
    out[32..48].copy_from_slice(guid);
    let flushed = e.flushed.map_or(file_mb, |f| u64::from(f) << 20);
    let last = e.last.map_or(file_mb, |f| u64::from(f) << 20);
    out[48..56].copy_from_slice(&flushed.to_le_bytes());
    out[56..64].copy_from_slice(&last.to_le_bytes());
    let mut data_at = desc_sectors * 4096;
    for (k, d) in descs.iter().enumerate() {
        let at = if k < 126 {
            64 + 32 * k
        } else {
            4096 * (1 + (k - 126) / 128) + 32 * ((k - 126) % 128)
        };
        let dd = &mut out[at..at + 32];
        match d {
            Descriptor::Zero { target, sectors } => {
                dd[0..4].copy_from_slice(b"zero");
                dd[8..16].copy_from_slice(&((u64::from(*sectors) + 1) * 4096).to_le_bytes());
                dd[16..24].copy_from_slice(&target_offset(file, target).to_le_bytes());
                dd[24..32].copy_from_slice(&seq.to_le_bytes());
            }
            Descriptor::Data {
                target,
                fill,
                patches,
            } => {
                let mut sector = [*fill; 4096];
                for (o, v) in patches.iter().take(16) {
                    let o = usize::from(*o % 4089) / 8 * 8;
                    sector[o..o + 8].copy_from_slice(&v.to_le_bytes());
                }
                dd[0..4].copy_from_slice(b"desc");
                dd[4..8].copy_from_slice(&sector[4092..4096]);
                dd[8..16].copy_from_slice(&sector[0..8]);
                dd[16..24].copy_from_slice(&target_offset(file, target).to_le_bytes());
                dd[24..32].copy_from_slice(&seq.to_le_bytes());
                let ds = &mut out[data_at..data_at + 4096];
                ds.copy_from_slice(&sector);
                ds[0..4].copy_from_slice(b"data");
                ds[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                ds[4092..4096].copy_from_slice(&(seq as u32).to_le_bytes());
                data_at += 4096;
            }
        }
    }
    set_crc(&mut out, 4);
    if e.corrupt_crc {
        out[4] ^= 1;
    }
    out
}

/// `replay_log`: a structured log (valid entries, sequences, wrap-around)
/// written into a template's log with the headers pointing at it. Oracle:
/// the read-only open (replay into an overlay) and a writable open (replay
/// in place) must show the same virtual disk.
pub fn replay_log(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let Ok(input) = LogInput::arbitrary(&mut u) else {
        return;
    };
    let Some(inst) = instance(flags) else { return };
    let mut file = inst.top_bytes();
    let Some((lo, ll)) = mutate::vhdx_log(&file, 0) else {
        return;
    };
    let (lo, ll) = (lo as usize, ll as usize);
    if ll < 4096 || lo + ll > file.len() {
        return;
    }
    let guid = *uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001).as_bytes();
    let mut pos = (usize::from(input.start) * 4096) % ll;
    let first_pos = pos;
    let mut seq = input.first_seq.max(1);
    let mut ring = file[lo..lo + ll].to_vec();
    for (i, e) in input.entries.iter().take(8).enumerate() {
        if i > 0 {
            seq = seq.wrapping_add(u64::from(e.seq_step));
        }
        let tail = match e.tail {
            None => first_pos as u64,
            Some(t) => (u64::from(t) * 4096) % ll as u64,
        };
        let bytes = encode_entry(&file, e, seq, tail, &guid);
        if bytes.len() > ll {
            break;
        }
        for (k, b) in bytes.iter().enumerate() {
            ring[(pos + k) % ll] = *b;
        }
        pos = (pos + bytes.len()) % ll;
    }
    file[lo..lo + ll].copy_from_slice(&ring);
    set_log_guid(&mut file, guid);
    inst.set_top(file);
    let view = |writable: bool| -> Option<Vec<u8>> {
        let opts = formats::chain::ChainOptions {
            access: if writable {
                formats::Access::Write
            } else {
                formats::Access::Read
            },
            writable,
            ignore_checksums: flags & 1 != 0,
            ..Default::default()
        };
        let img = formats::chain::open_image_file(&inst.ns, inst.top(), &opts).ok()?;
        crate::harness::interrogate(img.as_ref());
        if img.is_differencing() {
            return None;
        }
        let size = img.virtual_size();
        if size > crate::harness::WHOLE_READ_LIMIT {
            return None;
        }
        let mut buf = vec![0u8; size as usize];
        let mut r = formats::chain::ChainReader::new(vec![img.as_ref() as &dyn formats::Layer]);
        r.read(0, &mut buf).ok()?;
        Some(buf)
    };
    let ro = view(false);
    let rw = view(true);
    if let (Some(ro), Some(rw)) = (&ro, &rw) {
        assert!(
            ro == rw,
            "read-only (overlay) replay and in-place replay disagree"
        );
    }
    let again = view(false);
    if let (Some(rw), Some(again)) = (&rw, &again) {
        assert!(
            rw == again,
            "image reads differently after the writable open closed"
        );
    }
    splice::exercise(&inst, flags & !2);
}
