//! chainfold's format layer: every VHD and VHDX on-disk structure as a
//! declarative binrw schema, checksums, validation, the image drivers
//! (open, read, write, create) and chains of images. The storage model is
//! the `chainfold-storage` crate, re-exported as `storage`.
//!
//! Layout mirrors DESIGN.md: `storage` (section 2), `vhd` and `vhdx` (one
//! module per on-disk structure plus an image driver), `image` (the driver
//! interface and format detection), `chain` (section 3).

mod bitrun;
mod byte_array;
pub mod chain;
pub mod checksum;
mod combine;
pub mod corruption;
pub mod create;
pub mod entropy;
pub mod error;
pub mod finding;
pub mod image;
pub mod layer;
pub mod params;
pub mod space;
pub mod storage;
pub mod vhd;
pub mod vhdx;

pub use crate::storage::{
    Access, CopyRange, EntryKind, FsNamespace, JournalSlot, MemNamespace, MemStorage, Namespace,
    Storage,
};
pub use corruption::CorruptionKind;
pub use error::{Error, Result};
pub use finding::{Finding, Severity};
pub use image::{CompactReport, Image, MergeBatch};
pub use layer::{Layer, Run, RunKind};
