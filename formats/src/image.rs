//! The image driver interface shared by VHD and VHDX, and format detection.

use std::sync::Arc;

use crate::layer::Layer;
use crate::params::{Identity, ImageInfo, OpenOptions, ParentLinkage, ParentLocator};
use crate::{Finding, Result, Storage};

/// An opened image file (one layer of a chain).
/// What `Image::release_zero_blocks` asks about a differencing image's
/// parent: whether it reads zeros over `(virtual offset, len)`.
pub type ParentReadsZero<'a> = dyn FnMut(u64, u64) -> Result<bool> + 'a;

pub trait Image: Layer {
    fn info(&self) -> ImageInfo;
    /// What children link to (VHDX DataWriteGuid; VHD Unique Id + Time Stamp).
    fn identity(&self) -> Identity;
    /// The recorded parent linkage; `None` for a base image.
    fn parent_linkage(&self) -> Option<ParentLinkage>;
    /// The decoded parent locator; `None` for a base image.
    fn parent_locator(&self) -> Option<ParentLocator>;
    /// Findings collected while opening (tolerated problems: warnings, and
    /// errors overridden by `ignore_checksums`).
    fn open_findings(&self) -> Vec<Finding>;
    /// Full validation (FORMATS.md 2.9 / 3.12): every structure, every BAT
    /// entry. Includes `open_findings`.
    fn check(&self) -> Result<Vec<Finding>>;
    /// The file behind the image.
    fn storage(&self) -> &Arc<dyn Storage>;

    /// Write whole logical sectors at a virtual offset (both multiples of
    /// the logical sector size, inside the virtual size). Each call leaves
    /// the file consistent at every crash point (old or new sectors, leaked
    /// space at worst). Requires a writable open.
    fn write_sectors(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Make whole sectors read as zeros and hide any parent.
    fn zero_sectors(&mut self, offset: u64, len: u64) -> Result<()>;

    /// This image opened writable from the same storage, as
    /// `image::open(name, storage, journal, opts)` would. A driver may keep
    /// what it already read and validated instead of reading it again (the
    /// VHDX BAT): the caller holds the file's lock throughout, so nothing
    /// changed it meanwhile.
    fn reopen(
        self: Box<Self>,
        journal: Option<crate::storage::JournalSlot>,
        opts: OpenOptions,
    ) -> Result<Box<dyn Image>> {
        let name = self.name().to_string();
        let storage = Arc::clone(self.storage());
        drop(self);
        open(&name, storage, journal, opts)
    }

    /// Give back the space no committed structure references: move payload
    /// blocks from the file's tail into the gaps (each move content-
    /// preserving: copy, flush, then one atomic metadata commit pointing at
    /// the new place), cut the file after its last referenced byte, and
    /// punch every gap left. A crash at any point leaves the same content;
    /// running it again finishes the job. Requires a writable open. The
    /// default (formats whose layout never leaks, a fixed VHD) does nothing.
    fn compact(&mut self) -> Result<CompactReport> {
        let len = self
            .storage()
            .len()
            .map_err(|e| crate::Error::io(self.name(), e))?;
        Ok(CompactReport {
            length_before: len,
            length_after: len,
            ..CompactReport::default()
        })
    }

    /// `compact --zero-blocks`: stop storing blocks whose data is all
    /// zeros (Optimize-VHD's zero-block pass), each change content-
    /// preserving and atomic; a later `compact` gives their space back. A
    /// differencing image releases a block only where
    /// `parent_reads_zero(virtual offset, len)` says its parent reads zeros
    /// there too. Returns how many blocks it released. The default (a
    /// fixed image) releases none.
    fn release_zero_blocks(&mut self, parent_reads_zero: &mut ParentReadsZero<'_>) -> Result<u64> {
        let _ = parent_reads_zero;
        Ok(0)
    }

    /// Would `MergeBatch::set_parent(parent)` accept this parent? The same
    /// checks, on a read-only open, so a caller can refuse before it opens
    /// the image writable (which alone changes a VHDX's header). Default:
    /// nothing to check.
    fn check_parent_spec(&self, parent: &crate::params::ParentSpec) -> Result<()> {
        let _ = parent;
        Ok(())
    }

    /// Start an atomic batch (the merge's write path): nothing staged is
    /// visible to any reader until `MergeBatch::commit`, and after it all is.
    fn begin_batch(&mut self) -> Result<Box<dyn MergeBatch + '_>>;
}

/// `[offset, offset + len)` must be whole `sector`-byte sectors inside a
/// `disk`-byte virtual disk: what every write path and batch of every
/// driver checks before it stages anything.
pub(crate) fn check_sector_range(
    name: &str,
    offset: u64,
    len: u64,
    sector: u64,
    disk: u64,
) -> crate::Result<()> {
    if !offset.is_multiple_of(sector)
        || !len.is_multiple_of(sector)
        || offset.checked_add(len).is_none_or(|e| e > disk)
    {
        return Err(crate::Error::InvalidParameter(format!(
            "{name}: range {offset:#x}+{len:#x} is not whole {sector}-byte sectors inside the {disk}-byte disk"
        )));
    }
    Ok(())
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// Blocks (and metadata units) moved to a lower place.
    pub moved: u64,
    pub bytes_moved: u64,
    /// Bytes given back to the file system inside the file (holes punched).
    pub bytes_punched: u64,
    pub length_before: u64,
    pub length_after: u64,
}

/// An atomic batch of changes to one image. Staging writes payload only into
/// space that no committed metadata references; the commit is a single
/// sector-sized (VHD footer, VHD journal commit record) or header-sized
/// (VHDX header) write, so a crash at any instant leaves old or new.
pub trait MergeBatch {
    /// Stage bytes for whole sectors at `offset` (virtual).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Stage bytes copied from another file (lets the kernel move them).
    /// Default: read into memory and `write`.
    fn copy(&mut self, offset: u64, len: u64, src: &dyn Storage, src_offset: u64) -> Result<()> {
        let mut buf = vec![0u8; len as usize];
        src.read_at(&mut buf, src_offset)
            .map_err(|e| crate::Error::io("merge source", e))?;
        self.write(offset, &buf)
    }
    /// `copy` from a source the batch may hold on to: a batch can then
    /// join this copy with the ones that follow it into one (a dynamic
    /// VHD clones consecutive whole blocks laid out like the source's as
    /// one range). Issued no later than `prepare`. Default: `copy`.
    fn copy_joinable(
        &mut self,
        offset: u64,
        len: u64,
        src: &Arc<dyn Storage>,
        src_offset: u64,
    ) -> Result<()> {
        self.copy(offset, len, src.as_ref(), src_offset)
    }
    /// The batch will likely need about `bytes` of fresh space (the
    /// preflight's peak): a batch that must make room durable before it
    /// writes into it (a dynamic VHD's reserved end) can make all of it at
    /// once, one flush instead of one per doubling. Only a hint, given by
    /// a caller that compacts the image after the commit (a VHD leaves
    /// what it reserved but did not use as a hole the compaction cuts off).
    fn expect_fresh(&mut self, _bytes: u64) -> Result<()> {
        Ok(())
    }
    /// How to replace part of a block the image already holds; call
    /// before `expect_fresh`, which makes the room a journal needs (only a
    /// caller that compacts after the commit asks for one). Default:
    /// rebuild.
    fn held_blocks(&mut self, _policy: crate::params::HeldBlocks) {}

    /// Blocks the image held before this batch that it changed so far,
    /// journaled or rebuilt (default: none; a fixed VHD has no blocks).
    fn held_blocks_changed(&self) -> crate::params::HeldBlocksChanged {
        crate::params::HeldBlocksChanged::default()
    }
    /// Stage: whole sectors read zeros and hide any parent.
    fn zero(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Stage growth of the virtual size (never shrinks).
    fn grow(&mut self, new_virtual_size: u64) -> Result<()>;
    /// Stage the end of the parent link (`rebase --standalone`): every
    /// sector this image stores in a block but leaves to its parent (no
    /// bitmap bit) gets `parent_view(offset, buf)`'s bytes, and at the
    /// commit the image becomes a dynamic one. Stage every other change
    /// first (the blocks it creates are filled too). Only a differencing
    /// image has a parent to drop.
    fn make_standalone(
        &mut self,
        parent_view: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let _ = parent_view;
        Err(crate::Error::InvalidParameter(
            "this image has no parent link to drop".into(),
        ))
    }
    /// Stage a new parent link (`Set-VHD -ParentPath`): the locator's paths
    /// and the linkage recorded for `parent`, visible with the commit like
    /// everything staged. Only a differencing image has a parent to set.
    fn set_parent(&mut self, parent: &crate::params::ParentSpec) -> Result<()> {
        let _ = parent;
        Err(crate::Error::InvalidParameter(
            "this image has no parent link to set".into(),
        ))
    }
    /// Make every staged byte durable (flush), still invisible to readers.
    fn prepare(&mut self) -> Result<()>;
    /// The single commit point, then apply and clean up. The image takes
    /// `new_identity` (a new VHDX DataWriteGuid; a new VHD Unique Id and
    /// Time Stamp) so that stale children no longer link to it.
    fn commit(self: Box<Self>, new_identity: Identity) -> Result<()>;
}

/// Sniff the format of a file from its first and last bytes.
pub fn detect(storage: &dyn Storage) -> std::io::Result<Option<crate::params::Format>> {
    let len = storage.len()?;
    if len >= 8 {
        let mut sig = [0u8; 8];
        storage.read_at(&mut sig, 0)?;
        if &sig == b"vhdxfile" {
            return Ok(Some(crate::params::Format::Vhdx));
        }
        if &sig == b"conectix" {
            return Ok(Some(crate::params::Format::Vhd));
        }
    }
    for back in [512u64, 511] {
        if len >= back {
            let mut sig = [0u8; 8];
            storage.read_at(&mut sig, len - back)?;
            if &sig == b"conectix" {
                return Ok(Some(crate::params::Format::Vhd));
            }
        }
    }
    Ok(None)
}

/// Open any image, detecting its format. `journal` is the fixed-VHD redo
/// journal beside the file (`<path>.cfjournal`) when one exists.
pub fn open(
    name: &str,
    storage: Arc<dyn Storage>,
    journal: Option<crate::storage::JournalSlot>,
    opts: OpenOptions,
) -> Result<Box<dyn Image>> {
    let format = detect(storage.as_ref()).map_err(|e| crate::Error::io(name, e))?;
    match format {
        Some(crate::params::Format::Vhdx) => crate::vhdx::open_image(name, storage, opts),
        Some(crate::params::Format::Vhd) => crate::vhd::open_image(name, storage, journal, opts),
        // A fixed VHD whose journal apply was interrupted may not end in a
        // footer yet; its committed journal knows how to finish it.
        None if journal
            .as_ref()
            .and_then(|j| j.open_existing(crate::Access::Read).ok().flatten())
            .is_some() =>
        {
            crate::vhd::open_image(name, storage, journal, opts)
        }
        None => Err(crate::Error::NotAnImage {
            file: name.to_string(),
            message: "no `vhdxfile` signature at offset 0 and no `conectix` footer".into(),
        }),
    }
}
