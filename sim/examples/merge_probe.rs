//! Probe merge scenarios: `cargo run --release -p chainfold-sim --example
//! merge_probe -- SECONDS THREADS [safe|unsafe-in-place] [NAME...]`.

use std::sync::Arc;

use sim::{default_scenarios_for, find_scenario_for, run_for_with, MergeStrategy, Scenario};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let strategy: MergeStrategy = args
        .get(3)
        .map(|s| s.parse().expect("strategy"))
        .unwrap_or(MergeStrategy::Safe);
    let scenarios: Vec<Arc<dyn Scenario>> = if args.len() > 4 {
        args[4..]
            .iter()
            .map(|n| find_scenario_for(n, strategy).expect("scenario"))
            .collect()
    } else {
        default_scenarios_for(strategy)
    };
    let r = run_for_with(seconds, 1, &scenarios, threads);
    for s in &r.scenarios {
        eprintln!(
            "{}: {} ops, {} crash points, {} states, {} rounds, {} violations",
            s.name, s.ops, s.crash_points_total, s.states_checked, s.rounds, s.violation_count
        );
    }
    for v in r.violations.iter().take(8) {
        eprintln!(
            "VIOLATION {} cp {} state {}: {} [{}]",
            v.scenario, v.crash_point, v.state, v.description, v.state_description
        );
    }
    eprintln!(
        "total {} states in {} ms = {:.0} states/s ({} threads), {} violations",
        r.states_checked, r.elapsed_ms, r.states_per_second, threads, r.violation_count
    );
}
