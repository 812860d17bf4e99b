//! VHD structure families: footer, dynamic header, parent locators, BAT.
//! Each input is parsed directly (read -> write must give the same bytes)
//! and spliced into a valid template image at the structure's place.
//! Byte 0 of every input is a flag byte:
//! bit 0 ignore checksums on open, bit 1 also open writable, bit 2 ignore
//! linkage, bit 3 recompute the structure's checksum, bits 4-5 template
//! (fixed, dynamic, differencing), bit 6 also the footer copy at offset 0.

use arbitrary::{Arbitrary, Unstructured};
use formats::checksum::vhd_checksum;
use formats::vhd::{decode_locator, DynamicDiskHeader, HardDiskFooter, ParentLocatorEntry};

use super::splice::{self, Instance, DIFFERENCING, DYNAMIC};
use crate::mutate::VHD_PARENT_LOCATORS_AT;

fn fixed_size<const N: usize>(rest: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = rest.len().min(N);
    b[..n].copy_from_slice(&rest[..n]);
    b
}

fn set_vhd_sum(b: &mut [u8], field: usize) {
    let v = vhd_checksum(b, field);
    b[field..field + 4].copy_from_slice(&v.to_be_bytes());
}

fn template_kind(flags: u8) -> usize {
    usize::from((flags >> 4) & 3) % 3
}

/// A dynamic or differencing template (the flags' choice; fixed VHDs have
/// no dynamic header or BAT to splice into).
fn sparse_instance(flags: u8) -> Option<Instance> {
    let ts = splice::templates(false)?;
    let kind = if template_kind(flags) == DIFFERENCING {
        DIFFERENCING
    } else {
        DYNAMIC
    };
    Some(splice::instantiate(&ts[kind]))
}

/// Footer: 512 bytes at the end (and at 0 when bit 6 is set).
pub fn footer(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let mut b: [u8; 512] = fixed_size(rest);
    if let Ok((f, _)) = HardDiskFooter::parse(&b, "fuzz", 0) {
        let raw = f.to_raw_bytes().expect("a parsed footer encodes");
        assert_eq!(raw, b, "footer read -> write changed bytes");
        let _ = (f.kind(), f.creator_text(), f.identity(), f.cookie_ok());
    }
    if flags & 8 != 0 {
        set_vhd_sum(&mut b, 0x40);
    }
    let Some(ts) = splice::templates(false) else {
        return;
    };
    let inst = splice::instantiate(&ts[template_kind(flags)]);
    inst.splice_and_exercise(flags, |file| {
        let n = file.len();
        file[n - 512..].copy_from_slice(&b);
        if flags & 0x40 != 0 && file.starts_with(b"conectix") {
            file[..512].copy_from_slice(&b);
        }
    });
}

/// Dynamic disk header: 1024 bytes at the footer's Data Offset.
pub fn dynamic_header(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let mut b: [u8; 1024] = fixed_size(rest);
    if let Ok((h, _)) = DynamicDiskHeader::parse(&b, "fuzz", 0) {
        let raw = h.to_raw_bytes().expect("a parsed header encodes");
        assert!(
            raw[..] == b[..],
            "dynamic header read -> write changed bytes"
        );
        let _ = h.parent_name();
        for e in &h.parent_locators {
            let _ = (e.is_used(), e.code_text(), e.reserved_bytes());
        }
    }
    if flags & 8 != 0 {
        set_vhd_sum(&mut b, 0x24);
    }
    let Some(inst) = sparse_instance(flags) else {
        return;
    };
    inst.splice_and_exercise(flags, |file| {
        splice::overlay(file, 512, &b, 1024);
    });
}

#[derive(Debug, Arbitrary)]
struct Locator {
    slot: u8,
    code: u8,
    raw_code: u32,
    space: u32,
    /// None: the data's own length.
    length: Option<u32>,
    /// How the offset is chosen: appended data, or a raw offset.
    raw_offset: Option<u64>,
    data: Vec<u8>,
    /// Data as a path string (encoded per platform) instead of raw bytes.
    path: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct LocatorInput {
    locators: Vec<Locator>,
    parent_name: Option<String>,
    /// Put a copy of the parent under this name too.
    alias: Option<String>,
}

const CODES: [u32; 7] = [
    formats::vhd::PLATFORM_W2RU,
    formats::vhd::PLATFORM_W2KU,
    formats::vhd::PLATFORM_WI2R,
    formats::vhd::PLATFORM_WI2K,
    formats::vhd::PLATFORM_MAC,
    formats::vhd::PLATFORM_MACX,
    0,
];

fn encode_path(code: u32, s: &str) -> Vec<u8> {
    match code {
        formats::vhd::PLATFORM_W2RU | formats::vhd::PLATFORM_W2KU => {
            s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
        }
        _ => s.as_bytes().to_vec(),
    }
}

/// Parent locators of a differencing VHD: entries in the header, data
/// appended before the footer (or at a raw offset), parent resolution.
pub fn parent_locator(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let Ok(input) = LocatorInput::arbitrary(&mut u) else {
        return;
    };
    for code in CODES {
        for l in &input.locators {
            let _ = decode_locator(code, &l.data);
        }
    }
    let Some(ts) = splice::templates(false) else {
        return;
    };
    let inst = splice::instantiate(&ts[DIFFERENCING]);
    let mut file = inst.top_bytes();
    let footer = file.split_off(file.len() - 512);
    let h = 512usize;
    if flags & 0x40 != 0 {
        // Start from a clean slate: no locators at all.
        file[h + VHD_PARENT_LOCATORS_AT as usize..h + VHD_PARENT_LOCATORS_AT as usize + 192]
            .fill(0);
    }
    for l in input.locators.iter().take(8) {
        let code = if l.code < 200 {
            CODES[usize::from(l.code) % CODES.len()]
        } else {
            l.raw_code
        };
        let bytes = match &l.path {
            Some(p) => encode_path(code, p),
            None => l.data.clone(),
        };
        let offset = match l.raw_offset {
            Some(o) => o,
            None => {
                let at = file.len() as u64;
                file.extend_from_slice(&bytes);
                file.resize(file.len().div_ceil(512) * 512, 0);
                at
            }
        };
        let e = ParentLocatorEntry {
            platform_code: code,
            platform_data_space: l.space,
            platform_data_length: l.length.unwrap_or(bytes.len() as u32),
            reserved: 0,
            platform_data_offset: offset,
        };
        let mut eb = Vec::with_capacity(24);
        eb.extend_from_slice(&e.platform_code.to_be_bytes());
        eb.extend_from_slice(&e.platform_data_space.to_be_bytes());
        eb.extend_from_slice(&e.platform_data_length.to_be_bytes());
        eb.extend_from_slice(&e.reserved.to_be_bytes());
        eb.extend_from_slice(&e.platform_data_offset.to_be_bytes());
        let at = h + VHD_PARENT_LOCATORS_AT as usize + 24 * usize::from(l.slot % 8);
        file[at..at + 24].copy_from_slice(&eb);
    }
    if let Some(name) = &input.parent_name {
        let units: Vec<u8> = name
            .encode_utf16()
            .take(256)
            .flat_map(|u| u.to_be_bytes())
            .collect();
        file[h + 64..h + 64 + 512].fill(0);
        file[h + 64..h + 64 + units.len()].copy_from_slice(&units);
    }
    if flags & 8 == 0 {
        set_vhd_sum(&mut file[h..h + 1024], 0x24);
    }
    file.extend_from_slice(&footer);
    inst.set_top(file);
    if let Some(alias) = &input.alias {
        if let Some(b) = inst.m.get(&inst.paths[0]) {
            let name = alias.replace(['\0'], "");
            if !name.is_empty() {
                inst.m.put(&PathBuf::from("/c").join(name), b);
            }
        }
    }
    splice::exercise(&inst, flags & !8);
}

use std::path::PathBuf;

/// BAT entries (big-endian u32 sector numbers) over the template's BAT.
pub fn bat(data: &[u8]) {
    let Some((flags, rest)) = splice::split_flags(data) else {
        return;
    };
    let count = (rest.len() / 4) as u32;
    if let Ok(t) =
        formats::vhd::BlockAllocationTable::parse(&rest[..count as usize * 4], count, "fuzz", 0)
    {
        let b = t.to_bytes().expect("a parsed BAT encodes");
        assert!(
            b[..count as usize * 4] == rest[..count as usize * 4],
            "BAT read -> write changed bytes"
        );
    }
    let Some(inst) = sparse_instance(flags) else {
        return;
    };
    inst.splice_and_exercise(flags, |file| {
        // The template's BAT sits at 1536 (chainfold's layout).
        splice::overlay(file, 1536, rest, 64 << 10);
    });
}
