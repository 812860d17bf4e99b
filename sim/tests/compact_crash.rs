//! Compaction alone under crashes (`Image::compact` on a bloated image):
//! every compaction scenario, every crash point, every state of the points
//! that have at most 4096 (the explorer's exhaustive limit) and 32 seeded
//! samples of the larger ones, 0 violations required; and the negative
//! control (the same compaction with every flush dropped), which must be
//! caught.

mod common;
use common::{control_caught, explore_survives, replay_last};
use sim::compact_scenarios::{self, CompactParams};
use sim::{Budget, CompactScenario, MergeStrategy, ScenarioParams, Strategy};

fn budget() -> Budget {
    common::budget(7)
}

#[test]
fn every_compaction_scenario_starts_bloated() {
    for p in compact_scenarios::all_params() {
        let s = CompactScenario::new(p, MergeStrategy::Safe);
        let r = s
            .crash_free_report()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        eprintln!("{}: {r:?}", p.name());
        // Several moves, so crash points fall between and inside them.
        assert!(r.moved >= 3, "{}: {r:?}", p.name());
        assert!(r.length_after < r.length_before, "{}: {r:?}", p.name());
        // The growing VHD keeps a gap no block fits: the punch path.
        assert_eq!(r.bytes_punched > 0, p.grow, "{}: {r:?}", p.name());
    }
}

#[test]
fn safe_compaction_survives_every_crash_point() {
    for p in compact_scenarios::all_params() {
        let s = CompactScenario::new(p, MergeStrategy::Safe);
        let r = explore_survives(&s, Strategy::Exhaustive, &budget(), 10);
        let sc = &r.scenarios[0];
        assert!(sc.exhaustive_points > 0, "{}", sc.name);
    }
}

#[test]
fn compaction_without_flushes_is_caught() {
    for p in compact_scenarios::all_params() {
        let s = CompactScenario::new(p, MergeStrategy::UnsafeInPlace);
        control_caught(
            &s,
            Strategy::Exhaustive,
            &budget(),
            "the flushless compaction",
        );
    }
}

#[test]
fn a_crash_free_flushless_compaction_keeps_the_content() {
    // The control is unsafe only under crashes: the state after it returned
    // with every write kept must pass, or its violations would prove
    // nothing about crashes.
    for p in compact_scenarios::default_params() {
        let s = CompactScenario::new(p, MergeStrategy::UnsafeInPlace);
        let r = replay_last(&s, Strategy::Random, &budget());
        assert!(r.is_ok(), "{}: {r:?}", p.name());
    }
}

#[test]
fn compaction_scenarios_are_named_findable_and_in_the_default_run() {
    let all = compact_scenarios::all_params();
    common::unique_names(all.iter().map(CompactParams::name));
    let defaults: Vec<String> = sim::default_scenarios().iter().map(|s| s.name()).collect();
    for n in [
        "compact-vhd-dynamic",
        "compact-vhd-differencing",
        "compact-vhdx-fixed",
        "compact-vhdx-dynamic",
        "compact-vhdx-differencing",
        "compact-vhd-differencing-grow",
    ] {
        assert!(
            defaults.contains(&n.to_string()),
            "{n} not in the default run"
        );
        let s = sim::find_scenario_for(n, MergeStrategy::UnsafeInPlace).expect(n);
        assert_eq!(s.cli_strategy(), "unsafe-in-place");
    }
    assert!(sim::find_scenario("compact-vhdx-differencing-4k").is_some());
    // A fixed VHD has nothing to compact.
    assert!(sim::find_scenario("compact-vhd-fixed").is_none());
}
