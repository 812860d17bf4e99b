//! The recorded trace of one run: every operation that can change what a
//! crash leaves behind, in the order the code issued it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file's identity, independent of its name (an inode): data belongs to
/// the inode, names to the directory.
pub type Ino = u64;

#[derive(Debug, Clone)]
pub enum Op {
    Write {
        ino: Ino,
        offset: u64,
        data: Arc<[u8]>,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
    /// `Storage::flush` on a handle of `ino`.
    Flush {
        ino: Ino,
    },
    Create {
        path: PathBuf,
        ino: Ino,
    },
    Remove {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
}

/// The directory whose entry a path lives in (the same rule as
/// formats' `JournalSlot`: a bare name lives in "").
pub fn dir_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Op {
    /// Directories whose entries this operation changes (empty for data ops).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Op::Create { path, .. } | Op::Remove { path } => vec![dir_of(path)],
            Op::Rename { from, to } => {
                let (a, b) = (dir_of(from), dir_of(to));
                if a == b {
                    vec![a]
                } else {
                    vec![a, b]
                }
            }
            _ => Vec::new(),
        }
    }

    pub fn is_namespace_op(&self) -> bool {
        matches!(
            self,
            Op::Create { .. } | Op::Remove { .. } | Op::Rename { .. }
        )
    }

    /// Write or set_len: data changes that become durable at the file's
    /// next flush.
    pub fn data_ino(&self) -> Option<Ino> {
        match self {
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => Some(*ino),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write { ino, offset, data } => {
                write!(f, "write ino{ino} @{offset:#x} len {:#x}", data.len())
            }
            Op::SetLen { ino, len } => write!(f, "set_len ino{ino} {len:#x}"),
            Op::Flush { ino } => write!(f, "flush ino{ino}"),
            Op::Create { path, ino } => write!(f, "create {} (ino{ino})", path.display()),
            Op::Remove { path } => write!(f, "remove {}", path.display()),
            Op::Rename { from, to } => {
                write!(f, "rename {} -> {}", from.display(), to.display())
            }
            Op::SyncDir { dir } => write!(f, "sync_dir {:?}", dir),
        }
    }
}
