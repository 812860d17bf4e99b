//! Real file systems for tests: a sparse image file in a temporary
//! directory, formatted (XFS with reflink, or btrfs) and loop-mounted under
//! it; unmounted (and its loop device detached) on drop. Needs root and the
//! mkfs tools; `LoopMount::new` says why when it cannot, so tests print
//! `skipping: {reason}` and return.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which file system to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// `mkfs.xfs -m reflink=1`
    Xfs,
    /// `mkfs.btrfs`
    Btrfs,
}

impl FsKind {
    /// Both file systems that clone: a clone test runs on each.
    pub const ALL: [FsKind; 2] = [FsKind::Xfs, FsKind::Btrfs];
}

/// A mounted loop file system; unmounted on drop.
#[derive(Debug)]
pub struct LoopMount {
    dir: tempfile_dir::TempDir,
    mount: PathBuf,
    kind: FsKind,
}

mod tempfile_dir {
    /// A directory removed (with what is left in it) on drop.
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopMount {
    /// Make and mount a `size`-byte file system of `kind`. `Err(reason)`
    /// when not root, a tool is missing, or the mount is refused.
    pub fn new(kind: FsKind, size: u64) -> Result<LoopMount, String> {
        if !rustix_uid_is_root() {
            return Err("not root: loop mounts need root".into());
        }
        let base = std::env::temp_dir().join(format!(
            "chainfold-loopfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let dir = tempfile_dir::TempDir(base.clone());
        let img = base.join("fs.img");
        let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(size).map_err(|e| e.to_string())?;
        drop(f);
        let mut mkfs = match kind {
            FsKind::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-f", "-m", "reflink=1"]);
                c
            }
            FsKind::Btrfs => {
                let mut c = Command::new("mkfs.btrfs");
                c.args(["-q", "-f"]);
                c
            }
        };
        run(mkfs.arg(&img))?;
        let mount = base.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mount))?;
        Ok(LoopMount { dir, mount, kind })
    }

    /// The mounted file system's root directory.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// Bytes the file system has free (statvfs f_bfree * f_frsize), after
    /// syncing it so that delayed allocations are counted.
    pub fn free_bytes(&self) -> u64 {
        let _ = Command::new("sync").arg("-f").arg(&self.mount).status();
        free_bytes(&self.mount)
    }
}

/// `statvfs` free bytes of the file system holding `path` (0 on failure).
pub fn free_bytes(path: &Path) -> u64 {
    match rustix::fs::statvfs(path) {
        Ok(s) => s.f_bfree.saturating_mul(s.f_frsize),
        Err(_) => 0,
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn rustix_uid_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // `umount -d` also detaches the loop device (mount -o loop marks it
        // autoclear, so this is belt and braces); a busy mount is unmounted
        // lazily rather than left behind.
        let ok = Command::new("umount")
            .arg("-d")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg("-d")
                .arg(&self.mount)
                .status();
        }
        let _ = &self.dir;
    }
}
