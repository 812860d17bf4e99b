//! Merge scenarios: small chains folded into every kind of destination
//! (VHD and VHDX, fixed / dynamic / differencing), judged against DESIGN.md
//! section 5 after every simulated crash.
//!
//! The checker recovers as a user would: open the destination (chainfold's
//! open replays a VHDX log or a VHD journal), `check` it, compare its whole
//! virtual content with the two allowed ones (old destination view, merged
//! view), and, where it still shows the old content, require the source
//! chain to read exactly as before (invariant B). Then it re-runs the merge
//! unless the state shows it finished, and requires return value 0 and the
//! merged content.
//!
//! "Committed" is decided from the post-crash state itself (the merge code
//! carries no marks): a destination showing the merged content committed.
//!
//! `MergeStrategy::UnsafeInPlace` is the negative control: the same chains
//! merged by a deliberately broken test double (raw in-place payload
//! writes, no journal, no ordering, no flush). The checker must catch it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use formats::chain::{fold, open_image_file, Chain, ChainOptions, FoldedRun, Source};
use formats::layer::{Run, RunKind};
use formats::params::{CreateParams, DiskType, OpenOptions};
use formats::{Access, EntryKind, Finding, JournalSlot, Namespace, Severity};
use merge::{JobHandle, MergeRequest};

use crate::barrier::NoBarrierNs;
use crate::explore::{CrashContext, Marks, Scenario};
use crate::rng::SplitMix64;
use crate::seeded::{ScenarioParams, Seeded};

const DIR: &str = "/m";

/// How the operation under test runs (the `--strategy` of `xtask sim`).
/// Compaction scenarios (`compact_scenarios`) take the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStrategy {
    /// chainfold's merge (`merge::run`); chainfold's `Image::compact`.
    Safe,
    /// Negative control: raw in-place writes, no journal, no ordering; for
    /// a compaction, `Image::compact` with every flush dropped.
    UnsafeInPlace,
    /// Negative control of recovery: the operation is the safe one, but the
    /// checker's recovery (re-run merge or compaction, with the log replay
    /// and journal apply of its open) runs through a namespace that drops
    /// every flush and directory sync. Invisible unless the recovery itself
    /// crashes: single crashes pass, double crashes must catch it.
    UnsafeRecovery,
}

impl MergeStrategy {
    pub fn name(self) -> &'static str {
        match self {
            MergeStrategy::Safe => "safe",
            MergeStrategy::UnsafeInPlace => "unsafe-in-place",
            MergeStrategy::UnsafeRecovery => "unsafe-recovery",
        }
    }

    /// The operation under test is chainfold's own (only the recovery may
    /// be broken).
    pub fn run_is_safe(self) -> bool {
        self != MergeStrategy::UnsafeInPlace
    }
}

impl fmt::Display for MergeStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MergeStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "safe" | "merge" => Ok(MergeStrategy::Safe),
            "unsafe-in-place" => Ok(MergeStrategy::UnsafeInPlace),
            "unsafe-recovery" => Ok(MergeStrategy::UnsafeRecovery),
            _ => Err(format!(
                "unknown merge strategy {s:?} (safe, merge, unsafe-in-place, unsafe-recovery)"
            )),
        }
    }
}

/// Destination kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestKind {
    Fixed,
    Dynamic,
    Differencing,
}

impl DestKind {
    pub fn name(self) -> &'static str {
        match self {
            DestKind::Fixed => "fixed",
            DestKind::Dynamic => "dynamic",
            DestKind::Differencing => "diff",
        }
    }
}

/// The parameters of one merge scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeParams {
    pub vhdx: bool,
    pub dest: DestKind,
    /// Layers folded into the destination (1 = the source is its child).
    pub depth: usize,
    /// VHDX 4096-byte logical sectors (tears at 4096 too).
    pub sector_4k: bool,
    /// The source is one block larger than the destination.
    pub grow: bool,
    /// `--remove-merged`: the source and intermediates are removed after
    /// the commit.
    pub remove_merged: bool,
    /// VHD: the source's blocks were placed by a merge (data on pages, a
    /// page between blocks), and it holds two consecutive whole blocks the
    /// destination does not: the batch joins them into one copy that
    /// covers the bitmap page between them (4 blocks instead of 2).
    pub joined: bool,
    /// A destination holding every block: most of two blocks replaced in
    /// part (the edges inside 4 KiB sectors), so the journal
    /// (`--held-blocks`, auto in the simulator) carries them. VHDX: a
    /// sequence of several log entries (126 sectors each for 1 MiB blocks)
    /// before its commit entry (4 blocks); VHD: redo records for two held
    /// blocks and their bitmaps before the footers.
    pub sequence: bool,
}

impl MergeParams {
    /// A merge keeping its merged files, staging no joined spans and no
    /// journal sequence.
    pub fn new(vhdx: bool, dest: DestKind, depth: usize, sector_4k: bool, grow: bool) -> Self {
        MergeParams {
            vhdx,
            dest,
            depth,
            sector_4k,
            grow,
            remove_merged: false,
            joined: false,
            sequence: false,
        }
    }

    /// The files `--remove-merged` removes: the source and intermediates.
    fn merged_paths(&self) -> Vec<PathBuf> {
        (1..=self.depth).map(|i| self.child_path(i)).collect()
    }
    fn block(&self) -> u32 {
        block_size(self.vhdx)
    }
    /// Virtual size of the destination (and its base): two blocks, so a
    /// merge has a whole block and partial ones (checks read all of it).
    fn dest_size(&self) -> u64 {
        if self.joined || self.sequence {
            4 * u64::from(self.block())
        } else {
            2 * u64::from(self.block())
        }
    }
    fn ext(&self, base: bool) -> &'static str {
        image_ext(self.vhdx, base)
    }
    fn base_path(&self) -> PathBuf {
        PathBuf::from(format!("{DIR}/base.{}", self.ext(true)))
    }
    pub fn dest_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "{DIR}/dest.{}",
            self.ext(self.dest != DestKind::Differencing)
        ))
    }
    fn child_path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("{DIR}/c{i}.{}", self.ext(false)))
    }
    pub fn source_path(&self) -> PathBuf {
        self.child_path(self.depth)
    }
    fn request(&self) -> MergeRequest {
        MergeRequest {
            source: self.source_path(),
            destination: Some(self.dest_path()),
            remove_merged: self.remove_merged,
            ..Default::default()
        }
    }
}

/// The contents every post-crash state is compared with.
#[derive(Debug)]
pub struct Expected {
    /// What the destination (with its own ancestors) showed before.
    old: Content,
    /// What the source showed before: the merged content.
    merged: Content,
    /// The 512-byte units where `old` and `merged` differ: a run inside
    /// which they agree needs one comparison, not two.
    differ: UnitCount,
}

impl Expected {
    pub(crate) fn new(old: Vec<u8>, merged: Vec<u8>) -> Self {
        let units = old.len().max(merged.len()).div_ceil(UNIT);
        let differ = UnitCount::new(units, |u| {
            let r = u * UNIT..(u + 1) * UNIT;
            old.get(r.clone()) != merged.get(r)
        });
        Expected {
            old: Content::new(old),
            merged: Content::new(merged),
            differ,
        }
    }
}

/// Per 512-byte unit, whether it has some property, as running counts, so
/// "no unit of this range has it" is two lookups.
#[derive(Debug)]
struct UnitCount {
    /// How many units before unit `i` have the property.
    before: Vec<u32>,
}

impl UnitCount {
    fn new(units: usize, mut has: impl FnMut(usize) -> bool) -> Self {
        let mut before = Vec::with_capacity(units + 1);
        let mut n = 0u32;
        before.push(0);
        for u in 0..units {
            n += u32::from(has(u));
            before.push(n);
        }
        UnitCount { before }
    }

    /// No unit overlapping `[off, off + len)` has the property (false when
    /// the range runs past the counted units).
    fn none_in(&self, off: u64, len: u64) -> bool {
        let (a, b) = (
            (off as usize) / UNIT,
            (off + len).div_ceil(UNIT as u64) as usize,
        );
        match (self.before.get(a), self.before.get(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }
}

/// One merge scenario: a chain built by `setup`, merged by `run` with the
/// chosen strategy.
pub type MergeScenario = Seeded<MergeParams>;

pub(crate) fn e2s(e: impl fmt::Display) -> String {
    e.to_string()
}

/// Deterministic bytes for a write (different per tag).
pub(crate) fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut r = SplitMix64::new(tag);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

pub(crate) enum Edit {
    Write { at: u64, len: u64, tag: u64 },
    Zero { at: u64, len: u64 },
}

/// The edits of layer `level` (0 = the destination's base or the destination
/// itself, 1.. = the layers above). Each layer mixes a partial block write
/// into a block its parent holds, a sector-sized write, and one layer writes
/// a whole block and another a ZERO range; `grow` sources also write past
/// the old end.
fn edits(p: &MergeParams, level: usize, size: u64) -> Vec<Edit> {
    let s = p.sector();
    let b = u64::from(p.block());
    let l = level as u64;
    let mut v = vec![
        // Partial, in the first block (every layer touches it, at
        // overlapping places).
        Edit::Write {
            at: (l * 3 * s) % (b / 2),
            len: 4 * s,
            tag: 100 + l,
        },
        // One sector, inside the last block of the destination.
        Edit::Write {
            at: p.dest_size() - b + s * (2 + l),
            len: s,
            tag: 200 + l,
        },
    ];
    if level == 1 {
        // A whole block (a full-block run of the merge); two for `joined`.
        let n = if p.joined { 2 * b } else { b };
        v.push(Edit::Write {
            at: b,
            len: n.min(size - b),
            tag: 300,
        });
    }
    if level == 2 || (level == 1 && p.depth == 1) {
        // Hide what the parent holds: a ZERO range over written sectors.
        v.push(Edit::Zero {
            at: (l * 3 * s) % (b / 2) + s,
            len: 2 * s,
        });
    }
    if p.sequence && level == 0 {
        // Every block held, so each is replaced in part below.
        v.push(Edit::Write {
            at: 0,
            len: p.dest_size(),
            tag: 50,
        });
    }
    if p.sequence && level == 1 {
        for k in 2..4 {
            v.push(Edit::Write {
                at: k * b + 3 * s,
                len: b - 8 * s,
                tag: 500 + k,
            });
        }
    }
    if p.grow && level == p.depth {
        v.push(Edit::Write {
            at: p.dest_size() + s,
            len: 2 * s,
            tag: 400,
        });
    }
    v
}

pub(crate) fn apply(ns: &Arc<dyn Namespace>, path: &Path, edits: &[Edit]) -> Result<(), String> {
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(ns, path, &opts).map_err(e2s)?;
    for e in edits {
        match e {
            Edit::Write { at, len, tag } => img
                .write_sectors(*at, &pattern(*tag, *len as usize))
                .map_err(e2s)?,
            Edit::Zero { at, len } => img.zero_sectors(*at, *len).map_err(e2s)?,
        }
    }
    Ok(())
}

fn create(
    ns: &Arc<dyn Namespace>,
    p: &MergeParams,
    path: &Path,
    disk_type: DiskType,
    size: u64,
    parent: Option<&Path>,
) -> Result<(), String> {
    create_image(ns, p.block(), p.sector(), path, disk_type, size, parent)
}

/// The block size of a scenario's images: small (VHDX 1 MiB, the least it
/// allows; VHD 64 KiB), since bytes to compare cost time, not coverage.
pub(crate) fn block_size(vhdx: bool) -> u32 {
    if vhdx {
        1 << 20
    } else {
        64 << 10
    }
}

/// A scenario's logical sector size.
pub(crate) fn sector_size(sector_4k: bool) -> u64 {
    if sector_4k {
        4096
    } else {
        512
    }
}

/// The file extension of a scenario's image: a VHDX child is an `.avhdx`,
/// as Hyper-V names differencing disks; every VHD is a `.vhd`.
pub(crate) fn image_ext(vhdx: bool, base: bool) -> &'static str {
    match (vhdx, base) {
        (false, _) => "vhd",
        (true, true) => "vhdx",
        (true, false) => "avhdx",
    }
}

/// Create an image of `block`-byte blocks and `sector`-byte logical sectors
/// (a differencing one over `parent`).
pub(crate) fn create_image(
    ns: &Arc<dyn Namespace>,
    block: u32,
    sector: u64,
    path: &Path,
    disk_type: DiskType,
    size: u64,
    parent: Option<&Path>,
) -> Result<(), String> {
    let parent = match parent {
        None => None,
        Some(pp) => {
            let img = open_image_file(ns, pp, &ChainOptions::default()).map_err(e2s)?;
            let spec = formats::create::parent_spec(ns, img.as_ref(), pp, path).map_err(e2s)?;
            Some(spec)
        }
    };
    formats::create::create_file(
        ns,
        path,
        &CreateParams {
            virtual_size: size,
            disk_type,
            block_size: Some(block),
            logical_sector_size: sector as u32,
            physical_sector_size: 4096,
            parent,
        },
    )
    .map_err(|e| format!("create {}: {e}", path.display()))
}

/// Build the chain: [base <-] dest <- c1 <- ... <- c{depth}.
fn build(ns: &Arc<dyn Namespace>, p: &MergeParams) -> Result<(), String> {
    let size = p.dest_size();
    let dest = p.dest_path();
    match p.dest {
        DestKind::Fixed | DestKind::Dynamic => {
            let t = if p.dest == DestKind::Fixed {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            };
            create(ns, p, &dest, t, size, None)?;
            apply(ns, &dest, &edits(p, 0, size))?;
        }
        DestKind::Differencing => {
            let base = p.base_path();
            create(ns, p, &base, DiskType::Dynamic, size, None)?;
            apply(ns, &base, &edits(p, 0, size))?;
            create(ns, p, &dest, DiskType::Differencing, size, Some(&base))?;
            // The destination's own sectors differ from its base's.
            apply(
                ns,
                &dest,
                &[Edit::Write {
                    at: 8 * p.sector(),
                    len: 2 * p.sector(),
                    tag: 50,
                }],
            )?;
        }
    }
    let mut parent = dest;
    for i in 1..=p.depth {
        let c = p.child_path(i);
        let csize = if p.grow && i == p.depth {
            size + u64::from(p.block())
        } else {
            size
        };
        create(ns, p, &c, DiskType::Differencing, csize, Some(&parent))?;
        if p.joined && i == 1 {
            // The edits go into a child of c1 that is merged into it, so
            // that a merge places c1's blocks.
            let top = PathBuf::from(format!("{DIR}/c1-top.{}", p.ext(false)));
            create(ns, p, &top, DiskType::Differencing, csize, Some(&c))?;
            apply(ns, &top, &edits(p, i, csize))?;
            let req = MergeRequest {
                source: top.clone(),
                destination: Some(c.clone()),
                remove_merged: true,
                ..Default::default()
            };
            let out = merge::run(ns, &req, &JobHandle::new());
            if out.return_value != 0 {
                return Err(format!(
                    "build: merge into {}: {}",
                    c.display(),
                    out.error.unwrap_or_default()
                ));
            }
            let _ = ns.remove(&PathBuf::from(format!("{}.cfmerged", top.display())));
        } else {
            apply(ns, &c, &edits(p, i, csize))?;
        }
        parent = c;
    }
    Ok(())
}

pub(crate) fn read_chain(ns: &Arc<dyn Namespace>, path: &Path) -> Result<Vec<u8>, String> {
    read_chain_with(ns, path, &ChainOptions::default())
}

/// The whole virtual content of the chain at `path`, opened with `opts`.
pub(crate) fn read_chain_with(
    ns: &Arc<dyn Namespace>,
    path: &Path,
    opts: &ChainOptions,
) -> Result<Vec<u8>, String> {
    let chain = Chain::open(ns, path, opts).map_err(|e| format!("open {}: {e}", path.display()))?;
    read_whole(&chain)
}

/// The whole virtual content of an opened chain.
pub(crate) fn read_whole(chain: &Chain) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; chain.top().virtual_size() as usize];
    chain
        .reader()
        .read(0, &mut buf)
        .map_err(|e| format!("read {}: {e}", chain.top().name()))?;
    Ok(buf)
}

/// What a post-crash destination shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shows {
    Old,
    Merged,
}

/// Bytes folded per step when comparing a chain with the expected contents.
const PIECE: u64 = 256 << 10;
/// Granularity of the precomputed summaries (every run is 512-aligned).
const UNIT: usize = 512;

thread_local! {
    static PIECE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An expected virtual content with what makes comparing cheap: which
/// 512-byte units hold a nonzero byte (so a zero run is judged without
/// reading or comparing it).
#[derive(Debug)]
struct Content {
    bytes: Vec<u8>,
    nonzero: UnitCount,
}

impl Content {
    fn new(bytes: Vec<u8>) -> Self {
        let nonzero = UnitCount::new(bytes.len().div_ceil(UNIT), |u| {
            bytes[u * UNIT..((u + 1) * UNIT).min(bytes.len())]
                .iter()
                .any(|b| *b != 0)
        });
        Content { bytes, nonzero }
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// `[off, off + len)` (512-aligned) reads zeros in this content.
    fn zero_at(&self, off: u64, len: u64) -> bool {
        self.nonzero.none_in(off, len)
    }
    fn equals_at(&self, off: u64, data: &[u8]) -> bool {
        self.bytes.get(off as usize..off as usize + data.len()) == Some(data)
    }
    fn first_difference(&self, off: u64, data: &[u8]) -> u64 {
        let at = self
            .bytes
            .get(off as usize..)
            .unwrap_or_default()
            .iter()
            .zip(data.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        off + at as u64
    }
}

/// Fold the whole opened chain and tell whether its virtual content equals
/// the merged content and, with `also_old`, the old one (a flag each, merged
/// first). Zero runs are judged from the summaries; only present runs are
/// read, and compared once where old and merged agree. Stops as soon as no
/// candidate can match. Also returns where the merged content first differed
/// (to a run).
pub(crate) fn compare_chain(
    chain: &Chain,
    exp: &Expected,
    also_old: bool,
) -> Result<(Vec<bool>, Option<u64>), String> {
    let want: &[&Content] = if also_old {
        &[&exp.merged, &exp.old]
    } else {
        &[&exp.merged]
    };
    let size = chain.top().virtual_size();
    let mut eq: Vec<bool> = want.iter().map(|w| w.len() == size).collect();
    let mut first_diff = None;
    let layers = chain.layers();
    let mut reader = chain.reader();
    PIECE_BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let mut pos = 0u64;
        while pos < size && eq.iter().any(|e| *e) {
            let n = PIECE.min(size - pos);
            let runs = reader
                .runs(pos, n)
                .map_err(|e| format!("fold at {pos:#x}: {e}"))?
                .to_vec();
            for r in runs {
                match r.source {
                    Source::Layer { layer, file_offset } => {
                        buf.resize(r.len as usize, 0);
                        let l = layers
                            .get(layer)
                            .ok_or_else(|| format!("fold names layer {layer}"))?;
                        l.read_file(file_offset, &mut buf[..])
                            .map_err(|e| format!("read at {:#x}: {e}", r.offset))?;
                        // Where old and merged agree, the merged verdict
                        // serves both.
                        let shared = also_old && exp.differ.none_in(r.offset, r.len);
                        let mut first_ok = None;
                        for (i, w) in want.iter().enumerate() {
                            if !(eq[i] || i == 0 && shared) {
                                continue;
                            }
                            let ok = match first_ok {
                                Some(v) if shared => v,
                                _ => w.equals_at(r.offset, &buf[..]),
                            };
                            if i == 0 {
                                first_ok = Some(ok);
                            }
                            if !ok && eq[i] {
                                eq[i] = false;
                                if i == 0 {
                                    first_diff = Some(w.first_difference(r.offset, &buf[..]));
                                }
                            }
                        }
                    }
                    Source::Zero | Source::NotHeld => {
                        for (i, w) in want.iter().enumerate() {
                            if eq[i] && !w.zero_at(r.offset, r.len) {
                                eq[i] = false;
                                if i == 0 {
                                    first_diff = Some(r.offset);
                                }
                            }
                        }
                    }
                }
            }
            pos += n;
        }
        Ok((eq, first_diff))
    })
}

/// Every image of the chain passes `check` (no error finding).
pub(crate) fn check_chain(chain: &Chain) -> Result<(), String> {
    for link in &chain.links {
        let findings = link
            .image
            .check()
            .map_err(|e| format!("check {} failed: {e}", link.path.display()))?;
        if let Some(errors) = errors_of(&findings) {
            return Err(format!("check {}: {errors}", link.path.display()));
        }
    }
    Ok(())
}

/// The error-severity findings of a check, joined with "; "; `None` when
/// there are none (warnings and notes do not fail a scenario).
pub(crate) fn errors_of(findings: &[Finding]) -> Option<String> {
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Open the destination chain, optionally check every image of it, and
/// tell old from merged.
fn judge_destination(
    ns: &Arc<dyn Namespace>,
    p: &MergeParams,
    exp: &Expected,
    check: bool,
) -> Result<Shows, String> {
    let dest = p.dest_path();
    let chain = Chain::open(ns, &dest, &ChainOptions::default())
        .map_err(|e| format!("destination does not open: {e}"))?;
    if check {
        check_chain(&chain)?;
    }
    let (eq, first) = compare_chain(&chain, exp, true)?;
    match (eq[0], eq[1]) {
        (true, _) => Ok(Shows::Merged),
        (false, true) => Ok(Shows::Old),
        _ => Err(format!(
            "destination content (virtual size {}) is neither old nor merged (first difference from merged at {})",
            chain.top().virtual_size(),
            first.map_or("-".to_string(), |f| format!("{f:#x}"))
        )),
    }
}

/// Invariant B: the source chain opens and reads the pre-merge view.
fn source_reads_as_before(
    ns: &Arc<dyn Namespace>,
    p: &MergeParams,
    exp: &Expected,
) -> Result<(), String> {
    let chain = Chain::open(ns, &p.source_path(), &ChainOptions::default()).map_err(|e| {
        format!("destination shows old content but the source chain does not open: {e}")
    })?;
    let (eq, first) = compare_chain(&chain, exp, false)?;
    if eq[0] {
        Ok(())
    } else {
        Err(format!(
            "destination shows old content but the source chain reads differently than before the merge (first difference at {})",
            first.map_or("-".to_string(), |f| format!("{f:#x}"))
        ))
    }
}

impl ScenarioParams for MergeParams {
    const SALT: u64 = 0x5eed_0000;
    type Expected = Expected;

    /// `vhdx-dynamic-d2-4k-grow-rm` style.
    fn name(&self) -> String {
        format!(
            "{}-{}-d{}{}{}{}{}{}",
            if self.vhdx { "vhdx" } else { "vhd" },
            self.dest.name(),
            self.depth,
            if self.sector_4k { "-4k" } else { "" },
            if self.grow { "-grow" } else { "" },
            if self.remove_merged { "-rm" } else { "" },
            if self.joined { "-joined" } else { "" },
            if self.sequence { "-seq" } else { "" }
        )
    }
    fn sector(&self) -> u64 {
        sector_size(self.sector_4k)
    }
    fn build(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        build(ns, self)
    }
    fn expected(s: &MergeScenario, ns: &Arc<dyn Namespace>) -> Result<Expected, String> {
        let old = read_chain(ns, &s.params.dest_path())?;
        let merged = read_chain(ns, &s.params.source_path())?;
        if old == merged {
            return Err("scenario makes no change".into());
        }
        Ok(Expected::new(old, merged))
    }
    fn run(s: &MergeScenario, ns: &Arc<dyn Namespace>, _marks: &Marks) -> Result<(), String> {
        formats::entropy::with_seed(s.seed ^ 1, || match s.strategy {
            MergeStrategy::Safe | MergeStrategy::UnsafeRecovery => {
                let out = merge::run(ns, &s.params.request(), &JobHandle::new());
                if out.return_value == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "merge returned {}: {}",
                        out.return_value,
                        out.error.unwrap_or_default()
                    ))
                }
            }
            MergeStrategy::UnsafeInPlace => unsafe_in_place(ns, &s.params),
        })
    }
    fn check(s: &MergeScenario, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String> {
        let exp = s.expected()?;
        let p = &s.params;
        // A second crash's recovery draws fresh GUIDs, as a new process.
        let salt = ctx.entropy_salt();
        // The recovery's negative control: the re-run merge through a
        // namespace that drops every flush and directory sync.
        let rns: Arc<dyn Namespace> = match s.strategy {
            MergeStrategy::UnsafeRecovery => Arc::new(NoBarrierNs(Arc::clone(ns))),
            _ => Arc::clone(ns),
        };
        formats::entropy::with_seed(s.seed ^ 2 ^ (ctx.crash_point as u64) << 8 ^ salt, || {
            let shows = judge_destination(ns, p, exp, true)?;
            if shows == Shows::Old {
                // Invariant B: not committed, so the source chain reads
                // exactly as before.
                source_reads_as_before(ns, p, exp)?;
            }
            let record = merge::record::record_path(&p.source_path());
            let record_left = ns.kind(&record).map_err(e2s)? != EntryKind::Missing;
            if shows == Shows::Merged && !record_left {
                // The merge committed and finished: nothing to recover
                // (and, with --remove-merged, the merged files are gone:
                // the record is retired only after their removal is
                // durable).
                return merged_files_removed(ns, p, "the merge record is retired");
            }
            if ctx.run_finished() && s.strategy.run_is_safe() && ctx.recovery.is_none() {
                return Err(format!(
                    "the merge had returned, yet the destination shows {shows:?} content{}",
                    if record_left {
                        " and its record is left"
                    } else {
                        ""
                    }
                ));
            }
            // Recover as a user would: run the same merge again.
            let out = merge::run(&rns, &p.request(), &JobHandle::new());
            if out.return_value != 0 {
                return Err(format!(
                    "re-running the merge after the crash (destination showed {shows:?}) returned {}: {}",
                    out.return_value,
                    out.error.unwrap_or_default()
                ));
            }
            // The re-run itself checked every image before merging; the
            // content is what is left to judge.
            match judge_destination(ns, p, exp, false) {
                Ok(Shows::Merged) => {}
                Ok(Shows::Old) => {
                    return Err("after the re-run the destination still shows old content".into())
                }
                Err(e) => return Err(format!("after the re-run: {e}")),
            }
            if ns.kind(&record).map_err(e2s)? != EntryKind::Missing {
                return Err("after the re-run the merge record is still there".into());
            }
            merged_files_removed(ns, p, "after the re-run")
        })
    }
}

/// With `--remove-merged`, the source and every intermediate are gone.
fn merged_files_removed(
    ns: &Arc<dyn Namespace>,
    p: &MergeParams,
    when: &str,
) -> Result<(), String> {
    if !p.remove_merged {
        return Ok(());
    }
    for f in p.merged_paths() {
        if ns.kind(&f).map_err(e2s)? != EntryKind::Missing {
            return Err(format!(
                "{when}, yet {} is still there (--remove-merged)",
                f.display()
            ));
        }
    }
    Ok(())
}

/// The negative control. Reads the folded runs into memory, then writes
/// them into the destination: sectors the destination already maps go
/// straight to their file offsets (no journal, no flush); the rest through
/// the driver's per-call writes, with no batch, no identity change and no
/// ordering between calls. A grown source gets a batch that only grows.
fn unsafe_in_place(ns: &Arc<dyn Namespace>, p: &MergeParams) -> Result<(), String> {
    let source = p.source_path();
    let (runs, data, virtual_size) = {
        let chain = Chain::open(ns, &source, &ChainOptions::default()).map_err(e2s)?;
        let layers = chain.layers();
        let size = chain.top().virtual_size();
        let mut runs: Vec<FoldedRun> = Vec::new();
        // Only the layers above the destination.
        fold(&layers[..p.depth], 0, size, &mut runs).map_err(e2s)?;
        let mut data = Vec::new();
        for r in &runs {
            let mut buf = vec![0u8; r.len as usize];
            if let Source::Layer { layer, file_offset } = r.source {
                layers[layer]
                    .read_file(file_offset, &mut buf)
                    .map_err(e2s)?;
            }
            data.push(buf);
        }
        (runs, data, size)
    };
    let dest_path = p.dest_path();
    let storage = ns.open(&dest_path, Access::Write).map_err(e2s)?;
    let mut dest = formats::image::open(
        &dest_path.display().to_string(),
        Arc::clone(&storage),
        Some(JournalSlot::for_image(Arc::clone(ns), &dest_path)),
        OpenOptions {
            writable: true,
            ignore_checksums: false,
        },
    )
    .map_err(e2s)?;
    if virtual_size > dest.virtual_size() {
        let id = dest.identity();
        let mut b = dest.begin_batch().map_err(e2s)?;
        b.grow(virtual_size).map_err(e2s)?;
        b.prepare().map_err(e2s)?;
        b.commit(id).map_err(e2s)?;
    }
    for (r, buf) in runs.iter().zip(&data) {
        if r.source == Source::NotHeld {
            continue;
        }
        let mut mapped: Vec<Run> = Vec::new();
        dest.map(r.offset, r.len, &mut mapped).map_err(e2s)?;
        for m in mapped {
            let piece =
                &buf[(m.offset - r.offset) as usize..(m.offset - r.offset + m.len) as usize];
            match m.kind {
                RunKind::Present { file_offset } => {
                    storage.write_at(piece, file_offset).map_err(e2s)?;
                }
                _ => match r.source {
                    Source::Zero => dest.zero_sectors(m.offset, m.len).map_err(e2s)?,
                    _ => dest.write_sectors(m.offset, piece).map_err(e2s)?,
                },
            }
        }
    }
    Ok(())
}

/// Every parameter combination the merge scenarios cover (names are
/// stable: `vhd|vhdx`-`fixed|dynamic|diff`-`dN`[-4k][-grow]).
pub fn all_params() -> Vec<MergeParams> {
    let mut v = Vec::new();
    for vhdx in [false, true] {
        for dest in [DestKind::Fixed, DestKind::Dynamic, DestKind::Differencing] {
            for depth in 1..=3 {
                for sector_4k in [false, true] {
                    if sector_4k && !vhdx {
                        continue;
                    }
                    for grow in [false, true] {
                        for remove_merged in [false, true] {
                            v.push(MergeParams {
                                vhdx,
                                dest,
                                depth,
                                sector_4k,
                                grow,
                                remove_merged,
                                joined: false,
                                sequence: false,
                            });
                        }
                    }
                }
            }
        }
    }
    for (vhdx, dest) in [
        (true, DestKind::Fixed),
        (true, DestKind::Dynamic),
        (false, DestKind::Dynamic),
    ] {
        v.push(MergeParams {
            vhdx,
            dest,
            depth: 1,
            sector_4k: false,
            grow: false,
            remove_merged: false,
            joined: false,
            sequence: true,
        });
    }
    for dest in [DestKind::Dynamic, DestKind::Differencing] {
        v.push(MergeParams {
            vhdx: false,
            dest,
            depth: 1,
            sector_4k: false,
            grow: false,
            remove_merged: false,
            joined: true,
            sequence: false,
        });
    }
    v
}

/// The default set: every destination kind, depths 1 to 3, 4K and growth
/// spread over them so each feature meets each format at least once.
pub fn default_params() -> Vec<MergeParams> {
    let mk = MergeParams::new;
    let rm = |p: MergeParams| MergeParams {
        remove_merged: true,
        ..p
    };
    let joined = |p: MergeParams| MergeParams { joined: true, ..p };
    use DestKind::*;
    vec![
        mk(false, Fixed, 1, false, false),
        mk(false, Fixed, 2, false, true),
        mk(false, Dynamic, 1, false, false),
        mk(false, Dynamic, 3, false, true),
        mk(false, Differencing, 1, false, false),
        mk(false, Differencing, 2, false, true),
        mk(true, Fixed, 1, false, false),
        mk(true, Fixed, 2, true, true),
        mk(true, Dynamic, 1, true, false),
        mk(true, Dynamic, 3, false, true),
        mk(true, Differencing, 1, false, false),
        mk(true, Differencing, 2, true, true),
        // --remove-merged: crashes among the removes, their directory sync
        // and the record's retirement.
        rm(mk(false, Dynamic, 2, false, false)),
        rm(mk(true, Differencing, 2, false, false)),
        // Two whole blocks cloned as one span (bitmap page included).
        joined(mk(false, Dynamic, 1, false, false)),
        joined(mk(false, Differencing, 1, false, false)),
        // The journal as a sequence of spooled entries.
        MergeParams {
            sequence: true,
            ..mk(true, Dynamic, 1, false, false)
        },
        // VHD: held blocks replaced in part behind the redo journal.
        MergeParams {
            sequence: true,
            ..mk(false, Dynamic, 1, false, false)
        },
    ]
}

pub fn scenarios(params: &[MergeParams], strategy: MergeStrategy) -> Vec<Arc<dyn Scenario>> {
    params
        .iter()
        .map(|p| Arc::new(MergeScenario::new(*p, strategy)) as Arc<dyn Scenario>)
        .collect()
}
