//! chainfold's merge: `MergeVirtualHardDisk(SourcePath, DestinationPath)`
//! offline. Folds the layers above the destination into it through the
//! destination driver's atomic batch (DESIGN.md sections 4, 5, 7, 8).
//!
//! Order of a merge, and why:
//! 1. finish an interrupted merge if `<source>.cfmerge` says it committed;
//!    answer "already merged" if `<source>.cfmerged` (the record of a
//!    finished merge) proves this merge completed (see `record`);
//! 2. open the whole chain with exclusive locks, read-only, and run every
//!    refusal check (differencing source, ancestor destination, siblings,
//!    validation) — a refused merge has changed no byte;
//! 3. reopen the destination writable (from the same locked handle) and
//!    stage the folded runs into its batch (fresh space only);
//! 4. prepare (payload durable), write the merge record (durable), commit
//!    (the single commit point inside the driver);
//! 5. compact the destination (give back what the commit released), then
//!    finish: remove merged files if asked, then rename the record to the
//!    committed-merge marker.

pub mod codes;
mod error;
pub mod job;
pub mod plan;
mod preflight;
pub mod record;
pub mod relink;
pub mod siblings;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{Chain, ChainOptions, Link, Source};
use formats::params::{Identity, OpenOptions};
use formats::{Access, JournalSlot, Namespace, Severity};
use serde::Serialize;

pub use codes::ReturnValue;
pub use error::MergeError;
pub use job::{JobHandle, JobState, JobStatus};
pub use plan::MergePlan;
pub use preflight::Preflight;

/// Largest single copy handed to the destination batch.
const PIECE: u64 = 8 << 20;

/// A merge request, as the command line takes it.
#[derive(Debug, Clone, Default)]
pub struct MergeRequest {
    pub source: PathBuf,
    /// None: the source's immediate parent.
    pub destination: Option<PathBuf>,
    pub remove_merged: bool,
    /// Merge even when other images depend on the destination or an
    /// intermediate.
    pub force: bool,
    pub chain: ChainOptions,
    /// Run every check and the preflight, then stop: nothing is written.
    pub dry_run: bool,
    /// Merge even when the preflight's peak extra space exceeds the free
    /// space of the destination's file system.
    pub no_space_check: bool,
    /// How the destination replaces part of a block it holds (journal or
    /// rebuild; `Auto` picks by whether the file system shares extents).
    pub held_blocks: formats::params::HeldBlocks,
}

/// What a merge did (the `--json` result).
#[derive(Debug, Clone, Serialize)]
pub struct MergeOutcome {
    pub return_value: u32,
    pub state: JobState,
    pub source: String,
    pub destination: Option<String>,
    pub bytes_merged: u64,
    pub bytes_total: u64,
    /// True when this run only finished a merge committed by an earlier,
    /// interrupted run.
    pub resumed: bool,
    /// True when an earlier run had already committed this merge: this run
    /// merged no data (it may have finished that run, see `resumed`, or
    /// removed merged files when asked). Decided from the committed-merge
    /// marker or the record, both checked against the destination's
    /// current identity.
    pub already_merged: bool,
    pub removed: Vec<String>,
    pub siblings: Vec<String>,
    /// True for `dry_run`: checks and preflight only, nothing written.
    pub dry_run: bool,
    /// What the merge will do (None when it stopped before its checks
    /// passed, or only finished an earlier run).
    pub preflight: Option<Preflight>,
    /// Blocks the destination already held that the merge changed: in
    /// place behind a journal, or copied on write (`--held-blocks`; None
    /// before the batch was prepared).
    pub held_blocks: Option<formats::params::HeldBlocksChanged>,
    /// What the compaction after the commit gave back (None before it ran).
    pub compaction: Option<formats::CompactReport>,
    pub error: Option<String>,
    /// `MergeError::kind` of the error (`insufficient_space`, `siblings`,
    /// `linkage_mismatch`, ...).
    pub error_kind: Option<&'static str>,
    /// `formats::CorruptionKind` of the violation when the error is about
    /// an image's bytes (`error_kind` `corrupt`, `checksum` or `unhealthy`).
    pub corruption_kind: Option<formats::CorruptionKind>,
}

impl MergeOutcome {
    /// The outcome of a merge that has started and done nothing yet.
    pub fn running(source: String, destination: Option<String>, dry_run: bool) -> Self {
        MergeOutcome {
            return_value: 0,
            state: JobState::Running,
            source,
            destination,
            bytes_merged: 0,
            bytes_total: 0,
            resumed: false,
            already_merged: false,
            removed: Vec::new(),
            siblings: Vec::new(),
            dry_run,
            preflight: None,
            held_blocks: None,
            compaction: None,
            error: None,
            error_kind: None,
            corruption_kind: None,
        }
    }
}

/// Run a merge to the end and describe it; never fails (the outcome carries
/// the return value and the error).
pub fn run(ns: &Arc<dyn Namespace>, req: &MergeRequest, job: &JobHandle) -> MergeOutcome {
    job.set_state(JobState::Running);
    let mut out = MergeOutcome::running(
        req.source.display().to_string(),
        req.destination.as_ref().map(|p| p.display().to_string()),
        req.dry_run,
    );
    let r = merge(ns, req, job, &mut out);
    (out.state, out.return_value) = codes::end_of_run(&r);
    if let Err(e) = r {
        if let MergeError::Siblings { siblings, .. } = &e {
            out.siblings = siblings.iter().map(|p| p.display().to_string()).collect();
        }
        out.error = Some(e.to_string());
        out.error_kind = Some(e.kind());
        out.corruption_kind = e.corruption_kind();
    }
    job.set_state(out.state);
    out.bytes_merged = job.status().bytes_done;
    out
}

fn new_identity_like(old: &Identity) -> Identity {
    match old {
        Identity::Vhdx { .. } => Identity::Vhdx {
            data_write_guid: formats::entropy::new_guid(),
        },
        Identity::Vhd { .. } => Identity::Vhd {
            unique_id: *formats::entropy::new_guid().as_bytes(),
            // VHD time stamps count seconds from 2000-01-01 UTC.
            timestamp: formats::entropy::now_unix().saturating_sub(946_684_800) as u32,
        },
    }
}

fn same_file(ns: &Arc<dyn Namespace>, a: &Path, b: &Path) -> bool {
    let ca = ns.canonicalize(a).unwrap_or_else(|_| a.to_path_buf());
    let cb = ns.canonicalize(b).unwrap_or_else(|_| b.to_path_buf());
    ca == cb
}

/// The merge itself; `out` collects what is known as it goes.
pub fn merge(
    ns: &Arc<dyn Namespace>,
    req: &MergeRequest,
    job: &JobHandle,
    out: &mut MergeOutcome,
) -> Result<(), MergeError> {
    let rec_path = record::record_path(&req.source);

    // 1. An earlier run may have committed and stopped before finishing.
    if let Some(rec) = record::read(ns, &rec_path) {
        if req.dry_run {
            // A dry run finishes nothing: it only says the commit happened.
            if committed(ns, req, &rec) {
                out.destination = Some(rec.destination.display().to_string());
                out.already_merged = true;
                return Ok(());
            }
        } else if let Some(done) = finish_if_committed(ns, req, &rec, &rec_path, job, out)? {
            return done;
        }
    }
    // ... or finished: its source no longer links to the destination (or
    // is gone), which must not read as a broken chain. (A dry run removes
    // nothing, whatever `remove_merged` says.)
    let marker_req = MergeRequest {
        remove_merged: req.remove_merged && !req.dry_run,
        ..req.clone()
    };
    if already_merged(ns, &marker_req, job, out)? {
        return Ok(());
    }

    // 2. Open everything locked, read-only, and refuse early.
    let mut opts = req.chain.clone();
    opts.access = Access::Write;
    opts.writable = false;
    let mut chain = Chain::open(ns, &req.source, &opts)?;
    if !chain.top().is_differencing() {
        return Err(MergeError::NotDifferencing {
            file: req.source.display().to_string(),
        });
    }
    let dest_index = match &req.destination {
        None => 1,
        Some(d) => chain
            .links
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, l)| same_file(ns, &l.path, d))
            .map(|(i, _)| i)
            .ok_or_else(|| MergeError::NotAnAncestor {
                source_path: req.source.display().to_string(),
                destination: d.display().to_string(),
                chain: chain
                    .paths()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            })?,
    };
    let dest_path = chain.links[dest_index].path.clone();
    out.destination = Some(dest_path.display().to_string());

    // The merged destination must show exactly the source's view; a larger
    // destination would keep a tail the source does not show.
    let (source_size, destination_size) = (
        chain.top().virtual_size(),
        chain.links[dest_index].image.virtual_size(),
    );
    if destination_size > source_size {
        return Err(MergeError::DestinationLarger {
            source_path: req.source.display().to_string(),
            source_size,
            destination: dest_path.display().to_string(),
            destination_size,
        });
    }

    if !req.chain.ignore_checksums {
        for link in &chain.links[..=dest_index] {
            require_healthy(&link.path, link.image.as_ref())?;
        }
    }

    if !req.force {
        let deps = siblings::find(ns, &chain, dest_index, &req.chain.search_dirs)?;
        if !deps.is_empty() {
            return Err(MergeError::Siblings {
                parents: chain.links[1..=dest_index]
                    .iter()
                    .map(|l| l.path.display().to_string())
                    .collect(),
                siblings: deps,
            });
        }
    }

    let plan = MergePlan::new(&chain, dest_index)?;
    job.set_total(plan.bytes_total);
    out.bytes_total = plan.bytes_total;
    // The peak before the commit must fit: a merge that fills the volume
    // half way is refused here, before any byte changes.
    let dest_dir = match dest_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let free = ns
        .free_space(&dest_dir)
        .map_err(|e| formats::Error::io(dest_dir.display().to_string(), e))?;
    let preflight = Preflight::new(&plan, &chain.links[dest_index].image.info(), free);
    out.preflight = Some(preflight);
    job.set_preflight(preflight);
    if req.dry_run {
        return Ok(());
    }
    if !req.no_space_check && preflight.lacks_space() {
        return Err(MergeError::InsufficientSpace {
            destination: dest_path.display().to_string(),
            needed: preflight.peak_extra_bytes,
            free: free.unwrap_or(0),
        });
    }
    if job.is_cancelled() {
        return Err(MergeError::Cancelled);
    }

    // 3. Every check passed: reopen the destination writable from the
    // handle we already hold locked. The writable destination replaces the
    // read-only one in the chain and takes over its BAT (a 64 TiB VHDX's
    // BAT is 16 MiB: read once, held once).
    let new_identity = new_identity_like(&chain.links[dest_index].image.identity());
    let Link {
        path,
        image: read_only,
        parent_resolution,
    } = chain.links.remove(dest_index);
    let dest = read_only.reopen(
        Some(JournalSlot::for_image(Arc::clone(ns), &dest_path)),
        OpenOptions {
            writable: true,
            ignore_checksums: req.chain.ignore_checksums,
        },
    )?;
    chain.links.insert(
        dest_index,
        Link {
            path,
            image: dest,
            parent_resolution,
        },
    );
    {
        // Indexed like the chain: the grown region may copy from below
        // the destination too (see `MergePlan::for_each_run`).
        let sources: Vec<_> = chain
            .links
            .iter()
            .map(|l| Arc::clone(l.image.storage()))
            .collect();
        let (above_links, rest) = chain.links.split_at_mut(dest_index);
        let (dest_link, below_links) = rest
            .split_first_mut()
            .ok_or_else(|| MergeError::InvalidParameter("destination not in chain".into()))?;
        let (above, below) = (layer_refs(above_links), layer_refs(below_links));
        let mut batch = dest_link.image.begin_batch()?;
        batch.held_blocks(req.held_blocks);
        batch.expect_fresh(preflight.peak_extra_bytes)?;
        if plan.virtual_size > plan.destination_size {
            batch.grow(plan.virtual_size)?;
        }
        plan.for_each_run(&above, &below, |r| {
            if job.is_cancelled() {
                return Err(formats::Error::Cancelled);
            }
            match r.source {
                Source::Layer { layer, file_offset } => {
                    let mut done = 0;
                    while done < r.len {
                        let n = PIECE.min(r.len - done);
                        batch.copy_joinable(
                            r.offset + done,
                            n,
                            &sources[layer],
                            file_offset + done,
                        )?;
                        done += n;
                        job.add_done(n);
                    }
                }
                Source::Zero => {
                    batch.zero(r.offset, r.len)?;
                    job.add_done(r.len);
                }
                Source::NotHeld => {}
            }
            Ok(())
        })
        .map_err(|e| match e {
            formats::Error::Cancelled => MergeError::Cancelled,
            e => MergeError::Format(e),
        })?;
        batch.prepare()?;
        out.held_blocks = Some(batch.held_blocks_changed());
        if job.is_cancelled() {
            return Err(MergeError::Cancelled);
        }

        // 4. The record must be durable before the commit point, so a
        // re-run after a crash past the commit knows to finish, not redo.
        let merged: Vec<PathBuf> = above_links.iter().map(|l| l.path.clone()).collect();
        let merged_identities: Vec<String> = above_links
            .iter()
            .map(|l| record::identity_text(&l.image.identity()))
            .collect();
        let rec = record::MergeRecord {
            version: record::VERSION,
            source: req.source.clone(),
            destination: dest_path.clone(),
            merged,
            remove_merged: req.remove_merged,
            new_identity: record::identity_text(&new_identity),
            source_identity: merged_identities.first().cloned(),
            merged_identities,
        };
        // A marker of an earlier merge of another image at this path says
        // nothing about this one: it goes before this merge's record is
        // written (its own marker replaces it when this merge finishes).
        record::remove(ns, &record::done_path(&req.source))?;
        record::write(ns, &rec_path, &rec)?;
        batch.commit(new_identity)?;
        job.set_committed();
    }
    // 5. Space: the commit released every block it replaced; give it back
    // while the record still says "committed", so a crash here is finished
    // (compaction included) by the next run.
    out.compaction = Some(chain.links[dest_index].image.compact()?);
    let merged_paths: Vec<PathBuf> = chain.links[..dest_index]
        .iter()
        .map(|l| l.path.clone())
        .collect();
    // Release the locks of the obsolete files before removing them.
    chain.links.clear();
    finish(ns, req, req.remove_merged, &merged_paths, &rec_path, out)?;
    Ok(())
}

/// Refuse an image whose `check` finds errors (`Unhealthy`, with the first
/// error's kind): merges and relinks write only into healthy chains.
pub(crate) fn require_healthy(path: &Path, image: &dyn formats::Image) -> Result<(), MergeError> {
    let findings = image.check()?;
    let errors: Vec<&formats::Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(MergeError::Unhealthy {
            file: path.display().to_string(),
            kind: first.kind,
            findings: errors
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

fn layer_refs(links: &[formats::chain::Link]) -> Vec<&dyn formats::Layer> {
    links
        .iter()
        .map(|l| l.image.as_ref() as &dyn formats::Layer)
        .collect()
}

/// Complete a merge whose commit is already durable: remove merged files if
/// asked, then turn the record into the committed-merge marker.
fn finish(
    ns: &Arc<dyn Namespace>,
    req: &MergeRequest,
    remove_merged: bool,
    merged: &[PathBuf],
    rec_path: &Path,
    out: &mut MergeOutcome,
) -> Result<(), MergeError> {
    if remove_merged {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in merged {
            let name = p.display().to_string();
            match ns.kind(p).map_err(|e| formats::Error::io(&name, e))? {
                formats::EntryKind::Missing => {}
                _ => {
                    ns.remove(p).map_err(|e| formats::Error::io(&name, e))?;
                    out.removed.push(name);
                }
            }
            let d = p.parent().map(Path::to_path_buf).unwrap_or_default();
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        for d in dirs {
            ns.sync_dir(&d)
                .map_err(|e| formats::Error::io(d.display().to_string(), e))?;
        }
    }
    record::retire(ns, rec_path, &record::done_path(&req.source))?;
    Ok(())
}

/// If `rec` describes a merge whose destination already took the new
/// identity, finish it and return the result; `None` to merge normally.
fn finish_if_committed(
    ns: &Arc<dyn Namespace>,
    req: &MergeRequest,
    rec: &record::MergeRecord,
    rec_path: &Path,
    job: &JobHandle,
    out: &mut MergeOutcome,
) -> Result<Option<Result<(), MergeError>>, MergeError> {
    let mut opts = req.chain.clone();
    opts.access = Access::Write;
    // Writable: a committed-but-unapplied VHDX log or VHD journal is
    // replayed here, which is exactly the finishing step.
    opts.writable = true;
    let mut dest = match formats::chain::open_image_file(ns, &rec.destination, &opts) {
        Ok(d) => d,
        Err(formats::Error::FileNotFound { .. }) => {
            record::remove(ns, rec_path)?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if record::identity_text(&dest.identity()) != rec.new_identity {
        // Not committed: the destination is the old image. Start over.
        drop(dest);
        record::remove(ns, rec_path)?;
        return Ok(None);
    }
    // The commit happened: the compaction after it may not have.
    out.compaction = Some(dest.compact()?);
    drop(dest);
    out.destination = Some(rec.destination.display().to_string());
    out.resumed = true;
    out.already_merged = true;
    job.set_committed();
    let remove = req.remove_merged || rec.remove_merged;
    finish(ns, req, remove, &rec.merged, rec_path, out)?;
    Ok(Some(Ok(())))
}

/// Does the destination a record names carry the identity it was to take
/// at the commit? Read-only (a pending VHDX log is overlaid, not replayed).
fn committed(ns: &Arc<dyn Namespace>, req: &MergeRequest, rec: &record::MergeRecord) -> bool {
    let mut opts = req.chain.clone();
    opts.access = Access::Read;
    opts.writable = false;
    formats::chain::open_image_file(ns, &rec.destination, &opts)
        .is_ok_and(|d| record::identity_text(&d.identity()) == rec.new_identity)
}

/// Did an earlier run complete exactly this merge? True when the
/// committed-merge marker `<source>.cfmerged` names the requested
/// destination (the default one: the source's parent, so a merge that went
/// further up does not count), the destination still carries the identity
/// that merge gave it at its commit, and the source is either gone or still
/// the image that was merged (same identity). Anything else — no marker, a
/// torn one, a destination changed or replaced since, another image at the
/// source's path, a file that cannot be opened — proves nothing, and the
/// merge goes on as usual (a broken chain still gets 32775).
///
/// With `remove_merged`, removes each merged file that is still there and
/// still carries the identity the marker recorded for it, and only inside
/// the directories a chain may be resolved in (the source's, the
/// `--search-dir`s): a marker is a file beside the source, not a licence
/// to delete images elsewhere.
fn already_merged(
    ns: &Arc<dyn Namespace>,
    req: &MergeRequest,
    job: &JobHandle,
    out: &mut MergeOutcome,
) -> Result<bool, MergeError> {
    let Some(rec) = record::read(ns, &record::done_path(&req.source)) else {
        return Ok(false);
    };
    let same_destination = match &req.destination {
        Some(d) => same_file(ns, d, &rec.destination),
        // The default destination: the parent (`--parent`, if given).
        None => {
            rec.merged.len() == 1
                && req
                    .chain
                    .parents
                    .first()
                    .is_none_or(|p| same_file(ns, p, &rec.destination))
        }
    };
    if !same_destination {
        return Ok(false);
    }
    let mut opts = req.chain.clone();
    opts.access = Access::Write;
    opts.writable = false;
    let identity_of = |p: &Path| -> Option<Result<String, ()>> {
        match formats::chain::open_image_file(ns, p, &opts) {
            Ok(img) => Some(Ok(record::identity_text(&img.identity()))),
            Err(formats::Error::FileNotFound { .. }) => None,
            Err(_) => Some(Err(())),
        }
    };
    if identity_of(&rec.destination) != Some(Ok(rec.new_identity.clone())) {
        return Ok(false);
    }
    match identity_of(&req.source) {
        None => {}
        Some(Ok(id)) if rec.source_identity.as_deref() == Some(id.as_str()) => {}
        Some(_) => return Ok(false),
    }
    out.destination = Some(rec.destination.display().to_string());
    out.already_merged = true;
    job.set_committed();
    if req.remove_merged {
        let canon = |p: &Path| ns.canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut allowed: Vec<PathBuf> = vec![canon(&dir(&req.source))];
        allowed.extend(req.chain.search_dirs.iter().map(|d| canon(d)));
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (p, id) in rec.merged.iter().zip(&rec.merged_identities) {
            if !allowed.contains(&canon(&dir(p))) || identity_of(p) != Some(Ok(id.clone())) {
                continue;
            }
            let name = p.display().to_string();
            ns.remove(p).map_err(|e| formats::Error::io(&name, e))?;
            out.removed.push(name);
            if !dirs.contains(&dir(p)) {
                dirs.push(dir(p));
            }
        }
        for d in dirs {
            ns.sync_dir(&d)
                .map_err(|e| formats::Error::io(d.display().to_string(), e))?;
        }
    }
    Ok(true)
}
