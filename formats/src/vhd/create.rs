//! Creating fixed, dynamic and differencing images (FORMATS.md 2.7, 2.8).

use super::bat::{BlockAllocationTable, BAT_UNALLOCATED};
use super::dynamic_header::{block_size_ok, DynamicDiskHeader, HEADER_COOKIE, HEADER_VERSION};
use super::footer::{
    vhd_now, HardDiskFooter, DATA_OFFSET_NONE, DISK_TYPE_DIFFERENCING, DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED, FEATURES_RESERVED, FILE_FORMAT_VERSION, FOOTER_COOKIE, HOST_OS_WINDOWS,
    MAX_SPARSE_SIZE,
};
use super::geometry::chs_for_size;
use super::parent_locator::{ParentLocatorEntry, PLATFORM_W2KU, PLATFORM_W2RU};
use crate::error::IoContext;
use crate::params::{CreateParams, DiskType, Identity, ParentSpec};
use crate::{Error, Result, Storage};

/// Creator Application written by chainfold. QEMU sizes images of unknown
/// creators by Current Size (it trusts CHS only for `vpc ` and `qemu`).
pub const CREATOR_APP: [u8; 4] = *b"cfld";
pub const CREATOR_VERSION: u32 = 0x0001_0000;
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
const HEADER_AT: u64 = 512;
const BAT_AT: u64 = 1536;

fn bad(msg: String) -> Error {
    Error::InvalidParameter(msg)
}

/// Record `p` as the parent in a dynamic header (2.4): Parent Unique Id,
/// Parent Time Stamp, Parent Unicode Name, and the W2ku (slot 0) and W2ru
/// (slot 1) locators, Hyper-V's order, every other slot cleared. The
/// locator data (UTF-16LE; Platform Data Space a whole number of sectors)
/// goes wherever `place(space)` says; returns (offset, data) to write.
/// Shared by `create` and the batch's `set_parent`.
pub(crate) fn set_parent_fields(
    header: &mut DynamicDiskHeader,
    p: &ParentSpec,
    place: &mut dyn FnMut(u64) -> Result<u64>,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let Identity::Vhd {
        unique_id,
        timestamp,
    } = p.identity
    else {
        return Err(bad("a VHD parent has a VHD identity".into()));
    };
    let units: Vec<u16> = p.file_name.encode_utf16().collect();
    if units.len() > 256 {
        return Err(bad("parent file name longer than 256 UTF-16 units".into()));
    }
    let mut slots = Vec::new();
    for (code, path) in [
        (PLATFORM_W2KU, &p.absolute_path),
        (PLATFORM_W2RU, &p.relative_path),
    ] {
        if path.is_empty() {
            continue;
        }
        let data: Vec<u8> = path.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        if data.len() > super::parent_locator::MAX_LOCATOR_DATA as usize {
            return Err(bad("parent path too long".into()));
        }
        slots.push((code, data));
    }
    // Every check passed: only now change the header.
    header.parent_unique_id = unique_id;
    header.parent_time_stamp = timestamp;
    header.parent_unicode_name = [0; 512];
    for (i, u) in units.iter().enumerate() {
        header.parent_unicode_name[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
    }
    header.parent_locators = [ParentLocatorEntry::default(); 8];
    let mut out = Vec::new();
    for (slot, (code, data)) in slots.into_iter().enumerate() {
        let space = (data.len() as u64).div_ceil(512).max(1) * 512;
        let at = place(space)?;
        header.parent_locators[slot] = ParentLocatorEntry {
            platform_code: code,
            platform_data_space: space as u32,
            platform_data_length: data.len() as u32,
            reserved: 0,
            platform_data_offset: at,
        };
        out.push((at, data));
    }
    Ok(out)
}

/// Write a new image into the empty `storage`, then flush.
pub fn create(storage: &dyn Storage, params: &CreateParams) -> Result<()> {
    let file = "new VHD";
    if storage.len().ctx(file)? != 0 {
        return Err(bad("VHD create needs an empty file".into()));
    }
    let size = match &params.parent {
        Some(p) if params.virtual_size == 0 => p.virtual_size,
        _ => params.virtual_size,
    };
    if size == 0 || !size.is_multiple_of(512) {
        return Err(bad(format!(
            "VHD virtual size {size} must be a non-zero multiple of 512"
        )));
    }
    if params.logical_sector_size != 512 {
        return Err(bad("VHD logical sector size is always 512".into()));
    }
    let kind = if params.parent.is_some() {
        DiskType::Differencing
    } else {
        params.disk_type
    };
    let (c, h, s) = match params.parent.as_ref().and_then(|p| p.geometry) {
        Some(g) if size == params.parent.as_ref().map_or(0, |p| p.virtual_size) => g,
        _ => chs_for_size(size),
    };
    let mut footer = HardDiskFooter {
        cookie: FOOTER_COOKIE,
        features: FEATURES_RESERVED,
        file_format_version: FILE_FORMAT_VERSION,
        data_offset: DATA_OFFSET_NONE,
        time_stamp: vhd_now(),
        creator_application: CREATOR_APP,
        creator_version: CREATOR_VERSION,
        creator_host_os: HOST_OS_WINDOWS,
        original_size: size,
        current_size: size,
        cylinders: c,
        heads: h,
        sectors_per_track: s,
        disk_type: DISK_TYPE_FIXED,
        checksum: 0,
        unique_id: crate::entropy::new_guid().into_bytes(),
        saved_state: 0,
        reserved: [0u8; 427],
    };
    if kind == DiskType::Fixed {
        // Zeros via set_len (sparse), then the footer after the data.
        storage.set_len(size).ctx(file)?;
        storage.write_at(&footer.to_bytes()?, size).ctx(file)?;
        return storage.flush().ctx(file);
    }
    if size > MAX_SPARSE_SIZE {
        return Err(bad(format!(
            "a dynamic VHD holds at most 2 TiB, not {size}"
        )));
    }
    let bs = params.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    if !block_size_ok(bs) {
        return Err(bad(format!(
            "VHD block size {bs} must be a power-of-two number of sectors, 512 B to 256 MiB"
        )));
    }
    let entries =
        u32::try_from(size.div_ceil(u64::from(bs))).map_err(|_| bad("too many blocks".into()))?;
    footer.data_offset = HEADER_AT;
    footer.disk_type = if kind == DiskType::Differencing {
        DISK_TYPE_DIFFERENCING
    } else {
        DISK_TYPE_DYNAMIC
    };
    let mut header = DynamicDiskHeader {
        cookie: HEADER_COOKIE,
        data_offset: u64::MAX,
        table_offset: BAT_AT,
        header_version: HEADER_VERSION,
        max_table_entries: entries,
        block_size: bs,
        checksum: 0,
        parent_unique_id: [0; 16],
        parent_time_stamp: 0,
        reserved1: 0,
        parent_unicode_name: [0; 512],
        parent_locators: [ParentLocatorEntry::default(); 8],
        reserved2: [0; 256],
    };
    let bat = BlockAllocationTable {
        entries: vec![BAT_UNALLOCATED; entries as usize],
    }
    .to_bytes()?;
    let mut next = BAT_AT + bat.len() as u64;
    let mut locator_data: Vec<(u64, Vec<u8>)> = Vec::new();
    if let Some(p) = &params.parent {
        for (at, data) in set_parent_fields(&mut header, p, &mut |space| {
            let at = next;
            next += space;
            Ok(at)
        })? {
            locator_data.push((at, data));
        }
    }
    let fb = footer.to_bytes()?;
    storage.write_at(&fb, 0).ctx(file)?;
    storage.write_at(&header.to_bytes()?, HEADER_AT).ctx(file)?;
    storage.write_at(&bat, BAT_AT).ctx(file)?;
    for (at, data) in &locator_data {
        storage.write_at(data, *at).ctx(file)?;
    }
    // Pad the last locator's space, then the end footer.
    storage.set_len(next).ctx(file)?;
    storage.write_at(&fb, next).ctx(file)?;
    storage.flush().ctx(file)
}
