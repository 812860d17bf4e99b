//! Types shared by both drivers: open options, creation parameters, the
//! identity a child links to, and what a child says about its parent.

use serde::Serialize;
use uuid::Uuid;

/// Options for opening an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open for writing: a VHDX log is replayed on disk, headers get a new
    /// FileWriteGuid. Read-only opens never change a byte.
    pub writable: bool,
    /// Accept structures whose checksum is wrong (reported as findings).
    pub ignore_checksums: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Vhd,
    Vhdx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl Format {
    /// What people call it: "VHD", "VHDX".
    pub fn name(self) -> &'static str {
        match self {
            Format::Vhd => "VHD",
            Format::Vhdx => "VHDX",
        }
    }
}

impl DiskType {
    /// "fixed", "dynamic", "differencing" (as in the JSON).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// What identifies an image to its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// VHDX: the current header's DataWriteGuid.
    Vhdx { data_write_guid: Uuid },
    /// VHD: the footer's Unique Id (opaque bytes) and Time Stamp.
    Vhd { unique_id: [u8; 16], timestamp: u32 },
}

/// What a differencing image records about its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentLinkage {
    Vhdx {
        parent_linkage: Uuid,
        /// Absent, or all-zero (Hyper-V writes it so), means "none".
        parent_linkage2: Option<Uuid>,
    },
    Vhd {
        parent_unique_id: [u8; 16],
        parent_timestamp: u32,
    },
}

/// A way to find the parent file, in the order the format says to try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum PathHint {
    /// Relative to the child's directory, Windows separators (`.\p.vhdx`).
    Relative(String),
    /// `\\?\Volume{..}\path` (VHDX volume_path).
    Volume(String),
    /// Absolute Windows path (`C:\..`, `\\?\C:\..`, UNC).
    AbsoluteWindows(String),
    /// Absolute POSIX path or file URL (VHD MacX).
    Posix(String),
    /// A bare file name (VHD Parent Unicode Name), looked up in the child's
    /// directory.
    Name(String),
}

/// The parent locator of a differencing image, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentLocator {
    /// Every raw entry as (key, value): VHDX key/value pairs, or for VHD
    /// the platform code and decoded data, plus `parent_unicode_name`.
    pub entries: Vec<(String, String)>,
    /// Candidate paths in the order they should be tried.
    pub hints: Vec<PathHint>,
}

/// A parent for a new differencing image.
#[derive(Debug, Clone)]
pub struct ParentSpec {
    pub identity: Identity,
    /// Written as the relative locator (W2ru / relative_path), e.g. `.\base.vhdx`.
    pub relative_path: String,
    /// Written as the absolute locator (W2ku / absolute_win32_path).
    pub absolute_path: String,
    /// The parent's file name (VHD Parent Unicode Name).
    pub file_name: String,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// VHDX: the parent's Virtual Disk ID, copied into the child.
    pub virtual_disk_id: Option<Uuid>,
    /// VHD: the parent's CHS geometry (cylinders, heads, sectors).
    pub geometry: Option<(u16, u8, u8)>,
}

/// Parameters of a new image.
#[derive(Debug, Clone)]
pub struct CreateParams {
    pub virtual_size: u64,
    /// Fixed or dynamic; ignored (differencing) when `parent` is set.
    pub disk_type: DiskType,
    /// None: the format's default (VHD 2 MiB, VHDX 32 MiB).
    pub block_size: Option<u32>,
    /// VHDX only: 512 or 4096. VHD is always 512.
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub parent: Option<ParentSpec>,
}

impl Default for CreateParams {
    fn default() -> Self {
        CreateParams {
            virtual_size: 0,
            disk_type: DiskType::Dynamic,
            block_size: None,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent: None,
        }
    }
}

/// Facts `info` reports about one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub format: Format,
    pub disk_type: DiskType,
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Format-specific fields (creator, GUIDs, header sequence, ...).
    pub details: Vec<(String, String)>,
}

/// Blocks its image already held that a batch changed, by how (`merge
/// --json`'s `held_blocks`): in place behind a journal, or copied on write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeldBlocksChanged {
    pub journaled: u64,
    pub rebuilt: u64,
}

/// How a batch replaces part of a block its image already holds
/// (`merge --held-blocks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldBlocks {
    /// Journal where the file system cannot share extents, rebuild where
    /// it can (a rebuild there is a clone plus the new sectors).
    #[default]
    Auto,
    /// Copy-on-write: the whole block into fresh space, the new sectors
    /// over it; compaction moves it back after the commit.
    Rebuild,
    /// The new sectors in place behind a journal (VHDX: its log; VHD: the
    /// redo journal `<image>.cfjournal`): written twice, nothing else
    /// moves.
    Journal,
}
