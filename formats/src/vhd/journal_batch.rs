//! The fixed-VHD merge batch (DESIGN.md section 5): a fixed disk has no
//! indirection, so every change goes into the redo journal
//! (`journal_writer.rs`) first and is replayed into the image after the
//! commit record is durable.

use super::batch::{check_grow, new_footer};
use super::image::VhdImage;
use super::journal::JournalHeader;
use super::journal_writer::JournalWriter;
use crate::combine::Payload;
use crate::error::IoContext;
use crate::image::MergeBatch;
use crate::params::Identity;
use crate::{Error, Result, Storage};

/// Fixed disk: every change goes into the redo journal first.
pub(super) struct JournalBatch<'a> {
    img: &'a mut VhdImage,
    journal: JournalWriter,
    new_size: u64,
    /// The old footer's bytes have a zero record (see `grow`).
    old_footer_zeroed: bool,
}

impl<'a> JournalBatch<'a> {
    pub(super) fn new(img: &'a mut VhdImage) -> Result<Self> {
        let Some(slot) = img.journal.clone() else {
            return Err(Error::Unsupported {
                file: img.name.clone(),
                message: "a fixed VHD merge needs a journal slot (<image>.cfjournal)".into(),
            });
        };
        if img.footer_offset != img.footer.current_size {
            return Err(Error::Unsupported {
                file: img.name.clone(),
                message: "fixed VHD whose footer is not right after the data".into(),
            });
        }
        let len = img.storage.len().ctx(&img.name)?;
        let h = JournalHeader::new(img.footer.unique_id, img.footer.time_stamp, len);
        let journal = JournalWriter::create(slot, &h)?;
        let new_size = img.footer.current_size;
        Ok(JournalBatch {
            img,
            journal,
            new_size,
            old_footer_zeroed: false,
        })
    }

    fn zero_old_footer(&mut self) -> Result<()> {
        let old_size = self.img.footer.current_size;
        if self.old_footer_zeroed || self.new_size <= old_size {
            return Ok(());
        }
        let old_len = self.img.storage.len().ctx(&self.img.name)?;
        self.journal.record(
            old_size,
            Payload::Zeros(old_len.min(self.new_size).saturating_sub(old_size)),
        )?;
        self.old_footer_zeroed = true;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        crate::image::check_sector_range(&self.img.name, offset, len, 512, self.new_size)
    }
}

impl MergeBatch for JournalBatch<'_> {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.journal.record(offset, Payload::Bytes(data)).map(drop)
    }

    fn copy(&mut self, offset: u64, len: u64, src: &dyn Storage, src_offset: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.journal
            .record(
                offset,
                Payload::From {
                    src,
                    offset: src_offset,
                    len,
                },
            )
            .map(drop)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.journal.record(offset, Payload::Zeros(len)).map(drop)
    }

    fn grow(&mut self, new_virtual_size: u64) -> Result<()> {
        check_grow(&self.img.name, self.new_size, new_virtual_size, 1 << 44)?;
        self.new_size = new_virtual_size;
        // Ordering: the old footer becomes disk data and must read zeros
        // unless a later record writes it. Records apply in journal order,
        // so its zero record goes here, before any data staged after the
        // grow, never at the commit where it would wipe merged sectors
        // that cross the old end.
        self.zero_old_footer()?;
        Ok(())
    }

    fn prepare(&mut self) -> Result<()> {
        // Staged records durable (the journal is still uncommitted).
        self.journal.flush()
    }

    fn commit(self: Box<Self>, new_identity: Identity) -> Result<()> {
        let JournalBatch {
            img,
            mut journal,
            new_size,
            old_footer_zeroed,
        } = *self;
        let name = img.name.clone();
        let old_size = img.footer.current_size;
        let footer = new_footer(&img.footer, new_size, new_identity, &name)?;
        if new_size != old_size && !old_footer_zeroed {
            return Err(Error::InvalidParameter(format!(
                "{name}: size changed without grow()"
            )));
        }
        // Last record: the new footer (journal::recover reads the new
        // identity from it).
        journal.record(new_size, Payload::Bytes(&footer.to_bytes()?))?;
        journal.commit_and_apply(img.storage.as_ref(), &name)?;
        img.footer = footer;
        img.footer_offset = new_size;
        Ok(())
    }
}
