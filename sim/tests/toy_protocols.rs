//! The simulator judged on protocols whose answer is known.

use std::sync::Arc;

use sim::toy::{self, AtomicReplace, InPlaceOverwrite, JournaledOverwrite};
use sim::{explore, replay_state, Budget, Scenario, Strategy};

fn exhaustive(s: &dyn Scenario) -> sim::Report {
    explore(s, Strategy::Exhaustive, &Budget::default())
}

/// Every state of replacing a `len`-byte file (made `durable` or not).
fn replace(durable: bool, len: usize) -> sim::Report {
    exhaustive(&AtomicReplace { durable, len })
}

#[test]
fn correct_replace_has_no_violation_over_the_exhaustive_space() {
    let r = replace(true, 4096);
    let sc = &r.scenarios[0];
    assert_eq!(r.violation_count, 0, "{}", r.to_json());
    assert!(r.complete);
    // Every crash point was enumerated, none sampled.
    assert_eq!(sc.sampled_points, 0);
    assert_eq!(sc.exhaustive_points, sc.crash_points_total);
    // create, 2 writes, flush, rename, sync_dir.
    assert_eq!(sc.ops, 6);
    assert!(r.states_checked > sc.crash_points_total, "{}", r.to_json());
}

#[test]
fn correct_journal_has_no_violation_and_recovery_writes_work() {
    let s = JournaledOverwrite {
        file_len: 16384,
        region_offset: 1024,
        region_len: 4096,
        chunk: 2048,
        tag: "",
        cache: Default::default(),
    };
    let r = exhaustive(&s);
    assert_eq!(r.violation_count, 0, "{}", r.to_json());
    assert_eq!(r.scenarios[0].sampled_points, 0);
}

#[test]
fn replace_without_flush_and_sync_is_caught() {
    let r = replace(false, 8192);
    assert!(r.violation_count > 0);
    // Not only "the rename was lost after return": the sim must produce a
    // renamed file whose data never made it.
    assert!(
        r.violations
            .iter()
            .chain(std::iter::empty())
            .any(|v| v.description.contains("neither old nor new")),
        "{}",
        r.to_json()
    );
    let v = &r.violations[0];
    assert_eq!(
        v.replay_command,
        format!("cargo xtask sim --seed 0 --scenario toy-replace-no-sync --strategy safe")
    );
}

#[test]
fn torn_in_place_overwrite_is_caught() {
    let s = InPlaceOverwrite { len: 4096 };
    let r = exhaustive(&s);
    assert!(r.violation_count > 0);
    let torn = r
        .violations
        .iter()
        .find(|v| v.state_description.contains("torn"))
        .expect("a torn-write violation");
    assert!(torn.description.contains("neither old nor new"));
    // Exactly the torn states are wrong at the crash point before the
    // flush: 2^8 states, of which old and new are fine.
    assert_eq!(r.violation_count, 256 - 2);
    // The violation replays to the same verdict.
    let again = replay_state(
        &s,
        Strategy::Exhaustive,
        &Budget::default(),
        torn.crash_point,
        torn.state,
    );
    assert!(again.unwrap_err().contains("neither old nor new"));
}

#[test]
fn same_seed_same_report_and_threads_do_not_matter() {
    let s = toy::large();
    let budget = Budget {
        seed: 7,
        max_states: Some(300),
        samples_per_point: 40,
        ..Budget::default()
    };
    let a = explore(s.as_ref(), Strategy::Random, &budget).without_timing();
    let b = explore(s.as_ref(), Strategy::Random, &budget).without_timing();
    assert_eq!(a, b);
    assert_eq!(a.states_checked, 300);
    let two = Budget {
        threads: 2,
        ..budget.clone()
    };
    let c = explore(s.as_ref(), Strategy::Random, &two).without_timing();
    assert_eq!(a, c);
}

#[test]
fn sampled_broken_protocol_reports_are_seed_deterministic() {
    // 8 KiB in one write = 16 sectors: 65536 states, beyond the
    // exhaustive limit, so this point is sampled.
    let s = InPlaceOverwrite { len: 8192 };
    let budget = Budget {
        seed: 99,
        ..Budget::default()
    };
    let a = explore(&s, Strategy::Exhaustive, &budget).without_timing();
    let b = explore(&s, Strategy::Exhaustive, &budget).without_timing();
    assert_eq!(a, b);
    assert!(a.scenarios[0].sampled_points > 0);
    assert!(a.violation_count > 0);
    let other = explore(
        &s,
        Strategy::Exhaustive,
        &Budget {
            seed: 100,
            ..Budget::default()
        },
    )
    .without_timing();
    // A different seed draws different torn states.
    assert_ne!(
        a.violations
            .iter()
            .map(|v| &v.state_description)
            .collect::<Vec<_>>(),
        other
            .violations
            .iter()
            .map(|v| &v.state_description)
            .collect::<Vec<_>>()
    );
    for v in &a.violations {
        assert!(replay_state(&s, Strategy::Exhaustive, &budget, v.crash_point, v.state).is_err());
    }
}

#[test]
fn run_for_reports_json_with_the_required_keys() {
    let scenarios: Vec<Arc<dyn Scenario>> = toy::correct();
    let r = sim::run_for_with(1.0, 3, &scenarios, 1);
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for key in ["scenarios", "crash_points", "states_checked", "violations"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(r.violation_count, 0, "{}", r.to_json());
    assert_eq!(r.scenarios.len(), 2);
    assert!(r.states_checked > 0);
}

#[test]
fn every_toy_name_is_found() {
    for s in sim::all_scenarios() {
        assert_eq!(sim::find_scenario(&s.name()).unwrap().name(), s.name());
    }
}
