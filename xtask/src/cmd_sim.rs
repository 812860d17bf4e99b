//! `sim`: the crash simulator (DESIGN.md section 6). Runs the merge
//! scenarios (every destination kind) and the correct toys for about
//! `--seconds`, checks every post-crash state it reaches, and prints each
//! violation with its seed and a one-line replay command.
//!
//! `--strategy` chooses how the scenarios merge: `safe` (alias `merge`,
//! chainfold's merge), `unsafe-in-place` (the negative control: raw
//! in-place writes with no journal and no ordering, which the checker must
//! catch) or `unsafe-recovery` (the negative control of recovery: a safe
//! merge whose re-run after a crash drops every flush and directory sync,
//! which only double crashes can catch). The state enumeration is
//! automatic: an exhaustive pass, then seeded random rounds over the crash
//! points too large to enumerate; then (half of each scenario's share)
//! double crashes: first-crash states whose recovery is recorded and
//! crashed again at every point (or a seeded sample of them).

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
    /// Merge strategy: safe (or merge), unsafe-in-place, unsafe-recovery
    /// (negative controls; exit 0 only when they ARE caught).
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
    /// Single crashes only (no double-crash phase).
    #[arg(long)]
    pub single_crash: bool,
    /// Replay a double-crash violation: only the double-crash round 0 of
    /// this first crash point, with --seed (needs --scenario).
    #[arg(long, value_name = "CRASH_POINT")]
    pub double_crash_at: Option<usize>,
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
    let report = match args.double_crash_at {
        Some(k) => {
            if args.scenario.is_none() {
                eprintln!("error: --double-crash-at needs --scenario");
                return 2;
            }
            sim::run_double_at(scenarios[0].as_ref(), args.seed, k, args.threads.max(1))
        }
        None => sim::run_for_opts(
            args.seconds,
            args.seed,
            &scenarios,
            &sim::RunOptions {
                threads: args.threads.max(1),
                double_crash: !args.single_crash,
                ..sim::RunOptions::default()
            },
        ),
    };
    if args.json {
        outln!("{}", json(&report, &args, strategy));
    } else {
        print_text(&report, strategy);
    }
    let caught = report.violation_count > 0;
    match strategy {
        MergeStrategy::Safe => u8::from(caught),
        // The controls exist to be caught: not catching them is the failure.
        MergeStrategy::UnsafeInPlace | MergeStrategy::UnsafeRecovery => u8::from(!caught),
    }
}

fn json(report: &Report, args: &SimArgs, strategy: MergeStrategy) -> String {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("strategy".into(), strategy.name().into());
        o.insert("seed".into(), args.seed.into());
        o.insert("seconds".into(), args.seconds.into());
        o.insert(
            "double_crash".into(),
            (!args.single_crash || args.double_crash_at.is_some()).into(),
        );
    }
    serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn print_text(r: &Report, strategy: MergeStrategy) {
    outln!(
        "{:<30} {:>5} {:>7} {:>9} {:>7} {:>6} {:>10} {:>9} {:>9} {:>10}",
        "scenario",
        "ops",
        "points",
        "states",
        "rounds",
        "done",
        "violations",
        "2x-recov",
        "2x-states",
        "2x-violat"
    );
    for s in &r.scenarios {
        outln!(
            "{:<30} {:>5} {:>7} {:>9} {:>7} {:>6} {:>10} {:>9} {:>9} {:>10}",
            s.name,
            s.ops,
            s.crash_points_total,
            s.states_checked,
            s.rounds,
            if s.complete { "yes" } else { "cut" },
            s.violation_count,
            s.double_crash_recoveries,
            s.double_crash_states,
            s.double_crash_violations
        );
    }
    outln!(
        "strategy {}: {} scenarios, {} crash points, {} post-crash states checked, {} double-crash states ({} recoveries crashed again; recoveries with more than {} states: {} states per point, more than {} points: a sample of {} plus the namespace ops' neighbours), {} violations ({} from double crashes) ({} ms, {:.0} states/s, {:.0} states/min)",
        strategy,
        r.scenarios.len(),
        r.crash_points,
        r.states_checked,
        r.double_crash_states,
        r.double_crash_recoveries,
        sim::Budget::default().double_exhaustive_limit,
        r.double_crash_samples_per_point,
        r.double_crash_sampled_points_per_recovery,
        r.double_crash_sampled_points_per_recovery,
        r.violation_count,
        r.double_crash_violations,
        r.elapsed_ms,
        r.states_per_second,
        r.states_per_minute
    );
    for v in &r.violations {
        let recovery = match (v.recovery_crash_point, v.recovery_state) {
            (Some(k), Some(s)) => format!(", recovery crash point {k} state {s}"),
            _ => String::new(),
        };
        outln!(
            "VIOLATION {} seed {} crash point {} state {}{}: {}\n  state: {}\n  replay: {}",
            v.scenario,
            v.seed,
            v.crash_point,
            v.state,
            recovery,
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
