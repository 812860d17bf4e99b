//! Compaction scenarios: `Image::compact` alone, on a bloated image, judged
//! after every simulated crash.
//!
//! The bloat is what a merge leaves before its compaction: one committed
//! copy-on-write batch has put new copies of several held blocks (and, in a
//! differencing VHDX, of its sector-bitmap block; in a VHD, a new BAT and
//! dynamic header) at the file's tail, and their old places are gaps below
//! them. Compaction moves the tail back into those gaps, cuts the file and
//! punches what is left. Setup proves it moves something, so a scenario
//! cannot silently test nothing.
//!
//! Compaction must never change what the image reads. Per post-crash state
//! the checker opens the image's chain (chainfold's open replays a VHDX
//! log), `check`s every image, compares the whole virtual content with the
//! content before compaction, then re-runs the compaction as `xtask
//! compact` would and requires it to succeed, keep the content, pass
//! `check`, and leave a file no longer than the crash-free compaction did.
//!
//! `MergeStrategy::UnsafeInPlace` (`--strategy unsafe-in-place`) selects
//! the negative control here: the same compaction run over a storage that
//! drops every flush. Nothing then orders a block's copy before the BAT
//! entry naming its new place, nor the BAT commit before the old place is
//! punched or the file cut; the checker must catch it.

use std::path::PathBuf;
use std::sync::Arc;

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::params::{DiskType, HeldBlocks, OpenOptions};
use formats::{Access, CompactReport, JournalSlot, Namespace, Storage};

use crate::barrier::{NoBarrier, NoBarrierNs};

use crate::explore::{CrashContext, Marks, Scenario};
use crate::merge_scenarios::{
    apply, block_size, check_chain, compare_chain, create_image, e2s, errors_of, image_ext,
    pattern, read_chain, sector_size, DestKind, Edit, Expected, MergeStrategy,
};
use crate::seeded::{ScenarioParams, Seeded};

const DIR: &str = "/c";
/// Blocks of virtual space: two rewritten, one zeroed, one left alone (see
/// `build`). Blocks are small (VHDX 1 MiB, the least it allows; VHD 64
/// KiB): bytes to compare cost time, not coverage.
const BLOCKS: u64 = 4;
/// Blocks after a `grow` batch.
const GROWN_BLOCKS: u64 = 160;

/// The parameters of one compaction scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactParams {
    pub vhdx: bool,
    /// The kind of the compacted image (a differencing one sits over a
    /// dynamic base).
    pub kind: DestKind,
    /// VHDX 4096-byte logical sectors (tears at 4096 too).
    pub sector_4k: bool,
    /// VHD: the batch also grows the virtual size past what the old BAT
    /// sector maps and writes a block there, so the new BAT and header no
    /// longer fit their old place: they move into a block's gap, and the
    /// rest of that gap, which no block fits, is punched.
    pub grow: bool,
}

impl CompactParams {
    fn block(&self) -> u32 {
        block_size(self.vhdx)
    }
    fn size(&self) -> u64 {
        BLOCKS * u64::from(self.block())
    }
    /// The grown virtual size: more blocks than one 512-byte BAT sector
    /// maps (128), mostly unallocated (cheap to compare).
    fn grown_size(&self) -> u64 {
        GROWN_BLOCKS * u64::from(self.block())
    }
    fn ext(&self, base: bool) -> &'static str {
        image_ext(self.vhdx, base)
    }
    fn base_path(&self) -> PathBuf {
        PathBuf::from(format!("{DIR}/base.{}", self.ext(true)))
    }
    /// The image under compaction.
    pub fn image_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "{DIR}/image.{}",
            self.ext(self.kind != DestKind::Differencing)
        ))
    }
}

/// What every post-crash state is compared with.
#[derive(Debug)]
pub struct CompactExpected {
    /// The virtual content before compaction (compaction keeps it).
    content: Expected,
    /// The crash-free compaction.
    report: CompactReport,
}

/// One compaction scenario: a bloated image built by `setup`, compacted by
/// `run` with the chosen strategy.
pub type CompactScenario = Seeded<CompactParams>;

impl CompactScenario {
    /// What the crash-free safe compaction of the built image reported
    /// (computed once, on a memory namespace).
    pub fn crash_free_report(&self) -> Result<CompactReport, String> {
        self.expected().map(|e| e.report)
    }
}

/// The virtual offset `sectors_in` logical sectors into block `b`.
fn in_block(p: &CompactParams, b: u64, sectors_in: u64) -> u64 {
    b * u64::from(p.block()) + sectors_in * p.sector()
}

/// Build the bloated image: [base <-] image, every block held, then one
/// committed copy-on-write batch: blocks 0 and 3 rewritten in part and
/// block 1 zeroed whole, block 2 left in place. Every rewritten block gets
/// a fresh copy at the tail and leaves a gap below it. The zeroed one gets
/// a fresh copy of zeros (fixed VHDX, VHD) or stops being stored (a sparse
/// VHDX records a ZERO block), and then the untouched block 2 moves into
/// its gap too. With `grow` (VHD) part of a gap stays empty and is punched.
fn build(ns: &Arc<dyn Namespace>, p: &CompactParams) -> Result<(), String> {
    let (size, image, s) = (p.size(), p.image_path(), p.sector());
    let kind = match p.kind {
        DestKind::Fixed => DiskType::Fixed,
        DestKind::Dynamic => DiskType::Dynamic,
        DestKind::Differencing => DiskType::Differencing,
    };
    let parent = if p.kind == DestKind::Differencing {
        let base = p.base_path();
        create_image(ns, p.block(), s, &base, DiskType::Dynamic, size, None)?;
        // The base shows through the image's partial blocks.
        let edits: Vec<Edit> = (0..BLOCKS)
            .map(|b| Edit::Write {
                at: in_block(p, b, 0),
                len: 8 * s,
                tag: 20 + b,
            })
            .collect();
        apply(ns, &base, &edits)?;
        Some(base)
    } else {
        None
    };
    create_image(ns, p.block(), s, &image, kind, size, parent.as_deref())?;
    // The image's own blocks, allocated last block first, then in order:
    // the file order is not the virtual order, so the tail copies move
    // into gaps of different ranks (and, in a fixed VHDX, swap places).
    let order = std::iter::once(BLOCKS - 1).chain(0..BLOCKS - 1);
    let edits: Vec<Edit> = order
        .map(|b| Edit::Write {
            at: in_block(p, b, 4 + b),
            len: 4 * s,
            tag: 40 + b,
        })
        .collect();
    apply(ns, &image, &edits)?;
    // The batch, as a merge stages it: blocks the image holds are copied on
    // write to fresh space past its end; the commit leaves the old copies
    // as gaps.
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    let mut img = open_image_file(ns, &image, &opts).map_err(e2s)?;
    let identity = img.identity();
    let mut batch = img.begin_batch().map_err(e2s)?;
    // Copy on write, the bloat this scenario compacts (a journal would
    // change held blocks in place and leave nothing to move).
    batch.held_blocks(HeldBlocks::Rebuild);
    if p.grow {
        batch.grow(p.grown_size()).map_err(e2s)?;
        let at = in_block(p, GROWN_BLOCKS - 10, 2);
        batch
            .write(at, &pattern(70, 2 * s as usize))
            .map_err(|e| format!("stage a write at {at:#x}: {e}"))?;
    }
    for b in [0, BLOCKS - 1] {
        let at = in_block(p, b, 16);
        batch
            .write(at, &pattern(60 + b, 2 * s as usize))
            .map_err(|e| format!("stage a write at {at:#x}: {e}"))?;
    }
    batch
        .zero(in_block(p, 1, 0), u64::from(p.block()))
        .map_err(|e| format!("stage a zero block: {e}"))?;
    batch.prepare().map_err(e2s)?;
    batch.commit(identity).map_err(e2s)?;
    Ok(())
}

/// Compact the image as `xtask compact` does: lock it, refuse unless it
/// passes `check`, reopen it writable, compact. The negative control opens
/// it through `NoBarrier` instead.
fn compact_image(
    ns: &Arc<dyn Namespace>,
    p: &CompactParams,
    strategy: MergeStrategy,
) -> Result<CompactReport, String> {
    let path = p.image_path();
    let journal = Some(JournalSlot::for_image(Arc::clone(ns), &path));
    let writable = OpenOptions {
        writable: true,
        ignore_checksums: false,
    };
    let mut img = match strategy {
        MergeStrategy::Safe | MergeStrategy::UnsafeRecovery => {
            let opts = ChainOptions {
                access: Access::Write,
                ..Default::default()
            };
            let img = open_image_file(ns, &path, &opts).map_err(|e| format!("open: {e}"))?;
            if let Some(errors) = errors_of(&img.check().map_err(e2s)?) {
                return Err(format!("refused: {errors}"));
            }
            img.reopen(journal, writable)
                .map_err(|e| format!("reopen writable: {e}"))?
        }
        MergeStrategy::UnsafeInPlace => {
            let storage = ns.open(&path, Access::Write).map_err(e2s)?;
            let storage: Arc<dyn Storage> = Arc::new(NoBarrier(storage));
            formats::image::open(&path.display().to_string(), storage, journal, writable)
                .map_err(|e| format!("open writable: {e}"))?
        }
    };
    img.compact().map_err(|e| format!("compact: {e}"))
}

/// Open the image's chain, check every image of it, and require the
/// content before compaction.
fn judge(ns: &Arc<dyn Namespace>, p: &CompactParams, exp: &CompactExpected) -> Result<(), String> {
    let chain = Chain::open(ns, &p.image_path(), &ChainOptions::default())
        .map_err(|e| format!("the image does not open: {e}"))?;
    check_chain(&chain)?;
    let (eq, first) = compare_chain(&chain, &exp.content, false)?;
    if eq[0] {
        Ok(())
    } else {
        Err(format!(
            "the content changed (virtual size {}, first difference at {})",
            chain.top().virtual_size(),
            first.map_or("-".to_string(), |f| format!("{f:#x}"))
        ))
    }
}

fn file_len(ns: &Arc<dyn Namespace>, p: &CompactParams) -> Result<u64, String> {
    let f = ns.open(&p.image_path(), Access::Read).map_err(e2s)?;
    f.len().map_err(e2s)
}

impl ScenarioParams for CompactParams {
    const SALT: u64 = 0x5eed_c0de;
    type Expected = CompactExpected;

    /// `compact-vhdx-differencing-4k`, `compact-vhd-dynamic-grow` style.
    fn name(&self) -> String {
        format!(
            "compact-{}-{}{}{}",
            if self.vhdx { "vhdx" } else { "vhd" },
            match self.kind {
                DestKind::Fixed => "fixed",
                DestKind::Dynamic => "dynamic",
                DestKind::Differencing => "differencing",
            },
            if self.sector_4k { "-4k" } else { "" },
            if self.grow { "-grow" } else { "" }
        )
    }
    fn sector(&self) -> u64 {
        sector_size(self.sector_4k)
    }
    fn build(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        build(ns, self)
    }
    fn expected(s: &CompactScenario, ns: &Arc<dyn Namespace>) -> Result<CompactExpected, String> {
        let p = &s.params;
        let before = read_chain(ns, &p.image_path())?;
        let report =
            formats::entropy::with_seed(s.seed ^ 1, || compact_image(ns, p, MergeStrategy::Safe))?;
        if report.moved == 0 || report.length_after >= report.length_before {
            return Err(format!(
                "the image is not bloated: compaction moved {} units and left {} of {} bytes",
                report.moved, report.length_after, report.length_before
            ));
        }
        if read_chain(ns, &p.image_path())? != before {
            return Err("the crash-free compaction changed the content".into());
        }
        // A second compaction finds nothing to do: the crash-free
        // length is a fixed point, so it is a fair bound for a
        // re-run after a crash.
        let again = compact_image(ns, p, MergeStrategy::Safe)?;
        if again.moved != 0 || again.length_after != report.length_after {
            return Err(format!(
                "a second crash-free compaction still changed the layout: {again:?} after {report:?}"
            ));
        }
        Ok(CompactExpected {
            content: Expected::new(before.clone(), before),
            report,
        })
    }
    fn run(s: &CompactScenario, ns: &Arc<dyn Namespace>, _marks: &Marks) -> Result<(), String> {
        let exp = s.expected()?;
        let report =
            formats::entropy::with_seed(s.seed ^ 1, || compact_image(ns, &s.params, s.strategy))?;
        // The recorded run must be the compaction `expected` proved to
        // move blocks, or the crash points would judge another one.
        if report != exp.report {
            return Err(format!(
                "the recorded compaction reported {report:?}, the crash-free one {:?}",
                exp.report
            ));
        }
        Ok(())
    }
    fn check(
        s: &CompactScenario,
        ns: &Arc<dyn Namespace>,
        ctx: &CrashContext,
    ) -> Result<(), String> {
        let exp = s.expected()?;
        let p = &s.params;
        let limit = exp.report.length_after;
        let salt = ctx.entropy_salt();
        // The negative control of recovery: the re-run compaction through a
        // namespace that drops its flushes (harmless unless it crashes).
        let rns: Arc<dyn Namespace> = match s.strategy {
            MergeStrategy::UnsafeRecovery => Arc::new(NoBarrierNs(Arc::clone(ns))),
            _ => Arc::clone(ns),
        };
        formats::entropy::with_seed(s.seed ^ 2 ^ (ctx.crash_point as u64) << 8 ^ salt, || {
            judge(ns, p, exp)?;
            let len = file_len(ns, p)?;
            if ctx.run_finished() && s.strategy.run_is_safe() && len > limit {
                return Err(format!(
                    "the compaction had returned, yet the file is {len} bytes, not {limit}"
                ));
            }
            // Recover as a user would: compact again.
            compact_image(&rns, p, MergeStrategy::Safe)
                .map_err(|e| format!("re-running the compaction after the crash: {e}"))?;
            judge(ns, p, exp).map_err(|e| format!("after the re-run: {e}"))?;
            let len = file_len(ns, p)?;
            if len > limit {
                return Err(format!(
                    "after the re-run the file is {len} bytes, longer than the crash-free compaction's {limit}"
                ));
            }
            Ok(())
        })
    }
}

/// Every compaction scenario (names are stable:
/// `compact-vhd|vhdx-fixed|dynamic|differencing`[-4k|-grow]: 4K sectors
/// for VHDX, growth for VHD, whose BAT is the only one a small batch
/// outgrows). A fixed VHD has nothing to compact (its redo journal writes
/// in place), so it has none.
pub fn all_params() -> Vec<CompactParams> {
    let mut v = Vec::new();
    for vhdx in [false, true] {
        for kind in [DestKind::Fixed, DestKind::Dynamic, DestKind::Differencing] {
            if !vhdx && kind == DestKind::Fixed {
                continue;
            }
            for sector_4k in [false, true] {
                if sector_4k && !vhdx {
                    continue;
                }
                v.push(CompactParams {
                    vhdx,
                    kind,
                    sector_4k,
                    grow: false,
                });
                if !vhdx {
                    v.push(CompactParams {
                        vhdx,
                        kind,
                        sector_4k,
                        grow: true,
                    });
                }
            }
        }
    }
    v
}

/// The default set: every image kind that compacts, once, and a growing
/// VHD (its compaction is the one that punches). 4K sectors run by name
/// and in the tests.
pub fn default_params() -> Vec<CompactParams> {
    all_params()
        .into_iter()
        .filter(|p| !p.sector_4k && (!p.grow || p.kind == DestKind::Differencing))
        .collect()
}

pub fn scenarios(params: &[CompactParams], strategy: MergeStrategy) -> Vec<Arc<dyn Scenario>> {
    params
        .iter()
        .map(|p| Arc::new(CompactScenario::new(*p, strategy)) as Arc<dyn Scenario>)
        .collect()
}
