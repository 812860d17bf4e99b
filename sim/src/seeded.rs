//! What the image scenarios (merge, compaction, relink) share: parameters
//! that name the scenario and build its starting files, the strategy
//! under test, a seed derived from the name (so a name replays the same
//! GUIDs and clock), and what a crash-free run leaves, computed once on
//! first use. Each kind's parameters say how it runs and is judged.

use std::fmt;
use std::sync::{Arc, OnceLock};

use formats::Namespace;

use crate::explore::{CrashContext, Marks, Scenario};
use crate::merge_scenarios::MergeStrategy;

/// A kind of image scenario, implemented by its parameters.
pub trait ScenarioParams: Copy + fmt::Debug + Send + Sync + 'static {
    /// Mixed into the seed, so that scenarios of two kinds differ even
    /// where their names hash alike.
    const SALT: u64;
    /// What every post-crash state is compared with.
    type Expected: fmt::Debug + Send + Sync;
    /// The stable name, used in replay commands.
    fn name(&self) -> String;
    /// Tear granularity: the images' logical sector size.
    fn sector(&self) -> u64 {
        512
    }
    /// Build the starting files.
    fn build(&self, ns: &Arc<dyn Namespace>) -> Result<(), String>;
    /// What a crash-free run leaves, from `ns`: a memory namespace
    /// holding the starting files.
    fn expected(s: &Seeded<Self>, ns: &Arc<dyn Namespace>) -> Result<Self::Expected, String>;
    /// The operation under test (`Scenario::run`).
    fn run(s: &Seeded<Self>, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String>;
    /// Recover and judge one post-crash state (`Scenario::check`).
    fn check(s: &Seeded<Self>, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String>;
}

/// One image scenario: `MergeScenario`, `CompactScenario` and
/// `RelinkScenario` are this over their parameters.
#[derive(Debug)]
pub struct Seeded<P: ScenarioParams> {
    pub params: P,
    pub strategy: MergeStrategy,
    /// Deterministic GUIDs and clock for setup / run / check.
    pub seed: u64,
    expected: OnceLock<Result<P::Expected, String>>,
}

impl<P: ScenarioParams> Seeded<P> {
    pub fn new(params: P, strategy: MergeStrategy) -> Self {
        Seeded {
            params,
            strategy,
            seed: P::SALT ^ name_hash(&params.name()),
            expected: OnceLock::new(),
        }
    }

    /// What a crash-free run leaves (computed once, from the starting
    /// files built with the scenario's seed on a memory namespace).
    pub(crate) fn expected(&self) -> Result<&P::Expected, String> {
        self.expected
            .get_or_init(|| {
                let ns: Arc<dyn Namespace> = Arc::new(formats::MemNamespace::new());
                formats::entropy::with_seed(self.seed, || self.params.build(&ns))?;
                P::expected(self, &ns)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl<P: ScenarioParams> Scenario for Seeded<P> {
    fn name(&self) -> String {
        self.params.name()
    }
    fn sector_size(&self) -> usize {
        self.params.sector() as usize
    }
    fn cli_strategy(&self) -> &'static str {
        self.strategy.name()
    }
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        self.expected()?;
        formats::entropy::with_seed(self.seed, || self.params.build(ns))
    }
    fn run(&self, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String> {
        P::run(self, ns, marks)
    }
    fn check(&self, ns: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String> {
        P::check(self, ns, ctx)
    }
}

/// FNV-1a of a scenario name.
pub(crate) fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
