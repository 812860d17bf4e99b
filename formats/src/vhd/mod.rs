//! The VHD driver (FORMATS.md section 2): one module per on-disk structure,
//! the image (open, read, write), creation, validation and the merge batch.

mod bat;
mod batch;
mod check;
mod codec;
mod compact;
mod create;
mod dynamic_header;
mod footer;
mod geometry;
mod image;
mod journal;
mod journal_batch;
mod journal_slot;
mod journal_writer;
mod parent_locator;
mod placement;
mod sector_bitmap;
mod shadow_batch;
mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use bat::{BlockAllocationTable, BAT_UNALLOCATED};
pub use create::{create, CREATOR_APP};
pub use dynamic_header::DynamicDiskHeader;
pub use footer::HardDiskFooter;
pub use geometry::{chs_for_size, chs_size};
pub use image::{FooterSource, VhdImage};
pub use journal::{JournalHeader, JournalRecordHeader};
pub use journal_slot::JournalSlot;
pub use parent_locator::{
    decode_locator, ParentLocatorEntry, PLATFORM_MAC, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU,
    PLATFORM_WI2K, PLATFORM_WI2R,
};
pub use sector_bitmap::SectorBitmap;

use crate::image::Image;
use crate::params::OpenOptions;
use crate::{Result, Storage};

/// Open a VHD image (format already detected).
pub fn open_image(
    name: &str,
    storage: Arc<dyn Storage>,
    journal: Option<JournalSlot>,
    opts: OpenOptions,
) -> Result<Box<dyn Image>> {
    Ok(Box::new(VhdImage::open(name, storage, journal, opts)?))
}
