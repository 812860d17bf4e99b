//! Checks every namespace of this crate must pass, and the real files
//! the tests of real files start from.

use std::io;
use std::path::{Path, PathBuf};

use crate::traits::{Access, Namespace};

/// `path` (an existing file) locks as `flock` does: shared readers, one
/// exclusive writer, released when the handles drop; a handle opened for
/// reading refuses writes.
pub(crate) fn check_lock_rules(ns: &dyn Namespace, path: &Path) {
    let r1 = ns.open(path, Access::Read).unwrap();
    let r2 = ns.open(path, Access::Read).unwrap();
    assert_eq!(
        ns.open(path, Access::Write).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(
        r1.write_at(b"y", 0).unwrap_err().kind(),
        io::ErrorKind::PermissionDenied
    );
    assert_eq!(
        r2.set_len(0).unwrap_err().kind(),
        io::ErrorKind::PermissionDenied
    );
    drop((r1, r2));
    let w = ns.open(path, Access::Write).unwrap();
    assert_eq!(
        ns.open(path, Access::Read).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(w);
    ns.open(path, Access::Read).unwrap();
}

/// A real file holding `bytes`, alone in a fresh temporary directory
/// (removed when the returned guard drops).
pub(crate) fn temp_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}
