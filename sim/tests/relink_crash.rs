//! `set-parent` and `rebase` under crashes: every relink scenario, every
//! crash point (a few seeded states each), 0 violations; and the negative
//! control (the same relink with every flush dropped), which must be
//! caught. The longer exploration (every state of small points, double
//! crashes) runs in `cargo xtask sim`.

mod common;
use common::{control_caught, explore_survives};
use sim::relink_scenarios::{self, RelinkScenario};
use sim::{Budget, MergeStrategy, Strategy};

fn budget() -> Budget {
    Budget {
        samples_per_point: 16,
        ..common::budget(11)
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
        control_caught(&s, Strategy::Random, &budget(), "the flushless relink");
    }
}
