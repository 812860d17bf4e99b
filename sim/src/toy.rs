//! Toy protocols that prove the simulator: two done right (it must find
//! nothing) and two done wrong (it must find the bug).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use formats::{Access, EntryKind, Namespace};

use crate::explore::{CrashContext, Marks, Scenario};
use crate::rng::SplitMix64;

const DIR: &str = "/d";
const DATA: &str = "/d/data";
const TMP: &str = "/d/data.tmp";
const JOURNAL: &str = "/d/data.journal";

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Deterministic bytes, different per tag.
pub fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut r = SplitMix64::new(tag);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn read_all(ns: &Arc<dyn Namespace>, path: &str) -> Result<Option<Vec<u8>>, String> {
    let p = Path::new(path);
    if ns.kind(p).map_err(io(path))? == EntryKind::Missing {
        return Ok(None);
    }
    let f = ns.open(p, Access::Read).map_err(io(path))?;
    let len = usize::try_from(f.len().map_err(io(path))?).map_err(|e| e.to_string())?;
    let mut v = vec![0u8; len];
    f.read_at(&mut v, 0).map_err(io(path))?;
    Ok(Some(v))
}

/// Compare a file with the old and new contents in 64 KiB pieces (no
/// whole-file buffer): old or new is fine, old is not once `must_be_new`.
fn judge(
    ns: &Arc<dyn Namespace>,
    path: &str,
    old: &[u8],
    new: &[u8],
    must_be_new: bool,
    why: &str,
) -> Result<(), String> {
    let p = Path::new(path);
    if ns.kind(p).map_err(io(path))? == EntryKind::Missing {
        return Err(format!("{path} is missing"));
    }
    let f = ns.open(p, Access::Read).map_err(io(path))?;
    let len = f.len().map_err(io(path))?;
    let (mut is_old, mut is_new) = (len == old.len() as u64, len == new.len() as u64);
    let mut first_diff = None;
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0usize;
    while (is_old || is_new) && (pos as u64) < len {
        let n = buf.len().min(len as usize - pos);
        let chunk = &mut buf[..n];
        f.read_at(chunk, pos as u64).map_err(io(path))?;
        is_old &= old.get(pos..pos + n) == Some(&chunk[..]);
        if is_new && new.get(pos..pos + n) != Some(&chunk[..]) {
            is_new = false;
            first_diff = Some(pos);
        }
        pos += n;
    }
    match (is_new, is_old) {
        (true, _) => Ok(()),
        (false, true) if !must_be_new => Ok(()),
        (false, true) => Err(format!("old content although {why}")),
        (false, false) => Err(format!(
            "content is neither old nor new (len {len}, first difference from new in the 64 KiB piece at {:#x})",
            first_diff.unwrap_or(0)
        )),
    }
}

/// Replace a whole file: write a temporary, flush it, rename it over the
/// original, sync the directory. With `durable: false` the flush and the
/// sync are skipped, which loses atomicity.
#[derive(Debug, Clone)]
pub struct AtomicReplace {
    pub durable: bool,
    pub len: usize,
}

impl AtomicReplace {
    fn old(&self) -> Vec<u8> {
        pattern(1, self.len)
    }
    fn new_content(&self) -> Vec<u8> {
        pattern(2, self.len)
    }
}

impl Scenario for AtomicReplace {
    fn name(&self) -> String {
        if self.durable {
            "toy-atomic-replace".into()
        } else {
            "toy-replace-no-sync".into()
        }
    }
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        let f = ns.create(Path::new(DATA)).map_err(io(DATA))?;
        f.write_at(&self.old(), 0).map_err(io(DATA))?;
        Ok(())
    }
    fn run(&self, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String> {
        let new = self.new_content();
        let t = ns.create(Path::new(TMP)).map_err(io(TMP))?;
        for (i, chunk) in new.chunks(2048).enumerate() {
            t.write_at(chunk, (i * 2048) as u64).map_err(io(TMP))?;
        }
        if self.durable {
            // The data must be durable before the name points at it.
            t.flush().map_err(io(TMP))?;
        }
        drop(t);
        ns.rename(Path::new(TMP), Path::new(DATA))
            .map_err(io(DATA))?;
        if self.durable {
            // The rename is the commit; it is durable once the directory is.
            ns.sync_dir(Path::new(DIR)).map_err(io(DIR))?;
        }
        marks.mark("done");
        Ok(())
    }
    fn check(&self, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String> {
        // Recovery: a leftover temporary is garbage.
        if ns.kind(Path::new(TMP)).map_err(io(TMP))? != EntryKind::Missing {
            ns.remove(Path::new(TMP)).map_err(io(TMP))?;
            ns.sync_dir(Path::new(DIR)).map_err(io(DIR))?;
        }
        judge(
            ns,
            DATA,
            &self.old(),
            &self.new_content(),
            ctx.run_finished(),
            "the replace had returned",
        )
    }
}

/// Overwrite sectors in place with one multi-sector write: a crash can tear
/// it.
#[derive(Debug, Clone)]
pub struct InPlaceOverwrite {
    pub len: usize,
}

impl Scenario for InPlaceOverwrite {
    fn name(&self) -> String {
        "toy-inplace-overwrite".into()
    }
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        let f = ns.create(Path::new(DATA)).map_err(io(DATA))?;
        f.write_at(&pattern(1, self.len), 0).map_err(io(DATA))
    }
    fn run(&self, ns: &Arc<dyn Namespace>, _marks: &Marks) -> Result<(), String> {
        let f = ns.open(Path::new(DATA), Access::Write).map_err(io(DATA))?;
        f.write_at(&pattern(2, self.len), 0).map_err(io(DATA))?;
        f.flush().map_err(io(DATA))
    }
    fn check(&self, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String> {
        judge(
            ns,
            DATA,
            &pattern(1, self.len),
            &pattern(2, self.len),
            ctx.run_finished(),
            "the write had been flushed",
        )
    }
}

const JOURNAL_MAGIC: &[u8; 8] = b"TOYJRNL1";
const JOURNAL_HEADER: usize = 32;

/// FNV-1a, 64 bits: enough to tell a torn journal from a whole one in a toy.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Overwrite a region in place behind a redo journal: journal written,
/// flushed and its name made durable (the commit), then the region written
/// in `chunk`-sized pieces, flushed, journal removed. Recovery replays a
/// valid journal. Correct: old or new at every crash point, new once
/// committed.
#[derive(Debug, Clone)]
pub struct JournaledOverwrite {
    pub file_len: usize,
    pub region_offset: usize,
    pub region_len: usize,
    pub chunk: usize,
    pub tag: &'static str,
    /// (old, new) file contents, computed once.
    pub cache: OnceLock<(Vec<u8>, Vec<u8>)>,
}

impl JournaledOverwrite {
    fn old(&self) -> Vec<u8> {
        pattern(1, self.file_len)
    }
    fn region(&self) -> Vec<u8> {
        pattern(3, self.region_len)
    }
    fn contents(&self) -> &(Vec<u8>, Vec<u8>) {
        self.cache.get_or_init(|| (self.old(), self.new_content()))
    }
    fn new_content(&self) -> Vec<u8> {
        let mut v = self.old();
        if let Some(dst) = v.get_mut(self.region_offset..self.region_offset + self.region_len) {
            dst.copy_from_slice(&self.region());
        }
        v
    }

    /// Replay a whole journal, discard a torn one.
    fn recover(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        let Some(j) = read_all(ns, JOURNAL)? else {
            return Ok(());
        };
        if let Some((off, payload)) = parse_journal(&j) {
            let d = ns.open(Path::new(DATA), Access::Write).map_err(io(DATA))?;
            d.write_at(payload, off).map_err(io(DATA))?;
            // The data must be durable before the journal that could redo
            // it goes away.
            d.flush().map_err(io(DATA))?;
        }
        ns.remove(Path::new(JOURNAL)).map_err(io(JOURNAL))?;
        ns.sync_dir(Path::new(DIR)).map_err(io(DIR))
    }
}

/// (target offset, payload) of a whole journal; None for a torn one.
fn parse_journal(j: &[u8]) -> Option<(u64, &[u8])> {
    if j.get(..8)? != JOURNAL_MAGIC.as_slice() {
        return None;
    }
    let word = |i: usize| {
        j.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (off, len, sum) = (word(8)?, word(16)?, word(24)?);
    let payload = j.get(JOURNAL_HEADER..JOURNAL_HEADER.checked_add(usize::try_from(len).ok()?)?)?;
    (fnv1a(&[j.get(8..24)?, payload]) == sum).then_some((off, payload))
}

impl Scenario for JournaledOverwrite {
    fn name(&self) -> String {
        format!("toy-journaled-overwrite{}", self.tag)
    }
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        let f = ns.create(Path::new(DATA)).map_err(io(DATA))?;
        f.write_at(&self.old(), 0).map_err(io(DATA))
    }
    fn run(&self, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String> {
        let region = self.region();
        let mut rec = Vec::with_capacity(JOURNAL_HEADER + region.len());
        rec.extend_from_slice(JOURNAL_MAGIC);
        rec.extend_from_slice(&(self.region_offset as u64).to_le_bytes());
        rec.extend_from_slice(&(region.len() as u64).to_le_bytes());
        let sum = fnv1a(&[&rec[8..24], &region]);
        rec.extend_from_slice(&sum.to_le_bytes());
        rec.extend_from_slice(&region);
        let j = ns.create(Path::new(JOURNAL)).map_err(io(JOURNAL))?;
        j.write_at(&rec, 0).map_err(io(JOURNAL))?;
        // Commit = journal content durable AND its name durable.
        j.flush().map_err(io(JOURNAL))?;
        ns.sync_dir(Path::new(DIR)).map_err(io(DIR))?;
        marks.mark("commit");
        let d = ns.open(Path::new(DATA), Access::Write).map_err(io(DATA))?;
        for (i, c) in region.chunks(self.chunk.max(1)).enumerate() {
            d.write_at(c, (self.region_offset + i * self.chunk.max(1)) as u64)
                .map_err(io(DATA))?;
        }
        // Applied data durable before the journal goes.
        d.flush().map_err(io(DATA))?;
        drop(j);
        ns.remove(Path::new(JOURNAL)).map_err(io(JOURNAL))?;
        ns.sync_dir(Path::new(DIR)).map_err(io(DIR))
    }
    fn check(&self, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String> {
        self.recover(ns)?;
        let (old, new) = self.contents();
        judge(
            ns,
            DATA,
            old,
            new,
            ctx.passed("commit"),
            "the journal had been committed",
        )
    }
}

/// The correct toys (what a default `cargo xtask sim` run should pass).
pub fn correct() -> Vec<Arc<dyn Scenario>> {
    vec![
        Arc::new(AtomicReplace {
            durable: true,
            len: 4096,
        }),
        Arc::new(JournaledOverwrite {
            file_len: 16384,
            region_offset: 1024,
            region_len: 4096,
            chunk: 2048,
            tag: "",
            cache: OnceLock::new(),
        }),
    ]
}

/// The broken toys (the simulator must report violations).
pub fn broken() -> Vec<Arc<dyn Scenario>> {
    vec![
        Arc::new(AtomicReplace {
            durable: false,
            len: 8192,
        }),
        Arc::new(InPlaceOverwrite { len: 4096 }),
    ]
}

/// A larger correct toy for throughput measurements: a 4 MiB file, 256 KiB
/// rewritten in 4 KiB pieces behind a journal (spaces far too large to
/// enumerate, so everything past the setup is sampled).
pub fn large() -> Arc<dyn Scenario> {
    Arc::new(JournaledOverwrite {
        file_len: 4 << 20,
        region_offset: 1 << 20,
        region_len: 256 << 10,
        chunk: 4096,
        tag: "-4m",
        cache: OnceLock::new(),
    })
}

/// Every toy, by name lookup.
pub fn all() -> Vec<Arc<dyn Scenario>> {
    let mut v = correct();
    v.extend(broken());
    v.push(large());
    v
}
