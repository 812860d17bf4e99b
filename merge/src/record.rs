//! The merge record: a small file beside the source (`<source>.cfmerge`)
//! that makes an interrupted merge finishable by running it again.
//!
//! It is durable before the commit point and names the identity the
//! destination takes at the commit. On a re-run: if the destination already
//! carries that identity, the commit happened and only the finishing steps
//! remain; otherwise the destination is still the old image and the merge
//! starts over. A torn or partial record fails its CRC and is ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::params::Identity;
use formats::{Error, Namespace, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    pub version: u32,
    pub source: PathBuf,
    pub destination: PathBuf,
    /// Source and intermediates, removed after the commit with `--remove-merged`.
    pub merged: Vec<PathBuf>,
    pub remove_merged: bool,
    pub new_identity: String,
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

fn dir_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Write the record durably (file data, then the directory entry).
pub fn write(ns: &Arc<dyn Namespace>, path: &Path, rec: &MergeRecord) -> Result<()> {
    let name = path.display().to_string();
    let io = |e| Error::io(&name, e);
    if ns.kind(path).map_err(io)? != formats::EntryKind::Missing {
        ns.remove(path).map_err(io)?;
    }
    let body = serde_json::to_vec(rec).map_err(|e| Error::InvalidParameter(e.to_string()))?;
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
    serde_json::from_slice(body).ok()
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
