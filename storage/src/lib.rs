//! chainfold's storage model (DESIGN.md section 2).
//!
//! Everything that touches bytes goes through [`Storage`] (one file) and
//! [`Namespace`] (the files of a chain), so the same code runs on real files,
//! on memory, and on the crash recorder. Code above this crate must never
//! reach for `std::fs` directly: the crash simulator can only judge what it
//! can see.
//!
//! One job a module:
//! - `traits`: `Storage` (and `CopyRange`, what `copy_from` moves),
//!   `Namespace`, `Access`, `EntryKind`;
//! - `file`: `FileStorage` (a real file: flock, writeback ahead, holes,
//!   `punch_hole`, `prefetch`, `copy_from`); `clone`: extent sharing on
//!   XFS/btrfs and its probe; `direct_writer`: the O_DIRECT handle that
//!   writes long copies behind the caller; `aligned`: `AlignedBuf`;
//!   `copy`: the buffered and pipelined copies;
//! - `fs`: `FsNamespace` (the real file system);
//! - `mem`: `MemStorage`, `MemNamespace` and the name rules and handles
//!   every in-memory namespace shares; `lock`: their one lock table;
//! - `crash` (feature `crash`): the recording namespace the crash simulator and the format
//!   tests crash through, and the post-crash states it yields.

pub mod aligned;
mod clone;
pub mod copy;
#[cfg(any(test, feature = "crash"))]
pub mod crash;
mod direct_writer;
pub mod file;
pub mod fs;
pub mod lock;
pub mod mem;
pub mod traits;

#[cfg(test)]
mod testing;

pub use aligned::{direct_aligned, AlignedBuf, DIRECT_ALIGN};
pub use copy::{copy_by_buffer, copy_overlapped};
pub use file::FileStorage;
pub use fs::FsNamespace;
pub use lock::{Held, LockTable, Locks};
pub use mem::{MemHandle, MemNamespace, MemStorage};
pub use traits::{Access, CopyRange, EntryKind, Namespace, Storage};
