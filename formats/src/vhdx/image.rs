//! `VhdxImage`: opening (identifier, headers, log, region table, metadata,
//! BAT — every field bounded before use, each by the open step beside its
//! structure), reading through `Layer::map`, and the `Image` facts.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::bat::{self, BatEntry, BatGeometry};
use super::bat_table::BlockAllocationTable;
pub(crate) use super::bat_table::KnownBat;
use super::file_identifier::FileIdentifier;
use super::header::{self, VhdxHeader};
use super::log::replay;
use super::metadata_items::{self as items, DecodedParentLocator, FileParameters};
use super::metadata_table::{self as mt, MetadataTable, MetadataTableEntry};
use super::region_table::{self as rt, RegionTable};
use super::sector_bitmap;
use crate::error::IoContext;
use crate::image::{Image, MergeBatch, ParentReadsZero};
use crate::layer::{push_run, Layer, Run, RunKind};
use crate::params::{
    DiskType, Format, Identity, ImageInfo, OpenOptions, ParentLinkage, ParentLocator, PathHint,
};
use crate::{CorruptionKind, Error, Finding, Result, Storage};

use super::codec::read_vec;
pub(crate) use super::codec::{overlaps, MIB};

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
    /// replayed into an in-memory overlay. The steps, in order: file
    /// identifier, current header and its log region, pending log, region
    /// table, metadata table and system items, BAT geometry and entries;
    /// each lives beside its structure and returns the first error or
    /// pushes its findings.
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
        let ident = FileIdentifier::load(&*storage, name, file_len)?;

        let (cur, h) = header::load_current(&*storage, name, opts.ignore_checksums, &mut findings)?;
        let hoff = header::SLOT_OFFSETS[cur];
        h.validate(name, hoff, &mut findings)?;
        let log = h.validate_log_region(name, hoff, file_len)?;

        let replayed = replay::replay_pending_in_memory(
            &storage,
            name,
            h.log_guid,
            log,
            file_len,
            &mut findings,
        )?;
        let replayed_in_memory = replayed.is_some();
        let view = replayed.unwrap_or_else(|| Arc::clone(&storage));
        let view_len = view.len().ctx(name)?;

        let table = rt::load(&*view, name, opts.ignore_checksums, &mut findings)?;
        let (bat_region, metadata_region) = table.validate_entries(name, log, view_len)?;

        let metadata_table = mt::load(&*view, name, metadata_region, &mut findings)?;
        let items = items::load_system_items(
            &*view,
            name,
            &metadata_table,
            metadata_region.0,
            &mut findings,
        )?;
        let geometry = BatGeometry::load(&items, bat_region, name)?;
        let known = known.filter(|_| !replayed_in_memory);
        let bat =
            BlockAllocationTable::load(&*view, name, bat_region, geometry.total_entries, known)?;

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
            file_parameters: items.file_parameters,
            virtual_disk_id: items.virtual_disk_id,
            physical_sector_size: items.physical_sector_size,
            parent_locator: items.parent_locator,
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
        self.bat_entry(i, "payload block outside the BAT")
    }

    /// Sector bitmap BAT entry of chunk `chunk`.
    pub(crate) fn sb_entry(&self, chunk: u64) -> Result<BatEntry> {
        let i = self.geometry.sb_index(chunk);
        self.bat_entry(i, "sector bitmap entry outside the BAT")
    }

    /// BAT entry `i`; an index past the table (a geometry the BAT does not
    /// match) is corruption, reported at where the entry would be.
    fn bat_entry(&self, i: u64, outside: &str) -> Result<BatEntry> {
        let error = || self.bat_error(CorruptionKind::BatIndexOutOfRange, i, outside.into());
        self.bat.get(i as usize).ok_or_else(error)
    }

    /// Corruption found through BAT entry `i` (the table's own view of it:
    /// an index, a sector bitmap entry), reported at that entry.
    fn bat_error(&self, kind: CorruptionKind, i: u64, message: String) -> Error {
        corrupt(kind, &self.name, "BAT", self.bat_region.0 + i * 8, message)
    }

    /// Corruption of payload block `p` (its state, its place), reported at
    /// its BAT entry.
    fn payload_error(&self, kind: CorruptionKind, p: u64, message: String) -> Error {
        let i = self.geometry.payload_index(p);
        corrupt(
            kind,
            &self.name,
            "BAT entry",
            self.bat_region.0 + i * 8,
            message,
        )
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
            return Err(self.bat_error(CorruptionKind::SectorBitmapNotPresent, sbi, format!(
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
            return Err(self.bat_error(
                CorruptionKind::SectorBitmapOutsideFile,
                sbi,
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
            return Err(self.payload_error(
                CorruptionKind::BlockOutsideFile,
                p,
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
                    return Err(self.payload_error(
                        CorruptionKind::PartialBlockInNonDifferencing,
                        p,
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
                let message = format!("payload block {p} has reserved state {s}");
                return Err(self.payload_error(CorruptionKind::BatEntryReservedState, p, message));
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

    fn release_zero_blocks(&mut self, parent_reads_zero: &mut ParentReadsZero<'_>) -> Result<u64> {
        super::compact::release_zero_blocks(self, parent_reads_zero)
    }
}
