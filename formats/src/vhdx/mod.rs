//! The VHDX driver (FORMATS.md section 3): one module per on-disk
//! structure, the log, and the image driver built on them.

pub(crate) mod codec;

pub mod bat;
pub mod bat_table;
pub mod batch;
pub mod check;
mod compact;
pub mod create;
pub mod file_identifier;
pub mod header;
pub mod image;
pub mod log;
pub mod metadata_items;
pub mod metadata_table;
pub mod overlay;
mod placement;
pub mod region_table;
pub mod sector_bitmap;
pub mod write;

pub use bat::{BatEntry, BatGeometry};
pub use bat_table::BlockAllocationTable;
pub use create::create;
pub use file_identifier::FileIdentifier;
pub use header::VhdxHeader;
pub use image::{open_image, VhdxImage};
pub use log::{DataDescriptor, DataSector, Descriptor, LogEntryHeader, ZeroDescriptor};
pub use metadata_items::{
    FileParameters, LogicalSectorSize, ParentLocatorHeader, ParentLocatorKeyValueEntry,
    PhysicalSectorSize, VirtualDiskId, VirtualDiskSize,
};
pub use metadata_table::{MetadataTable, MetadataTableEntry, MetadataTableHeader};
pub use region_table::{RegionTable, RegionTableEntry, RegionTableHeader};
