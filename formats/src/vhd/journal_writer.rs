//! Writing a redo journal (`<image>.cfjournal`, format in `journal.rs`):
//! the fixed-VHD batch sends every change here, the sparse batch the
//! changes to blocks the image already holds (`--held-blocks journal`).
//!
//! Ordering rules, in the order they apply:
//! 1. Records are appended in the order they are staged; replay applies
//!    them in that order, so a later record over the same bytes wins.
//! 2. Before the commit record is written every record is durable (one
//!    flush); the commit record's CRC-32C covers every byte before it, so a
//!    torn journal is recognised whatever subset of writes survived.
//! 3. The commit record durable is THE commit point of the batch.
//! 4. The image is written (replay) only after that, and flushed before the
//!    journal is removed.
//!
//! Records go through a `WriteCombiner` over the journal file: a merge of
//! small runs writes one record header and one small piece per run, which
//! would otherwise cost two system calls each.

use std::sync::Arc;

use super::journal::{
    self, JournalHeader, JournalRecordHeader, JOURNAL_HEADER_SIZE, RECORD_COMMIT, RECORD_DATA,
    RECORD_HEADER_SIZE, RECORD_ZERO,
};
use super::journal_slot::JournalSlot;
use crate::combine::{Payload, WriteCombiner};
use crate::error::IoContext;
use crate::{CorruptionKind, Error, Result, Storage};

pub(super) struct JournalWriter {
    slot: JournalSlot,
    jst: Arc<dyn Storage>,
    /// Where the next record goes.
    pos: u64,
    combiner: WriteCombiner,
    /// The commit record may have been written: the journal must survive.
    committed: bool,
}

impl JournalWriter {
    /// Create the journal (replacing a stale one; its name durable) and
    /// write its header.
    pub(super) fn create(slot: JournalSlot, header: &JournalHeader) -> Result<Self> {
        let jname = slot.path.display().to_string();
        let jst = slot.create().ctx(&jname)?;
        let mut w = JournalWriter {
            slot,
            jst,
            pos: JOURNAL_HEADER_SIZE,
            combiner: WriteCombiner::default(),
            committed: false,
        };
        // A new file reads zeros: gaps need no read-back.
        w.combiner.fresh_zeros(0, u64::MAX / 2);
        w.put(0, Payload::Bytes(&header.to_bytes()?))?;
        Ok(w)
    }

    pub(super) fn name(&self) -> String {
        self.slot.path.display().to_string()
    }

    fn put(&mut self, at: u64, p: Payload<'_>) -> Result<()> {
        let name = self.name();
        self.combiner.put(self.jst.as_ref(), at, p).ctx(&name)
    }

    /// Append a record: image bytes `[offset, offset + payload.len())`
    /// become the payload (zeros: a zero record, no data). Returns where
    /// the record's data lies in the journal (`read_back`).
    pub(super) fn record(&mut self, offset: u64, payload: Payload<'_>) -> Result<u64> {
        let length = payload.len();
        let kind = match payload {
            Payload::Zeros(_) => RECORD_ZERO,
            _ => RECORD_DATA,
        };
        let h = JournalRecordHeader::data(kind, offset, length).to_bytes()?;
        let at = self.pos;
        self.put(at, Payload::Bytes(&h))?;
        self.pos += RECORD_HEADER_SIZE;
        let data_at = self.pos;
        if kind == RECORD_DATA {
            self.put(data_at, payload)?;
            self.pos += length;
        }
        Ok(data_at)
    }

    /// Journal bytes at `at` (data appended earlier, perhaps still in the
    /// combiner).
    pub(super) fn read_back(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        let name = self.name();
        self.combiner.flush(self.jst.as_ref()).ctx(&name)?;
        self.jst.read_at(buf, at).ctx(&name)
    }

    /// Everything appended so far durable (the journal still uncommitted).
    pub(super) fn flush(&mut self) -> Result<()> {
        let name = self.name();
        self.combiner.flush(self.jst.as_ref()).ctx(&name)?;
        self.jst.flush().ctx(&name)
    }

    /// Commit (rules 2 and 3), then replay into `image` and remove the
    /// journal (rule 4). The last record must be the image's new end footer
    /// (`journal::recover` takes the new identity from it).
    pub(super) fn commit_and_apply(mut self, image: &dyn Storage, name: &str) -> Result<()> {
        self.flush()?;
        let jname = self.name();
        let mut c = JournalRecordHeader::data(RECORD_COMMIT, self.pos, 0);
        c.crc = journal::crc_of(self.jst.as_ref(), self.pos).ctx(&jname)?;
        self.committed = true;
        self.jst.write_at(&c.to_bytes()?, self.pos).ctx(&jname)?;
        // THE commit point.
        self.jst.flush().ctx(&jname)?;
        // Replay what is on disk, exactly as recovery would.
        let cj = journal::scan(self.jst.as_ref(), &jname)?.map_err(|why| {
            Error::corrupt(
                CorruptionKind::RedoJournalInvalid,
                &jname,
                "redo journal",
                0,
                why,
            )
        })?;
        journal::apply(image, self.jst.as_ref(), &cj, name)?;
        self.slot.remove().ctx(&jname)
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        // An abandoned batch leaves an uncommitted journal; the next open
        // discards it, but remove it now when possible.
        if !self.committed {
            let _ = self.slot.remove();
        }
    }
}
