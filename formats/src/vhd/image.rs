//! `VhdImage`: opening a VHD (footer, header, BAT, locators), and the read
//! side of the `Layer` / `Image` traits.

use std::sync::Arc;

use super::bat::{BlockAllocationTable, BAT_UNALLOCATED};
use super::dynamic_header::{DynamicDiskHeader, HEADER_COOKIE, HEADER_SIZE, HEADER_VERSION};
use super::footer::{HardDiskFooter, FOOTER_SIZE};
use super::geometry::chs_size;
use super::journal::{self, Recovery};
use super::parent_locator::{decode_locator, ParentLocatorEntry, MAX_LOCATOR_DATA};
use super::sector_bitmap::SectorBitmap;
use crate::error::IoContext;
use crate::image::{Image, MergeBatch};
use crate::layer::{push_run, Layer, Run, RunKind};
use crate::params::{
    DiskType, Format, Identity, ImageInfo, OpenOptions, ParentLinkage, ParentLocator, PathHint,
};
use crate::storage::JournalSlot;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

/// Largest block size accepted (the spec names none; 256 MiB is far above
/// anything produced and keeps a bitmap at 64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest dynamic/differencing virtual size (FORMATS.md 1: 2040 GiB; a
/// little slack).
pub const MAX_SPARSE_SIZE: u64 = 2 << 40;
/// Max Table Entries may exceed what Current Size needs by this much.
pub const BAT_SLACK_ENTRIES: u64 = 4096;

/// Where the footer in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterSource {
    /// EOF-512 (or EOF-511 for pre-2004 images).
    End,
    /// The copy at offset 0 (end footer invalid).
    CopyAtZero,
}

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

fn read_footer_at(
    st: &dyn Storage,
    name: &str,
    off: u64,
    len: usize,
) -> Result<(HardDiskFooter, bool)> {
    let mut b = [0u8; FOOTER_SIZE];
    st.read_at(&mut b[..len], off).ctx(name)?;
    HardDiskFooter::parse(&b, name, off)
}

impl VhdImage {
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
        if len < FOOTER_SIZE as u64 - 1 {
            return Err(Error::NotAnImage {
                file: name.into(),
                message: format!("{len} bytes is too short for a VHD footer"),
            });
        }

        // The end footer: EOF-512, then EOF-511 (pre-2004 images).
        let mut end = None;
        if len >= FOOTER_SIZE as u64 {
            let off = len - FOOTER_SIZE as u64;
            let (f, ok) = read_footer_at(st, name, off, FOOTER_SIZE)?;
            if f.cookie_ok() {
                end = Some((f, ok, off));
            }
        }
        if end.is_none() {
            let off = len - (FOOTER_SIZE as u64 - 1);
            let (f, ok) = read_footer_at(st, name, off, FOOTER_SIZE - 1)?;
            if f.cookie_ok() {
                end = Some((f, ok, off));
            }
        }
        // Where the end footer is, or, when none has its cookie, where one
        // belongs: the end of the file (rounded to a sector). A footer cut
        // off (Xen Orchestra wrote such files) leaves the last block ending
        // at EOF; EOF-512 would put that block's tail "under the footer"
        // and make `check` report a false overlap. A writable open puts the
        // footer there (`repair_footer_copy`).
        let end_offset = end
            .as_ref()
            .map(|e| e.2)
            .unwrap_or_else(|| super::codec::align512(len).unwrap_or(len));
        let copy = if len >= 2 * FOOTER_SIZE as u64 {
            let (f, ok) = read_footer_at(st, name, 0, FOOTER_SIZE)?;
            f.cookie_ok().then_some((f, ok))
        } else {
            None
        };
        let sparse_type = |f: &HardDiskFooter| f.kind().is_some_and(|k| k != DiskType::Fixed);
        let (footer, source) = match (end, copy) {
            (Some((f, true, _)), _) => (f, FooterSource::End),
            (end, Some((c, true))) if sparse_type(&c) => {
                let (kind, why) = match &end {
                    Some(_) => (CorruptionKind::FooterChecksum, "checksum mismatch"),
                    None => (CorruptionKind::FooterCookie, "no `conectix` cookie"),
                };
                findings.push(Finding::warning(
                    kind,
                    name,
                    "hard disk footer",
                    end.as_ref()
                        .map_or(len.saturating_sub(FOOTER_SIZE as u64), |e| e.2),
                    format!("end footer invalid ({why}); using the copy at offset 0"),
                ));
                (c, FooterSource::CopyAtZero)
            }
            (Some((f, false, off)), _) => {
                let mut raw = f.to_raw_bytes()?;
                raw[0x40..0x44].fill(0);
                let computed = crate::checksum::vhd_checksum(&raw, 0x40);
                if !opts.ignore_checksums {
                    return Err(Error::Checksum {
                        file: name.into(),
                        structure: "hard disk footer",
                        offset: off,
                        kind: CorruptionKind::FooterChecksum,
                        stored: f.checksum,
                        computed,
                    });
                }
                findings.push(Finding::error(
                    CorruptionKind::FooterChecksum,
                    name,
                    "hard disk footer",
                    off,
                    format!(
                        "checksum mismatch (stored {:#010x}, computed {computed:#010x}); accepted because checksums are ignored",
                        f.checksum
                    ),
                ));
                (f, FooterSource::End)
            }
            (None, _) => {
                return Err(Error::NotAnImage {
                    file: name.into(),
                    message: "no `conectix` footer at EOF-512, EOF-511 or offset 0".into(),
                })
            }
        };
        let footer_offset = end_offset;
        let foff = match source {
            FooterSource::End => footer_offset,
            FooterSource::CopyAtZero => 0,
        };
        let Some(kind) = footer.kind() else {
            return Err(Error::corrupt(
                CorruptionKind::DiskTypeInvalid,
                name,
                "hard disk footer",
                foff + 0x3C,
                format!(
                    "Disk Type {} is not fixed (2), dynamic (3) or differencing (4)",
                    footer.disk_type
                ),
            ));
        };
        if !footer.current_size.is_multiple_of(512) {
            return Err(Error::corrupt(
                CorruptionKind::VirtualSizeInvalid,
                name,
                "hard disk footer",
                foff + 0x30,
                format!(
                    "Current Size {} is not a multiple of 512",
                    footer.current_size
                ),
            ));
        }
        let sparse = match kind {
            DiskType::Fixed => {
                if footer.current_size > footer_offset {
                    return Err(Error::corrupt(
                        CorruptionKind::FixedDiskTruncated,
                        name,
                        "hard disk footer",
                        foff + 0x30,
                        format!(
                            "fixed disk Current Size {} exceeds the {footer_offset} data bytes in front of the footer",
                            footer.current_size
                        ),
                    ));
                }
                None
            }
            DiskType::Dynamic | DiskType::Differencing => Some(Self::open_sparse(
                name,
                st,
                len,
                &footer,
                foff,
                kind == DiskType::Differencing,
                opts,
                &mut findings,
            )?),
        };
        let mut img = VhdImage {
            name: name.into(),
            storage,
            opts,
            footer,
            footer_source: source,
            footer_offset,
            sparse,
            findings,
            journal,
            file,
        };
        img.repair_footer_copy()?;
        Ok(img)
    }

    #[allow(clippy::too_many_arguments)]
    fn open_sparse(
        name: &str,
        st: &dyn Storage,
        len: u64,
        footer: &HardDiskFooter,
        foff: u64,
        differencing: bool,
        opts: OpenOptions,
        findings: &mut Vec<Finding>,
    ) -> Result<Sparse> {
        let ho = footer.data_offset;
        if ho.checked_add(HEADER_SIZE as u64).is_none_or(|e| e > len) {
            return Err(Error::corrupt(
                CorruptionKind::DynamicHeaderOutsideFile,
                name,
                "hard disk footer",
                foff + 0x10,
                format!("Data Offset {ho:#x} does not leave a 1024-byte dynamic disk header inside the {len}-byte file"),
            ));
        }
        let mut hb = [0u8; HEADER_SIZE];
        st.read_at(&mut hb, ho).ctx(name)?;
        let (header, hok) = DynamicDiskHeader::parse(&hb, name, ho)?;
        if header.cookie != HEADER_COOKIE {
            return Err(Error::corrupt(
                CorruptionKind::DynamicHeaderCookie,
                name,
                "dynamic disk header",
                ho,
                "cookie is not `cxsparse`",
            ));
        }
        if !hok {
            let computed = crate::checksum::vhd_checksum(&hb, 0x24);
            if !opts.ignore_checksums {
                return Err(Error::Checksum {
                    file: name.into(),
                    structure: "dynamic disk header",
                    offset: ho,
                    kind: CorruptionKind::DynamicHeaderChecksum,
                    stored: header.checksum,
                    computed,
                });
            }
            findings.push(Finding::error(
                CorruptionKind::DynamicHeaderChecksum,
                name,
                "dynamic disk header",
                ho,
                format!(
                    "checksum mismatch (stored {:#010x}, computed {computed:#010x}); accepted because checksums are ignored",
                    header.checksum
                ),
            ));
        }
        if header.header_version != HEADER_VERSION {
            return Err(Error::corrupt(
                CorruptionKind::DynamicHeaderVersion,
                name,
                "dynamic disk header",
                ho + 0x18,
                format!(
                    "Header Version {:#010x} is not 0x00010000",
                    header.header_version
                ),
            ));
        }
        let bs = header.block_size;
        if bs < 512
            || !bs.is_multiple_of(512)
            || !(bs / 512).is_power_of_two()
            || bs > MAX_BLOCK_SIZE
        {
            return Err(Error::corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                "dynamic disk header",
                ho + 0x20,
                format!("Block Size {bs} is not a power-of-two number of 512-byte sectors between 512 B and 256 MiB"),
            ));
        }
        let block_size = u64::from(bs);
        let size = footer.current_size;
        if size > MAX_SPARSE_SIZE {
            return Err(Error::corrupt(
                CorruptionKind::VirtualSizeInvalid,
                name,
                "hard disk footer",
                foff + 0x30,
                format!("Current Size {size} exceeds the 2 TiB a dynamic VHD can address"),
            ));
        }
        let needed = size.div_ceil(block_size);
        let entries = u64::from(header.max_table_entries);
        if entries < needed {
            return Err(Error::corrupt(
                CorruptionKind::MaxTableEntriesInvalid,
                name,
                "dynamic disk header",
                ho + 0x1C,
                format!("Max Table Entries {entries} x Block Size {bs} does not cover Current Size {size} ({needed} entries needed)"),
            ));
        }
        if entries > needed + BAT_SLACK_ENTRIES {
            return Err(Error::corrupt(
                CorruptionKind::MaxTableEntriesInvalid,
                name,
                "dynamic disk header",
                ho + 0x1C,
                format!(
                    "Max Table Entries {entries} is far more than the {needed} Current Size needs"
                ),
            ));
        }
        let to = header.table_offset;
        let bat_bytes = entries * 4;
        if to.checked_add(bat_bytes).is_none_or(|e| e > len) {
            return Err(Error::corrupt(
                CorruptionKind::BatOutsideFile,
                name,
                "dynamic disk header",
                ho + 0x10,
                format!(
                    "Table Offset {to:#x} + {bat_bytes} BAT bytes lies outside the {len}-byte file"
                ),
            ));
        }
        let mut bb = vec![0u8; bat_bytes as usize];
        st.read_at(&mut bb, to).ctx(name)?;
        let bat = BlockAllocationTable::parse(&bb, header.max_table_entries, name, to)?.entries;

        let mut locators = Vec::new();
        if differencing {
            for (i, e) in header.parent_locators.iter().enumerate() {
                if !e.is_used() {
                    continue;
                }
                let eoff = ho + 0x240 + 24 * i as u64;
                let dl = e.platform_data_length;
                let fits = e
                    .platform_data_offset
                    .checked_add(u64::from(dl))
                    .is_some_and(|x| x <= len);
                if dl > MAX_LOCATOR_DATA || !fits {
                    findings.push(Finding::error(
                        CorruptionKind::LocatorOutsideFile,
                        name,
                        "parent locator entry",
                        eoff,
                        format!(
                            "{} locator data ({dl} bytes at {:#x}) lies outside the file or exceeds 64 KiB; entry ignored",
                            e.code_text(),
                            e.platform_data_offset
                        ),
                    ));
                    locators.push((*e, eoff, None));
                    continue;
                }
                let mut d = vec![0u8; dl as usize];
                st.read_at(&mut d, e.platform_data_offset).ctx(name)?;
                let text = decode_locator(e.platform_code, &d).map(|(s, _)| s);
                locators.push((*e, eoff, text));
            }
        }
        Ok(Sparse {
            header_offset: ho,
            header,
            bat,
            block_size,
            bitmap_bytes: SectorBitmap::disk_size(block_size / 512),
            differencing,
            locators,
        })
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
                if let Some((_, hint)) = decode_locator_hint(e.platform_code, t) {
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

    fn release_zero_blocks(
        &mut self,
        parent_reads_zero: &mut dyn FnMut(u64, u64) -> Result<bool>,
    ) -> Result<u64> {
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

/// The hint a decoded locator text gives, by platform code.
fn decode_locator_hint(code: u32, text: &str) -> Option<(String, PathHint)> {
    use super::parent_locator::*;
    let hint = match code {
        PLATFORM_W2RU | PLATFORM_WI2R => PathHint::Relative(text.into()),
        PLATFORM_W2KU | PLATFORM_WI2K => PathHint::AbsoluteWindows(text.into()),
        PLATFORM_MACX => PathHint::Posix(text.into()),
        _ => return None,
    };
    Some((text.into(), hint))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
