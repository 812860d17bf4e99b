//! From one recorded run to every post-crash state (DESIGN.md section 6).
//!
//! Crash point `k` means: operations `0..k` were issued, then the power
//! failed. What survives:
//! - file data (write, set_len) made durable by a later completed flush of
//!   the same file: always;
//! - other (pending) data ops: each one kept, dropped or — for writes that
//!   span several sectors — torn (any subset of its sectors kept). Kept
//!   pieces are applied in issue order, so a sector ends up holding the old
//!   bytes or the bytes of any one pending write that covered it, which is
//!   what a page cache with write-back in any order can produce. A write
//!   smaller than a sector is atomic;
//! - namespace ops (create, remove, rename) made durable by a later
//!   sync_dir of every directory they touch: always. A durable op also makes
//!   durable every earlier op sharing a directory with it (a directory's
//!   history is never lost in the middle);
//! - other (pending) namespace ops: any set closed under "earlier op of the
//!   same directory" (per-directory prefixes), so a rename is never kept
//!   without the create it renames.
//!
//! Data belongs to inodes and names to directories: a flushed file whose
//! create was not made durable keeps its data but may lose its name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::crash::namespace::{apply_names, CrashNamespace, Snapshot};
use crate::crash::pages::{Overlay, Page, PageMap, PAGE};
use crate::crash::rng::SplitMix64;
use crate::crash::trace::{Ino, Op};

/// Up to this many pending namespace ops, the valid subsets are listed and
/// enumerated; beyond, they are only sampled.
const MAX_ENUMERATED_NS_OPS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct PointInfo {
    files_epoch: usize,
    names_epoch: usize,
    ns_pending: usize,
    /// No data op before this index is pending at this point.
    data_lo: usize,
}

/// (page index, content) of the whole pages one write covers.
type WholePages = Arc<[(u64, Arc<Page>)]>;

/// Everything needed to rebuild any post-crash state of one run.
#[derive(Debug)]
pub struct CrashModel {
    sector_size: u64,
    base: Snapshot,
    final_state: Snapshot,
    trace: Arc<[Op]>,
    marks: Vec<(usize, String)>,
    points: Vec<PointInfo>,
    files_epochs: Vec<Arc<HashMap<Ino, Arc<PageMap>>>>,
    names_epochs: Vec<Arc<BTreeMap<PathBuf, Ino>>>,
    ns_pending_lists: Vec<Arc<Vec<usize>>>,
    /// For each data op: index of the flush that made it durable
    /// (`usize::MAX`: never).
    durable_at: Vec<usize>,
    /// Per write op: its page-aligned whole pages, shared by every state
    /// that keeps the write (so keeping it copies only its ragged ends).
    whole_pages: HashMap<usize, WholePages>,
    empty: Arc<PageMap>,
}

/// What happened to one pending data op in one post-crash state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    Dropped,
    Kept,
    /// One flag per sector-sized unit of the write (at least one kept and
    /// one dropped).
    Torn(Vec<bool>),
}

/// One post-crash state of a crash point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Per pending namespace op of the space: survived?
    pub ns_kept: Vec<bool>,
    /// Per pending data op of the space.
    pub data: Vec<Keep>,
}

/// The choices available at one crash point.
#[derive(Debug, Clone)]
pub struct PointSpace {
    pub crash_point: usize,
    /// Trace indices of the pending namespace ops.
    pub ns_ops: Vec<usize>,
    /// Per pending namespace op: positions (in `ns_ops`) of the earlier
    /// pending ops sharing a directory with it.
    ns_preds: Vec<Vec<usize>>,
    /// Valid kept-sets of the namespace ops, when few enough to list.
    ns_subsets: Option<Vec<Vec<bool>>>,
    /// Trace indices of the pending data ops that can matter (their inode
    /// is named in some post-crash state).
    pub data_ops: Vec<usize>,
    /// Tear units of each data op (1 for set_len and one-sector writes).
    pub units: Vec<u64>,
    /// Number of distinct choices, if it fits in a u64.
    pub total: Option<u64>,
}

impl PointSpace {
    /// Whether the space can be enumerated within `limit` states.
    pub fn enumerable(&self, limit: u64) -> bool {
        matches!(self.total, Some(t) if t <= limit)
    }

    /// The `index`-th state in enumeration order (mixed radix: namespace
    /// subset first, then each data op in trace order). Requires
    /// `total` to be known and `index < total`.
    pub fn decode(&self, mut index: u64) -> Choice {
        let subsets = self.ns_subsets.as_deref().unwrap_or(&[]);
        let ns_kept = if subsets.is_empty() {
            vec![false; self.ns_ops.len()]
        } else {
            let n = subsets.len() as u64;
            let pick = (index % n) as usize;
            index /= n;
            subsets.get(pick).cloned().unwrap_or_default()
        };
        let mut data = Vec::with_capacity(self.units.len());
        for &u in &self.units {
            if u <= 1 {
                data.push(if index % 2 == 1 {
                    Keep::Kept
                } else {
                    Keep::Dropped
                });
                index /= 2;
            } else {
                // `total` is known, so u < 64 here.
                let arity = 1u64 << u;
                let v = index % arity;
                index /= arity;
                data.push(if v == 0 {
                    Keep::Dropped
                } else if v == arity - 1 {
                    Keep::Kept
                } else {
                    Keep::Torn((0..u).map(|b| v >> b & 1 == 1).collect())
                });
            }
        }
        Choice { ns_kept, data }
    }

    /// Everything kept (as if the run had flushed everything at this point).
    pub fn all_kept(&self) -> Choice {
        Choice {
            ns_kept: vec![true; self.ns_ops.len()],
            data: vec![Keep::Kept; self.units.len()],
        }
    }

    /// Everything pending lost.
    pub fn all_dropped(&self) -> Choice {
        Choice {
            ns_kept: vec![false; self.ns_ops.len()],
            data: vec![Keep::Dropped; self.units.len()],
        }
    }

    /// A random state: each data op dropped, kept or torn with equal odds
    /// (torn: each sector a fair coin); namespace ops by fair coins, then
    /// closed under per-directory order.
    pub fn sample(&self, rng: &mut SplitMix64) -> Choice {
        let mut ns_kept: Vec<bool> = (0..self.ns_ops.len()).map(|_| rng.coin()).collect();
        for j in (0..ns_kept.len()).rev() {
            if ns_kept.get(j).copied().unwrap_or(false) {
                for &i in self.ns_preds.get(j).map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(k) = ns_kept.get_mut(i) {
                        *k = true;
                    }
                }
            }
        }
        let data = self
            .units
            .iter()
            .map(|&u| match rng.below(3) {
                0 => Keep::Dropped,
                1 => Keep::Kept,
                _ if u <= 1 => {
                    if rng.coin() {
                        Keep::Kept
                    } else {
                        Keep::Dropped
                    }
                }
                _ => {
                    let bits: Vec<bool> = (0..u).map(|_| rng.coin()).collect();
                    if bits.iter().all(|b| *b) {
                        Keep::Kept
                    } else if bits.iter().all(|b| !*b) {
                        Keep::Dropped
                    } else {
                        Keep::Torn(bits)
                    }
                }
            })
            .collect();
        Choice { ns_kept, data }
    }
}

/// The sector-sized pieces of a write: (offset in data, absolute offset, len).
fn tear_units(offset: u64, len: u64, sector: u64) -> impl Iterator<Item = (usize, u64, usize)> {
    let end = offset.saturating_add(len);
    let first = offset / sector;
    let last = if len == 0 { first } else { (end - 1) / sector };
    (first..=last).filter_map(move |s| {
        let a = offset.max(s.checked_mul(sector)?);
        let b = end.min(s.checked_add(1)?.checked_mul(sector)?);
        (b > a).then(|| ((a - offset) as usize, a, (b - a) as usize))
    })
}

fn unit_count(offset: u64, len: u64, sector: u64) -> u64 {
    if len == 0 {
        return 1;
    }
    let end = offset.saturating_add(len);
    (end - 1) / sector - offset / sector + 1
}

/// The whole pages a write covers: (page index, content).
fn split_pages(offset: u64, data: &[u8]) -> Vec<(u64, Arc<Page>)> {
    let page = PAGE as u64;
    let first = offset.div_ceil(page);
    let end = offset.saturating_add(data.len() as u64) / page;
    (first..end)
        .filter_map(|p| {
            let at = usize::try_from(p * page - offset).ok()?;
            let mut pg = [0u8; PAGE];
            pg.copy_from_slice(data.get(at..at + PAGE)?);
            Some((p, Arc::new(pg)))
        })
        .collect()
}

fn apply_data(
    file: &mut Overlay,
    op: &Op,
    keep: &Keep,
    sector: u64,
    whole: Option<&[(u64, Arc<Page>)]>,
) {
    // Simulated offsets were accepted once by the live overlay, so they
    // are accepted again here; errors cannot occur and are ignored.
    match (op, keep) {
        (_, Keep::Dropped) => {}
        (Op::Write { offset, data, .. }, Keep::Kept) => match whole {
            Some(pages) if !pages.is_empty() => {
                let page = PAGE as u64;
                let lo = pages.first().map_or(0, |f| f.0 * page);
                let hi = pages.last().map_or(0, |l| (l.0 + 1) * page);
                let head = lo.saturating_sub(*offset) as usize;
                let tail = hi.saturating_sub(*offset) as usize;
                let _ = file.write_at(data.get(..head).unwrap_or(&[]), *offset);
                for (p, pg) in pages {
                    let _ = file.put_page(*p, pg);
                }
                let _ = file.write_at(data.get(tail..).unwrap_or(&[]), hi);
            }
            _ => {
                let _ = file.write_at(data, *offset);
            }
        },
        (Op::Write { offset, data, .. }, Keep::Torn(bits)) => {
            for ((at, abs, n), kept) in tear_units(*offset, data.len() as u64, sector).zip(bits) {
                if *kept {
                    if let Some(piece) = data.get(at..at + n) {
                        let _ = file.write_at(piece, abs);
                    }
                }
            }
        }
        (Op::SetLen { len, .. }, Keep::Kept | Keep::Torn(_)) => {
            let _ = file.set_len(*len);
        }
        _ => {}
    }
}

impl CrashModel {
    /// Build the model of a run: `base` is the durable state before the
    /// trace, `final_state` the live state after it.
    pub fn new(
        base: Snapshot,
        final_state: Snapshot,
        trace: Vec<Op>,
        marks: Vec<(usize, String)>,
        sector_size: usize,
    ) -> Self {
        let sector = (sector_size.max(1)) as u64;
        let n = trace.len();
        let mut points = Vec::with_capacity(n + 1);
        let mut files: HashMap<Ino, Arc<PageMap>> = base.files.clone();
        let mut files_epochs = vec![Arc::new(files.clone())];
        let mut names = base.names.clone();
        let mut names_epochs = vec![Arc::new(names.clone())];
        let mut ns_pending: Vec<usize> = Vec::new();
        let mut ns_unsynced: HashMap<usize, HashSet<PathBuf>> = HashMap::new();
        let mut ns_pending_lists = vec![Arc::new(Vec::new())];
        let mut data_pending: BTreeMap<Ino, Vec<usize>> = BTreeMap::new();
        let mut durable_at = vec![usize::MAX; n];
        let empty = Arc::new(PageMap::new());

        for i in 0..=n {
            let data_lo = data_pending
                .values()
                .filter_map(|v| v.first().copied())
                .min()
                .unwrap_or(i);
            points.push(PointInfo {
                files_epoch: files_epochs.len() - 1,
                names_epoch: names_epochs.len() - 1,
                ns_pending: ns_pending_lists.len() - 1,
                data_lo,
            });
            let Some(op) = trace.get(i) else { break };
            match op {
                Op::Write { ino, .. } | Op::SetLen { ino, .. } => {
                    data_pending.entry(*ino).or_default().push(i);
                }
                Op::Flush { ino } => {
                    if let Some(pend) = data_pending.remove(ino) {
                        let mut f =
                            Overlay::new(files.get(ino).cloned().unwrap_or_else(|| empty.clone()));
                        for &j in &pend {
                            if let Some(o) = trace.get(j) {
                                apply_data(&mut f, o, &Keep::Kept, sector, None);
                            }
                            if let Some(d) = durable_at.get_mut(j) {
                                *d = i;
                            }
                        }
                        files.insert(*ino, Arc::new(f.materialize()));
                        files_epochs.push(Arc::new(files.clone()));
                    }
                }
                Op::Create { .. } | Op::Remove { .. } | Op::Rename { .. } => {
                    ns_pending.push(i);
                    ns_unsynced.insert(i, op.dirs().into_iter().collect());
                    ns_pending_lists.push(Arc::new(ns_pending.clone()));
                }
                Op::SyncDir { dir } => {
                    let mut durable: HashSet<usize> = HashSet::new();
                    for &j in &ns_pending {
                        if let Some(set) = ns_unsynced.get_mut(&j) {
                            set.remove(dir);
                            if set.is_empty() {
                                durable.insert(j);
                            }
                        }
                    }
                    // Close: an earlier op sharing a directory with a
                    // durable one is durable too.
                    for (pos, &j) in ns_pending.iter().enumerate().rev() {
                        if durable.contains(&j) {
                            let dj = trace.get(j).map(Op::dirs).unwrap_or_default();
                            for &i2 in ns_pending.get(..pos).unwrap_or(&[]) {
                                let di = trace.get(i2).map(Op::dirs).unwrap_or_default();
                                if di.iter().any(|d| dj.contains(d)) {
                                    durable.insert(i2);
                                }
                            }
                        }
                    }
                    if !durable.is_empty() {
                        for &j in &ns_pending {
                            if durable.contains(&j) {
                                if let Some(o) = trace.get(j) {
                                    apply_names(&mut names, o);
                                }
                                ns_unsynced.remove(&j);
                            }
                        }
                        ns_pending.retain(|j| !durable.contains(j));
                        names_epochs.push(Arc::new(names.clone()));
                        ns_pending_lists.push(Arc::new(ns_pending.clone()));
                    }
                }
            }
        }
        let whole_pages = trace
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                Op::Write { offset, data, .. } => {
                    let pages = split_pages(*offset, data);
                    (!pages.is_empty()).then(|| (i, Arc::from(pages)))
                }
                _ => None,
            })
            .collect();
        CrashModel {
            whole_pages,
            sector_size: sector,
            base,
            final_state,
            trace: trace.into(),
            marks,
            points,
            files_epochs,
            names_epochs,
            ns_pending_lists,
            durable_at,
            empty,
        }
    }

    /// Number of crash points: one before each op, plus one after the last.
    pub fn crash_points(&self) -> usize {
        self.points.len()
    }

    pub fn trace(&self) -> &[Op] {
        &self.trace
    }

    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// Labels of the marks the run had passed before crash point `k`.
    pub fn marks_before(&self, k: usize) -> Vec<String> {
        self.marks
            .iter()
            .filter(|(pos, _)| *pos <= k)
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn base(&self) -> &Snapshot {
        &self.base
    }

    /// The live state at the end of the run (no crash).
    pub fn final_state(&self) -> &Snapshot {
        &self.final_state
    }

    /// The choices at crash point `k` (`k < crash_points()`).
    pub fn space(&self, k: usize) -> PointSpace {
        let empty_space = PointSpace {
            crash_point: k,
            ns_ops: Vec::new(),
            ns_preds: Vec::new(),
            ns_subsets: Some(vec![Vec::new()]),
            data_ops: Vec::new(),
            units: Vec::new(),
            total: Some(1),
        };
        let Some(info) = self.points.get(k).copied() else {
            return empty_space;
        };
        let ns_ops: Vec<usize> = self
            .ns_pending_lists
            .get(info.ns_pending)
            .map(|v| v.as_ref().clone())
            .unwrap_or_default();
        let dirs: Vec<Vec<PathBuf>> = ns_ops
            .iter()
            .map(|&j| self.trace.get(j).map(Op::dirs).unwrap_or_default())
            .collect();
        let ns_preds: Vec<Vec<usize>> = (0..ns_ops.len())
            .map(|j| {
                (0..j)
                    .filter(|&i| dirs[i].iter().any(|d| dirs[j].contains(d)))
                    .collect()
            })
            .collect();
        let ns_subsets = (ns_ops.len() <= MAX_ENUMERATED_NS_OPS).then(|| {
            let m = ns_ops.len();
            (0u64..1 << m)
                .filter(|mask| {
                    (0..m).all(|j| {
                        mask >> j & 1 == 0 || ns_preds[j].iter().all(|&i| mask >> i & 1 == 1)
                    })
                })
                .map(|mask| (0..m).map(|j| mask >> j & 1 == 1).collect())
                .collect::<Vec<Vec<bool>>>()
        });

        // Inodes that some post-crash state can name.
        let mut relevant: HashSet<Ino> = self
            .names_epochs
            .get(info.names_epoch)
            .map(|n| n.values().copied().collect())
            .unwrap_or_default();
        for &j in &ns_ops {
            if let Some(Op::Create { ino, .. }) = self.trace.get(j) {
                relevant.insert(*ino);
            }
        }
        let mut data_ops = Vec::new();
        let mut units = Vec::new();
        for j in info.data_lo..k {
            let Some(op) = self.trace.get(j) else { break };
            let Some(ino) = op.data_ino() else { continue };
            if self.durable_at.get(j).copied().unwrap_or(usize::MAX) < k || !relevant.contains(&ino)
            {
                continue;
            }
            data_ops.push(j);
            units.push(match op {
                Op::Write { offset, data, .. } => {
                    unit_count(*offset, data.len() as u64, self.sector_size)
                }
                _ => 1,
            });
        }
        let mut total = ns_subsets.as_ref().map(|s| s.len() as u64);
        for &u in &units {
            let arity = if u >= 64 { None } else { Some(1u64 << u) };
            total = total.and_then(|t| arity.and_then(|a| t.checked_mul(a)));
        }
        PointSpace {
            crash_point: k,
            ns_ops,
            ns_preds,
            ns_subsets,
            data_ops,
            units,
            total,
        }
    }

    /// Build the post-crash namespace for `choice` (from `space`). Costs the
    /// pages the surviving pending writes touch, nothing more.
    pub fn state(&self, space: &PointSpace, choice: &Choice) -> Arc<CrashNamespace> {
        let info = self.points.get(space.crash_point).copied();
        let mut names = info
            .and_then(|i| self.names_epochs.get(i.names_epoch))
            .map(|n| n.as_ref().clone())
            .unwrap_or_default();
        for (&j, kept) in space.ns_ops.iter().zip(&choice.ns_kept) {
            if *kept {
                if let Some(op) = self.trace.get(j) {
                    apply_names(&mut names, op);
                }
            }
        }
        let durable = info.and_then(|i| self.files_epochs.get(i.files_epoch));
        let mut files: HashMap<Ino, Overlay> = HashMap::with_capacity(names.len());
        for ino in names.values() {
            let base = durable
                .and_then(|d| d.get(ino))
                .cloned()
                .unwrap_or_else(|| self.empty.clone());
            files.insert(*ino, Overlay::new(base));
        }
        for (&j, keep) in space.data_ops.iter().zip(&choice.data) {
            let Some(op) = self.trace.get(j) else {
                continue;
            };
            let Some(ino) = op.data_ino() else { continue };
            if let Some(f) = files.get_mut(&ino) {
                let whole = self.whole_pages.get(&j).map(|p| &p[..]);
                apply_data(f, op, keep, self.sector_size, whole);
            }
        }
        // Fresh inodes for recovery must not collide with any recorded one.
        let next_ino = self.final_state.next_ino.max(self.base.next_ino);
        CrashNamespace::from_parts(names, files, next_ino)
    }

    /// A one-line account of a state, for violation reports.
    pub fn describe(&self, space: &PointSpace, choice: &Choice) -> String {
        let k = space.crash_point;
        let mut s = match self.trace.get(k) {
            Some(op) => format!("crash before op {k}/{} [{op}]", self.trace.len()),
            None => format!("crash after the last op ({k})"),
        };
        let mut parts = Vec::new();
        for (&j, kept) in space.ns_ops.iter().zip(&choice.ns_kept) {
            if let Some(op) = self.trace.get(j) {
                parts.push(format!(
                    "#{j} {op}: {}",
                    if *kept { "kept" } else { "lost" }
                ));
            }
        }
        for (&j, keep) in space.data_ops.iter().zip(&choice.data) {
            if let Some(op) = self.trace.get(j) {
                let what = match keep {
                    Keep::Dropped => "dropped".to_string(),
                    Keep::Kept => "kept".to_string(),
                    Keep::Torn(bits) => {
                        let mut t = String::from("torn ");
                        for b in bits.iter().take(64) {
                            t.push(if *b { '1' } else { '0' });
                        }
                        if bits.len() > 64 {
                            let _ = write!(t, "..({} sectors)", bits.len());
                        }
                        t
                    }
                };
                parts.push(format!("#{j} {op}: {what}"));
            }
        }
        if parts.is_empty() {
            s.push_str("; nothing pending");
        } else {
            s.push_str("; pending: ");
            s.push_str(&parts.join("; "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traits::{Access, Namespace};
    use std::path::Path;

    fn record(
        setup: impl FnOnce(&Arc<CrashNamespace>),
        run: impl FnOnce(&Arc<dyn Namespace>),
        sector: usize,
    ) -> CrashModel {
        let ns = CrashNamespace::new();
        setup(&ns);
        let base = ns.begin_recording();
        let d: Arc<dyn Namespace> = ns.clone();
        run(&d);
        let (trace, marks) = ns.finish_recording();
        CrashModel::new(base, ns.snapshot(), trace, marks, sector)
    }

    /// All distinct contents of `path` over every state of point `k`
    /// (None = file missing).
    fn outcomes(m: &CrashModel, k: usize, path: &str) -> Vec<Option<Vec<u8>>> {
        let space = m.space(k);
        let total = space.total.unwrap();
        let mut v: Vec<Option<Vec<u8>>> = (0..total)
            .map(|i| m.state(&space, &space.decode(i)).get(Path::new(path)))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn unflushed_write_may_be_lost_flushed_is_durable() {
        let m = record(
            |ns| ns.insert("/d/f", &[0u8; 1024]),
            |d| {
                let f = d.open(Path::new("/d/f"), Access::Write).unwrap();
                f.write_at(&[1u8; 512], 0).unwrap();
                f.flush().unwrap();
                f.write_at(&[2u8; 512], 512).unwrap();
            },
            512,
        );
        assert_eq!(m.crash_points(), 4);
        let mut a = vec![1u8; 512];
        a.extend([0u8; 512]);
        let mut b = a.clone();
        b[512..].fill(2);
        // Before the flush: old or first write.
        assert_eq!(
            outcomes(&m, 1, "/d/f"),
            vec![Some(vec![0u8; 1024]), Some(a.clone())]
        );
        // After the flush the first write is durable; the second may go.
        assert_eq!(outcomes(&m, 3, "/d/f"), vec![Some(a), Some(b)]);
    }

    #[test]
    fn multi_sector_write_tears_at_sector_granularity() {
        let run = |d: &Arc<dyn Namespace>| {
            let f = d.open(Path::new("/f"), Access::Write).unwrap();
            // 3 sectors of 512 (the first and last partial).
            f.write_at(&[1u8; 1100], 100).unwrap();
        };
        let m = record(|ns| ns.insert("/f", &[0u8; 2048]), run, 512);
        let space = m.space(1);
        assert_eq!(space.units, vec![3]);
        assert_eq!(space.total, Some(8));
        assert_eq!(outcomes(&m, 1, "/f").len(), 8);
        // With 4 KiB sectors the same write is atomic.
        let m = record(|ns| ns.insert("/f", &[0u8; 2048]), run, 4096);
        assert_eq!(outcomes(&m, 1, "/f").len(), 2);
    }

    #[test]
    fn overlapping_pending_writes_give_each_version_per_sector() {
        let m = record(
            |ns| ns.insert("/f", &[0u8; 512]),
            |d| {
                let f = d.open(Path::new("/f"), Access::Write).unwrap();
                f.write_at(&[1u8; 512], 0).unwrap();
                f.write_at(&[2u8; 512], 0).unwrap();
            },
            512,
        );
        assert_eq!(
            outcomes(&m, 2, "/f"),
            vec![
                Some(vec![0u8; 512]),
                Some(vec![1u8; 512]),
                Some(vec![2u8; 512])
            ]
        );
    }

    #[test]
    fn names_need_sync_dir_data_needs_flush() {
        let m = record(
            |_| {},
            |d| {
                let f = d.create(Path::new("/d/new")).unwrap();
                f.write_at(b"data", 0).unwrap();
                f.flush().unwrap();
                d.sync_dir(Path::new("/d")).unwrap();
            },
            512,
        );
        // After create, before flush: missing, or present and empty, or
        // present with the (pending) data.
        assert_eq!(
            outcomes(&m, 2, "/d/new"),
            vec![None, Some(vec![]), Some(b"data".to_vec())]
        );
        // After flush, before sync_dir: the name may still be lost.
        assert_eq!(
            outcomes(&m, 3, "/d/new"),
            vec![None, Some(b"data".to_vec())]
        );
        assert_eq!(outcomes(&m, 4, "/d/new"), vec![Some(b"data".to_vec())]);
    }

    #[test]
    fn rename_never_survives_without_its_create() {
        let m = record(
            |_| {},
            |d| {
                let f = d.create(Path::new("/d/tmp")).unwrap();
                f.write_at(b"x", 0).unwrap();
                f.flush().unwrap();
                d.rename(Path::new("/d/tmp"), Path::new("/d/final"))
                    .unwrap();
            },
            512,
        );
        let space = m.space(4);
        // {}, {create}, {create, rename}: never {rename} alone.
        assert_eq!(space.total, Some(3));
        let all: Vec<Vec<PathBuf>> = (0..3)
            .map(|i| m.state(&space, &space.decode(i)).paths())
            .collect();
        assert!(all.contains(&vec![PathBuf::from("/d/final")]));
        assert!(all.contains(&vec![PathBuf::from("/d/tmp")]));
        assert!(all.contains(&vec![]));
    }

    #[test]
    fn pending_set_len_kept_or_dropped() {
        let m = record(
            |ns| ns.insert("/f", &[3u8; 1000]),
            |d| {
                let f = d.open(Path::new("/f"), Access::Write).unwrap();
                f.set_len(10).unwrap();
                f.write_at(&[4u8; 10], 20).unwrap();
            },
            512,
        );
        let mut shrunk_then_written = vec![3u8; 10];
        shrunk_then_written.extend([0u8; 10]);
        shrunk_then_written.extend([4u8; 10]);
        let mut written = vec![3u8; 1000];
        written[20..30].fill(4);
        let got = outcomes(&m, 2, "/f");
        assert!(got.contains(&Some(vec![3u8; 10])));
        assert!(got.contains(&Some(shrunk_then_written)));
        assert!(got.contains(&Some(written)));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn states_share_the_durable_base() {
        let m = record(
            |ns| ns.insert("/f", &vec![7u8; 1 << 20]),
            |d| {
                let f = d.open(Path::new("/f"), Access::Write).unwrap();
                f.write_at(&[1u8; 4096], 8192).unwrap();
            },
            512,
        );
        let before = m.base().clone();
        let space = m.space(1);
        for i in 0..space.total.unwrap() {
            let st = m.state(&space, &space.decode(i));
            let d: Arc<dyn Namespace> = st;
            let f = d.open(Path::new("/f"), Access::Write).unwrap();
            f.write_at(&[9u8; 100_000], 0).unwrap();
            f.set_len(5).unwrap();
        }
        for (ino, pages) in &m.base().files {
            assert!(pages.shares_pages_with(&before.files[ino]));
        }
        assert_eq!(m.base().get(Path::new("/f")).unwrap(), vec![7u8; 1 << 20]);
    }
}
