//! What the simulator's tests share. Each test file includes this with
//! `mod common;` and uses what it needs.
#![allow(dead_code)]

use sim::merge_scenarios::{DestKind, MergeParams};
use sim::{Budget, Report, Scenario, Strategy};

/// A merge scenario's parameters, keeping the merged files and staging
/// nothing as joined spans.
pub fn merge_params(
    vhdx: bool,
    dest: DestKind,
    depth: usize,
    sector_4k: bool,
    grow: bool,
) -> MergeParams {
    MergeParams::new(vhdx, dest, depth, sector_4k, grow)
}

/// The scenario's own run (no crash) must succeed, so that a negative
/// control's violations come from crash states, not from a failing run.
pub fn assert_runs(s: &dyn Scenario) {
    let prepared = sim::prepare(s);
    assert!(
        prepared.error.is_none(),
        "{}: {:?}",
        s.name(),
        prepared.error
    );
}

/// The tests' budget: seeded, on two threads (what CI's machines have).
pub fn budget(seed: u64) -> Budget {
    Budget {
        seed,
        threads: 2,
        ..Budget::default()
    }
}

/// Explore the negative control `s` (its own run must succeed, see
/// `assert_runs`) and require that it was caught (see `assert_caught`;
/// `what` says what went unnoticed otherwise); the report.
pub fn control_caught(s: &dyn Scenario, strategy: Strategy, budget: &Budget, what: &str) -> Report {
    assert_runs(s);
    let r = sim::explore(s, strategy, budget);
    eprintln!(
        "{} (negative control); first: {:?}",
        summary(&r),
        r.violations.first().map(|v| &v.description)
    );
    assert_caught(&r, s, s.cli_strategy(), what);
    r
}

/// A negative control run with `strategy` (its CLI name) was caught
/// (`what` says what went unnoticed otherwise), and its first violation
/// names the command that replays it.
pub fn assert_caught(r: &Report, s: &dyn Scenario, strategy: &str, what: &str) {
    assert!(
        r.violation_count > 0,
        "{}: {what} went unnoticed ({} states)",
        s.name(),
        r.states_checked
    );
    let v = &r.violations[0];
    assert!(
        v.replay_command
            .ends_with(&format!("--scenario {} --strategy {strategy}", s.name())),
        "{}",
        v.replay_command
    );
}

/// Every crash point of the only scenario of `r` was explored, the run
/// issued more than `min_ops` ops, and no state broke an invariant.
pub fn assert_survived(r: &Report, min_ops: usize) {
    let sc = &r.scenarios[0];
    assert!(sc.ops > min_ops, "{}: only {} ops", sc.name, sc.ops);
    assert_eq!(sc.crash_points, sc.crash_points_total, "{}", sc.name);
    assert_eq!(r.violation_count, 0, "{}", r.to_json());
}

/// Explore `s` with `strategy` under `budget`, log its summary, and require
/// that it survived (see `assert_survived`); the report, for further checks.
pub fn explore_survives(
    s: &dyn Scenario,
    strategy: Strategy,
    budget: &Budget,
    min_ops: usize,
) -> Report {
    let r = sim::explore(s, strategy, budget);
    eprintln!("{}", summary(&r));
    assert_survived(&r, min_ops);
    r
}

/// Check the state after the run returned with every write kept (the
/// last crash point, state 0).
pub fn replay_last(s: &dyn Scenario, strategy: Strategy, budget: &Budget) -> Result<(), String> {
    let prepared = sim::prepare(s);
    let model = prepared.model.as_ref().expect("ran");
    let last = model.crash_points() - 1;
    sim::replay_state(s, strategy, budget, last, 0)
}

/// One line on the exploration of the only scenario of `r`, for the test's
/// log.
pub fn summary(r: &Report) -> String {
    let sc = &r.scenarios[0];
    format!(
        "{}: {} ops, {} crash points ({} enumerated, {} sampled), {} states, {} violations, {} ms",
        sc.name,
        sc.ops,
        sc.crash_points,
        sc.exhaustive_points,
        sc.sampled_points,
        sc.states_checked,
        sc.violation_count,
        r.elapsed_ms
    )
}

/// `names` sorted, each of them unique.
pub fn unique_names(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all, "duplicate scenario names");
    names
}
