//! Relink scenarios: `set-parent` and `rebase` (`merge::relink`), judged
//! after every simulated crash.
//!
//! - `set-parent-*`: base <- child, then the base is renamed (restored
//!   under another name), so the child's locator is stale; the run relinks
//!   the child to the renamed file. After any crash the child passes
//!   `check` and records exactly the old locator or exactly the new one
//!   (never a mix); with the new one its chain opens and reads the
//!   expected content. The re-run completes.
//! - `rebase-*`: base <- mid <- top; the run rebases top onto base. After
//!   any crash top's chain reads exactly what it read before (rebase keeps
//!   the view), every image passes `check`, and top links to mid (old) or
//!   to base (new). The re-run completes, and then top reads the same over
//!   the base alone: mid's data really moved into top.
//!
//! `MergeStrategy::UnsafeInPlace` selects the negative control: the same
//! run over a namespace whose storage drops every flush, so nothing orders
//! the new locator / copied data before the commit that names them; the
//! checker must catch it. `UnsafeRecovery` re-runs through such a
//! namespace (harmful only when that re-run itself crashes).

use std::path::PathBuf;
use std::sync::Arc;

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::params::{DiskType, ParentLocator};
use formats::{Access, Namespace};
use merge::relink::{RelinkOutcome, RelinkRequest};
use merge::JobHandle;

use crate::barrier::NoBarrierNs;
use crate::explore::{CrashContext, Marks, Scenario};
use crate::merge_scenarios::{
    apply, block_size, check_chain, create_image, e2s, errors_of, image_ext, read_chain,
    read_chain_with, read_whole, Edit, MergeStrategy,
};
use crate::seeded::{ScenarioParams, Seeded};

const DIR: &str = "/r";
/// Virtual blocks per image (small blocks: bytes to compare cost time).
const BLOCKS: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelinkOp {
    SetParent,
    Rebase,
    /// `rebase --standalone`.
    Standalone,
}

/// The parameters of one relink scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelinkParams {
    pub op: RelinkOp,
    pub vhdx: bool,
}

impl RelinkParams {
    fn block(&self) -> u32 {
        block_size(self.vhdx)
    }
    fn size(&self) -> u64 {
        BLOCKS * u64::from(self.block())
    }
    fn path(&self, stem: &str, base: bool) -> PathBuf {
        PathBuf::from(format!("{DIR}/{stem}.{}", image_ext(self.vhdx, base)))
    }
    fn base(&self) -> PathBuf {
        self.path("base", true)
    }
    /// The base's new name (set-parent).
    fn renamed(&self) -> PathBuf {
        self.path("restored", true)
    }
    fn mid(&self) -> PathBuf {
        self.path("mid", false)
    }
    /// The image relinked.
    fn child(&self) -> PathBuf {
        self.path("top", false)
    }
    fn request(&self) -> RelinkRequest {
        RelinkRequest {
            child: self.child(),
            new_parent: match self.op {
                RelinkOp::SetParent => Some(self.renamed()),
                RelinkOp::Rebase => Some(self.base()),
                RelinkOp::Standalone => None,
            },
            ..Default::default()
        }
    }
}

/// Writes into block `b` at sector `k` of `len` sectors.
fn edit(p: &RelinkParams, b: u64, k: u64, sectors: u64, tag: u64) -> Edit {
    Edit::Write {
        at: b * u64::from(p.block()) + k * 512,
        len: sectors * 512,
        tag,
    }
}

fn build(ns: &Arc<dyn Namespace>, p: &RelinkParams) -> Result<(), String> {
    let (size, block) = (p.size(), p.block());
    let base = p.base();
    create_image(ns, block, 512, &base, DiskType::Dynamic, size, None)?;
    apply(
        ns,
        &base,
        &(0..BLOCKS)
            .map(|b| edit(p, b, 0, 16, 10 + b))
            .collect::<Vec<_>>(),
    )?;
    let parent = match p.op {
        RelinkOp::SetParent => base.clone(),
        RelinkOp::Rebase | RelinkOp::Standalone => {
            let mid = p.mid();
            create_image(
                ns,
                block,
                512,
                &mid,
                DiskType::Differencing,
                size,
                Some(&base),
            )?;
            // Over the base's sectors, beside them, and a block of its own.
            apply(
                ns,
                &mid,
                &[
                    edit(p, 0, 8, 16, 20),
                    edit(p, 1, 40, 8, 21),
                    edit(p, 3, 0, 64, 22),
                ],
            )?;
            mid
        }
    };
    let child = p.child();
    create_image(
        ns,
        block,
        512,
        &child,
        DiskType::Differencing,
        size,
        Some(&parent),
    )?;
    // Partly over the mid's sectors (which must then stay hidden).
    apply(ns, &child, &[edit(p, 0, 12, 4, 30), edit(p, 2, 4, 4, 31)])?;
    if p.op == RelinkOp::SetParent {
        ns.rename(&base, &p.renamed()).map_err(e2s)?;
        ns.sync_dir(&PathBuf::from(DIR)).map_err(e2s)?;
    }
    Ok(())
}

/// The child's recorded locator, read from the image alone (its parent
/// need not resolve); `None` once it has no parent. The image must pass
/// `check`.
fn locator(ns: &Arc<dyn Namespace>, p: &RelinkParams) -> Result<Option<ParentLocator>, String> {
    let opts = ChainOptions {
        access: Access::Read,
        ..Default::default()
    };
    let img = open_image_file(ns, &p.child(), &opts)
        .map_err(|e| format!("the child does not open: {e}"))?;
    if let Some(errors) = errors_of(&img.check().map_err(e2s)?) {
        return Err(format!("check of the child: {errors}"));
    }
    match (img.is_differencing(), img.parent_locator()) {
        (true, Some(l)) => Ok(Some(l)),
        (false, None) => Ok(None),
        (d, l) => Err(format!(
            "differencing {d} but locator {:?}",
            l.map(|l| l.entries)
        )),
    }
}

fn relink(ns: &Arc<dyn Namespace>, p: &RelinkParams) -> Result<RelinkOutcome, String> {
    let job = JobHandle::new();
    let out = match p.op {
        RelinkOp::SetParent => merge::relink::set_parent(ns, &p.request(), &job),
        RelinkOp::Rebase | RelinkOp::Standalone => merge::relink::rebase(ns, &p.request(), &job),
    };
    if out.return_value != 0 {
        return Err(format!(
            "{} failed ({}): {}",
            p.name(),
            out.return_value,
            out.error.as_deref().unwrap_or("?")
        ));
    }
    Ok(out)
}

#[derive(Debug)]
pub struct RelinkExpected {
    old_locator: Option<ParentLocator>,
    new_locator: Option<ParentLocator>,
    /// The child's content through its chain (both before and after).
    content: Vec<u8>,
}

/// One relink scenario: a chain built by `setup`, relinked by `run` with
/// the chosen strategy.
pub type RelinkScenario = Seeded<RelinkParams>;

/// Old or new locator, checked images, and the content wherever the chain
/// opens. Returns whether the new link is in place.
fn judge(ns: &Arc<dyn Namespace>, p: &RelinkParams, exp: &RelinkExpected) -> Result<bool, String> {
    let loc = locator(ns, p)?;
    let new = if loc == exp.new_locator {
        true
    } else if loc == exp.old_locator {
        false
    } else {
        return Err(format!(
            "the child records neither the old nor the new locator: {:?}",
            loc.map(|l| l.entries)
        ));
    };
    match (p.op, new) {
        // The stale locator: the chain cannot open by it (the base was
        // renamed), which is the state before the run.
        (RelinkOp::SetParent, false) => Ok(false),
        _ => {
            let chain = Chain::open(ns, &p.child(), &ChainOptions::default())
                .map_err(|e| format!("the chain does not open (new link: {new}): {e}"))?;
            check_chain(&chain)?;
            let want_len = match (p.op, new) {
                (RelinkOp::Standalone, true) => 1,
                (_, true) => 2,
                (_, false) => 3,
            };
            if p.op != RelinkOp::SetParent && chain.links.len() != want_len {
                return Err(format!(
                    "the chain has {} links, expected {want_len} with the {} link",
                    chain.links.len(),
                    if new { "new" } else { "old" }
                ));
            }
            let buf = read_whole(&chain)?;
            if buf != exp.content {
                let first = buf.iter().zip(&exp.content).position(|(a, b)| a != b);
                return Err(format!(
                    "the child reads differently (new link: {new}), first difference at {first:?}"
                ));
            }
            Ok(new)
        }
    }
}

impl ScenarioParams for RelinkParams {
    const SALT: u64 = 0x5eed_11e4;
    type Expected = RelinkExpected;

    /// `set-parent-vhdx`, `rebase-vhd` style.
    fn name(&self) -> String {
        format!(
            "{}-{}",
            match self.op {
                RelinkOp::SetParent => "set-parent",
                RelinkOp::Rebase => "rebase",
                RelinkOp::Standalone => "rebase-standalone",
            },
            if self.vhdx { "vhdx" } else { "vhd" }
        )
    }
    fn build(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        build(ns, self)
    }
    fn expected(s: &RelinkScenario, ns: &Arc<dyn Namespace>) -> Result<RelinkExpected, String> {
        let p = &s.params;
        let old_locator = locator(ns, p)?;
        let content = match p.op {
            RelinkOp::Rebase | RelinkOp::Standalone => read_chain(ns, &p.child())?,
            RelinkOp::SetParent => read_chain_with(
                ns,
                &p.child(),
                &ChainOptions {
                    parents: vec![p.renamed()],
                    ..Default::default()
                },
            )?,
        };
        let out = formats::entropy::with_seed(s.seed ^ 1, || relink(ns, p))?;
        if p.op != RelinkOp::SetParent && out.bytes_copied == 0 {
            return Err("the rebase copied nothing: the scenario proves nothing".into());
        }
        let new_locator = locator(ns, p)?;
        if new_locator == old_locator {
            return Err("the locator did not change".into());
        }
        if read_chain(ns, &p.child())? != content {
            return Err("the crash-free relink changed the content".into());
        }
        Ok(RelinkExpected {
            old_locator,
            new_locator,
            content,
        })
    }
    fn run(s: &RelinkScenario, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String> {
        s.expected()?;
        let rns: Arc<dyn Namespace> = match s.strategy {
            MergeStrategy::UnsafeInPlace => Arc::new(NoBarrierNs(Arc::clone(ns))),
            _ => Arc::clone(ns),
        };
        formats::entropy::with_seed(s.seed ^ 1, || relink(&rns, &s.params))?;
        marks.mark("relinked");
        Ok(())
    }
    fn check(
        s: &RelinkScenario,
        ns: &Arc<dyn Namespace>,
        ctx: &CrashContext,
    ) -> Result<(), String> {
        let exp = s.expected()?;
        let p = &s.params;
        let rns: Arc<dyn Namespace> = match s.strategy {
            MergeStrategy::UnsafeRecovery => Arc::new(NoBarrierNs(Arc::clone(ns))),
            _ => Arc::clone(ns),
        };
        let salt = ctx.entropy_salt();
        formats::entropy::with_seed(s.seed ^ 2 ^ (ctx.crash_point as u64) << 8 ^ salt, || {
            let new = judge(ns, p, exp)?;
            if ctx.run_finished() && s.strategy.run_is_safe() && !new {
                return Err("the relink had returned, yet the old link is in place".into());
            }
            // Recover as a user would: run the same command again.
            relink(&rns, p).map_err(|e| format!("re-running after the crash: {e}"))?;
            if !judge(ns, p, exp).map_err(|e| format!("after the re-run: {e}"))? {
                return Err("after the re-run the old link is still in place".into());
            }
            if p.op != RelinkOp::SetParent {
                // The middle layer's data now lives in the child: read it
                // over the base alone (the linkage is verified). Deleting
                // the middle file here would make this check a part of the
                // recovery that a second crash interrupts.
                let parents = match p.op {
                    RelinkOp::Standalone => Vec::new(),
                    _ => vec![p.base()],
                };
                let opts = ChainOptions {
                    parents,
                    ..Default::default()
                };
                if read_chain_with(ns, &p.child(), &opts)? != exp.content {
                    return Err("over the base alone the child reads differently".into());
                }
            }
            Ok(())
        })
    }
}

pub fn all_params() -> Vec<RelinkParams> {
    let mut v = Vec::new();
    for op in [RelinkOp::SetParent, RelinkOp::Rebase, RelinkOp::Standalone] {
        for vhdx in [false, true] {
            v.push(RelinkParams { op, vhdx });
        }
    }
    v
}

pub fn scenarios(params: &[RelinkParams], strategy: MergeStrategy) -> Vec<Arc<dyn Scenario>> {
    params
        .iter()
        .map(|p| Arc::new(RelinkScenario::new(*p, strategy)) as Arc<dyn Scenario>)
        .collect()
}
