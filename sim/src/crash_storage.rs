//! The crash storage: an in-memory file system implementing
//! `formats::Namespace`, which records every operation that matters to a
//! crash while the code under test runs on it.
//!
//! The same type serves as a post-crash namespace (not recording): its files
//! are overlays over shared durable pages, so recovery code may write freely
//! without disturbing the base other states share.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use formats::{Access, EntryKind, Namespace, Storage};

use crate::pages::{Overlay, PageMap};
use crate::trace::{Ino, Op};

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
    /// ino -> (shared holders, exclusive held)
    locks: HashMap<Ino, (usize, bool)>,
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

    fn take_lock(&mut self, ino: Ino, access: Access) -> io::Result<()> {
        let l = self.locks.entry(ino).or_default();
        let free = match access {
            Access::Read => !l.1,
            Access::Write => !l.1 && l.0 == 0,
        };
        if !free {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another handle",
            ));
        }
        match access {
            Access::Read => l.0 += 1,
            Access::Write => l.1 = true,
        }
        Ok(())
    }
}

/// An in-memory namespace that records (see module docs).
#[derive(Debug)]
pub struct CrashNamespace {
    me: Weak<CrashNamespace>,
    inner: Mutex<Inner>,
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
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

    fn handle(&self, ino: Ino, access: Access) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(CrashFile {
            ino,
            access,
            ns: self.arc()?,
        }))
    }
}

/// A lock-holding handle onto one inode (like a file descriptor: it keeps
/// naming the same data across renames and removes).
#[derive(Debug)]
struct CrashFile {
    ino: Ino,
    access: Access,
    ns: Arc<CrashNamespace>,
}

impl Drop for CrashFile {
    fn drop(&mut self) {
        let mut inner = self.ns.lock();
        if let Some(l) = inner.locks.get_mut(&self.ino) {
            match self.access {
                Access::Read => l.0 = l.0.saturating_sub(1),
                Access::Write => l.1 = false,
            }
        }
    }
}

impl CrashFile {
    fn writable(&self) -> io::Result<()> {
        if self.access == Access::Read {
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

    fn flush(&self) -> io::Result<()> {
        // fsync is legal on a read-only descriptor and still syncs the file.
        self.ns.lock().record(Op::Flush { ino: self.ino });
        Ok(())
    }
}

impl Namespace for CrashNamespace {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let ino = {
            let mut inner = self.lock();
            let ino = *inner.names.get(path).ok_or_else(not_found)?;
            inner.take_lock(ino, access)?;
            ino
        };
        self.handle(ino, access)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let ino = {
            let mut inner = self.lock();
            if inner.names.contains_key(path) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            let ino = inner.next_ino;
            inner.next_ino += 1;
            inner.files.insert(ino, Overlay::empty());
            inner.names.insert(path.to_path_buf(), ino);
            inner.take_lock(ino, Access::Write)?;
            inner.record(Op::Create {
                path: path.to_path_buf(),
                ino,
            });
            ino
        };
        self.handle(ino, Access::Write)
    }

    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        let inner = self.lock();
        if inner.names.contains_key(path) {
            Ok(EntryKind::File)
        } else if inner.names.keys().any(|p| p.starts_with(path)) {
            Ok(EntryKind::Dir)
        } else {
            Ok(EntryKind::Missing)
        }
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let inner = self.lock();
        Ok(inner
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        inner.names.remove(path).ok_or_else(not_found)?;
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
        if let Some(ino) = inner.names.remove(from) {
            inner.names.insert(to.to_path_buf(), ino);
        }
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
        Op::Create { path, ino } => {
            if names.contains_key(path) {
                return false;
            }
            names.insert(path.clone(), *ino);
            true
        }
        Op::Remove { path } => names.remove(path).is_some(),
        Op::Rename { from, to } => match names.remove(from) {
            Some(ino) => {
                names.insert(to.clone(), ino);
                true
            }
            None => false,
        },
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynns(ns: &Arc<CrashNamespace>) -> Arc<dyn Namespace> {
        Arc::clone(ns) as Arc<dyn Namespace>
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
        let d = dynns(&ns);
        let p = Path::new("/d/a");
        let r1 = d.open(p, Access::Read).unwrap();
        let r2 = d.open(p, Access::Read).unwrap();
        assert_eq!(
            d.open(p, Access::Write).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            r1.write_at(b"y", 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        drop(r1);
        drop(r2);
        let w = d.open(p, Access::Write).unwrap();
        assert_eq!(
            d.open(p, Access::Read).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(w);
        d.open(p, Access::Read).unwrap();
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
