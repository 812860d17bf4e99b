//! `sim`: the crash simulator (DESIGN.md section 6). Runs the merge
//! scenarios (every destination kind) and the correct toys for about
//! `--seconds`, checks every post-crash state it reaches, and prints each
//! violation with its seed and a one-line replay command.
//!
//! `--strategy` chooses how the scenarios merge: `safe` (alias `merge`,
//! chainfold's merge) or `unsafe-in-place` (the negative control: raw
//! in-place writes with no journal and no ordering, which the checker must
//! catch). The state enumeration is automatic: an exhaustive pass, then
//! seeded random rounds over the crash points too large to enumerate.

use std::sync::Arc;

use clap::Args;
use sim::{MergeStrategy, Report, Scenario};

use crate::outln;

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Seed of the exploration (a violation's seed replays it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time budget in seconds, shared equally by the scenarios.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Run only this scenario (see --list).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Merge strategy: safe (or merge), unsafe-in-place (negative control;
    /// exit 0 only when it IS caught).
    #[arg(long, default_value = "safe")]
    pub strategy: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: SimArgs) -> u8 {
    let strategy: MergeStrategy = match args.strategy.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if args.list {
        let defaults: Vec<String> = sim::default_scenarios_for(strategy)
            .iter()
            .map(|s| s.name())
            .collect();
        for s in sim::all_scenarios_for(strategy) {
            let n = s.name();
            let tag = if defaults.contains(&n) {
                " (default)"
            } else {
                ""
            };
            outln!("{n}{tag}");
        }
        return 0;
    }
    let scenarios: Vec<Arc<dyn Scenario>> = match &args.scenario {
        Some(name) => match sim::find_scenario_for(name, strategy) {
            Some(s) => vec![s],
            None => {
                eprintln!("error: unknown scenario {name:?} (see --list)");
                return 2;
            }
        },
        None => sim::default_scenarios_for(strategy),
    };
    let report = sim::run_for_with(args.seconds, args.seed, &scenarios, args.threads.max(1));
    if args.json {
        outln!("{}", json(&report, &args, strategy));
    } else {
        print_text(&report, strategy);
    }
    let caught = report.violation_count > 0;
    match strategy {
        MergeStrategy::Safe => u8::from(caught),
        // The control exists to be caught: not catching it is the failure.
        MergeStrategy::UnsafeInPlace => u8::from(!caught),
    }
}

fn json(report: &Report, args: &SimArgs, strategy: MergeStrategy) -> String {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("strategy".into(), strategy.name().into());
        o.insert("seed".into(), args.seed.into());
        o.insert("seconds".into(), args.seconds.into());
    }
    serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn print_text(r: &Report, strategy: MergeStrategy) {
    outln!(
        "{:<26} {:>5} {:>7} {:>9} {:>7} {:>6} {:>10}",
        "scenario",
        "ops",
        "points",
        "states",
        "rounds",
        "done",
        "violations"
    );
    for s in &r.scenarios {
        outln!(
            "{:<26} {:>5} {:>7} {:>9} {:>7} {:>6} {:>10}",
            s.name,
            s.ops,
            s.crash_points_total,
            s.states_checked,
            s.rounds,
            if s.complete { "yes" } else { "cut" },
            s.violation_count
        );
    }
    outln!(
        "strategy {}: {} scenarios, {} crash points, {} post-crash states checked, {} violations ({} ms, {:.0} states/s)",
        strategy,
        r.scenarios.len(),
        r.crash_points,
        r.states_checked,
        r.violation_count,
        r.elapsed_ms,
        r.states_per_second
    );
    for v in &r.violations {
        outln!(
            "VIOLATION {} seed {} crash point {} state {}: {}\n  state: {}\n  replay: {}",
            v.scenario,
            v.seed,
            v.crash_point,
            v.state,
            v.description,
            v.state_description,
            v.replay_command
        );
    }
    if (r.violations.len() as u64) < r.violation_count {
        outln!(
            "({} more violations not shown)",
            r.violation_count - r.violations.len() as u64
        );
    }
}
