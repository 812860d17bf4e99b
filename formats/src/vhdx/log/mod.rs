//! The VHDX metadata log (3.10): entry structures, the active-sequence
//! search, replay, and the writer used by every metadata update.

pub mod data_sector;
pub mod descriptor;
pub mod entry_header;
pub mod replay;
pub mod sequence;
pub(crate) mod spool;
pub mod writer;

pub use data_sector::DataSector;
pub use descriptor::{DataDescriptor, Descriptor, ZeroDescriptor};
pub use entry_header::LogEntryHeader;

use crate::error::IoContext;
use crate::{Result, Storage};

pub const SECTOR: u64 = 4096;
/// Log descriptors may only target the region tables and everything after
/// the first MiB: the identifier and headers are never journaled.
pub const MIN_TARGET_OFFSET: u64 = 192 * 1024;
/// Upper bound for any offset a log entry may name (a 64 TiB disk plus its
/// metadata fits far below it); keeps a hostile entry from growing the file
/// to exabytes.
pub const MAX_TARGET_END: u64 = 1 << 48;

/// The log as a ring of `length` bytes at `offset` in the file.
#[derive(Clone, Copy)]
pub struct LogRing<'a> {
    pub storage: &'a dyn Storage,
    pub name: &'a str,
    pub offset: u64,
    pub length: u64,
}

impl LogRing<'_> {
    /// Read `buf.len()` bytes at ring position `pos`, wrapping at the end.
    /// Callers keep `pos < length` and `buf.len() <= length`.
    pub fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let first = (self.length - pos).min(buf.len() as u64) as usize;
        let (a, b) = buf.split_at_mut(first);
        self.storage.read_at(a, self.offset + pos).ctx(self.name)?;
        if !b.is_empty() {
            self.storage.read_at(b, self.offset).ctx(self.name)?;
        }
        Ok(())
    }
}
