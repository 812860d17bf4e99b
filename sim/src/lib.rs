//! The crash simulator (DESIGN.md section 6; see README.md beside this
//! crate): a recording in-memory file system ([`CrashNamespace`]), the
//! reconstruction of every post-crash state from one recorded run
//! ([`CrashModel`]), and the explorer that checks them ([`explore`],
//! [`run_for`]) for any [`Scenario`].

pub mod crash_storage;
pub mod explore;
pub mod model;
pub mod pages;
pub mod rng;
pub mod toy;
pub mod trace;

use std::sync::Arc;

pub use crash_storage::{CrashNamespace, Snapshot};
pub use explore::{
    explore, explore_prepared, prepare, replay_command, replay_state, run_for, run_for_with,
    Budget, CrashContext, Marks, Prepared, Report, Scenario, ScenarioSummary, Strategy, Violation,
};
pub use model::{Choice, CrashModel, Keep, PointSpace};
pub use trace::{Ino, Op};

/// The scenarios a default `cargo xtask sim` explores: every correct
/// protocol (merge scenarios join here), none of the deliberately broken
/// toys.
pub fn default_scenarios() -> Vec<Arc<dyn Scenario>> {
    toy::correct()
}

/// Every known scenario, for `--scenario NAME` lookup (including the broken
/// toys, so their violations can be replayed).
pub fn all_scenarios() -> Vec<Arc<dyn Scenario>> {
    toy::all()
}

pub fn find_scenario(name: &str) -> Option<Arc<dyn Scenario>> {
    all_scenarios().into_iter().find(|s| s.name() == name)
}
