//! Test doubles that take the ordering out of correct code: a storage whose
//! `flush` does nothing, and a namespace whose files are such storages and
//! whose `sync_dir` does nothing. Without a crash nothing changes (the
//! in-memory files hold every write); under a crash the page cache may have
//! written back any subset, so the code under them has no ordering at all.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::{Access, EntryKind, Namespace, Storage};

/// A storage that drops every flush.
#[derive(Debug)]
pub struct NoBarrier(pub Arc<dyn Storage>);

impl Storage for NoBarrier {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn allocated_range(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        self.0.allocated_range(offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.punch_hole(offset, len)
    }
}

/// A namespace whose files drop their flushes and whose directory syncs do
/// nothing: every write, create, remove and rename made through it stays
/// pending until the end of the recorded run.
#[derive(Debug)]
pub struct NoBarrierNs(pub Arc<dyn Namespace>);

impl Namespace for NoBarrierNs {
    fn open(&self, path: &Path, access: Access) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(NoBarrier(self.0.open(path, access)?)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(NoBarrier(self.0.create(path)?)))
    }
    fn kind(&self, path: &Path) -> io::Result<EntryKind> {
        self.0.kind(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.0.canonicalize(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.0.read_dir(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
