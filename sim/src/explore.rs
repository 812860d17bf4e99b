//! The explorer: run a scenario once on the crash storage, then check the
//! post-crash states of every crash point — all of them where few enough,
//! seeded samples beyond.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formats::Namespace;
use serde::{Deserialize, Serialize};

use crate::crash_storage::CrashNamespace;
use crate::model::{Choice, CrashModel, PointSpace};
use crate::rng::{derive, SplitMix64};
use crate::trace::Op;

/// A protocol under test: how to build the starting files, the operation
/// itself, and the judge of every post-crash state.
pub trait Scenario: Send + Sync {
    /// Stable name, used in replay commands.
    fn name(&self) -> String;
    /// Tear granularity: 512, or 4096 for 4K images.
    fn sector_size(&self) -> usize {
        512
    }
    /// The `--strategy` value of `cargo xtask sim` that selects this
    /// scenario (merge scenarios exist once per merge strategy).
    fn cli_strategy(&self) -> &'static str {
        "safe"
    }
    /// Build the starting files. Everything it leaves is durable.
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String>;
    /// The operation under test. Runs once; every storage op is recorded.
    /// `marks.mark("commit")` tells later crash points the run got there.
    fn run(&self, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String>;
    /// Recover as a user would (open, replay, finish) and judge. Writes to
    /// `post_crash` are private to this state.
    fn check(&self, post_crash: &Arc<dyn Namespace>, ctx: &CrashContext) -> Result<(), String>;
}

/// Lets a scenario's `run` label points of its progress.
#[derive(Debug, Clone)]
pub struct Marks {
    ns: Arc<CrashNamespace>,
}

impl Marks {
    pub fn mark(&self, label: &str) {
        self.ns.mark(label);
    }
}

/// What the checker knows about the state it judges.
#[derive(Debug)]
pub struct CrashContext<'a> {
    pub scenario: &'a str,
    pub strategy: Strategy,
    pub seed: u64,
    /// Ops `0..crash_point` had been issued.
    pub crash_point: usize,
    pub total_ops: usize,
    /// State index within the crash point (enumeration index or sample
    /// number).
    pub state: u64,
    /// Labels marked before the crash point.
    pub marks: Vec<String>,
    pub model: &'a CrashModel,
}

impl CrashContext<'_> {
    pub fn passed(&self, label: &str) -> bool {
        self.marks.iter().any(|m| m == label)
    }
    /// Every op had been issued (the operation returned) before the crash.
    pub fn run_finished(&self) -> bool {
        self.crash_point >= self.total_ops
    }
    /// The ops issued before the crash.
    pub fn ops_done(&self) -> &[Op] {
        self.model
            .trace()
            .get(..self.crash_point)
            .unwrap_or(self.model.trace())
    }
    /// A fresh namespace holding the state before the run (after setup).
    pub fn before(&self) -> Arc<dyn Namespace> {
        CrashNamespace::from_snapshot(self.model.base())
    }
    /// A fresh namespace holding the state after a crash-free run.
    pub fn after(&self) -> Arc<dyn Namespace> {
        CrashNamespace::from_snapshot(self.model.final_state())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every state of a crash point whose space has at most
    /// `exhaustive_limit` states; `samples_per_point` seeded samples of
    /// larger ones.
    Exhaustive,
    /// `samples_per_point` seeded samples per crash point (all states where
    /// there are no more than that).
    Random,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Exhaustive => "exhaustive",
            Strategy::Random => "random",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exhaustive" => Ok(Strategy::Exhaustive),
            "random" => Ok(Strategy::Random),
            _ => Err(format!("unknown strategy {s:?} (exhaustive, random)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Budget {
    pub seed: u64,
    /// Stop after this many states (None: no limit).
    pub max_states: Option<u64>,
    /// Stop at this instant (None: no limit). A deadline makes the set of
    /// states checked depend on speed; the states themselves do not.
    pub deadline: Option<Instant>,
    pub exhaustive_limit: u64,
    pub samples_per_point: u64,
    /// Skip crash points whose whole space fits in `exhaustive_limit`
    /// (used by `run_for` rounds after a first exhaustive pass).
    pub skip_enumerable: bool,
    pub threads: usize,
    /// Violations kept in the report (all are counted).
    pub max_violations: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            seed: 0,
            max_states: None,
            deadline: None,
            exhaustive_limit: 4096,
            samples_per_point: 32,
            skip_enumerable: false,
            threads: 1,
            max_violations: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub scenario: String,
    pub strategy: Strategy,
    pub seed: u64,
    pub crash_point: usize,
    pub state: u64,
    /// What the checker said.
    pub description: String,
    /// Which pending ops survived.
    pub state_description: String,
    pub replay_command: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub ops: usize,
    pub crash_points_total: u64,
    /// Crash points with at least one state checked (summed over rounds).
    pub crash_points: u64,
    pub exhaustive_points: u64,
    pub sampled_points: u64,
    pub states_checked: u64,
    pub violation_count: u64,
    pub rounds: u64,
    /// No budget limit cut the last round short.
    pub complete: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenarios: Vec<ScenarioSummary>,
    pub crash_points: u64,
    pub states_checked: u64,
    pub violation_count: u64,
    pub violations: Vec<Violation>,
    pub complete: bool,
    pub elapsed_ms: u64,
    pub states_per_second: f64,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report without its timing fields (for determinism comparisons).
    pub fn without_timing(mut self) -> Report {
        self.elapsed_ms = 0;
        self.states_per_second = 0.0;
        self
    }

    fn add_scenario(&mut self, s: ScenarioSummary, violations: Vec<Violation>, cap: usize) {
        self.crash_points += s.crash_points;
        self.states_checked += s.states_checked;
        self.violation_count += s.violation_count;
        let room = cap.saturating_sub(self.violations.len());
        self.violations.extend(violations.into_iter().take(room));
        self.complete = if self.scenarios.is_empty() {
            s.complete
        } else {
            self.complete && s.complete
        };
        self.scenarios.push(s);
    }

    fn set_timing(&mut self, start: Instant) {
        let el = start.elapsed();
        self.elapsed_ms = el.as_millis() as u64;
        self.states_per_second = if el.as_secs_f64() > 0.0 {
            self.states_checked as f64 / el.as_secs_f64()
        } else {
            0.0
        };
    }
}

/// The command that re-runs the exploration that found a violation. The
/// enumeration (`Strategy`) needs no flag: a `run_for` random round's seed,
/// given as `--seed`, draws the same samples in the first (exhaustive) pass.
pub fn replay_command(scenario: &str, seed: u64, cli_strategy: &str) -> String {
    format!("cargo xtask sim --seed {seed} --scenario {scenario} --strategy {cli_strategy}")
}

/// A scenario set up and run once on the crash storage.
#[derive(Debug)]
pub struct Prepared {
    pub name: String,
    pub model: Option<CrashModel>,
    /// Setup or run failure (reported as a violation).
    pub error: Option<String>,
}

pub fn prepare(scenario: &dyn Scenario) -> Prepared {
    let name = scenario.name();
    let ns = CrashNamespace::new();
    let dns: Arc<dyn Namespace> = ns.clone();
    let setup = catch_unwind(AssertUnwindSafe(|| scenario.setup(&dns)))
        .unwrap_or_else(|p| Err(panic_message(&p)));
    if let Err(e) = setup {
        return Prepared {
            name,
            model: None,
            error: Some(format!("setup failed: {e}")),
        };
    }
    let base = ns.begin_recording();
    let marks = Marks { ns: ns.clone() };
    let run = catch_unwind(AssertUnwindSafe(|| scenario.run(&dns, &marks)))
        .unwrap_or_else(|p| Err(panic_message(&p)));
    let (trace, marks) = ns.finish_recording();
    let model = CrashModel::new(base, ns.snapshot(), trace, marks, scenario.sector_size());
    Prepared {
        name,
        model: Some(model),
        error: run.err().map(|e| format!("run failed: {e}")),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    format!("panic: {msg}")
}

/// How many states a crash point gets, and whether they are enumeration
/// indices (true) or sample numbers (false).
fn plan(space: &PointSpace, strategy: Strategy, budget: &Budget) -> (u64, bool) {
    if budget.skip_enumerable && space.enumerable(budget.exhaustive_limit) {
        return (0, true);
    }
    let limit = match strategy {
        Strategy::Exhaustive => budget.exhaustive_limit,
        Strategy::Random => budget.samples_per_point,
    };
    match space.total {
        Some(t) if t <= limit => (t, true),
        _ => (budget.samples_per_point, false),
    }
}

/// The state `state` of a crash point, as `plan` numbers them. Sample 0 is
/// "everything kept", sample 1 "everything lost", the rest are seeded draws
/// that depend only on (seed, crash point, sample number).
pub fn choose(space: &PointSpace, enumerated: bool, seed: u64, state: u64) -> Choice {
    if enumerated {
        return space.decode(state);
    }
    match state {
        0 => space.all_kept(),
        1 => space.all_dropped(),
        _ => {
            let s = derive(derive(seed, space.crash_point as u64), state);
            space.sample(&mut SplitMix64::new(s))
        }
    }
}

struct Sched {
    next_point: usize,
    reserved: u64,
    stopped: bool,
}

/// Explore one scenario.
pub fn explore(scenario: &dyn Scenario, strategy: Strategy, budget: &Budget) -> Report {
    let start = Instant::now();
    let prepared = prepare(scenario);
    let mut report = Report::default();
    let (summary, violations) = explore_prepared(scenario, &prepared, strategy, budget);
    report.add_scenario(summary, violations, budget.max_violations);
    report.set_timing(start);
    report
}

/// Explore an already prepared scenario (lets several rounds share one run).
pub fn explore_prepared(
    scenario: &dyn Scenario,
    prepared: &Prepared,
    strategy: Strategy,
    budget: &Budget,
) -> (ScenarioSummary, Vec<Violation>) {
    let name = prepared.name.clone();
    let cli_strategy = scenario.cli_strategy();
    let mut summary = ScenarioSummary {
        name: name.clone(),
        rounds: 1,
        complete: true,
        ..Default::default()
    };
    let mut violations = Vec::new();
    let violation = |crash_point: usize, state: u64, description: String, sd: String| Violation {
        scenario: name.clone(),
        strategy,
        seed: budget.seed,
        crash_point,
        state,
        description,
        state_description: sd,
        replay_command: replay_command(&name, budget.seed, cli_strategy),
    };
    let Some(model) = prepared.model.as_ref() else {
        summary.violation_count = 1;
        let e = prepared.error.clone().unwrap_or_default();
        violations.push(violation(0, 0, e, String::new()));
        return (summary, violations);
    };
    summary.ops = model.trace().len();
    summary.crash_points_total = model.crash_points() as u64;
    // The operation itself failed: report it (once: later `run_for` rounds,
    // which skip enumerable points, do not repeat it), and still check what
    // it left behind.
    if let (Some(e), false) = (&prepared.error, budget.skip_enumerable) {
        summary.violation_count += 1;
        violations.push(violation(
            model.trace().len(),
            0,
            e.clone(),
            String::from("no crash"),
        ));
    }

    let sched = Mutex::new(Sched {
        next_point: 0,
        reserved: 0,
        stopped: false,
    });
    let checked = AtomicU64::new(0);
    let points = AtomicU64::new(0);
    let exhaustive_points = AtomicU64::new(0);
    let sampled_points = AtomicU64::new(0);
    let found = Mutex::new(Vec::<Violation>::new());
    let found_count = AtomicU64::new(0);
    let cut = Mutex::new(false);
    let past_deadline = || budget.deadline.is_some_and(|d| Instant::now() >= d);

    let worker = || loop {
        // Hand out crash points in order and reserve their states under
        // the lock, so that which states are checked under `max_states`
        // does not depend on thread timing.
        let (space, count, enumerated) = {
            let mut s = sched.lock().unwrap_or_else(|e| e.into_inner());
            if s.stopped || s.next_point >= model.crash_points() {
                return;
            }
            if past_deadline() {
                s.stopped = true;
                *cut.lock().unwrap_or_else(|e| e.into_inner()) = true;
                return;
            }
            let k = s.next_point;
            s.next_point += 1;
            let space = model.space(k);
            let (want, enumerated) = plan(&space, strategy, budget);
            let room = budget
                .max_states
                .map_or(u64::MAX, |m| m.saturating_sub(s.reserved));
            let count = want.min(room);
            if count < want {
                s.stopped = true;
                *cut.lock().unwrap_or_else(|e| e.into_inner()) = true;
            }
            s.reserved += count;
            (space, count, enumerated)
        };
        if count == 0 {
            continue;
        }
        points.fetch_add(1, Ordering::Relaxed);
        if enumerated {
            exhaustive_points.fetch_add(1, Ordering::Relaxed);
        } else {
            sampled_points.fetch_add(1, Ordering::Relaxed);
        }
        let k = space.crash_point;
        let marks = model.marks_before(k);
        for state in 0..count {
            if state % 64 == 63 && past_deadline() {
                *cut.lock().unwrap_or_else(|e| e.into_inner()) = true;
                sched.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
                return;
            }
            let choice = choose(&space, enumerated, budget.seed, state);
            let ctx = CrashContext {
                scenario: &name,
                strategy,
                seed: budget.seed,
                crash_point: k,
                total_ops: model.trace().len(),
                state,
                marks: marks.clone(),
                model,
            };
            let post: Arc<dyn Namespace> = model.state(&space, &choice);
            let verdict = catch_unwind(AssertUnwindSafe(|| scenario.check(&post, &ctx)))
                .unwrap_or_else(|p| Err(panic_message(&p)));
            checked.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = verdict {
                found_count.fetch_add(1, Ordering::Relaxed);
                let mut f = found.lock().unwrap_or_else(|e| e.into_inner());
                // Keep the earliest ones whatever the thread timing: keep
                // all until sorting, but bound memory.
                if f.len() < budget.max_violations.saturating_mul(4).max(64) {
                    f.push(violation(k, state, e, model.describe(&space, &choice)));
                }
            }
        }
    };
    let threads = budget.threads.max(1);
    if threads == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(worker);
            }
        });
    }

    let mut f = found.into_inner().unwrap_or_else(|e| e.into_inner());
    f.sort_by_key(|v| (v.crash_point, v.state));
    violations.extend(f);
    violations.truncate(budget.max_violations);
    summary.crash_points = points.load(Ordering::Relaxed);
    summary.exhaustive_points = exhaustive_points.load(Ordering::Relaxed);
    summary.sampled_points = sampled_points.load(Ordering::Relaxed);
    summary.states_checked = checked.load(Ordering::Relaxed);
    summary.violation_count += found_count.load(Ordering::Relaxed);
    summary.complete = !cut.into_inner().unwrap_or_else(|e| e.into_inner());
    (summary, violations)
}

/// Re-check one state (as named by a violation) and return the checker's
/// verdict. `budget` must carry the same seed and limits as the run that
/// found it.
pub fn replay_state(
    scenario: &dyn Scenario,
    strategy: Strategy,
    budget: &Budget,
    crash_point: usize,
    state: u64,
) -> Result<(), String> {
    let prepared = prepare(scenario);
    let model = prepared
        .model
        .as_ref()
        .ok_or_else(|| prepared.error.clone().unwrap_or_default())?;
    if crash_point >= model.crash_points() {
        return Err(format!(
            "crash point {crash_point} out of range (0..{})",
            model.crash_points()
        ));
    }
    let space = model.space(crash_point);
    let (_, enumerated) = plan(&space, strategy, budget);
    let choice = choose(&space, enumerated, budget.seed, state);
    let name = scenario.name();
    let ctx = CrashContext {
        scenario: &name,
        strategy,
        seed: budget.seed,
        crash_point,
        total_ops: model.trace().len(),
        state,
        marks: model.marks_before(crash_point),
        model,
    };
    let post: Arc<dyn Namespace> = model.state(&space, &choice);
    scenario
        .check(&post, &ctx)
        .map_err(|e| format!("{e} ({})", model.describe(&space, &choice)))
}

/// The driver for `cargo xtask sim`: spend about `seconds` over the
/// scenarios (an equal share each, unused time passes on). Each scenario is
/// run once, explored with `Strategy::Exhaustive` and `seed`, then, while
/// time remains, with `Strategy::Random` rounds (seeds derived from `seed`
/// and the round number, printed in any violation) over the crash points
/// too large to enumerate.
pub fn run_for(seconds: f64, seed: u64, scenarios: &[Arc<dyn Scenario>]) -> Report {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    run_for_with(seconds, seed, scenarios, threads)
}

pub fn run_for_with(
    seconds: f64,
    seed: u64,
    scenarios: &[Arc<dyn Scenario>],
    threads: usize,
) -> Report {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds.max(0.0));
    let mut report = Report::default();
    let max_violations = Budget::default().max_violations;
    for (i, sc) in scenarios.iter().enumerate() {
        let now = Instant::now();
        let left = end.saturating_duration_since(now);
        let share = left / (scenarios.len() - i) as u32;
        let deadline = now + share;
        let prepared = prepare(sc.as_ref());
        let mut budget = Budget {
            seed,
            deadline: Some(deadline),
            threads,
            ..Budget::default()
        };
        let (mut summary, mut violations) =
            explore_prepared(sc.as_ref(), &prepared, Strategy::Exhaustive, &budget);
        let mut round = 1u64;
        while Instant::now() < deadline && summary.complete {
            budget.seed = derive(seed, round);
            budget.skip_enumerable = true;
            let (s, v) = explore_prepared(sc.as_ref(), &prepared, Strategy::Random, &budget);
            round += 1;
            summary.rounds += 1;
            summary.crash_points += s.crash_points;
            summary.sampled_points += s.sampled_points;
            summary.states_checked += s.states_checked;
            summary.violation_count += s.violation_count;
            let room = max_violations.saturating_sub(violations.len());
            violations.extend(v.into_iter().take(room));
            if s.states_checked == 0 {
                break;
            }
        }
        report.add_scenario(summary, violations, max_violations);
    }
    report.set_timing(start);
    report
}
