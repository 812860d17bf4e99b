//! The fixed-VHD redo journal (`<image>.cfjournal`, DESIGN.md section 5).
//!
//! A fixed VHD has no indirection, so a merge batch logs every change to the
//! image file here first. Layout: a [`JournalHeader`], then records (a
//! [`JournalRecordHeader`], followed for data records by `length` bytes), and
//! a final commit record whose CRC-32C covers every byte before it. A journal
//! without a matching commit record is torn or unfinished and is discarded;
//! a committed one is replayed (writable open) or overlaid in memory
//! (read-only open). Records are absolute overwrites, so replay is idempotent
//! and a crash during apply is finished by the next writable open.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use binrw::binrw;

use super::codec;
use super::footer::{HardDiskFooter, FOOTER_SIZE};
use crate::error::IoContext;
use crate::params::Identity;
use crate::storage::{Access, JournalSlot};
use crate::{CopyRange, CorruptionKind, Finding, Result, Storage};

pub const JOURNAL_MAGIC: [u8; 8] = *b"cfvhdjnl";
pub const JOURNAL_VERSION: u32 = 1;
pub const JOURNAL_HEADER_SIZE: u64 = 48;
pub const RECORD_HEADER_SIZE: u64 = 32;

pub const RECORD_DATA: u32 = 1;
pub const RECORD_ZERO: u32 = 2;
pub const RECORD_COMMIT: u32 = 3;

/// Records may not reach past this image offset (16 TiB): a bound on what a
/// hostile journal can make replay write.
const MAX_TARGET: u64 = 1 << 44;
/// Index size bound for hostile journals.
const MAX_RECORDS: usize = 1 << 24;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHeader {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    /// Identity of the image the journal was written against.
    pub unique_id: [u8; 16],
    pub time_stamp: u32,
    pub reserved: u32,
    /// Image file length when the journal was started.
    pub image_length: u64,
}

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRecordHeader {
    pub kind: u32,
    pub reserved: u32,
    /// Data/zero: image byte offset. Commit: journal length before it.
    pub offset: u64,
    /// Data/zero: bytes. Commit: 0.
    pub length: u64,
    /// Commit: CRC-32C of the journal bytes before this record.
    pub crc: u32,
    pub reserved2: u32,
}

impl JournalHeader {
    pub fn new(identity: [u8; 16], time_stamp: u32, image_length: u64) -> Self {
        JournalHeader {
            magic: JOURNAL_MAGIC,
            version: JOURNAL_VERSION,
            header_size: JOURNAL_HEADER_SIZE as u32,
            unique_id: identity,
            time_stamp,
            reserved: 0,
            image_length,
        }
    }
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(self, "journal header")
    }
}

impl JournalRecordHeader {
    pub fn data(kind: u32, offset: u64, length: u64) -> Self {
        JournalRecordHeader {
            kind,
            reserved: 0,
            offset,
            length,
            crc: 0,
            reserved2: 0,
        }
    }
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(self, "journal record")
    }
}

/// One indexed change: bytes `[offset, offset+length)` of the image become
/// the journal bytes at `data_at` (None: zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRecord {
    pub offset: u64,
    pub length: u64,
    pub data_at: Option<u64>,
}

/// A committed journal, indexed (record data stays in the file).
#[derive(Debug, Clone)]
pub struct CommittedJournal {
    pub header: JournalHeader,
    pub records: Vec<JournalRecord>,
}

impl CommittedJournal {
    /// Image length after replay.
    pub fn final_length(&self) -> u64 {
        self.records
            .iter()
            .map(|r| r.offset + r.length)
            .max()
            .unwrap_or(0)
            .max(self.header.image_length)
    }
}

/// CRC-32C of `[0, len)` of a storage, read in bounded pieces.
pub fn crc_of(st: &dyn Storage, len: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut crc = 0u32;
    let mut pos = 0;
    while pos < len {
        let n = (buf.len() as u64).min(len - pos) as usize;
        st.read_at(&mut buf[..n], pos)?;
        crc = crate::checksum::crc32c_append(crc, &buf[..n]);
        pos += n as u64;
    }
    Ok(crc)
}

/// Scan a journal. Ok(Err(reason)) when it is not a valid committed journal.
pub fn scan(st: &dyn Storage, file: &str) -> Result<std::result::Result<CommittedJournal, String>> {
    let len = st.len().ctx(file)?;
    if len < JOURNAL_HEADER_SIZE {
        return Ok(Err(format!(
            "journal is {len} bytes, shorter than its header"
        )));
    }
    let mut hb = [0u8; JOURNAL_HEADER_SIZE as usize];
    st.read_at(&mut hb, 0).ctx(file)?;
    let header: JournalHeader = codec::decode(&hb, file, "journal header", 0)?;
    if header.magic != JOURNAL_MAGIC || header.version != JOURNAL_VERSION {
        return Ok(Err("bad journal magic or version".into()));
    }
    let mut records = Vec::new();
    let mut pos = JOURNAL_HEADER_SIZE;
    loop {
        // Each iteration consumes at least RECORD_HEADER_SIZE bytes of a
        // file of known length, so the loop is bounded.
        let Some(end) = pos.checked_add(RECORD_HEADER_SIZE).filter(|e| *e <= len) else {
            return Ok(Err(format!("no commit record (journal ends at {len})")));
        };
        let mut rb = [0u8; RECORD_HEADER_SIZE as usize];
        st.read_at(&mut rb, pos).ctx(file)?;
        let r: JournalRecordHeader = codec::decode(&rb, file, "journal record", pos)?;
        match r.kind {
            RECORD_DATA | RECORD_ZERO => {
                let target_end = r.offset.checked_add(r.length).filter(|e| *e <= MAX_TARGET);
                if target_end.is_none() {
                    return Ok(Err(format!("record at {pos} targets beyond 16 TiB")));
                }
                let data_at = if r.kind == RECORD_DATA {
                    let Some(next) = end.checked_add(r.length).filter(|e| *e <= len) else {
                        return Ok(Err(format!("record at {pos} is truncated")));
                    };
                    let at = end;
                    pos = next;
                    Some(at)
                } else {
                    pos = end;
                    None
                };
                if records.len() >= MAX_RECORDS {
                    return Ok(Err("too many journal records".into()));
                }
                records.push(JournalRecord {
                    offset: r.offset,
                    length: r.length,
                    data_at,
                });
            }
            RECORD_COMMIT => {
                if r.offset != pos {
                    return Ok(Err(format!(
                        "commit record at {pos} names length {}",
                        r.offset
                    )));
                }
                let crc = crc_of(st, pos).ctx(file)?;
                if crc != r.crc {
                    return Ok(Err(format!(
                        "commit record CRC-32C {:#010x} does not match the journal ({crc:#010x})",
                        r.crc
                    )));
                }
                return Ok(Ok(CommittedJournal { header, records }));
            }
            k => return Ok(Err(format!("unknown record kind {k} at {pos}"))),
        }
    }
}

/// The identity the journal gives the image: that of its last record when
/// it is a complete, valid footer.
fn new_identity(st: &dyn Storage, j: &CommittedJournal, file: &str) -> Option<Identity> {
    let last = j.records.last()?;
    if last.length != FOOTER_SIZE as u64 {
        return None;
    }
    let mut b = [0u8; FOOTER_SIZE];
    st.read_at(&mut b, last.data_at?).ok()?;
    let (f, ok) = HardDiskFooter::parse(&b, file, 0).ok()?;
    (ok && f.cookie_ok()).then(|| f.identity())
}

/// The identity of the image's current end footer, if it is valid.
fn image_identity(image: &dyn Storage) -> Option<Identity> {
    let len = image.len().ok()?;
    let mut b = [0u8; FOOTER_SIZE];
    image
        .read_at(&mut b, len.checked_sub(FOOTER_SIZE as u64)?)
        .ok()?;
    let (f, ok) = HardDiskFooter::parse(&b, "", 0).ok()?;
    (ok && f.cookie_ok()).then(|| f.identity())
}

/// Write the records into the image and flush.
pub fn apply(
    image: &dyn Storage,
    jst: &dyn Storage,
    j: &CommittedJournal,
    file: &str,
) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    // Ordering: the new footer (always the last record) goes first and is
    // flushed, so that at every later crash point the file still ends in a
    // valid footer and is recognised as a VHD whose journal then finishes
    // the apply. Writing data past the old end first would leave a file
    // that ends in payload and is detected as no image at all.
    if let Some(last) = j.records.last() {
        if let Some(at) = last.data_at {
            image
                .copy_from(jst, CopyRange::new(at, last.offset, last.length))
                .ctx(file)?;
            image.flush().ctx(file)?;
        }
    }
    for r in &j.records {
        match r.data_at {
            Some(at) => image
                .copy_from(jst, CopyRange::new(at, r.offset, r.length))
                .ctx(file)?,
            None => {
                let mut done = 0;
                while done < r.length {
                    let n = (zeros.len() as u64).min(r.length - done) as usize;
                    image.write_at(&zeros[..n], r.offset + done).ctx(file)?;
                    done += n as u64;
                }
            }
        }
    }
    // Ordering: the applied image must be durable before the journal that
    // could redo it is removed.
    image.flush().ctx(file)
}

/// What open found in the journal slot.
pub enum Recovery {
    /// No journal, or it was replayed/removed.
    Clean,
    /// Read-only open of a committed journal: read through this overlay.
    Overlay(Arc<dyn Storage>),
}

/// Handle a journal beside the image at open time.
pub fn recover(
    name: &str,
    image: &Arc<dyn Storage>,
    slot: &JournalSlot,
    writable: bool,
    findings: &mut Vec<Finding>,
) -> Result<Recovery> {
    let jname = slot.path.display().to_string();
    let Some(jst) = slot
        .open_existing(if writable {
            Access::Write
        } else {
            Access::Read
        })
        .ctx(&jname)?
    else {
        return Ok(Recovery::Clean);
    };
    let verdict = scan(jst.as_ref(), &jname)?;
    let verdict = verdict.and_then(|j| {
        let old = Identity::Vhd {
            unique_id: j.header.unique_id,
            timestamp: j.header.time_stamp,
        };
        match image_identity(image.as_ref()) {
            // A footer torn by an interrupted apply: the journal finishes it.
            None => Ok(j),
            Some(id) if id == old || Some(id) == new_identity(jst.as_ref(), &j, &jname) => Ok(j),
            Some(_) => Err("journal belongs to another state of the image".to_string()),
        }
    });
    match (verdict, writable) {
        (Ok(j), true) => {
            apply(image.as_ref(), jst.as_ref(), &j, name)?;
            drop(jst);
            slot.remove().ctx(&jname)?;
            Ok(Recovery::Clean)
        }
        (Ok(j), false) => {
            findings.push(Finding::warning(
                CorruptionKind::PendingJournal,
                name,
                "redo journal",
                None,
                format!(
                    "{jname}: committed journal not yet applied ({} records); reads show its content, a writable open applies it",
                    j.records.len()
                ),
            ));
            Ok(Recovery::Overlay(Arc::new(JournalOverlay::new(
                Arc::clone(image),
                jst,
                j,
                name,
            )?)))
        }
        (Err(why), true) => {
            drop(jst);
            slot.remove().ctx(&jname)?;
            findings.push(Finding::warning(
                CorruptionKind::UncommittedJournal,
                name,
                "redo journal",
                None,
                format!("{jname}: discarded an uncommitted journal: {why}"),
            ));
            Ok(Recovery::Clean)
        }
        (Err(why), false) => {
            findings.push(Finding::warning(
                CorruptionKind::UncommittedJournal,
                name,
                "redo journal",
                None,
                format!("{jname}: ignoring an uncommitted journal: {why}"),
            ));
            Ok(Recovery::Clean)
        }
    }
}

/// A read-only view of the image with a committed journal laid over it.
/// No record data is held in memory: reads find the image ranges the
/// journal rewrites in `JournalExtents` (a merge of small runs leaves
/// hundreds of thousands of records; walking them all per read would make
/// reading the whole disk quadratic).
#[derive(Debug)]
pub struct JournalOverlay {
    base: Arc<dyn Storage>,
    journal: Arc<dyn Storage>,
    extents: JournalExtents,
    len: u64,
}

/// What a committed journal leaves in each image range, as replay would:
/// disjoint ranges keyed by start, each `(end, where its first byte's data
/// lies in the journal, or None for zeros)`; the later record wins where
/// records overlap.
#[derive(Debug, Default)]
struct JournalExtents(BTreeMap<u64, (u64, Option<u64>)>);

impl JournalExtents {
    fn from_records(records: &[JournalRecord]) -> Self {
        let mut x = JournalExtents::default();
        for r in records {
            x.insert(r.offset, r.offset + r.length, r.data_at);
        }
        x
    }

    /// Lay `[start, end)` over what is there, cutting what it covers.
    fn insert(&mut self, start: u64, end: u64, data_at: Option<u64>) {
        if start >= end {
            return;
        }
        let shifted = |d: Option<u64>, by: u64| d.map(|at| at + by);
        let mut keep = Vec::new();
        if let Some((&s, &(e, d))) = self.0.range(..start).next_back() {
            if e > start {
                keep.push((s, start, d));
                if e > end {
                    keep.push((end, e, shifted(d, end - s)));
                }
                self.0.remove(&s);
            }
        }
        let inside: Vec<u64> = self.0.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, d)) = self.0.remove(&s) {
                if e > end {
                    keep.push((end, e, shifted(d, end - s)));
                }
            }
        }
        for (s, e, d) in keep {
            self.0.insert(s, (e, d));
        }
        self.0.insert(start, (end, data_at));
    }

    /// The ranges that meet `[offset, end)`, in order.
    fn meeting(&self, offset: u64, end: u64) -> impl Iterator<Item = (u64, u64, Option<u64>)> + '_ {
        let before = self
            .0
            .range(..=offset)
            .next_back()
            .filter(|(_, (e, _))| *e > offset);
        let from = offset.saturating_add(1);
        let after = self.0.range(from..end.max(from));
        before
            .into_iter()
            .chain(after)
            .map(|(&s, &(e, d))| (s, e, d))
    }
}

impl JournalOverlay {
    pub fn new(
        base: Arc<dyn Storage>,
        journal: Arc<dyn Storage>,
        j: CommittedJournal,
        file: &str,
    ) -> Result<Self> {
        let base_len = base.len().ctx(file)?;
        let len = j.final_length().max(base_len);
        Ok(JournalOverlay {
            base,
            journal,
            extents: JournalExtents::from_records(&j.records),
            len,
        })
    }
}

impl Storage for JournalOverlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))?;
        let base_len = self.base.len()?;
        let in_base = base_len.clamp(offset, end) - offset;
        if in_base > 0 {
            self.base.read_at(&mut buf[..in_base as usize], offset)?;
        }
        buf[in_base as usize..].fill(0);
        for (start, stop, data_at) in self.extents.meeting(offset, end) {
            let (s, e) = (start.max(offset), stop.min(end));
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match data_at {
                Some(at) => self.journal.read_at(dst, at + (s - start))?,
                None => dst.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only view of an image with a pending journal",
        ))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        self.write_at(&[], 0)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStorage;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_round_trip(id in any::<[u8; 16]>(), ts in any::<u32>(), len in any::<u64>(),
                              kind in any::<u32>(), off in any::<u64>(), l in any::<u64>(), crc in any::<u32>()) {
            let h = JournalHeader::new(id, ts, len);
            let b = h.to_bytes().unwrap();
            prop_assert_eq!(b.len() as u64, JOURNAL_HEADER_SIZE);
            let back: JournalHeader = codec::decode(&b, "t", "h", 0).unwrap();
            prop_assert_eq!(back, h);
            let r = JournalRecordHeader { kind, reserved: 0, offset: off, length: l, crc, reserved2: 0 };
            let b = r.to_bytes().unwrap();
            prop_assert_eq!(b.len() as u64, RECORD_HEADER_SIZE);
            let back: JournalRecordHeader = codec::decode(&b, "t", "r", 0).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn extents_read_as_the_records_replayed_in_order(
            recs in prop::collection::vec((0u64..200, 0u64..60, any::<bool>()), 0..40)
        ) {
            // Each record's data at journal offset 1000 * (i + 1); the
            // model paints every byte in record order.
            let records: Vec<JournalRecord> = recs
                .iter()
                .enumerate()
                .map(|(i, &(offset, length, zero))| JournalRecord {
                    offset,
                    length,
                    data_at: (!zero).then_some(1000 * (i as u64 + 1)),
                })
                .collect();
            let mut model = vec![None; 300];
            for r in &records {
                for b in r.offset..r.offset + r.length {
                    model[b as usize] = Some(r.data_at.map(|at| at + (b - r.offset)));
                }
            }
            let x = JournalExtents::from_records(&records);
            for off in 0..300u64 {
                let got: Vec<_> = x.meeting(off, off + 1).collect();
                match model[off as usize] {
                    None => prop_assert!(got.is_empty(), "{off}: {got:?}"),
                    Some(d) => {
                        prop_assert_eq!(got.len(), 1, "{}: {:?}", off, got);
                        let (s, _, at) = got[0];
                        prop_assert_eq!(at.map(|a| a + (off - s)), d, "{}", off);
                    }
                }
            }
        }

        #[test]
        fn scanning_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut b = bytes;
            if b.len() >= 12 {
                b[..8].copy_from_slice(&JOURNAL_MAGIC);
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
            }
            let st = MemStorage::from_vec(b);
            let _ = scan(&st, "j");
        }
    }

    fn build(records: &[(u32, u64, &[u8])], commit: bool) -> MemStorage {
        let st = MemStorage::new();
        st.write_at(&JournalHeader::new([1; 16], 7, 4096).to_bytes().unwrap(), 0)
            .unwrap();
        let mut pos = JOURNAL_HEADER_SIZE;
        for (kind, off, data) in records {
            let len = if *kind == RECORD_DATA {
                data.len() as u64
            } else {
                512
            };
            st.write_at(
                &JournalRecordHeader::data(*kind, *off, len)
                    .to_bytes()
                    .unwrap(),
                pos,
            )
            .unwrap();
            pos += RECORD_HEADER_SIZE;
            if *kind == RECORD_DATA {
                st.write_at(data, pos).unwrap();
                pos += data.len() as u64;
            }
        }
        if commit {
            let mut c = JournalRecordHeader::data(RECORD_COMMIT, pos, 0);
            c.crc = crc_of(&st, pos).unwrap();
            st.write_at(&c.to_bytes().unwrap(), pos).unwrap();
        }
        st
    }

    #[test]
    fn committed_journal_overlays_and_torn_one_is_rejected() {
        let j = build(
            &[
                (RECORD_DATA, 10, b"hello"),
                (RECORD_ZERO, 0, b""),
                (RECORD_DATA, 600, b"xy"),
            ],
            true,
        );
        let cj = scan(&j, "j").unwrap().unwrap();
        assert_eq!(cj.records.len(), 3);
        assert_eq!(cj.final_length(), 4096);
        let base: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(vec![9u8; 4096]));
        let ov = JournalOverlay::new(Arc::clone(&base), Arc::new(j), cj, "i").unwrap();
        let mut b = vec![0u8; 1024];
        ov.read_at(&mut b, 0).unwrap();
        // The zero record (0..512) was after the "hello" record, so it wins.
        assert!(b[..512].iter().all(|&x| x == 0));
        assert_eq!(&b[600..602], b"xy");
        assert_eq!(b[602], 9);
        let torn = build(&[(RECORD_DATA, 10, b"hello")], true);
        torn.write_at(b"X", JOURNAL_HEADER_SIZE + RECORD_HEADER_SIZE + 1)
            .unwrap();
        assert!(scan(&torn, "j").unwrap().is_err());
        let uncommitted = build(&[(RECORD_DATA, 10, b"hello")], false);
        assert!(scan(&uncommitted, "j").unwrap().is_err());
    }
}
