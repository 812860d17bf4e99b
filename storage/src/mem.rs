//! Files and namespaces in memory: `MemStorage` (one dense file),
//! `MemNamespace` (a directory tree of them), and the pieces every
//! in-memory namespace shares: the name rules (`names`: directories are
//! implicit, a path is one when some name lies below it) and the
//! lock-holding handle (`MemHandle`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::lock::{Held, Locks};
use crate::traits::{Access, EntryKind, Namespace, Storage};

/// An in-memory file.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: Mutex<Vec<u8>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_vec(v: Vec<u8>) -> Self {
        MemStorage {
            data: Mutex::new(v),
        }
    }
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > d.len() as u64 {
            return Err(eof());
        }
        buf.copy_from_slice(&d[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= usize::MAX as u64 / 2)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write offset too large"))?;
        if end as usize > d.len() {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > usize::MAX as u64 / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length too large",
            ));
        }
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The error of a name that names nothing.
pub fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only")
}

/// The name rules of an in-memory namespace over a map `path -> V` (a
/// file, an inode number): what `kind`, `read_dir`, `create`, `remove`
/// and `rename` see and do there.
pub mod names {
    use super::*;

    /// A file when named, a directory when some name lies below it.
    pub fn kind<V>(names: &BTreeMap<PathBuf, V>, path: &Path) -> EntryKind {
        if names.contains_key(path) {
            EntryKind::File
        } else if names.keys().any(|p| p.starts_with(path)) {
            EntryKind::Dir
        } else {
            EntryKind::Missing
        }
    }

    /// The names directly in `dir`, sorted.
    pub fn read_dir<V>(names: &BTreeMap<PathBuf, V>, dir: &Path) -> Vec<PathBuf> {
        names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Name a new file (`AlreadyExists` when the name is taken).
    pub fn create<V>(names: &mut BTreeMap<PathBuf, V>, path: &Path, v: V) -> io::Result<()> {
        if names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        names.insert(path.to_path_buf(), v);
        Ok(())
    }

    /// Drop a name (`NotFound` when there is none).
    pub fn remove<V>(names: &mut BTreeMap<PathBuf, V>, path: &Path) -> io::Result<V> {
        names.remove(path).ok_or_else(not_found)
    }

    /// Move a name, replacing what `to` named.
    pub fn rename<V>(names: &mut BTreeMap<PathBuf, V>, from: &Path, to: &Path) -> io::Result<()> {
        let v = names.remove(from).ok_or_else(not_found)?;
        names.insert(to.to_path_buf(), v);
        Ok(())
    }
}

/// A lock-holding handle onto a shared in-memory file: reads go to the
/// file, writes too unless it was opened for reading; the lock is released
/// when the handle drops. `flush` has nothing to do.
#[derive(Debug)]
pub struct MemHandle<F> {
    file: Arc<F>,
    lock: Held<PathBuf>,
}

impl<F: Storage> MemHandle<F> {
    /// Lock `path` in `locks` for `access` and hand out `file` under it.
    pub fn open(
        locks: &Locks<PathBuf>,
        path: &Path,
        file: Arc<F>,
        access: Access,
    ) -> io::Result<Self> {
        let lock = locks.take(path.to_path_buf(), access)?;
        Ok(MemHandle { file, lock })
    }

    fn writable(&self) -> io::Result<&F> {
        match self.lock.access() {
            Access::Read => Err(read_only()),
            Access::Write => Ok(&self.file),
        }
    }
}

impl<F: Storage> Storage for MemHandle<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// An in-memory directory tree of files, with the same lock rules as files.
#[derive(Debug, Default)]
pub struct MemNamespace {
    files: Mutex<BTreeMap<PathBuf, Arc<MemStorage>>>,
    locks: Locks<PathBuf>,
}

impl MemNamespace {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Arc<MemStorage>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a file with the given bytes at `path` (test setup).
    pub fn insert(&self, path: impl Into<PathBuf>, bytes: Vec<u8>) {
        self.files()
            .insert(path.into(), Arc::new(MemStorage::from_vec(bytes)));
    }

    /// The bytes of the file at `path`.
    pub fn get(&self, path: &Path) -> Option<Vec<u8>> {
        self.files().get(path).map(|f| f.to_vec())
    }

    /// Every name, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files().keys().cloned().collect()
    }
}

/// `Namespace` is implemented on `Arc<MemNamespace>`, as callers have
/// always used it (`MemNamespace::new()` hands out an `Arc`).
impl Namespace for Arc<MemNamespace> {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let file = self.files().get(path).cloned().ok_or_else(not_found)?;
        Ok(Arc::new(MemHandle::open(&self.locks, path, file, access)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let file = Arc::new(MemStorage::new());
        let mut files = self.files();
        names::create(&mut files, path, Arc::clone(&file))?;
        let handle = MemHandle::open(&self.locks, path, file, Access::Write)?;
        Ok(Arc::new(handle))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        Ok(names::kind(&self.files(), path))
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(names::read_dir(&self.files(), dir))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        names::remove(&mut self.files(), path).map(drop)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        names::rename(&mut self.files(), from, to)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_lock_rules;

    #[test]
    fn mem_storage_reads_past_end_fail() {
        let s = MemStorage::new();
        s.write_at(b"abc", 2).unwrap();
        assert_eq!(s.len().unwrap(), 5);
        let mut b = [0u8; 4];
        assert!(s.read_at(&mut b, 2).is_err());
        let mut b = [9u8; 5];
        s.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, &[0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn mem_namespace_locks_conflict_and_release() {
        let ns = MemNamespace::new();
        ns.insert("/d/a", vec![1, 2, 3]);
        check_lock_rules(&ns, Path::new("/d/a"));
    }

    #[test]
    fn mem_namespace_names_behave_like_a_directory_tree() {
        let ns = MemNamespace::new();
        ns.insert("/d/a", vec![1]);
        let b = ns.create(Path::new("/d/b")).unwrap();
        b.write_at(b"xy", 0).unwrap();
        assert_eq!(
            ns.create(Path::new("/d/a")).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        ns.rename(Path::new("/d/b"), Path::new("/d/c")).unwrap();
        assert_eq!(ns.kind(Path::new("/d")).unwrap(), EntryKind::Dir);
        assert_eq!(ns.kind(Path::new("/d/c")).unwrap(), EntryKind::File);
        assert_eq!(ns.kind(Path::new("/d/b")).unwrap(), EntryKind::Missing);
        assert_eq!(
            ns.read_dir(Path::new("/d")).unwrap(),
            vec![PathBuf::from("/d/a"), PathBuf::from("/d/c")]
        );
        ns.remove(Path::new("/d/a")).unwrap();
        assert_eq!(
            ns.remove(Path::new("/d/a")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(ns.paths(), vec![PathBuf::from("/d/c")]);
        assert_eq!(ns.get(Path::new("/d/c")).unwrap(), b"xy");
    }
}
