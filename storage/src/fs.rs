//! `FsNamespace`: the real file system. Files open as `FileStorage`, locked
//! with `flock`; a file opened for writing also gets its O_DIRECT handle.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::file::{open_direct, FileStorage};
use crate::traits::{Access, EntryKind, Namespace, Storage};

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsNamespace;

impl Namespace for FsNamespace {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Write)
            .open(path)?;
        FileStorage::lock(&file, access)?;
        // An existing image opened for writing changes only through
        // batches, and every batch ends in a flush.
        Ok(Arc::new(match access {
            Access::Write => {
                let st = FileStorage::with_writeback_ahead(file);
                // Without O_DIRECT (tmpfs, some network filesystems) long
                // copies simply stay buffered.
                match open_direct(path) {
                    Ok(direct) => st.with_direct_copies(direct),
                    Err(_) => st,
                }
            }
            Access::Read => FileStorage::new(file),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        FileStorage::lock(&file, Access::Write)?;
        Ok(Arc::new(FileStorage::new(file)))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                let t = m.file_type();
                Ok(if t.is_symlink() {
                    EntryKind::Symlink
                } else if t.is_file() {
                    EntryKind::File
                } else if t.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::Other
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EntryKind::Missing),
            Err(e) => Err(e),
        }
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.path());
        }
        out.sort();
        Ok(out)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(d)?.sync_all()
    }
    fn free_space(&self, dir: &Path) -> io::Result<Option<u64>> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let s = rustix::fs::statvfs(dir)?;
        #[allow(clippy::unnecessary_cast)]
        Ok(Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_locks_conflict() {
        let (_dir, p) = crate::testing::temp_file(b"hello");
        let w = FsNamespace.open(&p, Access::Write).unwrap();
        assert_eq!(
            FsNamespace.open(&p, Access::Read).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(w);
        FsNamespace.open(&p, Access::Read).unwrap();
    }
}
