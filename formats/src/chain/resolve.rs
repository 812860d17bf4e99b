//! Finding parents: the secure-by-default resolution policy of DESIGN.md
//! section 3 and the linkage check.
//!
//! Policy: a locator is only ever turned into a path inside the child's own
//! directory or an explicit `--search-dir`. Relative paths may not climb out
//! (`..`), absolute Windows and POSIX paths contribute only their file name,
//! and a candidate is opened only when it is a regular file (a symlink only
//! with `follow_symlinks`). A target outside is never opened, not even to
//! read its signature.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::image::{self, Image};
use crate::params::{Identity, OpenOptions, ParentLinkage, PathHint};
use crate::storage::{Access, EntryKind, JournalSlot, Namespace};
use crate::{Error, Result};

/// How chains are opened.
#[derive(Debug, Clone, Default)]
pub struct ChainOptions {
    /// Parents given explicitly, nearest first (`--parent`, repeatable).
    pub parents: Vec<PathBuf>,
    /// Extra directories searched for parents (`--search-dir`).
    pub search_dirs: Vec<PathBuf>,
    pub follow_symlinks: bool,
    pub ignore_checksums: bool,
    /// Accept a parent whose linkage does not match (reported as a finding).
    pub ignore_linkage: bool,
    /// Lock mode for every file of the chain: shared for reading,
    /// exclusive for a merge or a write.
    pub access: Access,
    /// Open the images writable (VHDX logs replayed on disk, new
    /// FileWriteGuid). Requires `access == Write`. A merge locks every file
    /// exclusively but opens read-only until every check has passed, so a
    /// refused merge changes no byte.
    pub writable: bool,
}

/// One candidate path tried for a parent and what happened.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Which locator entry produced it (`relative_path`, `W2ru`, `--parent`, ...).
    pub hint: String,
    /// The locator's own text.
    pub locator: String,
    /// The path looked at, when the policy allowed one.
    pub path: Option<String>,
    pub outcome: String,
}

/// How a parent was found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Resolution {
    pub resolved_path: Option<String>,
    /// The hint that resolved it.
    pub resolved_by: Option<String>,
    pub attempts: Vec<Attempt>,
}

pub struct OpenedImage {
    pub path: PathBuf,
    pub image: Box<dyn Image>,
}

/// Open one image file with the chain's lock mode. Refuses anything that is
/// not a regular file (a symlink only when allowed).
pub fn open_image_file(
    ns: &Arc<dyn Namespace>,
    path: &Path,
    opts: &ChainOptions,
) -> Result<Box<dyn Image>> {
    let name = path.display().to_string();
    let kind = ns.kind(path).map_err(|e| Error::io(&name, e))?;
    let real = match kind {
        EntryKind::File => path.to_path_buf(),
        EntryKind::Missing => return Err(Error::FileNotFound { file: name }),
        EntryKind::Symlink if opts.follow_symlinks => {
            let target = ns.canonicalize(path).map_err(|e| Error::io(&name, e))?;
            match ns.kind(&target).map_err(|e| Error::io(&name, e))? {
                EntryKind::File => target,
                _ => {
                    return Err(Error::InvalidParameter(format!(
                        "{name}: symlink target {} is not a regular file",
                        target.display()
                    )))
                }
            }
        }
        EntryKind::Symlink => {
            return Err(Error::InvalidParameter(format!(
                "{name}: is a symbolic link; pass --follow-symlinks to open it"
            )))
        }
        EntryKind::Dir | EntryKind::Other => {
            return Err(Error::InvalidParameter(format!(
                "{name}: not a regular file (directories, devices, FIFOs and sockets are never opened as images)"
            )))
        }
    };
    let access = opts.access;
    let storage = ns.open(&real, access).map_err(|e| Error::io(&name, e))?;
    let journal = Some(JournalSlot::for_image(Arc::clone(ns), &real));
    image::open(
        &name,
        storage,
        journal,
        OpenOptions {
            writable: opts.writable && access == Access::Write,
            ignore_checksums: opts.ignore_checksums,
        },
    )
}

/// Split a Windows-style or POSIX-style path into normal components,
/// refusing anything that climbs above its base. `None` when it escapes or is
/// absolute.
fn contained_relative(text: &str) -> Option<PathBuf> {
    let unified = text.replace('\\', "/");
    let p = Path::new(&unified);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if out.as_os_str().is_empty() || unified.contains(':') {
        None
    } else {
        Some(out)
    }
}

/// The last component of a Windows or POSIX path or file URL.
fn file_name_of(text: &str) -> Option<String> {
    let t = text.trim_end_matches(['\\', '/']);
    let name = t.rsplit(['\\', '/']).next()?;
    let name = name.rsplit(':').next()?; // `C:parent.vhd`
    if name.is_empty() || name == "." || name == ".." {
        None
    } else {
        Some(name.to_string())
    }
}

/// The locator entry a hint came from, and its text.
pub fn hint_label(h: &PathHint) -> (&'static str, &str) {
    match h {
        PathHint::Relative(s) => ("relative", s),
        PathHint::Volume(s) => ("volume", s),
        PathHint::AbsoluteWindows(s) => ("absolute_windows", s),
        PathHint::Posix(s) => ("posix", s),
        PathHint::Name(s) => ("name", s),
    }
}

/// The candidate paths one hint yields under the policy, or why none.
pub fn candidates(
    hint: &PathHint,
    child_dir: &Path,
    search_dirs: &[PathBuf],
) -> std::result::Result<Vec<PathBuf>, String> {
    let mut dirs = vec![child_dir.to_path_buf()];
    dirs.extend(search_dirs.iter().cloned());
    match hint {
        PathHint::Relative(s) => match contained_relative(s) {
            Some(rel) => Ok(dirs.iter().map(|d| d.join(&rel)).collect()),
            None => Err(format!(
                "relative path {s:?} leaves the child's directory; not followed (pass --search-dir or --parent to allow another location)"
            )),
        },
        PathHint::Volume(s) | PathHint::AbsoluteWindows(s) | PathHint::Posix(s) | PathHint::Name(s) => {
            match file_name_of(s) {
                Some(n) => Ok(dirs.iter().map(|d| d.join(&n)).collect()),
                None => Err(format!("locator {s:?} names no file")),
            }
        }
    }
}

/// The first directory on the way from `base` down `rel` (the file itself
/// excluded) that is a symbolic link. A kind check on the final component
/// alone would let `.\sub\p.vhdx` with `sub -> /elsewhere` escape the
/// directory without `follow_symlinks`; only paths inside are looked at.
fn symlinked_dir(ns: &Arc<dyn Namespace>, base: &Path, rel: &Path) -> Option<PathBuf> {
    let comps: Vec<Component> = rel.components().collect();
    let mut p = base.to_path_buf();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        p.push(c);
        if matches!(ns.kind(&p), Ok(EntryKind::Symlink)) {
            return Some(p);
        }
    }
    None
}

/// Does `parent` satisfy the child's recorded linkage?
pub fn linkage_matches(
    linkage: &ParentLinkage,
    parent: &Identity,
) -> std::result::Result<(), String> {
    match (linkage, parent) {
        (
            ParentLinkage::Vhdx {
                parent_linkage,
                parent_linkage2,
            },
            Identity::Vhdx { data_write_guid },
        ) => {
            if parent_linkage == data_write_guid
                || parent_linkage2.as_ref() == Some(data_write_guid)
            {
                Ok(())
            } else {
                Err(format!(
                    "child's parent_linkage {{{parent_linkage}}}{} does not match the parent's DataWriteGuid {{{data_write_guid}}}",
                    parent_linkage2.map(|g| format!(" / parent_linkage2 {{{g}}}")).unwrap_or_default()
                ))
            }
        }
        (
            ParentLinkage::Vhd {
                parent_unique_id, ..
            },
            Identity::Vhd { unique_id, .. },
        ) => {
            if parent_unique_id == unique_id {
                Ok(())
            } else {
                Err(format!(
                    "child's Parent Unique ID {} does not match the parent's Unique Id {}",
                    hex(parent_unique_id),
                    hex(unique_id)
                ))
            }
        }
        _ => Err("parent is of a different format than the child expects".into()),
    }
}

fn hex(b: &[u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Find and open the parent of `child` (at `child_path`). Returns the opened
/// parent and how it was found; `Err` carries every attempt.
pub fn resolve_parent(
    ns: &Arc<dyn Namespace>,
    child_path: &Path,
    child: &dyn Image,
    explicit: Option<&Path>,
    opts: &ChainOptions,
    in_chain: &[PathBuf],
    resolution: &mut Resolution,
) -> Result<OpenedImage> {
    let name = child_path.display().to_string();
    let linkage = child
        .parent_linkage()
        .ok_or_else(|| Error::InvalidParameter(format!("{name}: not a differencing image")))?;
    let mut linkage_failure: Option<Error> = None;

    let mut try_path = |hint: &str,
                        locator: &str,
                        path: PathBuf,
                        resolution: &mut Resolution|
     -> Option<OpenedImage> {
        let shown = path.display().to_string();
        let mut attempt = Attempt {
            hint: hint.to_string(),
            locator: locator.to_string(),
            path: Some(shown.clone()),
            outcome: String::new(),
        };
        // A file already in the chain would be its own ancestor: a cycle,
        // reported without opening it again (it may be locked by us).
        let canonical = ns.canonicalize(&path).unwrap_or_else(|_| path.clone());
        if in_chain.contains(&canonical) || in_chain.contains(&path) {
            attempt.outcome = "cycle: this file is already in the chain".into();
            if linkage_failure.is_none() {
                linkage_failure = Some(Error::Corrupt {
                    file: name.clone(),
                    structure: "parent locator",
                    offset: 0,
                    kind: crate::CorruptionKind::ChainCycle,
                    message: format!("chain cycle: parent {shown} is already in the chain"),
                });
            }
            resolution.attempts.push(attempt);
            return None;
        }
        let result = open_image_file(ns, &path, opts);
        let out = match result {
            Ok(img) => match linkage_matches(&linkage, &img.identity()) {
                Ok(()) => {
                    attempt.outcome = "resolved".into();
                    Some(OpenedImage { path, image: img })
                }
                Err(msg) if opts.ignore_linkage => {
                    attempt.outcome =
                        format!("resolved despite linkage mismatch (--ignore-linkage): {msg}");
                    Some(OpenedImage { path, image: img })
                }
                Err(msg) => {
                    attempt.outcome = format!("linkage mismatch: {msg}");
                    if linkage_failure.is_none() {
                        linkage_failure = Some(Error::Linkage {
                            file: name.clone(),
                            message: format!(
                                "{msg} (candidate {shown}); pass --ignore-linkage to accept it"
                            ),
                        });
                    }
                    None
                }
            },
            Err(Error::FileNotFound { .. }) => {
                attempt.outcome = "not found".into();
                None
            }
            Err(e) => {
                attempt.outcome = e.to_string();
                // A locked parent is "system in use", not "not found"; a
                // parent that is there but corrupt or unsupported is
                // "incorrect data type", with the parent's own offset.
                if matches!(
                    e,
                    Error::Locked { .. }
                        | Error::PermissionDenied { .. }
                        | Error::Corrupt { .. }
                        | Error::Checksum { .. }
                        | Error::Unsupported { .. }
                ) && linkage_failure.is_none()
                {
                    linkage_failure = Some(e);
                }
                None
            }
        };
        resolution.attempts.push(attempt);
        out
    };

    if let Some(p) = explicit {
        if let Some(found) = try_path(
            "--parent",
            &p.display().to_string(),
            p.to_path_buf(),
            resolution,
        ) {
            resolution.resolved_path = Some(found.path.display().to_string());
            resolution.resolved_by = Some("--parent".into());
            return Ok(found);
        }
    } else {
        let child_dir = child_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let hints = child.parent_locator().map(|l| l.hints).unwrap_or_default();
        let mut seen: Vec<PathBuf> = Vec::new();
        for hint in &hints {
            let (label, text) = hint_label(hint);
            let rel = match hint {
                PathHint::Relative(s) if !opts.follow_symlinks => contained_relative(s),
                _ => None,
            };
            match candidates(hint, &child_dir, &opts.search_dirs) {
                Ok(paths) => {
                    for path in paths {
                        if seen.contains(&path) {
                            continue;
                        }
                        seen.push(path.clone());
                        let through_link = rel.as_ref().and_then(|r| {
                            let base = path.ancestors().nth(r.components().count())?;
                            symlinked_dir(ns, base, r)
                        });
                        if let Some(link) = through_link {
                            resolution.attempts.push(Attempt {
                                hint: label.to_string(),
                                locator: text.to_string(),
                                path: Some(path.display().to_string()),
                                outcome: format!(
                                    "reached through the symbolic link {}; pass --follow-symlinks to follow it",
                                    link.display()
                                ),
                            });
                            continue;
                        }
                        if let Some(found) = try_path(label, text, path, resolution) {
                            resolution.resolved_path = Some(found.path.display().to_string());
                            resolution.resolved_by = Some(label.to_string());
                            return Ok(found);
                        }
                    }
                }
                Err(why) => resolution.attempts.push(Attempt {
                    hint: label.to_string(),
                    locator: text.to_string(),
                    path: None,
                    outcome: why,
                }),
            }
        }
    }
    if let Some(e) = linkage_failure {
        return Err(e);
    }
    Err(Error::ParentNotFound {
        file: name,
        message: "no parent locator entry resolved to a usable parent".into(),
        tried: resolution
            .attempts
            .iter()
            .map(|a| match &a.path {
                Some(p) => format!("{} {:?} -> {} ({})", a.hint, a.locator, p, a.outcome),
                None => format!("{} {:?} ({})", a.hint, a.locator, a.outcome),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            contained_relative(r".\p.vhdx"),
            Some(PathBuf::from("p.vhdx"))
        );
        assert_eq!(
            contained_relative(r"sub\p.vhdx"),
            Some(PathBuf::from("sub/p.vhdx"))
        );
        assert_eq!(
            contained_relative(r"sub\..\p.vhdx"),
            Some(PathBuf::from("p.vhdx"))
        );
        assert_eq!(contained_relative(r"..\p.vhdx"), None);
        assert_eq!(contained_relative(r"..\..\elsewhere\p.vhdx"), None);
        assert_eq!(contained_relative("/etc/passwd"), None);
        assert_eq!(contained_relative(r"C:\x\p.vhdx"), None);
        assert_eq!(contained_relative(r"C:p.vhdx"), None);
        assert_eq!(contained_relative(""), None);
    }

    #[test]
    fn file_names_of_absolute_paths() {
        assert_eq!(
            file_name_of(r"C:\Users\x\base.vhdx").as_deref(),
            Some("base.vhdx")
        );
        assert_eq!(
            file_name_of(r"\\?\C:\a\b.avhdx").as_deref(),
            Some("b.avhdx")
        );
        assert_eq!(file_name_of("/etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(
            file_name_of("file://localhost/x/p.vhd").as_deref(),
            Some("p.vhd")
        );
        assert_eq!(file_name_of(r"C:\").as_deref(), None);
        assert_eq!(file_name_of("..").as_deref(), None);
    }
}
