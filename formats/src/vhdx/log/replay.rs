//! Replaying the active sequence into a sink: the file itself (writable
//! open) or the in-memory overlay (read-only open).

use uuid::Uuid;

use super::descriptor::Descriptor;
use super::sequence::{read_entry, EntryRef};
use super::LogRing;
use crate::error::IoContext;
use crate::{CorruptionKind, Error, Result, Storage};

/// Where replayed sectors go.
pub trait ReplaySink {
    fn data(&mut self, offset: u64, sector: &[u8; 4096]) -> Result<()>;
    /// `data`, for a sector whose data sector lies at file offset `at`
    /// (bytes 8..4092 of it, the rest in `lead` / `trail`): a sink that
    /// only reads may keep that place instead of the bytes. Default: `data`.
    fn data_in_log(
        &mut self,
        offset: u64,
        sector: &[u8; 4096],
        at: u64,
        lead: &[u8; 8],
        trail: &[u8; 4],
    ) -> Result<()> {
        let _ = (at, lead, trail);
        self.data(offset, sector)
    }
    fn zero(&mut self, offset: u64, length: u64) -> Result<()>;
    /// Make the file at least `len` bytes long.
    fn extend_to(&mut self, len: u64) -> Result<()>;
    /// Everything replayed so far reaches the sink's target (a sink may
    /// hold consecutive sectors to write them as one). Default: nothing.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The entry at ring position `pos`, validated, or why it is not one (the
/// active sequence was found valid, so a failure here is corruption).
fn read_entry_or_corrupt(
    ring: &LogRing<'_>,
    pos: u64,
    log_guid: Uuid,
) -> Result<super::sequence::LogEntry> {
    read_entry(ring, pos, log_guid)?.map_err(|why| {
        Error::corrupt(
            why.kind(),
            ring.name,
            "log entry",
            ring.offset + pos,
            why.to_string(),
        )
    })
}

/// Apply every descriptor of `active` (tail to head, in order), then grow
/// the file to the head's LastFileOffset.
pub fn replay(
    ring: &LogRing<'_>,
    log_guid: Uuid,
    active: &[EntryRef],
    sink: &mut dyn ReplaySink,
) -> Result<()> {
    // A log may legitimately extend the file a little (a writer that lost
    // an unflushed extension), but MS-VHDX's own recipes flush payload
    // before they log, so the metadata a log entry targets lies inside the
    // durable file; real dirty images (Windows, QEMU) extend by nothing.
    // A hostile entry aimed terabytes past the end must not make a tiny
    // file huge, so every target is checked, before any byte is written,
    // against the file length plus one default-sized (32 MiB) block.
    const GROWTH_LIMIT: u64 = 32 << 20;
    let file_len = ring.storage.len().ctx(ring.name)?;
    let limit = file_len.saturating_add(GROWTH_LIMIT);
    for r in active {
        let too_far = |what: &str, end: u64| {
            Error::corrupt(
                CorruptionKind::LogTargetOutsideFile,
                ring.name,
                "log entry",
                ring.offset + r.pos,
                format!(
                    "{what} ends at {end:#x}, more than {GROWTH_LIMIT} bytes past the end of the {file_len}-byte file"
                ),
            )
        };
        if r.last_file_offset > limit {
            return Err(too_far("LastFileOffset", r.last_file_offset));
        }
        let e = read_entry_or_corrupt(ring, r.pos, log_guid)?;
        for d in &e.descriptors {
            let end = match d {
                Descriptor::Zero(z) => z.file_offset.saturating_add(z.zero_length),
                Descriptor::Data(dd) => dd.file_offset.saturating_add(4096),
            };
            if end > limit {
                return Err(too_far("a descriptor's target", end));
            }
        }
    }
    for r in active {
        // Entries were validated by the search; re-read them one at a time
        // so only one entry is ever held in memory.
        let e = read_entry_or_corrupt(ring, r.pos, log_guid)?;
        let dsec = super::entry_header::descriptor_sectors(e.descriptors.len() as u64);
        let mut data = e.data_sectors.iter();
        let mut i = 0u64;
        for d in &e.descriptors {
            match d {
                Descriptor::Zero(z) => sink.zero(z.file_offset, z.zero_length)?,
                Descriptor::Data(dd) => {
                    let ds = data.next().ok_or_else(|| {
                        Error::corrupt(
                            CorruptionKind::LogEntryInvalid,
                            ring.name,
                            "log entry",
                            ring.offset + r.pos,
                            "missing data sector",
                        )
                    })?;
                    let at = ring.offset + (r.pos + (dsec + i) * super::SECTOR) % ring.length;
                    i += 1;
                    sink.data_in_log(
                        dd.file_offset,
                        &ds.join(&dd.leading_bytes, &dd.trailing_bytes),
                        at,
                        &dd.leading_bytes,
                        &dd.trailing_bytes,
                    )?;
                }
            }
        }
    }
    sink.finish()?;
    if let Some(head) = active.last() {
        sink.extend_to(head.last_file_offset)?;
    }
    Ok(())
}

/// Replays straight into the file (writable open). Sectors for
/// consecutive targets are joined into writes of up to `RUN` bytes (a
/// journal entry's sectors usually are consecutive): one write per run,
/// not one per 4 KiB.
pub struct StorageSink<'a> {
    storage: &'a dyn Storage,
    name: &'a str,
    /// Sectors not yet written, for `[run_at, run_at + run.len())`.
    run: Vec<u8>,
    run_at: u64,
}

const RUN: usize = 1 << 20;

impl<'a> StorageSink<'a> {
    pub fn new(storage: &'a dyn Storage, name: &'a str) -> Self {
        StorageSink {
            storage,
            name,
            run: Vec::new(),
            run_at: 0,
        }
    }

    fn write_run(&mut self) -> Result<()> {
        if !self.run.is_empty() {
            self.storage
                .write_at(&self.run, self.run_at)
                .ctx(self.name)?;
            self.run.clear();
        }
        Ok(())
    }
}

impl ReplaySink for StorageSink<'_> {
    fn data(&mut self, offset: u64, sector: &[u8; 4096]) -> Result<()> {
        // Replay order matters only where targets repeat, and a repeated
        // target is never the next one of the run: joining keeps order.
        if self.run.len() >= RUN || self.run_at + self.run.len() as u64 != offset {
            self.write_run()?;
            self.run_at = offset;
        }
        self.run.extend_from_slice(sector);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        self.write_run()
    }
    fn zero(&mut self, offset: u64, length: u64) -> Result<()> {
        self.write_run()?;
        let buf = vec![0u8; (1u64 << 20).min(length) as usize];
        let mut done = 0;
        while done < length {
            let n = (buf.len() as u64).min(length - done);
            self.storage
                .write_at(&buf[..n as usize], offset + done)
                .ctx(self.name)?;
            done += n;
        }
        Ok(())
    }
    fn extend_to(&mut self, len: u64) -> Result<()> {
        if self.storage.len().ctx(self.name)? < len {
            self.storage.set_len(len).ctx(self.name)?;
        }
        Ok(())
    }
}

/// Open step: with LogGuid `log_guid` set, the log at `log` (offset,
/// length) must hold a complete active sequence whose FlushedFileOffset
/// the file reaches; it is replayed into an in-memory overlay, with a
/// finding. Returns the overlay (what reads see), `None` with no pending log.
pub fn replay_pending_in_memory(
    storage: &std::sync::Arc<dyn Storage>,
    name: &str,
    log_guid: Uuid,
    log: (u64, u64),
    file_len: u64,
    findings: &mut Vec<crate::Finding>,
) -> Result<Option<std::sync::Arc<dyn Storage>>> {
    if log_guid.is_nil() {
        return Ok(None);
    }
    let ring = LogRing {
        storage: &**storage,
        name,
        offset: log.0,
        length: log.1,
    };
    let found = super::sequence::find_active_sequence(&ring, log_guid)?;
    let Some(head) = found.active.last() else {
        let why = found
            .first_rejection
            .map(|(o, m)| format!(" (entry at {o:#x}: {m})"))
            .unwrap_or_default();
        return Err(Error::corrupt(
            CorruptionKind::LogSequenceInvalid,
            name,
            "log",
            log.0,
            format!("LogGuid {log_guid} is set but the log holds no valid complete sequence{why}"),
        ));
    };
    if file_len < head.flushed_file_offset {
        return Err(Error::corrupt(
            CorruptionKind::LogFlushedOffsetBeyondFile,
            name,
            "log entry",
            log.0 + head.pos,
            format!(
                "file is {file_len} bytes, shorter than the entry's FlushedFileOffset {} (truncated)",
                head.flushed_file_offset
            ),
        ));
    }
    let mut ov =
        super::super::overlay::ReplayOverlay::new(std::sync::Arc::clone(storage)).ctx(name)?;
    replay(&ring, log_guid, &found.active, &mut ov)?;
    findings.push(crate::Finding::warning(
        CorruptionKind::PendingLog,
        name,
        "log",
        log.0,
        format!(
            "pending log ({} entries) replayed in memory; the file is unchanged",
            found.active.len()
        ),
    ));
    Ok(Some(std::sync::Arc::new(ov)))
}
