//! The advisory locks of the in-memory namespaces, as `flock` behaves
//! between open handles: any number of shared holders, or one exclusive.
//! Every in-memory namespace (`MemNamespace`, the crash recorder, the
//! fuzzers' sparse one) keeps its locks in one `Locks` table and hands each
//! opened file a `Held` lock, released when the handle drops.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::traits::Access;

/// The locks held, keyed by file (a path, an inode number).
#[derive(Debug)]
pub struct LockTable<K> {
    /// key -> (shared holders, exclusive held)
    held: HashMap<K, (usize, bool)>,
}

impl<K> Default for LockTable<K> {
    fn default() -> Self {
        LockTable {
            held: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> LockTable<K> {
    /// Take a lock for `access`, or fail with `WouldBlock` as a
    /// conflicting `flock` would.
    pub fn take(&mut self, key: K, access: Access) -> io::Result<()> {
        let l = self.held.entry(key).or_default();
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

    /// Give back a lock `take` granted (a handle's drop).
    pub fn release(&mut self, key: &K, access: Access) {
        if let Some(l) = self.held.get_mut(key) {
            match access {
                Access::Read => l.0 = l.0.saturating_sub(1),
                Access::Write => l.1 = false,
            }
        }
    }
}

/// A `LockTable` shared by a namespace and the handles it gave out.
#[derive(Debug)]
pub struct Locks<K>(Arc<Mutex<LockTable<K>>>);

impl<K> Default for Locks<K> {
    fn default() -> Self {
        Locks(Arc::default())
    }
}

impl<K> Clone for Locks<K> {
    fn clone(&self) -> Self {
        Locks(Arc::clone(&self.0))
    }
}

fn table<K>(t: &Mutex<LockTable<K>>) -> MutexGuard<'_, LockTable<K>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Hash + Eq + Clone + Debug> Locks<K> {
    /// Take the lock of `key` for `access` (`WouldBlock` on a conflict);
    /// it is held until the returned `Held` drops.
    pub fn take(&self, key: K, access: Access) -> io::Result<Held<K>> {
        table(&self.0).take(key.clone(), access)?;
        Ok(Held {
            table: Arc::clone(&self.0),
            key,
            access,
        })
    }
}

/// One lock taken from `Locks`, released when dropped.
#[derive(Debug)]
pub struct Held<K: Hash + Eq + Debug> {
    table: Arc<Mutex<LockTable<K>>>,
    key: K,
    access: Access,
}

impl<K: Hash + Eq + Debug> Held<K> {
    pub fn access(&self) -> Access {
        self.access
    }
}

impl<K: Hash + Eq + Debug> Drop for Held<K> {
    fn drop(&mut self) {
        table(&self.table).release(&self.key, self.access);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_or_one_exclusive_released_on_drop() {
        let locks = Locks::<u64>::default();
        let r1 = locks.take(1, Access::Read).unwrap();
        let r2 = locks.take(1, Access::Read).unwrap();
        let would_block = |r: io::Result<Held<u64>>| r.unwrap_err().kind();
        assert_eq!(
            would_block(locks.take(1, Access::Write)),
            io::ErrorKind::WouldBlock
        );
        // Another key is independent.
        let other = locks.take(2, Access::Write).unwrap();
        drop((r1, r2));
        let w = locks.take(1, Access::Write).unwrap();
        assert_eq!(w.access(), Access::Write);
        assert_eq!(
            would_block(locks.take(1, Access::Read)),
            io::ErrorKind::WouldBlock
        );
        drop((w, other));
        locks.take(1, Access::Read).unwrap();
        locks.take(2, Access::Write).unwrap();
    }
}
