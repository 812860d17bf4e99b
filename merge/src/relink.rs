//! Changing a differencing image's parent: `set_parent` (Hyper-V's
//! `Set-VHD -ParentPath`: the same content under another path, or with
//! `ignore_id_mismatch` another parent altogether) and `rebase` (qemu-img
//! rebase's safe mode: the child's view is kept, so every range where the
//! old parent chain and the new one read differently is first copied into
//! the child; with no new parent, `--standalone`, the child becomes a
//! dynamic image holding everything its chain showed).
//!
//! Both go through the child's atomic batch: the copied data lands in fresh
//! space, and the new locator and linkage are part of the same single
//! commit (VHDX: the log entry the header names; VHD: the new dynamic header
//! the end footer switches to). A crash leaves the child linked as before
//! with its old content, or fully relinked; the child keeps its own
//! identity, so its own children stay linked. Every refusal happens before
//! the child is reopened writable: a refused relink changes no byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{fold, Chain, ChainOptions, ChainReader, FoldedRun, Source};
use formats::params::OpenOptions;
use formats::{Access, Image, JournalSlot, Layer, MergeBatch, Namespace};
use serde::Serialize;

use crate::{codes, JobHandle, JobState, MergeError};

/// Virtual bytes examined per step (bounds memory: two buffers this size).
const WINDOW: u64 = 1 << 20;

/// `set-parent` / `rebase`, as the command line takes them.
#[derive(Debug, Clone, Default)]
pub struct RelinkRequest {
    pub child: PathBuf,
    /// The new parent; `None` only for `rebase --standalone`.
    pub new_parent: Option<PathBuf>,
    /// `set-parent`: link although the new parent's identity is not the one
    /// the child records (the new identity is recorded then).
    pub ignore_id_mismatch: bool,
    /// How the child's current chain is opened (`rebase` reads it).
    pub chain: ChainOptions,
    /// Run every check and the plan, then stop: nothing is written.
    pub dry_run: bool,
}

/// What a relink did (the `--json` result).
#[derive(Debug, Clone, Serialize)]
pub struct RelinkOutcome {
    pub return_value: u32,
    pub state: JobState,
    pub child: String,
    /// The parent the child linked to before (resolved path), if found.
    pub old_parent: Option<String>,
    pub new_parent: Option<String>,
    /// The locator paths written (relative, absolute Windows form).
    pub relative_path: Option<String>,
    pub absolute_path: Option<String>,
    /// `set-parent --ignore-id-mismatch` recorded a parent whose identity
    /// differed from the one the child had recorded.
    pub id_mismatch_ignored: bool,
    /// `rebase`: virtual bytes where both views were compared by reading,
    /// and the bytes copied into the child because they differed.
    pub bytes_compared: u64,
    pub bytes_copied: u64,
    /// After the commit: the child's chain opens through the new locator
    /// with the same search options (false: it needs `--search-dir`).
    pub resolves: Option<bool>,
    /// `rebase --standalone` of an image that has no parent (already).
    pub nothing_to_do: bool,
    pub dry_run: bool,
    pub compaction: Option<formats::CompactReport>,
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    /// `formats::CorruptionKind` of the violation when the error is about
    /// an image's bytes (see `MergeOutcome::corruption_kind`).
    pub corruption_kind: Option<formats::CorruptionKind>,
}

impl RelinkOutcome {
    fn new(req: &RelinkRequest) -> Self {
        RelinkOutcome {
            return_value: 0,
            state: JobState::Running,
            child: req.child.display().to_string(),
            old_parent: None,
            new_parent: req.new_parent.as_ref().map(|p| p.display().to_string()),
            relative_path: None,
            absolute_path: None,
            id_mismatch_ignored: false,
            bytes_compared: 0,
            bytes_copied: 0,
            resolves: None,
            nothing_to_do: false,
            dry_run: req.dry_run,
            compaction: None,
            error: None,
            error_kind: None,
            corruption_kind: None,
        }
    }

    fn finish(mut self, r: Result<(), MergeError>, job: &JobHandle) -> Self {
        (self.state, self.return_value) = codes::end_of_run(&r);
        if let Err(e) = r {
            self.error = Some(match e {
                MergeError::Cancelled => {
                    "cancelled before the commit; the child is unchanged".to_string()
                }
                _ => e.to_string(),
            });
            self.error_kind = Some(e.kind());
            self.corruption_kind = e.corruption_kind();
        }
        job.set_state(self.state);
        self
    }
}

/// `set-parent CHILD PARENT`: never fails (the outcome carries the error).
pub fn set_parent(ns: &Arc<dyn Namespace>, req: &RelinkRequest, job: &JobHandle) -> RelinkOutcome {
    job.set_state(JobState::Running);
    let mut out = RelinkOutcome::new(req);
    let r = relink(ns, req, job, &mut out, Mode::SetParent);
    out.finish(r, job)
}

/// `rebase CHILD (--onto NEWPARENT | --standalone)`.
pub fn rebase(ns: &Arc<dyn Namespace>, req: &RelinkRequest, job: &JobHandle) -> RelinkOutcome {
    job.set_state(JobState::Running);
    let mut out = RelinkOutcome::new(req);
    let r = relink(ns, req, job, &mut out, Mode::Rebase);
    out.finish(r, job)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    SetParent,
    Rebase,
}

fn name(p: &Path) -> String {
    p.display().to_string()
}

fn canonical(ns: &Arc<dyn Namespace>, p: &Path) -> PathBuf {
    ns.canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn relink(
    ns: &Arc<dyn Namespace>,
    req: &RelinkRequest,
    job: &JobHandle,
    out: &mut RelinkOutcome,
    mode: Mode,
) -> Result<(), MergeError> {
    // 1. The child, locked exclusively but read-only until every check
    // passed; its current parents (rebase reads them) shared.
    let mut child_opts = req.chain.clone();
    child_opts.access = Access::Write;
    child_opts.writable = false;
    let child = formats::chain::open_image_file(ns, &req.child, &child_opts)?;
    if !child.is_differencing() && mode == Mode::Rebase && req.new_parent.is_none() {
        // `--standalone` of an image without a parent (a finished run
        // repeated): there is nothing to do, as with qemu-img.
        crate::require_healthy(&req.child, child.as_ref())?;
        out.nothing_to_do = true;
        return Ok(());
    }
    if !child.is_differencing() {
        return Err(MergeError::NotDifferencing {
            file: name(&req.child),
        });
    }
    crate::require_healthy(&req.child, child.as_ref())?;
    let mut parent_opts = req.chain.clone();
    parent_opts.access = Access::Read;
    parent_opts.writable = false;
    let mut old = if mode == Mode::Rebase {
        // Rebase keeps the child's view: its whole current chain must open.
        let c = Chain::open_partial_from(ns, &req.child, child, &parent_opts)?;
        if let Some(e) = c.broken {
            return Err(e.into());
        }
        c
    } else {
        // set-parent repairs broken links: the old parent need not exist.
        let mut c = Chain::open_partial_from(
            ns,
            &req.child,
            child,
            &ChainOptions {
                parents: Vec::new(),
                ..parent_opts.clone()
            },
        )?;
        c.links.truncate(2);
        c.broken = None;
        c
    };
    out.old_parent = old.links.get(1).map(|l| name(&l.path));
    if mode == Mode::Rebase {
        for l in &old.links[1..] {
            crate::require_healthy(&l.path, l.image.as_ref())?;
        }
    }
    let child_info = old.top().info();

    // 2. The new parent and its chain (shared locks), unless standalone.
    let child_canon = canonical(ns, &req.child);
    let new_chain = match &req.new_parent {
        None => None,
        Some(np) => {
            // A parent already in the child's chain is not opened twice:
            // the same layer objects let the comparison skip the ranges
            // both chains read from the same place.
            let np_canon = canonical(ns, np);
            let cycle = |chain: Vec<String>| MergeError::Cycle {
                child: name(&req.child),
                parent: name(np),
                chain,
            };
            let in_old = old.links[1..]
                .iter()
                .position(|l| canonical(ns, &l.path) == np_canon)
                .map(|i| i + 1);
            match in_old {
                Some(i) if mode == Mode::Rebase => Some(NewChain::InOld(i)),
                _ => {
                    if np_canon == child_canon {
                        return Err(cycle(vec![name(np)]));
                    }
                    let opts = ChainOptions {
                        parents: Vec::new(),
                        ..parent_opts.clone()
                    };
                    let c = match Chain::open_partial(ns, np, &opts) {
                        Ok(c) => c,
                        // The child itself, locked by us, is in its chain.
                        Err(formats::Error::Locked { file, .. })
                            if canonical(ns, Path::new(&file)) == child_canon =>
                        {
                            return Err(cycle(vec![name(np), name(&req.child)]))
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let paths: Vec<String> = c.paths().iter().map(|p| name(p)).collect();
                    if c.links
                        .iter()
                        .any(|l| canonical(ns, &l.path) == child_canon)
                    {
                        return Err(cycle(paths));
                    }
                    match c.broken {
                        // Its chain reached the child, which we hold locked.
                        Some(formats::Error::Locked { file, .. })
                            if canonical(ns, Path::new(&file)) == child_canon =>
                        {
                            let mut chain = paths;
                            chain.push(name(&req.child));
                            return Err(cycle(chain));
                        }
                        Some(e) if mode == Mode::Rebase => return Err(e.into()),
                        _ => {}
                    }
                    Some(NewChain::Own(c.links))
                }
            }
        }
    };
    let new_top: Option<(&Path, &dyn Image)> = match &new_chain {
        None => None,
        Some(NewChain::InOld(i)) => Some((&old.links[*i].path, old.links[*i].image.as_ref())),
        Some(NewChain::Own(links)) => Some((&links[0].path, links[0].image.as_ref())),
    };

    // 3. Does the new parent fit?
    let spec = match new_top {
        None => None,
        Some((np, parent)) => {
            if let NewChain::Own(links) = new_chain.as_ref().expect("set above") {
                let upto = if mode == Mode::Rebase { links.len() } else { 1 };
                for l in &links[..upto] {
                    crate::require_healthy(&l.path, l.image.as_ref())?;
                }
            }
            let pinfo = parent.info();
            let mismatch = |detail: String| MergeError::ParentMismatch {
                child: name(&req.child),
                parent: name(np),
                detail,
            };
            if pinfo.format != child_info.format {
                return Err(mismatch(format!(
                    "a {:?} child needs a {:?} parent, not a {:?} one",
                    child_info.format, child_info.format, pinfo.format
                )));
            }
            if pinfo.virtual_size != child_info.virtual_size {
                return Err(mismatch(format!(
                    "virtual size {} differs from the child's {}",
                    pinfo.virtual_size, child_info.virtual_size
                )));
            }
            if pinfo.logical_sector_size != child_info.logical_sector_size {
                return Err(mismatch(format!(
                    "logical sector size {} differs from the child's {}",
                    pinfo.logical_sector_size, child_info.logical_sector_size
                )));
            }
            // The same linkage test chain resolution applies.
            let linkage = match old.top().parent_linkage() {
                Some(l) => formats::chain::resolve::linkage_matches(&l, &parent.identity()),
                None => Err("the child records no parent linkage".into()),
            };
            if let (Mode::SetParent, Err(detail)) = (mode, linkage) {
                if !req.ignore_id_mismatch {
                    return Err(MergeError::IdMismatch {
                        child: name(&req.child),
                        parent: name(np),
                        detail,
                    });
                }
                out.id_mismatch_ignored = true;
            }
            let spec = formats::create::parent_spec(ns, parent, np, &req.child)?;
            // The link must be recordable (a locator that fits, paths not
            // too long) before the writable open changes any byte.
            old.top().check_parent_spec(&spec)?;
            out.relative_path = Some(spec.relative_path.clone());
            out.absolute_path = Some(spec.absolute_path.clone());
            Some(spec)
        }
    };
    if spec.is_none() && mode == Mode::SetParent {
        return Err(MergeError::InvalidParameter(
            "set-parent needs a parent".into(),
        ));
    }
    if req.dry_run {
        return Ok(());
    }
    if job.is_cancelled() {
        return Err(MergeError::Cancelled);
    }

    // 4. Every check passed: the child writable from the handle we hold.
    let identity = old.top().identity();
    let top = old.links.remove(0);
    let child = top.image.reopen(
        Some(JournalSlot::for_image(Arc::clone(ns), &req.child)),
        OpenOptions {
            writable: true,
            ignore_checksums: req.chain.ignore_checksums,
        },
    )?;
    let mut child = child;
    {
        let old_layers: Vec<&dyn Layer> = old
            .links
            .iter()
            .map(|l| l.image.as_ref() as &dyn Layer)
            .collect();
        let new_layers: Vec<&dyn Layer> = match &new_chain {
            None => Vec::new(),
            Some(NewChain::InOld(i)) => old_layers[i - 1..].to_vec(),
            Some(NewChain::Own(links)) => links
                .iter()
                .map(|l| l.image.as_ref() as &dyn Layer)
                .collect(),
        };
        let view = child.as_ref() as &dyn Layer;
        let size = view.virtual_size();
        let sector = u64::from(view.logical_sector_size()).max(512);
        // The child's own runs are read before its batch borrows it.
        let mut own = Vec::new();
        let mut transparent: Vec<(u64, u64)> = Vec::new();
        if mode == Mode::Rebase {
            let mut at = 0;
            while at < size {
                let len = (size - at).min(256 << 20);
                own.clear();
                fold(&[view], at, len, &mut own)?;
                for r in &own {
                    if r.source == Source::NotHeld {
                        match transparent.last_mut() {
                            Some(last) if last.0 + last.1 == r.offset => last.1 += r.len,
                            _ => transparent.push((r.offset, r.len)),
                        }
                    }
                }
                at += len;
            }
        }
        job.set_total(transparent.iter().map(|t| t.1).sum());
        let mut batch = child.begin_batch()?;
        let mut cmp = Comparer {
            old: ChainReader::new(old_layers.clone()),
            new: ChainReader::new(new_layers.clone()),
            old_layers: &old_layers,
            new_layers: &new_layers,
            sector,
            a: Vec::new(),
            b: Vec::new(),
            runs_old: Vec::new(),
            runs_new: Vec::new(),
        };
        for &(start, len) in &transparent {
            let mut at = start;
            while at < start + len {
                if job.is_cancelled() {
                    return Err(MergeError::Cancelled);
                }
                let n = (start + len - at).min(WINDOW);
                let (compared, copied) = cmp.stage_differences(batch.as_mut(), at, n)?;
                out.bytes_compared += compared;
                out.bytes_copied += copied;
                job.add_done(n);
                at += n;
            }
        }
        match &spec {
            Some(spec) => batch.set_parent(spec)?,
            // Standalone: the sectors of stored blocks that still read
            // through to the parent get the old view too.
            None => {
                let reader = &mut cmp.old;
                batch.make_standalone(&mut |off, buf| reader.read(off, buf))?;
            }
        }
        batch.prepare()?;
        if job.is_cancelled() {
            return Err(MergeError::Cancelled);
        }
        // THE commit point (inside the driver). The child keeps its
        // identity: its own children still link to it.
        batch.commit(identity)?;
        job.set_committed();
    }
    // 5. The commit released the old locator (and, for a VHD, the old
    // header and BAT): give the space back. A crash here leaves the same
    // content; `compact` (or the same command again) finishes it.
    out.compaction = Some(child.compact()?);
    drop(child);
    drop(old);
    drop(new_chain);
    // 6. Does the child now find its parent with the same search options?
    let mut check_opts = req.chain.clone();
    check_opts.parents = Vec::new();
    check_opts.access = Access::Read;
    check_opts.writable = false;
    if req.new_parent.is_none() {
        return Ok(());
    }
    out.resolves = Some(
        Chain::open(ns, &req.child, &check_opts)
            .ok()
            .and_then(|c| c.links.get(1).map(|l| canonical(ns, &l.path)))
            .zip(req.new_parent.as_ref().map(|p| canonical(ns, p)))
            .is_some_and(|(a, b)| a == b),
    );
    Ok(())
}

/// The new parent's chain: a part of the child's current chain, or opened
/// on its own.
enum NewChain {
    /// `old.links[i..]`.
    InOld(usize),
    Own(Vec<formats::chain::Link>),
}

/// Compares the old and the new parent view over a range and stages the old
/// view's bytes where they differ.
struct Comparer<'a> {
    old: ChainReader<'a>,
    new: ChainReader<'a>,
    old_layers: &'a [&'a dyn Layer],
    new_layers: &'a [&'a dyn Layer],
    sector: u64,
    a: Vec<u8>,
    b: Vec<u8>,
    runs_old: Vec<FoldedRun>,
    runs_new: Vec<FoldedRun>,
}

/// Where a folded run's bytes come from, comparable across two chains that
/// share layer objects.
#[derive(PartialEq)]
enum Origin {
    Zeros,
    At(*const (), u64),
}

fn origin(layers: &[&dyn Layer], r: &FoldedRun, at: u64) -> Origin {
    match r.source {
        Source::Layer { layer, file_offset } => Origin::At(
            layers[layer] as *const dyn Layer as *const (),
            file_offset + (at - r.offset),
        ),
        Source::Zero | Source::NotHeld => Origin::Zeros,
    }
}

impl Comparer<'_> {
    /// Returns (bytes compared by reading, bytes staged).
    fn stage_differences(
        &mut self,
        batch: &mut dyn MergeBatch,
        offset: u64,
        len: u64,
    ) -> formats::Result<(u64, u64)> {
        self.runs_old.clear();
        self.runs_new.clear();
        fold(self.old_layers, offset, len, &mut self.runs_old)?;
        if !self.new_layers.is_empty() {
            fold(self.new_layers, offset, len, &mut self.runs_new)?;
        }
        // Walk both run lists together: segments where both read the same
        // place (the same layer file at the same offset, or zeros) are
        // equal without reading.
        let (mut i, mut j) = (0, 0);
        let mut at = offset;
        let end = offset + len;
        let mut to_read: Vec<(u64, u64)> = Vec::new();
        while at < end {
            let ro = self.runs_old.get(i).filter(|r| r.offset <= at);
            let rn = self.runs_new.get(j).filter(|r| r.offset <= at);
            let (seg_end_o, o) = match ro {
                Some(r) => (r.offset + r.len, origin(self.old_layers, r, at)),
                None => (
                    self.runs_old.get(i).map_or(end, |r| r.offset),
                    Origin::Zeros,
                ),
            };
            let (seg_end_n, n) = match rn {
                Some(r) => (r.offset + r.len, origin(self.new_layers, r, at)),
                None => (
                    self.runs_new.get(j).map_or(end, |r| r.offset),
                    Origin::Zeros,
                ),
            };
            let seg_end = seg_end_o.min(seg_end_n).min(end);
            if o != n {
                match to_read.last_mut() {
                    Some(last) if last.0 + last.1 == at => last.1 += seg_end - at,
                    _ => to_read.push((at, seg_end - at)),
                }
            }
            at = seg_end;
            if ro.is_some_and(|r| r.offset + r.len <= at) {
                i += 1;
            }
            if rn.is_some_and(|r| r.offset + r.len <= at) {
                j += 1;
            }
        }
        let (mut compared, mut copied) = (0, 0);
        for (o, l) in to_read {
            self.a.resize(l as usize, 0);
            self.b.resize(l as usize, 0);
            self.old.read(o, &mut self.a)?;
            if self.new_layers.is_empty() {
                self.b.fill(0);
            } else {
                self.new.read(o, &mut self.b)?;
            }
            compared += l;
            // Stage runs of differing sectors.
            let s = self.sector as usize;
            let mut k = 0usize;
            while k < l as usize {
                if self.a[k..k + s] == self.b[k..k + s] {
                    k += s;
                    continue;
                }
                let first = k;
                while k < l as usize && self.a[k..k + s] != self.b[k..k + s] {
                    k += s;
                }
                batch.write(o + first as u64, &self.a[first..k])?;
                copied += (k - first) as u64;
            }
        }
        Ok((compared, copied))
    }
}
