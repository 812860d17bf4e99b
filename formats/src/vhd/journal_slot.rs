//! `JournalSlot`: where a fixed VHD's redo journal lives (`<image>.cfjournal`
//! beside the image) and how it is created, found and removed with
//! directory durability. VHD-specific, so it lives here rather than in the
//! storage crate; `formats::storage::JournalSlot` and `formats::JournalSlot`
//! name it too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{Access, EntryKind, Namespace, Storage};

/// The redo-journal file beside an image (`<image>.cfjournal`), used by the
/// fixed-VHD merge commit. Carries the namespace so the driver can create,
/// sync and remove it with directory durability.
#[derive(Debug, Clone)]
pub struct JournalSlot {
    pub ns: Arc<dyn Namespace>,
    pub path: PathBuf,
}

impl JournalSlot {
    pub fn for_image(ns: Arc<dyn Namespace>, image: &Path) -> Self {
        let mut p = image.as_os_str().to_owned();
        p.push(".cfjournal");
        JournalSlot {
            ns,
            path: PathBuf::from(p),
        }
    }
    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
    /// The journal, if one exists.
    pub fn open_existing(&self, access: Access) -> io::Result<Option<Arc<dyn Storage>>> {
        match self.ns.kind(&self.path)? {
            EntryKind::File => Ok(Some(self.ns.open(&self.path, access)?)),
            EntryKind::Missing => Ok(None),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "journal path is not a regular file",
            )),
        }
    }
    /// Create a fresh journal (removing a stale one) and make the name durable.
    pub fn create(&self) -> io::Result<Arc<dyn Storage>> {
        if self.ns.kind(&self.path)? != EntryKind::Missing {
            self.ns.remove(&self.path)?;
        }
        let s = self.ns.create(&self.path)?;
        self.ns.sync_dir(&self.dir())?;
        Ok(s)
    }
    /// Remove the journal and make the removal durable.
    pub fn remove(&self) -> io::Result<()> {
        if self.ns.kind(&self.path)? != EntryKind::Missing {
            self.ns.remove(&self.path)?;
            self.ns.sync_dir(&self.dir())?;
        }
        Ok(())
    }
}
