//! Creating a new fixed, dynamic or differencing VHDX (3.11).
//!
//! Layout: identifier, headers, region tables; log at 1 MiB (1 MiB long);
//! metadata region at 2 MiB (1 MiB); BAT region at 3 MiB; payload after.

use uuid::Uuid;

use super::bat::{self, BatEntry, BatGeometry};
use super::file_identifier::FileIdentifier;
use super::header::{VhdxHeader, SLOT_OFFSETS};
use super::image::MIB;
use super::metadata_items::{self as items, DecodedParentLocator};
use super::metadata_table::{
    MetadataTable, MetadataTableEntry, FLAG_IS_REQUIRED, FLAG_IS_VIRTUAL_DISK,
};
use super::region_table::{self as rt, RegionTable, RegionTableEntry};
use crate::error::IoContext;
use crate::params::{CreateParams, DiskType, Identity, ParentSpec};
use crate::{Error, Result, Storage};

pub const CREATOR: &str = concat!("chainfold ", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;
const NAME: &str = "new image";

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidParameter(m.into())
}

/// The parent locator metadata item naming `p` (3.6.2): `parent_linkage`
/// (its DataWriteGuid), then `relative_path` and `absolute_win32_path`
/// where known. Shared by `create` and the batch's `set_parent`.
pub(crate) fn parent_locator_item(p: &ParentSpec) -> Result<Vec<u8>> {
    let Identity::Vhdx { data_write_guid } = p.identity else {
        return Err(invalid(
            "a VHDX child needs a VHDX parent (identity is a VHD one)",
        ));
    };
    let mut entries = vec![(
        "parent_linkage".to_string(),
        items::braced_guid(data_write_guid),
    )];
    if !p.relative_path.is_empty() {
        entries.push(("relative_path".into(), p.relative_path.clone()));
    }
    if !p.absolute_path.is_empty() {
        entries.push(("absolute_win32_path".into(), p.absolute_path.clone()));
    }
    if entries.len() == 1 {
        return Err(invalid("the parent needs a relative or absolute path"));
    }
    let loc = DecodedParentLocator {
        locator_type: items::VHDX_PARENT_LOCATOR_TYPE,
        entries,
    };
    let bytes = loc.to_bytes();
    if bytes.len() > 60 * 1024 {
        return Err(invalid("parent paths too long"));
    }
    Ok(bytes)
}

/// Zeros for the parts of the log, metadata and BAT regions a new file
/// holds none of: written from this one buffer, not from buffers the size
/// of each region (megabytes per create).
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Write `len` zero bytes at `at`.
fn zeros(storage: &dyn Storage, at: u64, len: u64) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64);
        storage
            .write_at(&ZEROS[..n as usize], at + done)
            .ctx(NAME)?;
        done += n;
    }
    Ok(())
}

/// Write a new VHDX into `storage`, which must be empty.
pub fn create(storage: &dyn Storage, params: &CreateParams) -> Result<()> {
    if storage.len().ctx(NAME)? != 0 {
        return Err(invalid("the target storage is not empty"));
    }
    let parent = params.parent.as_ref();
    let lss = match parent {
        Some(p) => p.logical_sector_size,
        None => params.logical_sector_size,
    };
    let pss = match parent {
        Some(p) => p.physical_sector_size,
        None => params.physical_sector_size,
    };
    let vsize = match parent {
        Some(p) if params.virtual_size == 0 => p.virtual_size,
        _ => params.virtual_size,
    };
    if !items::sector_size_valid(lss) || !items::sector_size_valid(pss) {
        return Err(invalid(format!(
            "sector sizes {lss}/{pss}: each must be 512 or 4096"
        )));
    }
    if vsize == 0 || vsize % u64::from(lss) != 0 || vsize > items::MAX_VIRTUAL_SIZE {
        return Err(invalid(format!(
            "virtual size {vsize} must be a non-zero multiple of {lss} and at most 64 TiB"
        )));
    }
    let bs = params.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let fp = items::FileParameters {
        block_size: bs,
        flags: match (parent, params.disk_type) {
            (Some(_), _) => items::HAS_PARENT,
            (None, DiskType::Fixed) => items::LEAVE_BLOCK_ALLOCATED,
            (None, DiskType::Dynamic) => 0,
            (None, DiskType::Differencing) => {
                return Err(invalid("a differencing image needs a parent"))
            }
        },
    };
    if !fp.block_size_valid() {
        return Err(invalid(format!(
            "block size {bs} must be a power of two in [1 MiB, 256 MiB]"
        )));
    }
    let g = BatGeometry::new(u64::from(bs), u64::from(lss), vsize, parent.is_some())
        .ok_or_else(|| invalid("bad geometry"))?;
    let bat_len = g.region_bytes().max(MIB);
    if bat_len > u64::from(u32::MAX) / MIB * MIB {
        return Err(invalid("BAT region too large"));
    }

    // Metadata items.
    let disk_id = parent
        .and_then(|p| p.virtual_disk_id)
        .unwrap_or_else(crate::entropy::new_guid);
    let mut item_list: Vec<(Uuid, u32, Vec<u8>)> = vec![
        (items::FILE_PARAMETERS, FLAG_IS_REQUIRED, fp.encode()),
        (
            items::VIRTUAL_DISK_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            items::VirtualDiskSize { size: vsize }.encode(),
        ),
        (
            items::VIRTUAL_DISK_ID,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            items::VirtualDiskId { id: disk_id }.encode(),
        ),
        (
            items::LOGICAL_SECTOR_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            items::LogicalSectorSize { size: lss }.encode(),
        ),
        (
            items::PHYSICAL_SECTOR_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            items::PhysicalSectorSize { size: pss }.encode(),
        ),
    ];
    if let Some(p) = parent {
        item_list.push((
            items::PARENT_LOCATOR,
            FLAG_IS_REQUIRED,
            parent_locator_item(p)?,
        ));
    }
    // The region's used start (table, items); the rest is written as zeros.
    let mut region = vec![0u8; 64 * 1024];
    let mut entries = Vec::new();
    let mut at = 64 * 1024usize;
    for (id, flags, bytes) in &item_list {
        if region.len() < at + bytes.len() {
            region.resize(at + bytes.len(), 0);
        }
        region[at..at + bytes.len()].copy_from_slice(bytes);
        entries.push(MetadataTableEntry {
            item_id: *id,
            offset: at as u32,
            length: bytes.len() as u32,
            flags: *flags,
            reserved2: 0,
        });
        // Keep items 4 KiB apart so a later single-item change is one sector.
        at += bytes.len().div_ceil(4096).max(1) * 4096;
    }
    let table = MetadataTable::new(entries).to_bytes();
    region[..table.len()].copy_from_slice(&table);
    if region.len() as u64 > METADATA_LENGTH {
        return Err(invalid("metadata items too large"));
    }

    // BAT (fixed: every payload block allocated in order after the BAT).
    let payload_start = BAT_OFFSET + bat_len;
    let mut file_end = payload_start;
    // The BAT's used start (a fixed disk's entries); the rest is zeros.
    let mut bat_bytes = Vec::new();
    if fp.leave_block_allocated() && parent.is_none() && g.payload_blocks > 0 {
        let used = (g.payload_index(g.payload_blocks - 1) as usize + 1) * 8;
        bat_bytes = vec![0u8; used];
        for p in 0..g.payload_blocks {
            let i = g.payload_index(p) as usize;
            let e = BatEntry::new(bat::PAYLOAD_FULLY_PRESENT, payload_start + p * g.block_size);
            bat_bytes[i * 8..i * 8 + 8].copy_from_slice(&e.raw.to_le_bytes());
        }
        file_end = payload_start + g.payload_blocks * g.block_size;
    }

    let rtable = RegionTable::new(vec![
        RegionTableEntry {
            guid: rt::METADATA_GUID,
            file_offset: METADATA_OFFSET,
            length: METADATA_LENGTH as u32,
            required: 1,
        },
        RegionTableEntry {
            guid: rt::BAT_GUID,
            file_offset: BAT_OFFSET,
            length: bat_len as u32,
            required: 1,
        },
    ])
    .to_bytes();

    let w = |b: &[u8], off: u64| storage.write_at(b, off).ctx(NAME);
    w(&FileIdentifier::new(CREATOR).to_region_bytes(), 0)?;
    w(&rtable, rt::COPY_OFFSETS[0])?;
    w(&rtable, rt::COPY_OFFSETS[1])?;
    zeros(storage, LOG_OFFSET, LOG_LENGTH)?;
    w(&region, METADATA_OFFSET)?;
    let used = region.len() as u64;
    zeros(storage, METADATA_OFFSET + used, METADATA_LENGTH - used)?;
    w(&bat_bytes, BAT_OFFSET)?;
    let used = bat_bytes.len() as u64;
    zeros(storage, BAT_OFFSET + used, bat_len - used)?;
    storage.set_len(file_end).ctx(NAME)?;
    let mut h = VhdxHeader::new(LOG_OFFSET, LOG_LENGTH as u32);
    h.sequence_number = 1;
    w(&h.to_bytes(), SLOT_OFFSETS[0])?;
    h.sequence_number = 2;
    w(&h.to_bytes(), SLOT_OFFSETS[1])?;
    storage.flush().ctx(NAME)?;
    Ok(())
}
