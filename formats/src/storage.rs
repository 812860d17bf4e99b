//! The storage model (DESIGN.md section 2) lives in the `chainfold-storage`
//! crate; this module re-exports it so that paths such as
//! `formats::storage::FileStorage` and `crate::storage::Storage` keep
//! working. The VHD redo journal's `JournalSlot` (in `vhd`) is named here
//! too, as it always was.

pub use ::storage::*;

pub use crate::vhd::JournalSlot;
