//! `VhdxImage`: opening (identifier, headers, log, region table, metadata,
//! BAT — every field bounded before use), reading through `Layer::map`,
//! and the `Image` facts.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::bat::{self, BatEntry, BatGeometry};
use super::bat_table::BlockAllocationTable;
use super::file_identifier::FileIdentifier;
use super::header::{self, choose_current, HeaderChoiceError, HeaderSlot, VhdxHeader};
use super::log::{replay, sequence, LogRing};
use super::metadata_items::{self as items, DecodedParentLocator, FileParameters};
use super::metadata_table::{self as mt, MetadataTable, MetadataTableEntry};
use super::overlay::ReplayOverlay;
use super::region_table::{self as rt, RegionTable, RegionTableError};
use super::sector_bitmap;
use crate::error::IoContext;
use crate::image::{Image, MergeBatch};
use crate::layer::{push_run, Layer, Run, RunKind};
use crate::params::{
    DiskType, Format, Identity, ImageInfo, OpenOptions, ParentLinkage, ParentLocator, PathHint,
};
use crate::{CorruptionKind, Error, Finding, Result, Storage};

pub(crate) const MIB: u64 = 1 << 20;

/// An opened VHDX file.
pub struct VhdxImage {
    pub(crate) name: String,
    /// The file; every write goes here.
    pub(crate) storage: Arc<dyn Storage>,
    /// What reads see: the file, or the in-memory replay of a pending log
    /// on a read-only open.
    pub(crate) view: Arc<dyn Storage>,
    pub(crate) opts: OpenOptions,
    pub(crate) findings: Vec<Finding>,
    pub(crate) creator: String,
    pub(crate) header: VhdxHeader,
    pub(crate) current_slot: usize,
    pub(crate) region_table: RegionTable,
    pub(crate) bat_region: (u64, u64),
    pub(crate) metadata_region: (u64, u64),
    pub(crate) metadata_table: MetadataTable,
    pub(crate) file_parameters: FileParameters,
    pub(crate) virtual_disk_id: Uuid,
    pub(crate) physical_sector_size: u32,
    pub(crate) parent_locator: Option<DecodedParentLocator>,
    pub(crate) geometry: BatGeometry,
    pub(crate) bat: BlockAllocationTable,
    /// The pending log replayed in memory at open (read-only opens).
    pub(crate) replayed_in_memory: bool,
    /// Bitmap bytes of the last PARTIALLY_PRESENT block mapped:
    /// (payload block, bytes). At most one block's bitmap is cached.
    pub(crate) sb_cache: Mutex<Option<(u64, Vec<u8>)>>,
    /// Writable session state.
    pub(crate) data_write_guid_renewed: bool,
    /// While a batch keeps a log area past the end (`batch::Reserved`):
    /// fresh space comes from `(cursor, limit)`, below that area.
    pub(crate) fresh_below: Option<(u64, u64)>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("name", &self.name)
            .field("virtual_size", &self.geometry.virtual_size)
            .finish_non_exhaustive()
    }
}

/// Open a VHDX image (format already detected).
pub fn open_image(
    name: &str,
    storage: Arc<dyn Storage>,
    opts: OpenOptions,
) -> Result<Box<dyn Image>> {
    Ok(Box::new(VhdxImage::open(name, storage, opts)?))
}

fn corrupt(
    kind: CorruptionKind,
    name: &str,
    structure: &'static str,
    offset: u64,
    msg: impl Into<String>,
) -> Error {
    Error::corrupt(kind, name, structure, offset, msg)
}

fn read_vec(s: &dyn Storage, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    s.read_at(&mut v, offset).ctx(name)?;
    Ok(v)
}

/// A BAT already in memory for a file, with the region it was read from.
pub(crate) struct KnownBat {
    pub region: (u64, u64),
    pub entries: BlockAllocationTable,
}

/// Two byte ranges overlap.
pub(crate) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl VhdxImage {
    /// Open; a writable open updates the headers (new FileWriteGuid) and
    /// replays a pending log on disk, only after everything validated.
    pub fn open(name: &str, storage: Arc<dyn Storage>, opts: OpenOptions) -> Result<Self> {
        Self::open_with(name, storage, opts, None)
    }

    /// `open`, taking the BAT from `known` instead of reading it again
    /// when it describes the same BAT region and entry count (see `load`).
    fn open_with(
        name: &str,
        storage: Arc<dyn Storage>,
        opts: OpenOptions,
        known: Option<KnownBat>,
    ) -> Result<Self> {
        let img = Self::load(name, Arc::clone(&storage), opts, known)?;
        if !opts.writable {
            return Ok(img);
        }
        let mut img = img;
        img.start_write_session()?;
        if img.replayed_in_memory {
            img.replay_on_disk()?;
            // Reload from the now clean file so every structure comes from disk.
            let findings: Vec<Finding> = img
                .findings
                .iter()
                .filter(|f| f.kind != CorruptionKind::PendingLog)
                .cloned()
                .collect();
            let mut again = Self::load(name, storage, opts, None)?;
            again.findings = findings;
            again.findings.push(Finding::warning(
                CorruptionKind::PendingLog,
                name,
                "log",
                img.header.log_offset,
                "a pending log was replayed on open",
            ));
            return Ok(again);
        }
        Ok(img)
    }

    /// Parse and validate everything; never writes. A pending log is
    /// replayed into an in-memory overlay.
    ///
    /// `known` is a BAT this process already holds for the same locked
    /// file (the read-only open before a writable reopen, or the committed
    /// BAT after a batch). It replaces the read of the BAT region only when
    /// the region and the entry count are unchanged: a BAT is the one
    /// structure that grows with the virtual size, and reading a 64 TiB
    /// image's 16 MiB BAT once per open would make a merge's time grow with
    /// the virtual size rather than with the data.
    pub(crate) fn load(
        name: &str,
        storage: Arc<dyn Storage>,
        opts: OpenOptions,
        known: Option<KnownBat>,
    ) -> Result<Self> {
        let mut findings = Vec::new();
        let file_len = storage.len().ctx(name)?;
        if file_len < 5 * 64 * 1024 {
            return Err(corrupt(
                CorruptionKind::FileTooShort,
                name,
                "file",
                0,
                format!("file is {file_len} bytes, shorter than the 320 KiB header section"),
            ));
        }

        // File type identifier.
        let ident = FileIdentifier::decode(&read_vec(&*storage, name, 0, FileIdentifier::SIZE)?)
            .ok_or_else(|| {
                corrupt(
                    CorruptionKind::FileIdentifierSignature,
                    name,
                    "file type identifier",
                    0,
                    "unreadable",
                )
            })?;
        if !ident.signature_ok() {
            return Err(corrupt(
                CorruptionKind::FileIdentifierSignature,
                name,
                "file type identifier",
                0,
                "signature is not `vhdxfile`",
            ));
        }

        // Headers.
        let slots = [
            HeaderSlot::from_bytes(read_vec(
                &*storage,
                name,
                header::SLOT_OFFSETS[0],
                header::SIZE,
            )?),
            HeaderSlot::from_bytes(read_vec(
                &*storage,
                name,
                header::SLOT_OFFSETS[1],
                header::SIZE,
            )?),
        ];
        let (cur, identical) = match choose_current(&slots, opts.ignore_checksums) {
            Ok(c) => c,
            Err(HeaderChoiceError::NoSignature) => {
                return Err(corrupt(
                    CorruptionKind::NoValidHeader,
                    name,
                    "header",
                    header::SLOT_OFFSETS[0],
                    "neither header has the `head` signature",
                ))
            }
            Err(HeaderChoiceError::Checksum(i)) => {
                return Err(Error::Checksum {
                    file: name.into(),
                    structure: "header",
                    offset: header::SLOT_OFFSETS[i],
                    kind: CorruptionKind::HeaderChecksum,
                    stored: slots[i].stored,
                    computed: slots[i].computed,
                })
            }
            Err(HeaderChoiceError::EqualSequence) => {
                return Err(corrupt(
                    CorruptionKind::HeaderSequenceTie,
                    name,
                    "header",
                    header::SLOT_OFFSETS[0],
                    "both headers are valid with equal sequence numbers but different contents",
                ))
            }
        };
        if identical {
            findings.push(Finding::warning(
                CorruptionKind::HeaderSequenceTie,
                name,
                "header",
                header::SLOT_OFFSETS[1],
                "both headers have the same sequence number (byte-identical copies accepted)",
            ));
        }
        for (i, s) in slots.iter().enumerate() {
            if !s.signature_ok {
                findings.push(Finding::warning(
                    CorruptionKind::HeaderSignature,
                    name,
                    "header",
                    header::SLOT_OFFSETS[i],
                    "no `head` signature (the other header is used)",
                ));
            } else if !s.checksum_ok {
                let f = format!(
                    "checksum mismatch (stored {:#010x}, computed {:#010x})",
                    s.stored, s.computed
                );
                findings.push(if i == cur {
                    Finding::error(
                        CorruptionKind::HeaderChecksum,
                        name,
                        "header",
                        header::SLOT_OFFSETS[i],
                        f,
                    )
                } else {
                    Finding::warning(
                        CorruptionKind::HeaderChecksum,
                        name,
                        "header",
                        header::SLOT_OFFSETS[i],
                        f + " (the other header is used)",
                    )
                });
            }
        }
        let h = slots[cur].header.clone().ok_or_else(|| {
            corrupt(
                CorruptionKind::NoValidHeader,
                name,
                "header",
                header::SLOT_OFFSETS[cur],
                "unreadable",
            )
        })?;
        let hoff = header::SLOT_OFFSETS[cur];
        if h.version != 1 {
            return Err(corrupt(
                CorruptionKind::HeaderVersion,
                name,
                "header",
                hoff + 66,
                format!("Version is {}, not 1", h.version),
            ));
        }
        if !h.log_guid.is_nil() && h.log_version != 0 {
            return Err(Error::Unsupported {
                file: name.into(),
                message: format!("log version {} with a pending log", h.log_version),
            });
        }
        if !h.reserved_is_zero() {
            findings.push(Finding::warning(
                CorruptionKind::HeaderReservedNonZero,
                name,
                "header",
                hoff + 80,
                "reserved bytes are not zero",
            ));
        }
        let log = (h.log_offset, u64::from(h.log_length));
        if log.1 != 0 || !h.log_guid.is_nil() {
            if log.1 == 0 || log.1 % MIB != 0 {
                return Err(corrupt(
                    CorruptionKind::LogLengthInvalid,
                    name,
                    "header",
                    hoff + 68,
                    format!("LogLength {} is not a non-zero multiple of 1 MiB", log.1),
                ));
            }
            if log.0 < MIB || log.0 % MIB != 0 {
                return Err(corrupt(
                    CorruptionKind::LogOffsetInvalid,
                    name,
                    "header",
                    hoff + 72,
                    format!("LogOffset {:#x} is not a 1 MiB multiple >= 1 MiB", log.0),
                ));
            }
            if log.0.checked_add(log.1).is_none_or(|e| e > file_len) {
                return Err(corrupt(
                    CorruptionKind::LogOutsideFile,
                    name,
                    "header",
                    hoff + 72,
                    format!(
                        "log [{:#x}, +{:#x}) extends past the end of the {file_len}-byte file",
                        log.0, log.1
                    ),
                ));
            }
        }

        // The log: replay a pending one into memory.
        let mut view: Arc<dyn Storage> = Arc::clone(&storage);
        let mut replayed_in_memory = false;
        if !h.log_guid.is_nil() {
            let ring = LogRing {
                storage: &*storage,
                name,
                offset: log.0,
                length: log.1,
            };
            let found = sequence::find_active_sequence(&ring, h.log_guid)?;
            let Some(head) = found.active.last() else {
                let why = found
                    .first_rejection
                    .map(|(o, m)| format!(" (entry at {o:#x}: {m})"))
                    .unwrap_or_default();
                return Err(corrupt(
                    CorruptionKind::LogSequenceInvalid,
                    name,
                    "log",
                    log.0,
                    format!(
                        "LogGuid {} is set but the log holds no valid complete sequence{why}",
                        h.log_guid
                    ),
                ));
            };
            if file_len < head.flushed_file_offset {
                return Err(corrupt(CorruptionKind::LogFlushedOffsetBeyondFile, name, "log entry", log.0 + head.pos, format!(
                    "file is {file_len} bytes, shorter than the entry's FlushedFileOffset {} (truncated)",
                    head.flushed_file_offset)));
            }
            let mut ov = ReplayOverlay::new(Arc::clone(&storage)).ctx(name)?;
            replay::replay(&ring, h.log_guid, &found.active, &mut ov)?;
            view = Arc::new(ov);
            replayed_in_memory = true;
            findings.push(Finding::warning(
                CorruptionKind::PendingLog,
                name,
                "log",
                log.0,
                format!(
                    "pending log ({} entries) replayed in memory; the file is unchanged",
                    found.active.len()
                ),
            ));
        }
        let view_len = view.len().ctx(name)?;

        // Region table: copy 1, falling back to copy 2.
        let parse_copy = |i: usize| -> Result<
            (RegionTable, Option<RegionTableError>),
            (RegionTableError, u64),
        > {
            let off = rt::COPY_OFFSETS[i];
            let raw = read_vec(&*view, name, off, rt::SIZE)
                .map_err(|_| (RegionTableError::Signature, off))?;
            RegionTable::parse(&raw, opts.ignore_checksums).map_err(|e| (e, off))
        };
        let c1 = parse_copy(0);
        let c2 = parse_copy(1);
        let region_err = |e: RegionTableError, off: u64| -> Error {
            match e {
                RegionTableError::Signature => corrupt(
                    CorruptionKind::RegionTableSignature,
                    name,
                    "region table",
                    off,
                    "signature is not `regi`",
                ),
                RegionTableError::Checksum { stored, computed } => Error::Checksum {
                    file: name.into(),
                    structure: "region table",
                    offset: off,
                    kind: CorruptionKind::RegionTableChecksum,
                    stored,
                    computed,
                },
                RegionTableError::TooManyEntries(n) => corrupt(
                    CorruptionKind::RegionTableEntryCount,
                    name,
                    "region table",
                    off + 8,
                    format!("EntryCount {n} exceeds 2047"),
                ),
            }
        };
        let region_kind = |e: &RegionTableError| -> CorruptionKind {
            match e {
                RegionTableError::Signature => CorruptionKind::RegionTableSignature,
                RegionTableError::Checksum { .. } => CorruptionKind::RegionTableChecksum,
                RegionTableError::TooManyEntries(_) => CorruptionKind::RegionTableEntryCount,
            }
        };
        let describe = |e: &RegionTableError| -> String {
            match e {
                RegionTableError::Signature => "signature is not `regi`".into(),
                RegionTableError::Checksum { stored, computed } => {
                    format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
                }
                RegionTableError::TooManyEntries(n) => format!("EntryCount {n} exceeds 2047"),
            }
        };
        let table = match (&c1, &c2) {
            (Ok((t1, soft)), other) => {
                if let Some(s) = soft {
                    findings.push(Finding::error(
                        region_kind(s),
                        name,
                        "region table",
                        rt::COPY_OFFSETS[0],
                        describe(s),
                    ));
                }
                match other {
                    Ok((t2, _)) if t2.entries != t1.entries => findings.push(Finding::warning(
                        CorruptionKind::RegionTableCopyMismatch,
                        name,
                        "region table",
                        rt::COPY_OFFSETS[1],
                        "copy 2 differs from copy 1",
                    )),
                    Err((e, off)) => findings.push(Finding::warning(
                        region_kind(e),
                        name,
                        "region table",
                        *off,
                        format!("copy 2 is invalid ({}); copy 1 is used", describe(e)),
                    )),
                    _ => {}
                }
                t1.clone()
            }
            (Err((e1, off1)), Ok((t2, soft))) => {
                findings.push(Finding::warning(
                    region_kind(e1),
                    name,
                    "region table",
                    *off1,
                    format!("copy 1 is invalid ({}); copy 2 is used", describe(e1)),
                ));
                if let Some(s) = soft {
                    findings.push(Finding::error(
                        region_kind(s),
                        name,
                        "region table",
                        rt::COPY_OFFSETS[1],
                        describe(s),
                    ));
                }
                t2.clone()
            }
            (Err((e1, off1)), Err(_)) => return Err(region_err(e1.clone(), *off1)),
        };
        let toff = rt::COPY_OFFSETS[0];
        let mut regions: Vec<(&'static str, (u64, u64))> = Vec::new();
        if log.1 != 0 {
            regions.push(("log", log));
        }
        for (i, e) in table.entries.iter().enumerate() {
            let eoff = toff + 16 + 32 * i as u64;
            if table.entries[..i].iter().any(|o| o.guid == e.guid) {
                return Err(corrupt(
                    CorruptionKind::RegionDuplicate,
                    name,
                    "region table entry",
                    eoff,
                    format!("duplicate region {}", e.guid),
                ));
            }
            let known = e.guid == rt::BAT_GUID || e.guid == rt::METADATA_GUID;
            if !known && e.is_required() {
                return Err(Error::Unsupported {
                    file: name.into(),
                    message: format!(
                        "required region {} is unknown (region table entry at {eoff:#x})",
                        e.guid
                    ),
                });
            }
            let len = u64::from(e.length);
            if e.file_offset < MIB || e.file_offset % MIB != 0 || len % MIB != 0 || len == 0 {
                return Err(corrupt(CorruptionKind::RegionAlignment, name, "region table entry", eoff, format!(
                    "region {} at {:#x} length {:#x}: offset must be a 1 MiB multiple >= 1 MiB and length a non-zero 1 MiB multiple",
                    e.guid, e.file_offset, len)));
            }
            if e.file_offset
                .checked_add(len)
                .is_none_or(|end| end > view_len)
            {
                return Err(corrupt(CorruptionKind::RegionOutsideFile, name, "region table entry", eoff, format!(
                    "region {} [{:#x}, +{len:#x}) extends past the end of the {view_len}-byte file", e.guid, e.file_offset)));
            }
            let what = if e.guid == rt::BAT_GUID {
                "BAT region"
            } else if e.guid == rt::METADATA_GUID {
                "metadata region"
            } else {
                "unknown region"
            };
            if let Some((other, _)) = regions
                .iter()
                .find(|(_, r)| overlaps(*r, (e.file_offset, len)))
            {
                return Err(corrupt(
                    CorruptionKind::RegionOverlap,
                    name,
                    "region table entry",
                    eoff,
                    format!("{what} overlaps the {other}"),
                ));
            }
            regions.push((what, (e.file_offset, len)));
        }
        let bat_e = table.find(rt::BAT_GUID).ok_or_else(|| {
            corrupt(
                CorruptionKind::RegionMissing,
                name,
                "region table",
                toff,
                "no BAT region",
            )
        })?;
        let meta_e = table.find(rt::METADATA_GUID).ok_or_else(|| {
            corrupt(
                CorruptionKind::RegionMissing,
                name,
                "region table",
                toff,
                "no metadata region",
            )
        })?;
        let bat_region = (bat_e.file_offset, u64::from(bat_e.length));
        let metadata_region = (meta_e.file_offset, u64::from(meta_e.length));

        // Metadata table and items.
        let moff = metadata_region.0;
        let raw_table = read_vec(&*view, name, moff, mt::TABLE_SIZE)?;
        let metadata_table = MetadataTable::parse(&raw_table).map_err(|e| match e {
            mt::MetadataTableError::Signature => corrupt(
                CorruptionKind::MetadataTableSignature,
                name,
                "metadata table",
                moff,
                "signature is not `metadata`",
            ),
            mt::MetadataTableError::TooManyEntries(n) => corrupt(
                CorruptionKind::MetadataTableEntryCount,
                name,
                "metadata table",
                moff + 10,
                format!("EntryCount {n} exceeds 2047"),
            ),
        })?;
        let known_items = [
            items::FILE_PARAMETERS,
            items::VIRTUAL_DISK_SIZE,
            items::VIRTUAL_DISK_ID,
            items::LOGICAL_SECTOR_SIZE,
            items::PHYSICAL_SECTOR_SIZE,
            items::PARENT_LOCATOR,
        ];
        let mut spans: Vec<(u64, u64, u64)> = Vec::new();
        let users = metadata_table
            .entries
            .iter()
            .filter(|e| e.is_user())
            .count();
        if users > mt::MAX_USER_ENTRIES {
            return Err(corrupt(
                CorruptionKind::MetadataTableEntryCount,
                name,
                "metadata table",
                moff,
                format!("{users} IsUser entries exceed 1024"),
            ));
        }
        for (i, e) in metadata_table.entries.iter().enumerate() {
            let eoff = moff + 32 + 32 * i as u64;
            if metadata_table.entries[..i]
                .iter()
                .any(|o| o.item_id == e.item_id && o.is_user() == e.is_user())
            {
                return Err(corrupt(
                    CorruptionKind::MetadataItemDuplicate,
                    name,
                    "metadata table entry",
                    eoff,
                    format!("duplicate item {}", e.item_id),
                ));
            }
            if e.flags & !7 != 0 {
                return Err(corrupt(
                    CorruptionKind::MetadataEntryReservedFlags,
                    name,
                    "metadata table entry",
                    eoff + 24,
                    format!("reserved flag bits set ({:#x})", e.flags),
                ));
            }
            if !e.is_user() && !known_items.contains(&e.item_id) && e.is_required() {
                return Err(Error::Unsupported {
                    file: name.into(),
                    message: format!(
                        "required metadata item {} is unknown (entry at {eoff:#x})",
                        e.item_id
                    ),
                });
            }
            if e.length == 0 {
                if e.offset != 0 {
                    findings.push(Finding::warning(
                        CorruptionKind::MetadataEmptyItemOffset,
                        name,
                        "metadata table entry",
                        eoff,
                        "empty item with a non-zero offset",
                    ));
                }
                continue;
            }
            if e.length > mt::MAX_ITEM_LENGTH {
                return Err(corrupt(
                    CorruptionKind::MetadataItemTooLong,
                    name,
                    "metadata table entry",
                    eoff + 20,
                    format!("item {} Length {} exceeds 1 MiB", e.item_id, e.length),
                ));
            }
            let (o, l) = (u64::from(e.offset), u64::from(e.length));
            if o < mt::TABLE_SIZE as u64 || o + l > metadata_region.1 {
                return Err(corrupt(CorruptionKind::MetadataItemOutsideRegion, name, "metadata table entry", eoff + 16, format!(
                    "item {} [{o:#x}, +{l:#x}) is not inside the metadata region after its 64 KiB table", e.item_id)));
            }
            if spans.iter().any(|(so, sl, _)| overlaps((*so, *sl), (o, l))) {
                return Err(corrupt(
                    CorruptionKind::MetadataItemOverlap,
                    name,
                    "metadata table entry",
                    eoff,
                    format!("item {} overlaps another item", e.item_id),
                ));
            }
            spans.push((o, l, eoff));
        }
        let item = |id: Uuid, what: &'static str, min: usize| -> Result<(Vec<u8>, u64)> {
            let (i, e) = metadata_table
                .entries
                .iter()
                .enumerate()
                .find(|(_, e)| e.item_id == id && !e.is_user())
                .ok_or_else(|| {
                    corrupt(
                        CorruptionKind::MetadataItemMissing,
                        name,
                        "metadata table",
                        moff,
                        format!("required item {what} is missing"),
                    )
                })?;
            let eoff = moff + 32 + 32 * i as u64;
            if (e.length as usize) < min {
                return Err(corrupt(
                    CorruptionKind::MetadataItemTooShort,
                    name,
                    "metadata table entry",
                    eoff + 20,
                    format!("{what} item is {} bytes, needs {min}", e.length),
                ));
            }
            let abs = moff + u64::from(e.offset);
            Ok((read_vec(&*view, name, abs, e.length as usize)?, abs))
        };
        let (b, fp_off) = item(items::FILE_PARAMETERS, "File Parameters", 8)?;
        let file_parameters = FileParameters::decode(&b).ok_or_else(|| {
            corrupt(
                CorruptionKind::MetadataItemTooShort,
                name,
                "File Parameters",
                fp_off,
                "unreadable",
            )
        })?;
        if !file_parameters.block_size_valid() {
            return Err(corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                "File Parameters",
                fp_off,
                format!(
                    "BlockSize {} is not a power of two in [1 MiB, 256 MiB]",
                    file_parameters.block_size
                ),
            ));
        }
        if file_parameters.flags & !3 != 0 {
            return Err(corrupt(
                CorruptionKind::FileParametersReservedFlags,
                name,
                "File Parameters",
                fp_off + 4,
                format!("reserved flag bits set ({:#x})", file_parameters.flags),
            ));
        }
        let (b, off) = item(items::LOGICAL_SECTOR_SIZE, "Logical Sector Size", 4)?;
        let lss = items::LogicalSectorSize::decode(&b).map_or(0, |x| x.size);
        if !items::sector_size_valid(lss) {
            return Err(corrupt(
                CorruptionKind::InvalidSectorSize,
                name,
                "Logical Sector Size",
                off,
                format!("{lss} is neither 512 nor 4096"),
            ));
        }
        let (b, off) = item(items::PHYSICAL_SECTOR_SIZE, "Physical Sector Size", 4)?;
        let pss = items::PhysicalSectorSize::decode(&b).map_or(0, |x| x.size);
        if !items::sector_size_valid(pss) {
            return Err(corrupt(
                CorruptionKind::InvalidSectorSize,
                name,
                "Physical Sector Size",
                off,
                format!("{pss} is neither 512 nor 4096"),
            ));
        }
        let (b, off) = item(items::VIRTUAL_DISK_SIZE, "Virtual Disk Size", 8)?;
        let vsize = items::VirtualDiskSize::decode(&b).map_or(0, |x| x.size);
        if vsize == 0 || !vsize.is_multiple_of(u64::from(lss)) || vsize > items::MAX_VIRTUAL_SIZE {
            return Err(corrupt(CorruptionKind::VirtualSizeInvalid, name, "Virtual Disk Size", off, format!(
                "{vsize} must be a non-zero multiple of the {lss}-byte logical sector and at most 64 TiB")));
        }
        let (b, off) = item(items::VIRTUAL_DISK_ID, "Virtual Disk ID", 16)?;
        let virtual_disk_id = items::VirtualDiskId::decode(&b)
            .ok_or_else(|| {
                corrupt(
                    CorruptionKind::MetadataItemTooShort,
                    name,
                    "Virtual Disk ID",
                    off,
                    "unreadable",
                )
            })?
            .id;
        let has_parent = file_parameters.has_parent();
        let parent_locator = if has_parent {
            let (b, off) = item(items::PARENT_LOCATOR, "Parent Locator", 20)?;
            let loc = items::decode_parent_locator(&b).map_err(|(rel, m)| {
                corrupt(
                    CorruptionKind::ParentLocatorInvalid,
                    name,
                    "parent locator",
                    off + rel,
                    m,
                )
            })?;
            if loc.locator_type != items::VHDX_PARENT_LOCATOR_TYPE {
                findings.push(Finding::error(
                    CorruptionKind::ParentLocatorType,
                    name,
                    "parent locator",
                    off,
                    format!("unknown LocatorType {}", loc.locator_type),
                ));
            }
            if loc.get("parent_linkage").is_none() {
                findings.push(Finding::error(
                    CorruptionKind::ParentLocatorMissingLinkage,
                    name,
                    "parent locator",
                    off,
                    "no parent_linkage key",
                ));
            } else if loc
                .get("parent_linkage")
                .and_then(items::parse_braced_guid)
                .is_none()
            {
                findings.push(Finding::error(
                    CorruptionKind::ParentLocatorLinkageInvalid,
                    name,
                    "parent locator",
                    off,
                    "parent_linkage is not a {GUID}",
                ));
            }
            if !["relative_path", "volume_path", "absolute_win32_path"]
                .iter()
                .any(|k| loc.get(k).is_some())
            {
                findings.push(Finding::error(
                    CorruptionKind::ParentLocatorNoPath,
                    name,
                    "parent locator",
                    off,
                    "no relative_path, volume_path or absolute_win32_path key",
                ));
            }
            Some(loc)
        } else {
            None
        };

        // BAT.
        let geometry = BatGeometry::new(
            u64::from(file_parameters.block_size),
            u64::from(lss),
            vsize,
            has_parent,
        )
        .ok_or_else(|| {
            corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                "File Parameters",
                fp_off,
                "block size / sector size outside the spec",
            )
        })?;
        let need = geometry.total_entries.saturating_mul(8);
        if need > bat_region.1 {
            return Err(corrupt(
                CorruptionKind::BatRegionTooSmall,
                name,
                "region table entry",
                toff,
                format!(
                    "BAT region Length {:#x} is shorter than TotalBATEntries {} x 8 = {need:#x}",
                    bat_region.1, geometry.total_entries
                ),
            ));
        }
        let bat = match known {
            Some(k)
                if !replayed_in_memory
                    && k.region == bat_region
                    && k.entries.len() as u64 == geometry.total_entries =>
            {
                k.entries
            }
            _ => BlockAllocationTable::read(&*view, name, bat_region.0, geometry.total_entries)?,
        };

        Ok(VhdxImage {
            name: name.to_string(),
            storage,
            view,
            opts,
            findings,
            creator: ident.creator_string(),
            header: h,
            current_slot: cur,
            region_table: table,
            bat_region,
            metadata_region,
            metadata_table,
            file_parameters,
            virtual_disk_id,
            physical_sector_size: pss,
            parent_locator,
            geometry,
            bat,
            replayed_in_memory,
            sb_cache: Mutex::new(None),
            data_write_guid_renewed: false,
            fresh_below: None,
        })
    }

    pub fn header(&self) -> &VhdxHeader {
        &self.header
    }

    pub fn bat(&self) -> &BlockAllocationTable {
        &self.bat
    }

    pub fn geometry(&self) -> &BatGeometry {
        &self.geometry
    }

    pub fn metadata_entries(&self) -> &[MetadataTableEntry] {
        &self.metadata_table.entries
    }

    /// Payload BAT entry of block `p`.
    pub(crate) fn payload_entry(&self, p: u64) -> Result<BatEntry> {
        let i = self.geometry.payload_index(p);
        self.bat.get(i as usize).ok_or_else(|| {
            corrupt(
                CorruptionKind::BatIndexOutOfRange,
                &self.name,
                "BAT",
                self.bat_region.0 + i * 8,
                "payload block outside the BAT",
            )
        })
    }

    pub(crate) fn sb_entry(&self, chunk: u64) -> Result<BatEntry> {
        let i = self.geometry.sb_index(chunk);
        self.bat.get(i as usize).ok_or_else(|| {
            corrupt(
                CorruptionKind::BatIndexOutOfRange,
                &self.name,
                "BAT",
                self.bat_region.0 + i * 8,
                "sector bitmap entry outside the BAT",
            )
        })
    }

    /// Counts of payload states (index = state) and SB PRESENT entries.
    pub fn state_counts(&self) -> ([u64; 8], u64) {
        // Only the entries that are not zero are visited; the zero ones
        // are the payload entries not counted (NOT_PRESENT).
        let g = &self.geometry;
        let mut c = [0u64; 8];
        let mut sb = 0;
        let mut counted = 0u64;
        let mut from = 0;
        while let Some(k) = self.bat.first_with_bits(from, u64::MAX) {
            from = k + 1;
            let (i, e) = (k as u64, self.bat.get(k).unwrap_or_default());
            if g.is_sb_index(i) {
                if i / (g.chunk_ratio + 1) < g.sector_bitmap_blocks && e.state() == bat::SB_PRESENT
                {
                    sb += 1;
                }
            } else if g.payload_block(i) < g.payload_blocks {
                c[e.state() as usize] += 1;
                counted += 1;
            }
        }
        // Payload indices grow with the block: the blocks with an entry
        // are a prefix.
        let in_table = match g.payload_blocks.checked_sub(1) {
            None => 0,
            Some(last) if g.payload_index(last) < self.bat.len() as u64 => g.payload_blocks,
            Some(_) => (0..g.payload_blocks)
                .take_while(|&p| g.payload_index(p) < self.bat.len() as u64)
                .count() as u64,
        };
        c[bat::PAYLOAD_NOT_PRESENT as usize] += in_table.saturating_sub(counted);
        (c, sb)
    }

    /// The sector bitmap bytes covering payload block `p` (spb/8 bytes).
    pub(crate) fn block_bitmap(&self, p: u64) -> Result<Vec<u8>> {
        {
            let c = self.sb_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((cp, bytes)) = c.as_ref() {
                if *cp == p {
                    return Ok(bytes.clone());
                }
            }
        }
        let g = &self.geometry;
        let chunk = p / g.chunk_ratio;
        let sbi = g.sb_index(chunk);
        let sb = self.sb_entry(chunk)?;
        if sb.state() != bat::SB_PRESENT {
            return Err(corrupt(CorruptionKind::SectorBitmapNotPresent, &self.name, "BAT", self.bat_region.0 + sbi * 8, format!(
                "payload block {p} is PARTIALLY_PRESENT but its sector bitmap entry is not SB_BLOCK_PRESENT")));
        }
        let spb = g.sectors_per_block();
        let len = spb / 8;
        let file_len = self.view.len().ctx(&self.name)?;
        // The entry's offset is a file field (up to 2^64 - 1 MiB): checked.
        let start = sb
            .file_offset()
            .checked_add((p % g.chunk_ratio) * spb / 8)
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= file_len));
        let Some(start) = start.filter(|_| sb.file_offset() >= MIB) else {
            return Err(corrupt(
                CorruptionKind::SectorBitmapOutsideFile,
                &self.name,
                "BAT",
                self.bat_region.0 + sbi * 8,
                format!(
                    "sector bitmap block at {:#x} lies outside the file",
                    sb.file_offset()
                ),
            ));
        };
        let bytes = read_vec(&*self.view, &self.name, start, len as usize)?;
        *self.sb_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((p, bytes.clone()));
        Ok(bytes)
    }

    pub(crate) fn invalidate_sb_cache(&self) {
        *self.sb_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn disk_type(&self) -> DiskType {
        if self.file_parameters.has_parent() {
            DiskType::Differencing
        } else if self.file_parameters.leave_block_allocated() {
            DiskType::Fixed
        } else {
            DiskType::Dynamic
        }
    }

    /// Check a present block's file range before handing it out (or
    /// writing into it).
    pub(crate) fn check_present(&self, p: u64, e: BatEntry) -> Result<()> {
        let g = &self.geometry;
        let in_disk = (g.virtual_size - p * g.block_size).min(g.block_size);
        let len = self.view.len().ctx(&self.name)?;
        // Checked: a hostile entry's offset can be near 2^64.
        let end = e.file_offset().checked_add(in_disk);
        if e.file_offset() < MIB || end.is_none_or(|end| end > len) {
            let i = g.payload_index(p);
            return Err(corrupt(
                CorruptionKind::BlockOutsideFile,
                &self.name,
                "BAT entry",
                self.bat_region.0 + i * 8,
                format!(
                    "payload block {p} at {:#x} lies outside the {len}-byte file",
                    e.file_offset()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn map_block(&self, p: u64, in_off: u64, n: u64, out: &mut Vec<Run>) -> Result<()> {
        let g = &self.geometry;
        let e = self.payload_entry(p)?;
        let voff = p * g.block_size + in_off;
        let kind = match e.state() {
            bat::PAYLOAD_FULLY_PRESENT => {
                self.check_present(p, e)?;
                RunKind::Present {
                    file_offset: e.file_offset() + in_off,
                }
            }
            bat::PAYLOAD_PARTIALLY_PRESENT => {
                if !g.has_parent {
                    let i = g.payload_index(p);
                    return Err(corrupt(
                        CorruptionKind::PartialBlockInNonDifferencing,
                        &self.name,
                        "BAT entry",
                        self.bat_region.0 + i * 8,
                        format!(
                            "payload block {p} is PARTIALLY_PRESENT in a non-differencing file"
                        ),
                    ));
                }
                self.check_present(p, e)?;
                let bits = self.block_bitmap(p)?;
                let lss = g.logical_sector_size;
                let mut s = in_off / lss;
                let end = (in_off + n) / lss;
                while s < end {
                    let run = sector_bitmap::run_length(&bits, s, end - s);
                    let kind = if sector_bitmap::get_bit(&bits, s) {
                        RunKind::Present {
                            file_offset: e.file_offset() + s * lss,
                        }
                    } else {
                        RunKind::Transparent
                    };
                    push_run(
                        out,
                        Run {
                            offset: p * g.block_size + s * lss,
                            len: run * lss,
                            kind,
                        },
                    );
                    s += run;
                }
                return Ok(());
            }
            bat::PAYLOAD_NOT_PRESENT => RunKind::Transparent,
            bat::PAYLOAD_ZERO
            | bat::PAYLOAD_UNMAPPED
            | bat::PAYLOAD_UNDEFINED
            | bat::PAYLOAD_UNMAPPED_V095 => RunKind::Zero,
            s => {
                let i = g.payload_index(p);
                return Err(corrupt(
                    CorruptionKind::BatEntryReservedState,
                    &self.name,
                    "BAT entry",
                    self.bat_region.0 + i * 8,
                    format!("payload block {p} has reserved state {s}"),
                ));
            }
        };
        push_run(
            out,
            Run {
                offset: voff,
                len: n,
                kind,
            },
        );
        Ok(())
    }
}

impl Layer for VhdxImage {
    fn name(&self) -> &str {
        &self.name
    }
    fn virtual_size(&self) -> u64 {
        self.geometry.virtual_size
    }
    fn logical_sector_size(&self) -> u32 {
        self.geometry.logical_sector_size as u32
    }
    fn block_size(&self) -> u64 {
        self.geometry.block_size
    }
    fn is_differencing(&self) -> bool {
        self.geometry.has_parent
    }
    fn map(&self, offset: u64, len: u64, out: &mut Vec<Run>) -> Result<()> {
        let g = &self.geometry;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= g.virtual_size)
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "{}: range {offset:#x}+{len:#x} beyond the virtual size",
                    self.name
                ))
            })?;
        let mut pos = offset;
        while pos < end {
            let p = pos / g.block_size;
            // Transparent up to the next block that is not: one run for
            // what may be millions of empty blocks.
            let skip_to = if self.payload_entry(p)?.state() == bat::PAYLOAD_NOT_PRESENT {
                self.next_held(pos)?.map_or(end, |h| h.min(end))
            } else {
                pos
            };
            if skip_to > pos {
                push_run(
                    out,
                    Run {
                        offset: pos,
                        len: skip_to - pos,
                        kind: RunKind::Transparent,
                    },
                );
                pos = skip_to;
                continue;
            }
            let in_off = pos % g.block_size;
            let n = (g.block_size - in_off).min(end - pos);
            self.map_block(p, in_off, n, out)?;
            pos += n;
        }
        Ok(())
    }
    fn read_file(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.view.read_at(buf, file_offset).ctx(&self.name)
    }
    fn next_held(&self, offset: u64) -> Result<Option<u64>> {
        // NOT_PRESENT is the one state `map_block` maps to Transparent whole
        // (and past its virtual size a layer is transparent to a fold).
        // The scan runs over the BAT slice itself (payload and sector-bitmap
        // entries interleaved) and sorts out the roles only at entries that
        // are not NOT_PRESENT: a 64 TiB BAT is two million entries.
        let g = &self.geometry;
        let blocks = g.virtual_size.div_ceil(g.block_size);
        let mut from =
            usize::try_from(g.payload_index(offset / g.block_size)).unwrap_or(usize::MAX);
        while let Some(k) = self.bat.first_with_bits(from, 7) {
            let i = k as u64;
            if !g.is_sb_index(i) {
                let p = g.payload_block(i);
                if p >= blocks {
                    break;
                }
                return Ok(Some((p * g.block_size).max(offset)));
            }
            from = k + 1;
        }
        Ok(None)
    }
}

impl Image for VhdxImage {
    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let (c, sb) = self.state_counts();
        let mut d: Vec<(String, String)> = vec![
            ("creator".into(), self.creator.clone()),
            ("header_sequence".into(), h.sequence_number.to_string()),
            ("file_write_guid".into(), h.file_write_guid.to_string()),
            ("data_write_guid".into(), h.data_write_guid.to_string()),
            ("log_guid".into(), h.log_guid.to_string()),
            ("log_offset".into(), h.log_offset.to_string()),
            ("log_length".into(), h.log_length.to_string()),
            (
                "bat_region".into(),
                format!("{:#x}+{:#x}", self.bat_region.0, self.bat_region.1),
            ),
            (
                "metadata_region".into(),
                format!(
                    "{:#x}+{:#x}",
                    self.metadata_region.0, self.metadata_region.1
                ),
            ),
            ("virtual_disk_id".into(), self.virtual_disk_id.to_string()),
            ("chunk_ratio".into(), self.geometry.chunk_ratio.to_string()),
            (
                "bat_entries".into(),
                self.geometry.total_entries.to_string(),
            ),
        ];
        for (s, n) in c.iter().enumerate() {
            if *n > 0 {
                d.push((
                    format!("blocks_{}", bat::payload_state_name(s as u8).to_lowercase()),
                    n.to_string(),
                ));
            }
        }
        d.push(("sector_bitmap_blocks_present".into(), sb.to_string()));
        if self.replayed_in_memory {
            d.push(("log".into(), "pending, replayed in memory".into()));
        }
        ImageInfo {
            format: Format::Vhdx,
            disk_type: self.disk_type(),
            virtual_size: self.geometry.virtual_size,
            block_size: self.geometry.block_size,
            logical_sector_size: self.geometry.logical_sector_size as u32,
            physical_sector_size: self.physical_sector_size,
            details: d,
        }
    }

    fn identity(&self) -> Identity {
        Identity::Vhdx {
            data_write_guid: self.header.data_write_guid,
        }
    }

    fn parent_linkage(&self) -> Option<ParentLinkage> {
        let loc = self.parent_locator.as_ref()?;
        let parent_linkage = loc
            .get("parent_linkage")
            .and_then(items::parse_braced_guid)?;
        let parent_linkage2 = loc
            .get("parent_linkage2")
            .and_then(items::parse_braced_guid)
            .filter(|g| !g.is_nil());
        Some(ParentLinkage::Vhdx {
            parent_linkage,
            parent_linkage2,
        })
    }

    fn parent_locator(&self) -> Option<ParentLocator> {
        let loc = self.parent_locator.as_ref()?;
        let mut hints = Vec::new();
        if let Some(p) = loc.get("relative_path") {
            hints.push(PathHint::Relative(p.to_string()));
        }
        if let Some(p) = loc.get("volume_path") {
            hints.push(PathHint::Volume(p.to_string()));
        }
        if let Some(p) = loc.get("absolute_win32_path") {
            hints.push(PathHint::AbsoluteWindows(p.to_string()));
        }
        Some(ParentLocator {
            entries: loc.entries.clone(),
            hints,
        })
    }

    fn open_findings(&self) -> Vec<Finding> {
        self.findings.clone()
    }

    fn check(&self) -> Result<Vec<Finding>> {
        Ok(super::check::check(self))
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn write_sectors(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        super::write::write_sectors(self, offset, data)
    }

    fn zero_sectors(&mut self, offset: u64, len: u64) -> Result<()> {
        super::write::zero_sectors(self, offset, len)
    }

    fn reopen(
        self: Box<Self>,
        _journal: Option<crate::storage::JournalSlot>,
        opts: OpenOptions,
    ) -> Result<Box<dyn Image>> {
        let mut img = *self;
        let known = KnownBat {
            region: img.bat_region,
            entries: std::mem::take(&mut img.bat),
        };
        let (name, storage) = (std::mem::take(&mut img.name), Arc::clone(&img.storage));
        // One BAT in memory at a time: the old image goes before the load.
        drop(img);
        Ok(Box::new(Self::open_with(
            &name,
            storage,
            opts,
            Some(known),
        )?))
    }

    fn begin_batch(&mut self) -> Result<Box<dyn MergeBatch + '_>> {
        super::batch::begin(self)
    }

    fn check_parent_spec(&self, parent: &crate::params::ParentSpec) -> Result<()> {
        super::batch::check_locator(self, parent)
    }

    fn compact(&mut self) -> Result<crate::image::CompactReport> {
        super::compact::compact(self)
    }

    fn release_zero_blocks(
        &mut self,
        parent_reads_zero: &mut dyn FnMut(u64, u64) -> Result<bool>,
    ) -> Result<u64> {
        super::compact::release_zero_blocks(self, parent_reads_zero)
    }
}
