//! `VhdImage`: opening a VHD (footer, header, BAT, locators: each checked
//! by the open step beside its structure, run here in order), and the read
//! side of the `Layer` / `Image` traits.

use std::sync::Arc;

use super::bat::{self, BAT_UNALLOCATED};
use super::dynamic_header::{self, DynamicDiskHeader};
use super::footer::{self, HardDiskFooter, LoadedFooter, FOOTER_SIZE};
use super::geometry::chs_size;
use super::journal::{self, Recovery};
use super::parent_locator::{self, ParentLocatorEntry};
use super::sector_bitmap::SectorBitmap;
use crate::error::IoContext;
use crate::image::{Image, MergeBatch, ParentReadsZero};
use crate::layer::{push_run, Layer, Run, RunKind};
use crate::params::{
    DiskType, Format, Identity, ImageInfo, OpenOptions, ParentLinkage, ParentLocator, PathHint,
};
use crate::storage::JournalSlot;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

// Named here as they always were (the limits live beside their structures).
pub use super::footer::{FooterSource, MAX_SPARSE_SIZE};

/// The dynamic/differencing part of an image.
#[derive(Debug, Clone)]
pub struct Sparse {
    pub header_offset: u64,
    pub header: DynamicDiskHeader,
    pub bat: Vec<u32>,
    pub block_size: u64,
    pub bitmap_bytes: u64,
    pub differencing: bool,
    /// Used locator slots: (entry, absolute offset of the entry, decoded text).
    pub locators: Vec<(ParentLocatorEntry, u64, Option<String>)>,
}

impl Sparse {
    /// Bytes of one block on disk (bitmap + data).
    pub fn block_span(&self) -> u64 {
        self.bitmap_bytes + self.block_size
    }

    /// The open steps of a dynamic or differencing disk whose footer is
    /// `footer`, in order: the header's place (footer), the header, its
    /// Version and Block Size, a Current Size the BAT can address
    /// (footer), Max Table Entries, the BAT, the parent locators.
    fn load(
        st: &dyn Storage,
        name: &str,
        len: u64,
        footer: &LoadedFooter,
        ignore_checksums: bool,
        findings: &mut Vec<Finding>,
    ) -> Result<Sparse> {
        let ho = footer.validate_header_offset(name, len)?;
        let loaded = dynamic_header::load(st, name, ho, ignore_checksums, findings)?;
        loaded.validate(name)?;
        footer.validate_sparse_size(name)?;
        loaded.validate_table_entries(name, footer.footer.current_size)?;
        let bat = bat::load(st, name, &loaded, len)?;
        let differencing = footer.footer.kind() == Some(DiskType::Differencing);
        let locators = if differencing {
            parent_locator::load(st, name, &loaded, len, findings)?
        } else {
            Vec::new()
        };
        let block_size = u64::from(loaded.header.block_size);
        Ok(Sparse {
            header_offset: ho,
            header: loaded.header,
            bat,
            block_size,
            bitmap_bytes: SectorBitmap::disk_size(block_size / 512),
            differencing,
            locators,
        })
    }
}

#[derive(Debug)]
pub struct VhdImage {
    pub(super) name: String,
    /// What reads go through (the journal overlay on a read-only open with a
    /// pending journal, else the file).
    pub(super) storage: Arc<dyn Storage>,
    /// The file itself (what `reopen` opens again: the overlay holds the
    /// journal open, and a writable open must replay it).
    pub(super) file: Arc<dyn Storage>,
    pub(super) opts: OpenOptions,
    pub(super) footer: HardDiskFooter,
    pub(super) footer_source: FooterSource,
    /// Where the end footer is (or should be): the allocation point.
    pub(super) footer_offset: u64,
    pub(super) sparse: Option<Sparse>,
    pub(super) findings: Vec<Finding>,
    pub(super) journal: Option<JournalSlot>,
}

impl VhdImage {
    /// Open: a pending journal is replayed (writable) or overlaid
    /// (read-only) first; then the steps, in order: the footer (end or
    /// copy at 0), its Disk Type and Current Size, and the fixed disk's
    /// data area or the sparse structures (`Sparse::load`). Each step lives
    /// beside its structure and returns the first error or pushes its
    /// findings. A writable open then heals the footer copy.
    pub fn open(
        name: &str,
        storage: Arc<dyn Storage>,
        journal: Option<JournalSlot>,
        opts: OpenOptions,
    ) -> Result<VhdImage> {
        let mut findings = Vec::new();
        let file = Arc::clone(&storage);
        let mut storage = storage;
        if let Some(slot) = &journal {
            if let Recovery::Overlay(ov) =
                journal::recover(name, &storage, slot, opts.writable, &mut findings)?
            {
                storage = ov;
            }
        }
        let st = storage.as_ref();
        let len = st.len().ctx(name)?;
        let loaded = footer::load(st, name, len, opts.ignore_checksums, &mut findings)?;
        let sparse = match loaded.validate(name)? {
            DiskType::Fixed => {
                loaded.validate_fixed(name)?;
                None
            }
            DiskType::Dynamic | DiskType::Differencing => Some(Sparse::load(
                st,
                name,
                len,
                &loaded,
                opts.ignore_checksums,
                &mut findings,
            )?),
        };
        let mut img = VhdImage {
            name: name.into(),
            storage,
            opts,
            footer: loaded.footer,
            footer_source: loaded.source,
            footer_offset: loaded.end_offset,
            sparse,
            findings,
            journal,
            file,
        };
        img.repair_footer_copy()?;
        Ok(img)
    }

    /// A writable open heals a footer copy at 0 that differs from the end
    /// footer (the end footer is what we trust; the copy is redundancy), and
    /// an invalid end footer from the copy.
    fn repair_footer_copy(&mut self) -> Result<()> {
        if !self.opts.writable || self.sparse.is_none() {
            return Ok(());
        }
        let good = self.footer.to_bytes()?;
        match self.footer_source {
            FooterSource::End => {
                let mut cur = [0u8; FOOTER_SIZE];
                self.storage.read_at(&mut cur, 0).ctx(&self.name)?;
                if cur != good {
                    self.storage.write_at(&good, 0).ctx(&self.name)?;
                    self.storage.flush().ctx(&self.name)?;
                }
            }
            FooterSource::CopyAtZero => {
                // Put a valid footer at the very end of the file (a new last
                // sector), so the layout ends in a footer again.
                let len = self.storage.len().ctx(&self.name)?;
                let at = super::codec::align512(len).unwrap_or(len);
                self.storage.write_at(&good, at).ctx(&self.name)?;
                self.storage.flush().ctx(&self.name)?;
                self.footer_offset = at;
                self.footer_source = FooterSource::End;
            }
        }
        Ok(())
    }

    pub fn footer(&self) -> &HardDiskFooter {
        &self.footer
    }
    pub fn dynamic_header(&self) -> Option<&DynamicDiskHeader> {
        self.sparse.as_ref().map(|s| &s.header)
    }
    pub fn bat(&self) -> Option<&[u32]> {
        self.sparse.as_ref().map(|s| s.bat.as_slice())
    }
    pub fn footer_source(&self) -> FooterSource {
        self.footer_source
    }

    pub(super) fn kind(&self) -> DiskType {
        match &self.sparse {
            None => DiskType::Fixed,
            Some(s) if s.differencing => DiskType::Differencing,
            Some(_) => DiskType::Dynamic,
        }
    }

    pub(super) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        crate::image::check_sector_range(&self.name, offset, len, 512, self.footer.current_size)
    }

    /// Read the bitmap bytes covering sectors `[k0, k1)` of a block whose
    /// bitmap starts at `base`; bit indices stay relative to the block.
    pub(super) fn read_bitmap(&self, base: u64, k0: u64, k1: u64) -> Result<(SectorBitmap, u64)> {
        let b0 = k0 / 8;
        let b1 = k1.div_ceil(8);
        let mut bytes = vec![0u8; (b1 - b0) as usize];
        self.storage
            .read_at(&mut bytes, base + b0)
            .ctx(&self.name)?;
        Ok((SectorBitmap { bytes }, b0 * 8))
    }

    fn block_outside(&self, b: u64, base: u64, need_end: u64) -> Error {
        Error::corrupt(
            CorruptionKind::BlockOutsideFile,
            &self.name,
            "block allocation table",
            self.sparse
                .as_ref()
                .map(|s| s.header.table_offset + 4 * b)
                .unwrap_or(0),
            format!("block {b} at {base:#x} lies outside the file (needs {need_end:#x})"),
        )
    }
}

impl Layer for VhdImage {
    fn name(&self) -> &str {
        &self.name
    }
    fn virtual_size(&self) -> u64 {
        self.footer.current_size
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn block_size(&self) -> u64 {
        self.sparse.as_ref().map(|s| s.block_size).unwrap_or(0)
    }
    fn is_differencing(&self) -> bool {
        self.sparse.as_ref().is_some_and(|s| s.differencing)
    }

    fn map(&self, offset: u64, len: u64, out: &mut Vec<Run>) -> Result<()> {
        self.check_range(offset, len)?;
        let Some(s) = &self.sparse else {
            push_run(
                out,
                Run {
                    offset,
                    len,
                    kind: RunKind::Present {
                        file_offset: offset,
                    },
                },
            );
            return Ok(());
        };
        let file_len = self.storage.len().ctx(&self.name)?;
        let end = offset + len;
        if s.differencing && len > s.block_size {
            // Every block's bitmap is read below, one small read each: ask
            // for them all first, so that a cold file's reads overlap.
            for b in offset / s.block_size..end.div_ceil(s.block_size) {
                let entry = s.bat.get(b as usize).copied().unwrap_or(BAT_UNALLOCATED);
                if entry != BAT_UNALLOCATED {
                    self.storage
                        .prefetch(u64::from(entry) * 512, s.bitmap_bytes);
                }
            }
        }
        let mut pos = offset;
        while pos < end {
            let b = pos / s.block_size;
            let in_block = pos % s.block_size;
            let n = (s.block_size - in_block).min(end - pos);
            let entry = s.bat.get(b as usize).copied().unwrap_or(BAT_UNALLOCATED);
            if entry == BAT_UNALLOCATED {
                push_run(
                    out,
                    Run {
                        offset: pos,
                        len: n,
                        kind: RunKind::Transparent,
                    },
                );
                pos += n;
                continue;
            }
            let base = u64::from(entry) * 512;
            let data = base + s.bitmap_bytes;
            let need_end = data + in_block + n;
            if need_end > file_len {
                return Err(self.block_outside(b, base, need_end));
            }
            if !s.differencing {
                push_run(
                    out,
                    Run {
                        offset: pos,
                        len: n,
                        kind: RunKind::Present {
                            file_offset: data + in_block,
                        },
                    },
                );
            } else {
                let k0 = in_block / 512;
                let k1 = k0 + n / 512;
                let (bm, first) = self.read_bitmap(base, k0, k1)?;
                for (k, cnt, bit) in bm.runs(k0 - first, k1 - first) {
                    let k = k + first;
                    let kind = if bit {
                        RunKind::Present {
                            file_offset: data + k * 512,
                        }
                    } else {
                        RunKind::Transparent
                    };
                    push_run(
                        out,
                        Run {
                            offset: b * s.block_size + k * 512,
                            len: cnt * 512,
                            kind,
                        },
                    );
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn read_file(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.storage.read_at(buf, file_offset).ctx(&self.name)
    }
}

impl Image for VhdImage {
    fn info(&self) -> ImageInfo {
        let f = &self.footer;
        let mut d: Vec<(String, String)> = vec![
            ("creator_application".into(), f.creator_text()),
            (
                "creator_version".into(),
                format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF),
            ),
            (
                "creator_host_os".into(),
                super::footer::fourcc_text(&f.creator_host_os.to_be_bytes()),
            ),
            ("original_size".into(), f.original_size.to_string()),
            ("current_size".into(), f.current_size.to_string()),
            (
                "geometry".into(),
                format!("{}/{}/{}", f.cylinders, f.heads, f.sectors_per_track),
            ),
            (
                "chs_size".into(),
                chs_size(f.cylinders, f.heads, f.sectors_per_track).to_string(),
            ),
            ("unique_id".into(), hex(&f.unique_id)),
            ("time_stamp".into(), f.time_stamp.to_string()),
            ("features".into(), format!("{:#010x}", f.features)),
            ("saved_state".into(), f.saved_state.to_string()),
        ];
        if let Some(s) = &self.sparse {
            d.push(("header_offset".into(), s.header_offset.to_string()));
            d.push(("table_offset".into(), s.header.table_offset.to_string()));
            d.push((
                "max_table_entries".into(),
                s.header.max_table_entries.to_string(),
            ));
            if s.differencing {
                d.push(("parent_unique_id".into(), hex(&s.header.parent_unique_id)));
                d.push((
                    "parent_time_stamp".into(),
                    s.header.parent_time_stamp.to_string(),
                ));
                d.push(("parent_unicode_name".into(), s.header.parent_name()));
            }
        }
        ImageInfo {
            format: Format::Vhd,
            disk_type: self.kind(),
            virtual_size: f.current_size,
            block_size: self.block_size(),
            logical_sector_size: 512,
            physical_sector_size: 512,
            details: d,
        }
    }

    fn identity(&self) -> Identity {
        self.footer.identity()
    }

    fn parent_linkage(&self) -> Option<ParentLinkage> {
        let s = self.sparse.as_ref().filter(|s| s.differencing)?;
        Some(ParentLinkage::Vhd {
            parent_unique_id: s.header.parent_unique_id,
            parent_timestamp: s.header.parent_time_stamp,
        })
    }

    fn parent_locator(&self) -> Option<ParentLocator> {
        let s = self.sparse.as_ref().filter(|s| s.differencing)?;
        let mut entries = Vec::new();
        let (mut rel, mut abs, mut posix) = (Vec::new(), Vec::new(), Vec::new());
        for (e, _, text) in &s.locators {
            let value = match text {
                Some(t) => t.clone(),
                None => format!("<{} bytes, not a path>", e.platform_data_length),
            };
            entries.push((e.code_text(), value));
            if let Some(t) = text {
                if let Some(hint) = parent_locator::path_hint(e.platform_code, t.clone()) {
                    match hint {
                        PathHint::Relative(_) => rel.push(hint),
                        PathHint::AbsoluteWindows(_) => abs.push(hint),
                        _ => posix.push(hint),
                    }
                }
            }
        }
        let name = s.header.parent_name();
        entries.push(("parent_unicode_name".into(), name.clone()));
        let mut hints = rel;
        hints.extend(abs);
        hints.extend(posix);
        if !name.is_empty() {
            hints.push(PathHint::Name(name));
        }
        Some(ParentLocator { entries, hints })
    }

    fn open_findings(&self) -> Vec<Finding> {
        self.findings.clone()
    }

    fn check(&self) -> Result<Vec<Finding>> {
        super::check::check(self)
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn write_sectors(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_impl(offset, Some(data), data.len() as u64)
    }

    fn zero_sectors(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_impl(offset, None, len)
    }

    fn compact(&mut self) -> Result<crate::image::CompactReport> {
        super::compact::compact(self)
    }

    fn release_zero_blocks(&mut self, parent_reads_zero: &mut ParentReadsZero<'_>) -> Result<u64> {
        super::compact::release_zero_blocks(self, parent_reads_zero)
    }

    fn reopen(
        self: Box<Self>,
        journal: Option<JournalSlot>,
        opts: OpenOptions,
    ) -> Result<Box<dyn Image>> {
        let (name, file) = (self.name.clone(), Arc::clone(&self.file));
        // The old view (and a journal overlay's handle on the journal)
        // goes first: a writable open replays the journal and removes it.
        drop(self);
        Ok(Box::new(VhdImage::open(&name, file, journal, opts)?))
    }

    fn begin_batch(&mut self) -> Result<Box<dyn MergeBatch + '_>> {
        super::batch::begin(self)
    }

    fn check_parent_spec(&self, parent: &crate::params::ParentSpec) -> Result<()> {
        let Some(s) = self.sparse.as_ref().filter(|s| s.differencing) else {
            return Err(Error::Unsupported {
                file: self.name.clone(),
                message: "not a differencing image: it has no parent to set".into(),
            });
        };
        let mut probe = s.header.clone();
        super::create::set_parent_fields(&mut probe, parent, &mut |_| Ok(0)).map(|_| ())
    }
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
