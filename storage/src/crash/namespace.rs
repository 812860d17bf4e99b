//! The crash storage: an in-memory file system implementing
//! `Namespace`, which records every operation that matters to a
//! crash while the code under test runs on it.
//!
//! The same type serves as a post-crash namespace (not recording): its files
//! are overlays over shared durable pages, so recovery code may write freely
//! without disturbing the base other states share.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::copy::copy_by_buffer;
use crate::crash::pages::{Overlay, PageMap, PAGE};
use crate::crash::trace::{Ino, Op};
use crate::lock::{Held, Locks};
use crate::mem::{names, not_found};
use crate::traits::{Access, CopyRange, EntryKind, Namespace, Storage};

/// The names and contents of a namespace at one instant, sharing pages.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub names: BTreeMap<PathBuf, Ino>,
    pub files: HashMap<Ino, Arc<PageMap>>,
    pub next_ino: Ino,
}

impl Snapshot {
    /// The content of the file named `path`.
    pub fn get(&self, path: &Path) -> Option<Vec<u8>> {
        let ino = self.names.get(path)?;
        Some(self.files.get(ino).map(|f| f.to_vec()).unwrap_or_default())
    }
}

#[derive(Debug, Default)]
struct Inner {
    names: BTreeMap<PathBuf, Ino>,
    files: HashMap<Ino, Overlay>,
    next_ino: Ino,
    /// `Some` while recording.
    trace: Option<Vec<Op>>,
    /// (trace position, label): "the run had passed this point".
    marks: Vec<(usize, String)>,
}

impl Inner {
    fn record(&mut self, op: Op) {
        if let Some(t) = self.trace.as_mut() {
            t.push(op);
        }
    }
}

/// An in-memory namespace that records (see module docs).
#[derive(Debug)]
pub struct CrashNamespace {
    me: Weak<CrashNamespace>,
    inner: Mutex<Inner>,
    locks: Locks<Ino>,
}

impl CrashNamespace {
    /// An empty namespace, not recording.
    pub fn new() -> Arc<Self> {
        Self::from_snapshot(&Snapshot::default())
    }

    /// A namespace whose files are overlays over the snapshot's pages (the
    /// snapshot is never modified).
    pub fn from_snapshot(snap: &Snapshot) -> Arc<Self> {
        let files = snap
            .files
            .iter()
            .map(|(ino, pages)| (*ino, Overlay::new(Arc::clone(pages))))
            .collect();
        Self::from_parts(snap.names.clone(), files, snap.next_ino)
    }

    pub(crate) fn from_parts(
        names: BTreeMap<PathBuf, Ino>,
        files: HashMap<Ino, Overlay>,
        next_ino: Ino,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| CrashNamespace {
            me: me.clone(),
            inner: Mutex::new(Inner {
                names,
                files,
                next_ino,
                ..Inner::default()
            }),
            locks: Locks::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arc(&self) -> io::Result<Arc<CrashNamespace>> {
        self.me
            .upgrade()
            .ok_or_else(|| io::Error::other("namespace dropped"))
    }

    /// Put a file with the given bytes at `path` (test setup; not recorded).
    pub fn insert(&self, path: impl Into<PathBuf>, bytes: &[u8]) {
        let mut inner = self.lock();
        let ino = inner.next_ino;
        inner.next_ino += 1;
        let mut f = Overlay::empty();
        // Bounded by MAX_FILE_LEN only for absurd setups; a test would see
        // the empty file.
        let _ = f.write_at(bytes, 0);
        inner.files.insert(ino, f);
        inner.names.insert(path.into(), ino);
    }

    /// The bytes of the file at `path`.
    pub fn get(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.lock();
        let f = inner.files.get(inner.names.get(path)?)?;
        let mut v = vec![0u8; usize::try_from(f.len()).ok()?];
        f.read_at(&mut v, 0).ok()?;
        Some(v)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    pub fn ino_of(&self, path: &Path) -> Option<Ino> {
        self.lock().names.get(path).copied()
    }

    /// The current names and contents, sharing pages with the live files.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            names: inner.names.clone(),
            files: inner
                .files
                .iter()
                .map(|(ino, f)| (*ino, Arc::new(f.materialize())))
                .collect(),
            next_ino: inner.next_ino,
        }
    }

    /// Everything so far is durable; start recording. Returns the base the
    /// trace applies to. Files are rebased onto the snapshot so that the
    /// base pages stay shared.
    pub fn begin_recording(&self) -> Snapshot {
        let snap = self.snapshot();
        let mut inner = self.lock();
        for (ino, pages) in &snap.files {
            inner.files.insert(*ino, Overlay::new(Arc::clone(pages)));
        }
        inner.trace = Some(Vec::new());
        inner.marks.clear();
        snap
    }

    /// Stop recording; the trace and the marks (trace position, label).
    pub fn finish_recording(&self) -> (Vec<Op>, Vec<(usize, String)>) {
        let mut inner = self.lock();
        let trace = inner.trace.take().unwrap_or_default();
        (trace, std::mem::take(&mut inner.marks))
    }

    pub fn is_recording(&self) -> bool {
        self.lock().trace.is_some()
    }

    /// Note that the run has passed a named point (e.g. "commit"). Crash
    /// points after it see the label in `CrashContext::marks`.
    pub fn mark(&self, label: &str) {
        let mut inner = self.lock();
        let pos = inner.trace.as_ref().map_or(0, Vec::len);
        inner.marks.push((pos, label.to_string()));
    }

    /// Operations recorded so far.
    pub fn trace_len(&self) -> usize {
        self.lock().trace.as_ref().map_or(0, Vec::len)
    }

    fn handle(&self, ino: Ino, lock: Held<Ino>) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(CrashFile {
            ino,
            lock,
            ns: self.arc()?,
        }))
    }
}

/// A lock-holding handle onto one inode (like a file descriptor: it keeps
/// naming the same data across renames and removes).
#[derive(Debug)]
struct CrashFile {
    ino: Ino,
    lock: Held<Ino>,
    ns: Arc<CrashNamespace>,
}

impl CrashFile {
    fn writable(&self) -> io::Result<()> {
        if self.lock.access() == Access::Read {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        Ok(())
    }
}

impl Storage for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = self.ns.lock();
        inner
            .files
            .get(&self.ino)
            .ok_or_else(not_found)?
            .read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut inner = self.ns.lock();
        inner
            .files
            .get_mut(&self.ino)
            .ok_or_else(not_found)?
            .write_at(buf, offset)?;
        inner.record(Op::Write {
            ino: self.ino,
            offset,
            data: Arc::from(buf),
        });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self
            .ns
            .lock()
            .files
            .get(&self.ino)
            .ok_or_else(not_found)?
            .len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut inner = self.ns.lock();
        inner
            .files
            .get_mut(&self.ino)
            .ok_or_else(not_found)?
            .set_len(len)?;
        inner.record(Op::SetLen { ino: self.ino, len });
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    /// Between files of one post-crash namespace (recovery re-running a
    /// merge), whole pages are shared instead of copied: the copy-on-write
    /// overlay makes that indistinguishable from copying bytes. While
    /// recording, or across namespaces or page phases, bytes are copied so
    /// the trace holds the data.
    fn copy_from(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        let same_ns = src
            .as_any()
            .and_then(|a| a.downcast_ref::<CrashFile>())
            .filter(|s| Arc::ptr_eq(&s.ns, &self.ns));
        let Some(s) = same_ns else {
            return copy_by_buffer(src, self, range);
        };
        const P: u64 = PAGE as u64;
        let overlapping = s.ino == self.ino && range.overlaps_itself();
        if range.src_offset % P != range.dst_offset % P || overlapping || self.ns.is_recording() {
            return copy_by_buffer(src, self, range);
        }
        self.writable()?;
        let end = range
            .src_offset
            .checked_add(range.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "copy range overflows"))?;
        if end > s.len()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        // Unaligned head and tail as bytes; the whole pages between shared.
        let head = ((P - range.src_offset % P) % P).min(range.len);
        let pages = (range.len - head) / P;
        copy_by_buffer(src, self, range.part(0, head))?;
        let (sp, dp) = ((range.src_offset + head) / P, (range.dst_offset + head) / P);
        let mut i = 0;
        while i < pages {
            let mut inner = self.ns.lock();
            let shared = {
                let f = inner.files.get(&s.ino).ok_or_else(not_found)?;
                f.shared_page(sp + i)
            };
            let dst = inner.files.get_mut(&self.ino).ok_or_else(not_found)?;
            match shared {
                Some(Some(page)) => dst.put_page(dp + i, &page)?,
                Some(None) => dst.zero_page(dp + i)?,
                None => {
                    drop(inner);
                    copy_by_buffer(src, self, range.part(head + i * P, P))?;
                }
            }
            i += 1;
        }
        copy_by_buffer(src, self, range.skip(head + pages * P))
    }

    fn flush(&self) -> io::Result<()> {
        // fsync is legal on a read-only descriptor and still syncs the file.
        self.ns.lock().record(Op::Flush { ino: self.ino });
        Ok(())
    }
}

impl Namespace for CrashNamespace {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let (ino, lock) = {
            let inner = self.lock();
            let ino = *inner.names.get(path).ok_or_else(not_found)?;
            (ino, self.locks.take(ino, access)?)
        };
        self.handle(ino, lock)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let (ino, lock) = {
            let mut inner = self.lock();
            let ino = inner.next_ino;
            names::create(&mut inner.names, path, ino)?;
            inner.next_ino += 1;
            inner.files.insert(ino, Overlay::empty());
            let lock = self.locks.take(ino, Access::Write)?;
            inner.record(Op::Create {
                path: path.to_path_buf(),
                ino,
            });
            (ino, lock)
        };
        self.handle(ino, lock)
    }

    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        Ok(names::kind(&self.lock().names, path))
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(names::read_dir(&self.lock().names, dir))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        names::remove(&mut inner.names, path)?;
        inner.record(Op::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        if !inner.names.contains_key(from) {
            return Err(not_found());
        }
        if from == to {
            return Ok(());
        }
        names::rename(&mut inner.names, from, to)?;
        inner.record(Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.lock().record(Op::SyncDir {
            dir: dir.to_path_buf(),
        });
        Ok(())
    }
}

/// Apply one namespace operation to a name map (used when rebuilding
/// post-crash names). Returns false when it cannot apply.
pub(crate) fn apply_names(names: &mut BTreeMap<PathBuf, Ino>, op: &Op) -> bool {
    match op {
        Op::Create { path, ino } => names::create(names, path, *ino).is_ok(),
        Op::Remove { path } => names::remove(names, path).is_ok(),
        Op::Rename { from, to } => names::rename(names, from, to).is_ok(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynns(ns: &Arc<CrashNamespace>) -> Arc<dyn Namespace> {
        Arc::clone(ns) as Arc<dyn Namespace>
    }

    /// Page-sharing `copy_from` reads exactly like a byte copy, for aligned
    /// and unaligned ranges, holes, a shrunk source and the same file, and
    /// leaves the snapshot it started from untouched.
    #[test]
    fn copy_from_shares_pages_and_matches_a_byte_copy() {
        let src_bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let setup = CrashNamespace::new();
        setup.insert("/s", &src_bytes);
        setup.insert("/d", &[0xEE; 9000]);
        let snap = setup.snapshot();
        let pristine = snap.clone();
        let cases: [(u64, u64, u64); 6] = [
            (0, 0, 40_000),
            (4096, 8192, 12_288),
            (100, 4196, 20_000),
            (100, 50, 9_000),
            (4095, 8191, 2),
            (0, 36_864, 4096),
        ];
        for (so, d_o, len) in cases {
            for same_file in [false, true] {
                let ns = CrashNamespace::from_snapshot(&snap);
                let d = dynns(&ns);
                let src = d.open(Path::new("/s"), Access::Write).unwrap();
                // A hole and a shrink in the source first.
                src.set_len(30_000).unwrap();
                src.set_len(40_000).unwrap();
                let mut model_src = src_bytes.clone();
                model_src[30_000..].fill(0);
                let (dst, mut model_dst) = if same_file {
                    (Arc::clone(&src), model_src.clone())
                } else {
                    let dst = d.open(Path::new("/d"), Access::Write).unwrap();
                    (dst, vec![0xEE; 9000])
                };
                dst.copy_from(src.as_ref(), CopyRange::new(so, d_o, len))
                    .unwrap();
                let end = (d_o + len) as usize;
                if model_dst.len() < end {
                    model_dst.resize(end, 0);
                }
                model_dst[d_o as usize..end]
                    .copy_from_slice(&model_src[so as usize..(so + len) as usize]);
                let mut got = vec![0u8; dst.len().unwrap() as usize];
                dst.read_at(&mut got, 0).unwrap();
                assert_eq!(got.len(), model_dst.len());
                let diff = got.iter().zip(&model_dst).position(|(a, b)| a != b);
                assert_eq!(diff, None, "copy {so} -> {d_o} len {len} same {same_file}");
            }
        }
        for (ino, pages) in &snap.files {
            assert!(pages.shares_pages_with(&pristine.files[ino]));
        }
    }

    #[test]
    fn behaves_like_a_file_system_and_records() {
        let ns = CrashNamespace::new();
        ns.insert("/d/a", b"hello");
        ns.begin_recording();
        let d = dynns(&ns);
        let a = d.open(Path::new("/d/a"), Access::Write).unwrap();
        a.write_at(b"J", 0).unwrap();
        a.flush().unwrap();
        let b = d.create(Path::new("/d/b")).unwrap();
        b.write_at(b"xyz", 2).unwrap();
        b.set_len(4).unwrap();
        d.rename(Path::new("/d/b"), Path::new("/d/c")).unwrap();
        // The handle follows the inode across the rename.
        b.write_at(b"!", 0).unwrap();
        d.sync_dir(Path::new("/d")).unwrap();
        d.remove(Path::new("/d/a")).unwrap();
        assert_eq!(ns.get(Path::new("/d/c")).unwrap(), b"!\0xy");
        assert_eq!(ns.get(Path::new("/d/a")), None);
        assert_eq!(d.kind(Path::new("/d")).unwrap(), EntryKind::Dir);
        assert_eq!(
            d.read_dir(Path::new("/d")).unwrap(),
            vec![PathBuf::from("/d/c")]
        );
        let (trace, _) = ns.finish_recording();
        let kinds: Vec<String> = trace
            .iter()
            .map(|o| o.to_string().split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "write", "flush", "create", "write", "set_len", "rename", "write", "sync_dir",
                "remove"
            ]
        );
    }

    #[test]
    fn locks_conflict_and_release() {
        let ns = CrashNamespace::new();
        ns.insert("/d/a", b"x");
        crate::testing::check_lock_rules(ns.as_ref(), Path::new("/d/a"));
    }

    #[test]
    fn overlay_namespace_never_touches_its_snapshot() {
        let ns = CrashNamespace::new();
        ns.insert("/d/a", &vec![5u8; 20_000]);
        let snap = ns.snapshot();
        let copy = snap.clone();
        let post = CrashNamespace::from_snapshot(&snap);
        let d = dynns(&post);
        let f = d.open(Path::new("/d/a"), Access::Write).unwrap();
        f.write_at(&[9u8; 5000], 100).unwrap();
        f.set_len(3).unwrap();
        d.remove(Path::new("/d/a")).unwrap();
        for (ino, pages) in &snap.files {
            assert!(pages.shares_pages_with(&copy.files[ino]));
        }
        assert_eq!(snap.get(Path::new("/d/a")).unwrap(), vec![5u8; 20_000]);
    }
}
