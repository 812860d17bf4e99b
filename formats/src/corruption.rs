//! `CorruptionKind`: one name per distinct violation an image can have,
//! carried by `Error::Corrupt`, `Error::Checksum` and every `Finding`, and
//! printed as `kind` (snake_case) in `check --json` and the merge/relink
//! outcomes. Scripts, tests and fuzz targets match these names, never the
//! message text (which is for people and may be reworded).
//!
//! A few kinds are not about broken bytes but are findings all the same
//! (a pending log, a linkage mismatch, an unsupported feature, a file that
//! could not be read at all): every finding has exactly one kind.
//!
//! The names are stable: a variant may be added, never renamed.

use serde::Serialize;

macro_rules! corruption_kinds {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $name:literal, )+) => {
        /// What is wrong. Grouped by structure: common, VHDX, VHD, chain.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum CorruptionKind {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl CorruptionKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [CorruptionKind] = &[$(CorruptionKind::$variant),+];

            /// The stable snake_case name (the same as the JSON `kind`).
            pub fn name(self) -> &'static str {
                match self {
                    $(CorruptionKind::$variant => $name,)+
                }
            }
        }
    };
}

corruption_kinds! {
    // --- common to both formats -------------------------------------------
    /// A fixed-layout structure's bytes could not be decoded at all.
    Undecodable => "undecodable",
    /// The block size is outside the specification (not a power of two, out of range).
    InvalidBlockSize => "invalid_block_size",
    /// The virtual disk size is zero, misaligned or beyond the format's maximum.
    VirtualSizeInvalid => "virtual_size_invalid",
    /// A payload block's data lies (partly) outside the file or in front of the data area.
    BlockOutsideFile => "block_outside_file",
    /// Two payload blocks share bytes of the file.
    BlockOverlap => "block_overlap",
    /// A payload block overlaps a metadata structure (header, BAT, region, footer...).
    BlockOverlapsStructure => "block_overlaps_structure",
    /// A BAT index lies beyond the table the file holds.
    BatIndexOutOfRange => "bat_index_out_of_range",

    // --- VHDX --------------------------------------------------------------
    /// The file is shorter than the 320 KiB the header section needs.
    FileTooShort => "file_too_short",
    /// The file type identifier does not carry the `vhdxfile` signature.
    FileIdentifierSignature => "file_identifier_signature",
    /// Neither header is usable (no `head` signature in either).
    NoValidHeader => "no_valid_header",
    /// One header lacks the `head` signature (the other one is used).
    HeaderSignature => "header_signature",
    /// A header's CRC-32C does not match its bytes.
    HeaderChecksum => "header_checksum",
    /// Both headers carry the same sequence number.
    HeaderSequenceTie => "header_sequence_tie",
    /// The header sequence number cannot be incremented any more.
    HeaderSequenceOverflow => "header_sequence_overflow",
    /// The header Version is not 1.
    HeaderVersion => "header_version",
    /// Reserved header bytes are not zero.
    HeaderReservedNonZero => "header_reserved_non_zero",
    /// LogLength is zero or not a 1 MiB multiple while a log is in use.
    LogLengthInvalid => "log_length_invalid",
    /// LogOffset is not a 1 MiB multiple at or after 1 MiB.
    LogOffsetInvalid => "log_offset_invalid",
    /// The log region extends past the end of the file.
    LogOutsideFile => "log_outside_file",
    /// LogGuid is set but the log holds no valid complete sequence.
    LogSequenceInvalid => "log_sequence_invalid",
    /// A log entry of the active sequence does not validate.
    LogEntryInvalid => "log_entry_invalid",
    /// The file is shorter than a log entry's FlushedFileOffset (truncated).
    LogFlushedOffsetBeyondFile => "log_flushed_offset_beyond_file",
    /// A log entry writes far past the end of the file.
    LogTargetOutsideFile => "log_target_outside_file",
    /// A pending log was (or will be) replayed; not damage, the image was not closed cleanly.
    PendingLog => "pending_log",
    /// A region table copy lacks the `regi` signature.
    RegionTableSignature => "region_table_signature",
    /// A region table copy's CRC-32C does not match its bytes.
    RegionTableChecksum => "region_table_checksum",
    /// The region table's EntryCount exceeds 2047.
    RegionTableEntryCount => "region_table_entry_count",
    /// The two region table copies differ.
    RegionTableCopyMismatch => "region_table_copy_mismatch",
    /// A region GUID appears twice in the region table.
    RegionDuplicate => "region_duplicate",
    /// A region's offset or length is not a non-zero 1 MiB multiple.
    RegionAlignment => "region_alignment",
    /// A region extends past the end of the file.
    RegionOutsideFile => "region_outside_file",
    /// Two regions (or a region and the log) overlap.
    RegionOverlap => "region_overlap",
    /// The BAT or the metadata region is missing from the region table.
    RegionMissing => "region_missing",
    /// The BAT region is too small for the entries the geometry needs.
    BatRegionTooSmall => "bat_region_too_small",
    /// The metadata table lacks the `metadata` signature.
    MetadataTableSignature => "metadata_table_signature",
    /// The metadata table holds more entries than allowed.
    MetadataTableEntryCount => "metadata_table_entry_count",
    /// An item appears twice in the metadata table.
    MetadataItemDuplicate => "metadata_item_duplicate",
    /// A metadata table entry has reserved flag bits set.
    MetadataEntryReservedFlags => "metadata_entry_reserved_flags",
    /// An empty metadata item has a non-zero offset.
    MetadataEmptyItemOffset => "metadata_empty_item_offset",
    /// A metadata item is longer than 1 MiB.
    MetadataItemTooLong => "metadata_item_too_long",
    /// A metadata item lies outside the metadata region (or inside its table).
    MetadataItemOutsideRegion => "metadata_item_outside_region",
    /// Two metadata items overlap.
    MetadataItemOverlap => "metadata_item_overlap",
    /// A required metadata item is missing.
    MetadataItemMissing => "metadata_item_missing",
    /// A metadata item is shorter than its structure.
    MetadataItemTooShort => "metadata_item_too_short",
    /// File Parameters has reserved flag bits set.
    FileParametersReservedFlags => "file_parameters_reserved_flags",
    /// A logical or physical sector size is neither 512 nor 4096.
    InvalidSectorSize => "invalid_sector_size",
    /// The parent locator item cannot be decoded (key/value table).
    ParentLocatorInvalid => "parent_locator_invalid",
    /// The parent locator's LocatorType is not the VHDX one.
    ParentLocatorType => "parent_locator_type",
    /// The parent locator has no `parent_linkage` key.
    ParentLocatorMissingLinkage => "parent_locator_missing_linkage",
    /// The parent locator's `parent_linkage` is not a `{GUID}`.
    ParentLocatorLinkageInvalid => "parent_locator_linkage_invalid",
    /// The parent locator has no path key at all.
    ParentLocatorNoPath => "parent_locator_no_path",
    /// A BAT entry has a reserved state.
    BatEntryReservedState => "bat_entry_reserved_state",
    /// A BAT entry has reserved bits set.
    BatEntryReservedBits => "bat_entry_reserved_bits",
    /// A payload entry uses the VHDX 0.95 UNMAPPED state (5).
    BatEntryLegacyState => "bat_entry_legacy_state",
    /// A ZERO payload entry carries a file offset.
    BatEntryZeroWithOffset => "bat_entry_zero_with_offset",
    /// A PARTIALLY_PRESENT block in a file that has no parent.
    PartialBlockInNonDifferencing => "partial_block_in_non_differencing",
    /// A SB_BLOCK_PRESENT sector bitmap entry in a file that has no parent.
    SectorBitmapInNonDifferencing => "sector_bitmap_in_non_differencing",
    /// A PARTIALLY_PRESENT block's chunk has no sector bitmap block.
    SectorBitmapNotPresent => "sector_bitmap_not_present",
    /// A sector bitmap block lies outside the file.
    SectorBitmapOutsideFile => "sector_bitmap_outside_file",

    // --- VHD ---------------------------------------------------------------
    /// The footer's checksum does not match its bytes.
    FooterChecksum => "footer_checksum",
    /// The end footer lacks the `conectix` cookie (the copy at offset 0 is used).
    FooterCookie => "footer_cookie",
    /// The footer's Disk Type is not fixed, dynamic or differencing.
    DiskTypeInvalid => "disk_type_invalid",
    /// The footer's File Format Version is not 0x00010000.
    FooterFormatVersion => "footer_format_version",
    /// The footer's Features field has the reserved bit clear or undefined bits set.
    FooterFeatures => "footer_features",
    /// The footer's Saved State is set (the disk belongs to a saved VM).
    SavedState => "saved_state",
    /// A fixed disk's data area is shorter than its Current Size.
    FixedDiskTruncated => "fixed_disk_truncated",
    /// A fixed disk has bytes between its data area and its footer.
    FixedDiskGap => "fixed_disk_gap",
    /// The footer copy at offset 0 is missing or has a bad checksum.
    FooterCopyInvalid => "footer_copy_invalid",
    /// The footer copy at offset 0 differs from the end footer.
    FooterCopyMismatch => "footer_copy_mismatch",
    /// The dynamic disk header does not fit inside the file.
    DynamicHeaderOutsideFile => "dynamic_header_outside_file",
    /// The dynamic disk header lacks the `cxsparse` cookie.
    DynamicHeaderCookie => "dynamic_header_cookie",
    /// The dynamic disk header's checksum does not match its bytes.
    DynamicHeaderChecksum => "dynamic_header_checksum",
    /// The dynamic disk header's Header Version is not 0x00010000.
    DynamicHeaderVersion => "dynamic_header_version",
    /// Max Table Entries does not fit Current Size (too few or far too many).
    MaxTableEntriesInvalid => "max_table_entries_invalid",
    /// The block allocation table lies outside the file.
    BatOutsideFile => "bat_outside_file",
    /// A parent locator's data lies outside the file or is too long.
    LocatorOutsideFile => "locator_outside_file",
    /// A non-differencing disk has a parent locator entry.
    LocatorInNonDifferencing => "locator_in_non_differencing",
    /// Two metadata structures (footer copy, header, BAT, locator data) overlap.
    StructureOverlap => "structure_overlap",
    /// The fixed-VHD redo journal does not validate.
    RedoJournalInvalid => "redo_journal_invalid",
    /// A committed redo journal is not yet applied (reads show its content).
    PendingJournal => "pending_journal",
    /// An uncommitted redo journal was ignored or discarded.
    UncommittedJournal => "uncommitted_journal",

    // --- chains and everything else -----------------------------------------
    /// A parent is already in the chain.
    ChainCycle => "chain_cycle",
    /// The parent does not carry the identity the child's linkage records.
    LinkageMismatch => "linkage_mismatch",
    /// The parent's time stamp differs from the one the child records (VHD).
    ParentTimestampMismatch => "parent_timestamp_mismatch",
    /// The parent could not be located.
    ParentNotFound => "parent_not_found",
    /// A driver answered a map with runs that do not tile the range (a bug).
    LayerMapInvalid => "layer_map_invalid",
    /// Not a VHD or VHDX image at all.
    NotAnImage => "not_an_image",
    /// Valid, but uses a feature chainfold does not implement.
    UnsupportedFeature => "unsupported_feature",
    /// The file could not be read at all (I/O error, missing, locked, no
    /// permission); says nothing about its bytes.
    Unreadable => "unreadable",
}

impl std::fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::CorruptionKind;
    use std::collections::HashSet;

    #[test]
    fn name_matches_serde_and_is_unique() {
        let mut seen = HashSet::new();
        for &k in CorruptionKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()), "{k:?}");
            assert!(seen.insert(k.name()), "duplicate name {}", k.name());
            assert!(k.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
