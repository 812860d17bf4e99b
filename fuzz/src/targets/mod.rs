//! One module per target family.

pub mod merge_in_memory;
pub mod open_chain;
pub mod open_image;
pub mod roundtrip;
pub mod splice;
pub mod vhd;
pub mod vhdx;
