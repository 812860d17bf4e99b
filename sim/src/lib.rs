//! The crash simulator (DESIGN.md section 6; see README.md beside this
//! crate): the explorer that checks every post-crash state ([`explore`],
//! [`run_for`]) of any [`Scenario`], the scenarios and their checkers. The
//! recording in-memory file system ([`CrashNamespace`]) and the
//! reconstruction of every post-crash state from one recorded run
//! ([`CrashModel`]) are the storage crate's crash recorder
//! (`storage::crash`), re-exported here under their old module names.

pub mod barrier;
pub mod compact_scenarios;
pub mod explore;
pub mod merge_scenarios;
pub mod relink_scenarios;
pub mod seeded;
pub mod toy;

pub use storage::crash::namespace as crash_storage;
pub use storage::crash::{model, pages, rng, trace};

use std::sync::Arc;

pub use compact_scenarios::{CompactParams, CompactScenario};
pub use crash_storage::{CrashNamespace, Snapshot};
pub use explore::{
    double_replay_command, explore, explore_double_crashes, explore_prepared, prepare,
    replay_command, replay_double, replay_state, run_double_at, run_for, run_for_opts,
    run_for_with, Budget, CrashContext, Marks, Prepared, RecoveryCrash, Report, RunOptions,
    Scenario, ScenarioSummary, Strategy, Violation,
};
pub use merge_scenarios::{MergeParams, MergeScenario, MergeStrategy};
pub use model::{Choice, CrashModel, Keep, PointSpace};
pub use seeded::{ScenarioParams, Seeded};
pub use trace::{Ino, Op};

/// The scenarios a default `cargo xtask sim` explores: every correct
/// protocol (merge, compaction and relink scenarios join here), none of the
/// deliberately broken toys.
pub fn default_scenarios() -> Vec<Arc<dyn Scenario>> {
    default_scenarios_for(MergeStrategy::Safe)
}

/// The default scenarios for a strategy: the merge scenarios merged that
/// way and the compaction scenarios compacted that way (`UnsafeInPlace`
/// selects each family's negative control). The toy protocols prove the
/// simulator itself and run in its tests (and by name with `--scenario`),
/// not in the merge budget.
pub fn default_scenarios_for(strategy: MergeStrategy) -> Vec<Arc<dyn Scenario>> {
    protocol_scenarios(
        &merge_scenarios::default_params(),
        &compact_scenarios::default_params(),
        strategy,
    )
}

/// Every known scenario, for `--scenario NAME` lookup (including the broken
/// toys, so their violations can be replayed).
pub fn all_scenarios() -> Vec<Arc<dyn Scenario>> {
    all_scenarios_for(MergeStrategy::Safe)
}

/// Every merge and compaction parameter combination run with `strategy`,
/// plus every toy.
pub fn all_scenarios_for(strategy: MergeStrategy) -> Vec<Arc<dyn Scenario>> {
    let mut v = protocol_scenarios(
        &merge_scenarios::all_params(),
        &compact_scenarios::all_params(),
        strategy,
    );
    v.extend(toy::all());
    v
}

/// The merge and compaction scenarios of the given parameters and every
/// relink scenario (all of them are in the default set), run with
/// `strategy`, in that order.
fn protocol_scenarios(
    merges: &[MergeParams],
    compactions: &[CompactParams],
    strategy: MergeStrategy,
) -> Vec<Arc<dyn Scenario>> {
    let mut v = merge_scenarios::scenarios(merges, strategy);
    v.extend(compact_scenarios::scenarios(compactions, strategy));
    v.extend(relink_scenarios::scenarios(
        &relink_scenarios::all_params(),
        strategy,
    ));
    v
}

pub fn find_scenario(name: &str) -> Option<Arc<dyn Scenario>> {
    find_scenario_for(name, MergeStrategy::Safe)
}

pub fn find_scenario_for(name: &str, strategy: MergeStrategy) -> Option<Arc<dyn Scenario>> {
    all_scenarios_for(strategy)
        .into_iter()
        .find(|s| s.name() == name)
}
