//! Creating image files: format from the extension, parent linkage from an
//! opened parent.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::image::Image;
use crate::params::{CreateParams, Format, Identity, ParentSpec};
use crate::{Error, Namespace, Result};

/// `.vhd`/`.avhd` -> VHD; `.vhdx`/`.avhdx` -> VHDX.
pub fn format_for_path(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("vhd" | "avhd") => Ok(Format::Vhd),
        Some("vhdx" | "avhdx") => Ok(Format::Vhdx),
        _ => Err(Error::InvalidParameter(format!(
            "{}: cannot tell the format from the extension (use .vhd, .avhd, .vhdx or .avhdx)",
            path.display()
        ))),
    }
}

/// Path of `target` relative to directory `from`, both absolute.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let f: Vec<Component> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn windows(p: &Path) -> String {
    p.display().to_string().replace('/', "\\")
}

/// Describe `parent` (opened, at `parent_path`) for a child at `child_path`.
pub fn parent_spec(
    ns: &Arc<dyn Namespace>,
    parent: &dyn Image,
    parent_path: &Path,
    child_path: &Path,
) -> Result<ParentSpec> {
    let info = parent.info();
    let abs_parent = ns
        .canonicalize(parent_path)
        .unwrap_or_else(|_| parent_path.to_path_buf());
    let child_dir = child_path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .map(|d| ns.canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
        .unwrap_or_default();
    let rel = relative_to(&abs_parent, &child_dir);
    let file_name = abs_parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let detail = |k: &str| {
        info.details
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    Ok(ParentSpec {
        identity: parent.identity(),
        relative_path: format!(".\\{}", windows(&rel)),
        absolute_path: windows(&abs_parent),
        file_name,
        virtual_size: info.virtual_size,
        logical_sector_size: info.logical_sector_size,
        physical_sector_size: info.physical_sector_size,
        virtual_disk_id: detail("virtual_disk_id")
            .and_then(|s| uuid::Uuid::parse_str(s.trim_matches(|c| c == '{' || c == '}')).ok()),
        geometry: match parent.identity() {
            Identity::Vhd { .. } => detail("geometry").and_then(|g| {
                let mut it = g.split('/').map(str::trim);
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                ))
            }),
            Identity::Vhdx { .. } => None,
        },
    })
}

/// Create a new image file at `path` (which must not exist).
pub fn create_file(ns: &Arc<dyn Namespace>, path: &Path, params: &CreateParams) -> Result<()> {
    let format = format_for_path(path)?;
    let name = path.display().to_string();
    let storage = ns.create(path).map_err(|e| Error::io(&name, e))?;
    let r = match format {
        Format::Vhd => crate::vhd::create(storage.as_ref(), params),
        Format::Vhdx => crate::vhdx::create(storage.as_ref(), params),
    };
    if let Err(e) = r {
        drop(storage);
        let _ = ns.remove(path);
        return Err(e);
    }
    storage.flush().map_err(|e| Error::io(&name, e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    ns.sync_dir(&dir).map_err(|e| Error::io(&name, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/p.vhdx"), Path::new("/a/b")),
            PathBuf::from("p.vhdx")
        );
        assert_eq!(
            relative_to(Path::new("/a/p.vhdx"), Path::new("/a/b")),
            PathBuf::from("../p.vhdx")
        );
    }
}
