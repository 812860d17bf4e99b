//! A fast slice of the merge crash exploration: one small scenario per
//! destination kind, every crash point, a bounded set of states each (all
//! of them where a point has few), 0 violations required; and the
//! `unsafe-in-place` negative control, which must be caught.

mod common;
use common::{assert_caught, explore_survives, merge_params as mk, replay_last};
use sim::merge_scenarios::{self, DestKind, MergeParams};
use sim::{explore, Budget, MergeScenario, MergeStrategy, Scenario, ScenarioParams, Strategy};

fn slice_budget() -> Budget {
    Budget {
        exhaustive_limit: 64,
        samples_per_point: 12,
        ..common::budget(7)
    }
}

fn kinds() -> Vec<MergeParams> {
    vec![
        // Fixed VHD growth has a known violation (regression test below).
        mk(false, DestKind::Fixed, 2, false, false),
        mk(false, DestKind::Dynamic, 2, false, false),
        mk(false, DestKind::Differencing, 1, false, true),
        mk(true, DestKind::Fixed, 1, true, false),
        mk(true, DestKind::Dynamic, 1, false, true),
        mk(true, DestKind::Differencing, 2, false, false),
    ]
}

#[test]
fn safe_merge_survives_every_crash_point_of_each_destination_kind() {
    for p in kinds() {
        let s = MergeScenario::new(p, MergeStrategy::Safe);
        let r = explore_survives(&s, Strategy::Exhaustive, &slice_budget(), 5);
        let sc = &r.scenarios[0];
        assert!(sc.states_checked >= sc.crash_points_total);
    }
}

#[test]
fn unsafe_in_place_merge_is_caught_for_each_destination_kind() {
    for p in kinds() {
        let s = MergeScenario::new(p, MergeStrategy::UnsafeInPlace);
        let r = explore(&s, Strategy::Exhaustive, &slice_budget());
        assert_caught(&r, &s, "unsafe-in-place", "the unsafe merge");
    }
}

#[test]
fn a_crash_free_unsafe_merge_still_produces_the_merged_content() {
    // The control is unsafe only under crashes: the state after it returned
    // must pass, or its violations would prove nothing about crashes.
    let p = kinds()[4];
    let s = MergeScenario::new(p, MergeStrategy::UnsafeInPlace);
    let budget = Budget {
        max_states: Some(1),
        ..slice_budget()
    };
    let r = replay_last(&s, Strategy::Exhaustive, &budget);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn scenario_names_are_unique_and_findable() {
    let all = merge_scenarios::all_params();
    let names = common::unique_names(all.iter().map(MergeParams::name));
    assert!(names.contains(&"vhdx-dynamic-d2-4k-grow".to_string()));
    for n in ["vhd-fixed-d1", "vhdx-diff-d3-4k-grow"] {
        let s = sim::find_scenario_for(n, MergeStrategy::UnsafeInPlace).expect(n);
        assert_eq!(s.cli_strategy(), "unsafe-in-place");
    }
    assert!(sim::find_scenario("vhd-fixed-d0").is_none());
}

// --- Regression: fixed VHD destination that grows (found by this simulator).
//
// The redo journal's apply writes the records in place in journal order
// with no flush until the end. When the destination grows, a record for the
// new data area just past the old footer (e.g. `write @0x100200 len 0x400`
// for a 1 MiB disk) extends the file before the record that writes the new
// footer at the new end. A crash in between leaves a file whose last 512
// bytes are not a footer and whose first bytes are not `conectix` (fixed
// VHD), so `formats::image::open`'s format detection refuses it
// ("not a VHD or VHDX image") before the VHD driver's journal recovery,
// which would finish the apply, ever runs. The merge had committed; a
// re-run fails the same way (return value != 0).

use std::sync::Arc;

use formats::Namespace;

fn fixed_grow() -> MergeScenario {
    MergeScenario::new(
        mk(false, DestKind::Fixed, 1, false, true),
        MergeStrategy::Safe,
    )
}

/// Crash points whose "every pending write kept" state fails the checker.
fn failing_all_kept_points(s: &MergeScenario) -> Vec<(usize, String)> {
    let prepared = sim::prepare(s);
    let model = prepared.model.as_ref().expect("ran");
    let mut out = Vec::new();
    for k in 0..model.crash_points() {
        let space = model.space(k);
        let post: Arc<dyn Namespace> = model.state(&space, &space.all_kept());
        let ctx = sim::CrashContext {
            scenario: "fixed-grow",
            strategy: Strategy::Exhaustive,
            seed: 0,
            crash_point: k,
            total_ops: model.trace().len(),
            state: 0,
            marks: Vec::new(),
            model,
            recovery: None,
        };
        if let Err(e) = s.check(&post, &ctx) {
            out.push((k, e));
        }
    }
    out
}

#[test]
fn fixed_vhd_destination_that_grows_opens_after_a_crash_during_journal_apply() {
    let failing = failing_all_kept_points(&fixed_grow());
    assert!(failing.is_empty(), "{failing:#?}");
}
