//! A storage that crashes part-way through a write sequence: the tests
//! that cut a commit after every possible number of writes share it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use formats::{MemStorage, Storage};

/// A memory storage that refuses every write once its budget of writes is
/// spent, as if the machine stopped there. Reads, and everything written
/// before the cut, stay visible through the inner storage.
#[derive(Debug)]
pub struct CutStorage {
    inner: Arc<MemStorage>,
    /// Writes still let through.
    left: AtomicU64,
    /// Length changes spend the budget too (else they always pass).
    cuts_set_len: bool,
}

impl CutStorage {
    /// Over `inner`, with no cut until [`CutStorage::cut_after`] sets one.
    pub fn new(inner: Arc<MemStorage>) -> Self {
        CutStorage {
            inner,
            left: AtomicU64::new(u64::MAX),
            cuts_set_len: false,
        }
    }

    /// Length changes count as writes: a cut refuses them as well.
    pub fn cutting_set_len(self) -> Self {
        CutStorage {
            cuts_set_len: true,
            ..self
        }
    }

    /// Let `n` more writes through from here on, then refuse every one.
    pub fn cut_after(&self, n: u64) {
        self.left.store(n, Ordering::SeqCst);
    }

    /// The storage below: what reached it before the cut.
    pub fn inner(&self) -> &Arc<MemStorage> {
        &self.inner
    }

    fn spend(&self) -> io::Result<()> {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
            .map(|_| ())
            .map_err(|_| io::Error::other("crashed"))
    }
}

impl Storage for CutStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.spend()?;
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.cuts_set_len {
            self.spend()?;
        }
        self.inner.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
