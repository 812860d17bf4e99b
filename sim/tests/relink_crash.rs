//! `set-parent` and `rebase` under crashes: every relink scenario, every
//! crash point (a few seeded states each), 0 violations; and the negative
//! control (the same relink with every flush dropped), which must be
//! caught. The longer exploration (every state of small points, double
//! crashes) runs in `cargo xtask sim`.

mod common;
use common::{assert_runs, assert_survived};
use sim::relink_scenarios::{self, RelinkScenario};
use sim::{explore, Budget, MergeStrategy, Strategy};

fn budget() -> Budget {
    Budget {
        seed: 11,
        threads: 2,
        samples_per_point: 16,
        ..Budget::default()
    }
}

#[test]
fn relinks_survive_every_crash_point() {
    for p in relink_scenarios::all_params() {
        let s = RelinkScenario::new(p, MergeStrategy::Safe);
        let r = explore(&s, Strategy::Random, &budget());
        let sc = &r.scenarios[0];
        eprintln!(
            "{}: {} ops, {} crash points, {} states, {} violations",
            sc.name, sc.ops, sc.crash_points, sc.states_checked, sc.violation_count
        );
        assert_survived(&r, 10);
    }
}

#[test]
fn relinks_without_flushes_are_caught() {
    for p in relink_scenarios::all_params() {
        let s = RelinkScenario::new(p, MergeStrategy::UnsafeInPlace);
        // The control's run itself succeeds: its violations come from
        // crash states.
        assert_runs(&s);
        let r = explore(&s, Strategy::Random, &budget());
        assert!(
            r.violation_count > 0,
            "{}: the negative control was not caught",
            p.name()
        );
    }
}
