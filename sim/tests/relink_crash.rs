//! `set-parent` and `rebase` under crashes: every relink scenario, every
//! crash point (a few seeded states each), 0 violations; and the negative
//! control (the same relink with every flush dropped), which must be
//! caught. The longer exploration (every state of small points, double
//! crashes) runs in `cargo xtask sim`.

mod common;
use common::{assert_caught, assert_runs, explore_survives};
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
        explore_survives(&s, Strategy::Random, &budget(), 10);
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
        assert_caught(&r, &s, "unsafe-in-place", "the flushless relink");
    }
}
