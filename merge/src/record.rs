//! The merge record: a small file beside the source (`<source>.cfmerge`)
//! that makes an interrupted merge finishable by running it again.
//!
//! It is durable before the commit point and names the identity the
//! destination takes at the commit. On a re-run: if the destination already
//! carries that identity, the commit happened and only the finishing steps
//! remain; otherwise the destination is still the old image and the merge
//! starts over. A torn or partial record fails its CRC and is ignored.
//!
//! Finishing does not delete the record: it renames it to
//! `<source>.cfmerged`, the committed-merge marker (issue 19 item 2), and
//! the marker stays. A re-run finds it whether the source is still there
//! (its linkage no longer matches the destination, which would otherwise
//! be 32775) or already removed, and answers "already merged" only when
//! the destination still carries the marker's `new_identity` and the
//! source, when present, still carries its `source_identity`.
//!
//! Why that is crash-safe: `new_identity` is a fresh random GUID that the
//! destination takes only in its atomic commit (the same VHDX header
//! write / VHD footer switch / journal commit record as the merged data).
//! A destination that carries it holds exactly this merge's result, so
//! neither the marker's timing nor any crash can make an uncommitted or a
//! different merge look done. A destination changed since (a VHDX write
//! renews its DataWriteGuid; a later merge, a replaced file) makes the
//! marker stale, never wrong. The rename is atomic: after a crash there is
//! the record (finish again) or the marker, never half of each. A new
//! merge at the same source path removes the old marker before it writes
//! its record, so a marker only ever describes the last merge started
//! from that path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::params::Identity;
use formats::{Error, Namespace, Result};
use serde::{Deserialize, Serialize};

/// The version `write` stores. Version 2 stores paths relative to the
/// record's directory (a bare file name for a file beside it, else the
/// absolute path of its directory and its name), so a re-run from another
/// working directory finds them; version 1 stored them as given.
pub const VERSION: u32 = 2;

/// Paths are usable as they are in a record `read` returns (resolved
/// against the record's directory); `write` stores them in its own form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    pub version: u32,
    pub source: PathBuf,
    pub destination: PathBuf,
    /// Source and intermediates, removed after the commit with `--remove-merged`.
    pub merged: Vec<PathBuf>,
    pub remove_merged: bool,
    pub new_identity: String,
    /// The source's identity when merged (absent in records of older
    /// versions: such a marker proves nothing while the source exists).
    #[serde(default)]
    pub source_identity: Option<String>,
    /// The identity of each of `merged`, in the same order (empty in older
    /// records): a re-run asked to remove merged files removes only a file
    /// that still carries its identity.
    #[serde(default)]
    pub merged_identities: Vec<String>,
}

pub fn identity_text(id: &Identity) -> String {
    match id {
        Identity::Vhdx { data_write_guid } => format!("vhdx:{data_write_guid}"),
        Identity::Vhd {
            unique_id,
            timestamp,
        } => {
            let hex: String = unique_id.iter().map(|b| format!("{b:02x}")).collect();
            format!("vhd:{hex}:{timestamp}")
        }
    }
}

pub fn record_path(source: &Path) -> PathBuf {
    let mut p = source.as_os_str().to_owned();
    p.push(".cfmerge");
    PathBuf::from(p)
}

/// The committed-merge marker: the record of a finished merge.
pub fn done_path(source: &Path) -> PathBuf {
    let mut p = source.as_os_str().to_owned();
    p.push(".cfmerged");
    PathBuf::from(p)
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `p` as stored in a record in `dir`: its file name when it lies in `dir`,
/// else its directory made absolute (symlinks resolved in the directory
/// only: a link named as a merged file stays the link).
fn stored(ns: &Arc<dyn Namespace>, dir: &Path, p: &Path) -> PathBuf {
    let dot = |d: &Path| {
        if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d.to_path_buf()
        }
    };
    let (Some(name), Ok(pdir)) = (p.file_name(), ns.canonicalize(&dot(&dir_of(p)))) else {
        return p.to_path_buf();
    };
    match ns.canonicalize(&dot(dir)) {
        Ok(d) if d == pdir => PathBuf::from(name),
        _ => pdir.join(name),
    }
}

/// A path of a version-2 record in `dir`, usable from here.
fn resolved(dir: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// Write the record durably (file data, then the directory entry).
pub fn write(ns: &Arc<dyn Namespace>, path: &Path, rec: &MergeRecord) -> Result<()> {
    let name = path.display().to_string();
    let io = |e| Error::io(&name, e);
    if ns.kind(path).map_err(io)? != formats::EntryKind::Missing {
        ns.remove(path).map_err(io)?;
    }
    let dir = dir_of(path);
    let rec = MergeRecord {
        version: VERSION,
        source: stored(ns, &dir, &rec.source),
        destination: stored(ns, &dir, &rec.destination),
        merged: rec.merged.iter().map(|p| stored(ns, &dir, p)).collect(),
        ..rec.clone()
    };
    let body = serde_json::to_vec(&rec).map_err(|e| Error::InvalidParameter(e.to_string()))?;
    let mut bytes = formats::checksum::crc32c(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let f = ns.create(path).map_err(io)?;
    f.write_at(&bytes, 0).map_err(io)?;
    f.flush().map_err(io)?;
    ns.sync_dir(&dir_of(path)).map_err(io)?;
    Ok(())
}

/// Read a record; `None` when absent, torn or unreadable.
pub fn read(ns: &Arc<dyn Namespace>, path: &Path) -> Option<MergeRecord> {
    if ns.kind(path).ok()? != formats::EntryKind::File {
        return None;
    }
    let f = ns.open(path, formats::Access::Read).ok()?;
    let len = f.len().ok()?;
    if !(4..=1 << 20).contains(&len) {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    f.read_at(&mut bytes, 0).ok()?;
    let (crc, body) = bytes.split_at(4);
    if u32::from_le_bytes(crc.try_into().ok()?) != formats::checksum::crc32c(body) {
        return None;
    }
    let mut rec: MergeRecord = serde_json::from_slice(body).ok()?;
    if rec.version >= 2 {
        let dir = dir_of(path);
        rec.source = resolved(&dir, &rec.source);
        rec.destination = resolved(&dir, &rec.destination);
        for p in &mut rec.merged {
            *p = resolved(&dir, p);
        }
    }
    Some(rec)
}

pub fn remove(ns: &Arc<dyn Namespace>, path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let io = |e| Error::io(&name, e);
    if ns.kind(path).map_err(io)? != formats::EntryKind::Missing {
        ns.remove(path).map_err(io)?;
        ns.sync_dir(&dir_of(path)).map_err(io)?;
    }
    Ok(())
}

/// Finish with the record: rename it to the committed-merge marker `done`
/// (replacing an older marker) and make the rename durable. Only called
/// once the destination's commit is durable.
pub fn retire(ns: &Arc<dyn Namespace>, path: &Path, done: &Path) -> Result<()> {
    let name = path.display().to_string();
    let io = |e| Error::io(&name, e);
    if ns.kind(path).map_err(io)? != formats::EntryKind::Missing {
        ns.rename(path, done).map_err(io)?;
        // Both names are beside the source: one directory to sync.
        ns.sync_dir(&dir_of(path)).map_err(io)?;
    }
    Ok(())
}
