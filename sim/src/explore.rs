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
    /// Set when this state is a second crash: the recovery of the state
    /// above (`crash_point`, `state`) was itself interrupted here. The
    /// checker recovers and judges exactly as after a first crash.
    pub recovery: Option<RecoveryCrash>,
}

/// Where a recovery was interrupted (a double crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryCrash {
    /// Ops `0..crash_point` of the recovery had been issued.
    pub crash_point: usize,
    /// State index within that crash point of the recovery.
    pub state: u64,
    /// Ops the complete (recorded) recovery issued.
    pub total_ops: usize,
}

impl<'a> CrashContext<'a> {
    /// The context of state `state` at crash point `crash_point` of
    /// `model`'s run, a first crash (a second one sets `recovery` on it).
    fn first(
        scenario: &'a str,
        strategy: Strategy,
        seed: u64,
        model: &'a CrashModel,
        crash_point: usize,
        state: u64,
        marks: Vec<String>,
    ) -> Self {
        CrashContext {
            scenario,
            strategy,
            seed,
            crash_point,
            total_ops: model.trace().len(),
            state,
            marks,
            model,
            recovery: None,
        }
    }
    /// A value to mix into the checker's entropy seed: 0 for a first
    /// crash (so the recorded recovery is the one a single-crash check
    /// runs), distinct per second crash, so a second recovery draws fresh
    /// GUIDs as a new process would.
    pub fn entropy_salt(&self) -> u64 {
        self.recovery.map_or(0, |r| {
            derive(derive(SALT, r.crash_point as u64), r.state) | 1
        })
    }
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

/// Label mixed into second-crash entropy seeds.
const SALT: u64 = 0x2c4a_5a17;
/// Label of the double-crash rounds' seeds (`derive(seed, DOUBLE ^ r)`).
const DOUBLE: u64 = 0xd0b1_e000;

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
    /// Double crashes: a recovery whose crash points have at most this
    /// many states in all has every one of them checked.
    pub double_exhaustive_limit: u64,
    /// Double crashes: a recovery with at most this many crash points is
    /// crashed at every one; a longer one at a seeded sample of this many
    /// (spread over it), plus every point next to a namespace op.
    pub double_points: usize,
    /// Double crashes: states per crash point of a recovery beyond the
    /// exhaustive limit (all kept, all lost and seeded draws, rotating).
    pub double_samples_per_point: u64,
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
            double_exhaustive_limit: 64,
            double_points: 64,
            double_samples_per_point: 2,
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
    /// A double crash: where the recovery of (`crash_point`, `state`) was
    /// interrupted (`state` is then the first state's sample number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_crash_point: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_state: Option<u64>,
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
    /// First-crash states whose recovery was recorded and crashed again.
    #[serde(default)]
    pub double_crash_recoveries: u64,
    /// ... of which every state of every recovery crash point was checked.
    #[serde(default)]
    pub double_crash_exhaustive: u64,
    /// ... of which every recovery crash point got sampled states.
    #[serde(default)]
    pub double_crash_every_point: u64,
    /// ... of which a seeded sample of the recovery's crash points was
    /// crashed (`Budget::double_points` plus the namespace-op neighbours).
    #[serde(default)]
    pub double_crash_sampled_points: u64,
    /// Recovery crash points crashed (summed over recoveries).
    #[serde(default)]
    pub double_crash_points: u64,
    /// Second-crash states checked.
    #[serde(default)]
    pub double_crash_states: u64,
    /// Violations found by the double-crash phase (included in
    /// `violation_count`).
    #[serde(default)]
    pub double_crash_violations: u64,
    /// Double-crash rounds run.
    #[serde(default)]
    pub double_crash_rounds: u64,
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
    /// Every judged state, single and double crash, per second.
    pub states_per_second: f64,
    /// Second-crash states checked (all scenarios).
    #[serde(default)]
    pub double_crash_states: u64,
    #[serde(default)]
    pub double_crash_recoveries: u64,
    #[serde(default)]
    pub double_crash_violations: u64,
    /// States judged per crash point of a recovery beyond the exhaustive
    /// limit, and crash points sampled from a long recovery (the sample
    /// sizes of the double-crash phase).
    #[serde(default)]
    pub double_crash_samples_per_point: u64,
    #[serde(default)]
    pub double_crash_sampled_points_per_recovery: u64,
    /// `states_per_second` x 60.
    #[serde(default)]
    pub states_per_minute: f64,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report without its timing fields (for determinism comparisons).
    pub fn without_timing(mut self) -> Report {
        self.elapsed_ms = 0;
        self.states_per_second = 0.0;
        self.states_per_minute = 0.0;
        self
    }

    fn add_scenario(&mut self, s: ScenarioSummary, violations: Vec<Violation>, cap: usize) {
        self.crash_points += s.crash_points;
        self.states_checked += s.states_checked;
        self.double_crash_states += s.double_crash_states;
        self.double_crash_recoveries += s.double_crash_recoveries;
        self.double_crash_violations += s.double_crash_violations;
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
        let judged = self.states_checked + self.double_crash_states;
        self.states_per_second = if el.as_secs_f64() > 0.0 {
            judged as f64 / el.as_secs_f64()
        } else {
            0.0
        };
        self.states_per_minute = self.states_per_second * 60.0;
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

/// The checker's verdict on `post`: a panic in it is a failure, not the
/// end of the exploration.
fn check_caught(
    scenario: &dyn Scenario,
    post: &Arc<dyn Namespace>,
    ctx: &CrashContext,
) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| scenario.check(post, ctx)))
        .unwrap_or_else(|p| Err(panic_message(&p)))
}

/// Run `worker` on `threads` threads that share its work; with one, on
/// this thread.
fn run_workers(threads: usize, worker: impl Fn() + Sync) {
    if threads <= 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(&worker);
            }
        });
    }
}

/// The recorded run a replay re-checks; the setup's failure when there is
/// none.
fn replay_model(prepared: &Prepared) -> Result<&CrashModel, String> {
    prepared
        .model
        .as_ref()
        .ok_or_else(|| prepared.error.clone().unwrap_or_default())
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
        recovery_crash_point: None,
        recovery_state: None,
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
            let ctx =
                CrashContext::first(&name, strategy, budget.seed, model, k, state, marks.clone());
            let post: Arc<dyn Namespace> = model.state(&space, &choice);
            let verdict = check_caught(scenario, &post, &ctx);
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
    run_workers(budget.threads, worker);

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
    let model = replay_model(&prepared)?;
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
    let marks = model.marks_before(crash_point);
    let ctx = CrashContext::first(
        &name,
        strategy,
        budget.seed,
        model,
        crash_point,
        state,
        marks,
    );
    let post: Arc<dyn Namespace> = model.state(&space, &choice);
    scenario
        .check(&post, &ctx)
        .map_err(|e| format!("{e} ({})", model.describe(&space, &choice)))
}

// ---------------------------------------------------------------------
// Double crashes: the recovery of a post-crash state, itself crashed.

/// How a recorded recovery was crashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coverage {
    /// Every state of every crash point of the recovery.
    Exhaustive,
    /// Every crash point, `double_samples_per_point` states each.
    EveryPoint,
    /// A seeded sample of the crash points (plus every namespace op's
    /// neighbours), `double_samples_per_point` states each.
    SampledPoints,
}

/// What a double-crash pass did.
#[derive(Debug, Default, Clone)]
struct DoubleTally {
    /// First states taken (recoveries run under recording).
    first_states: u64,
    recoveries: u64,
    exhaustive: u64,
    every_point: u64,
    sampled_points: u64,
    points: u64,
    states: u64,
    violations: u64,
    cut: bool,
}

impl DoubleTally {
    fn add(&mut self, o: &DoubleTally) {
        self.first_states += o.first_states;
        self.recoveries += o.recoveries;
        self.exhaustive += o.exhaustive;
        self.every_point += o.every_point;
        self.sampled_points += o.sampled_points;
        self.points += o.points;
        self.states += o.states;
        self.violations += o.violations;
        self.cut |= o.cut;
    }

    fn into_summary(self, s: &mut ScenarioSummary) {
        s.double_crash_recoveries += self.recoveries;
        s.double_crash_exhaustive += self.exhaustive;
        s.double_crash_every_point += self.every_point;
        s.double_crash_sampled_points += self.sampled_points;
        s.double_crash_points += self.points;
        s.double_crash_states += self.states;
        s.double_crash_violations += self.violations;
        s.violation_count += self.violations;
    }
}

/// The first-crash states a double-crash round takes at a crash point, as
/// sample numbers of `choose` (never enumeration indices): round 0 takes
/// "all kept", "all lost" and one seeded draw, later rounds one seeded draw
/// with their own seed, so that seed given to round 0 draws it again.
fn first_states(space: &PointSpace, round: u64) -> Vec<u64> {
    let total = space.total.unwrap_or(u64::MAX);
    let wanted: &[u64] = if round == 0 { &[0, 1, 2] } else { &[2] };
    wanted.iter().copied().filter(|&n| n < total).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `0..n` in a spread order (a stride coprime with `n`), so a pass cut
/// short by its deadline has still visited the whole run.
fn spread(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut stride = (n * 5 / 8).max(1);
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    (0..n).map(|i| i * stride % n).collect()
}

/// The seed of the second-crash draws of one recovery.
fn recovery_seed(round_seed: u64, crash_point: usize, first_state: u64) -> u64 {
    derive(
        derive(derive(round_seed, DOUBLE), crash_point as u64),
        first_state,
    )
}

/// Which second-crash states of a recorded recovery are checked: per
/// recovery crash point its space, whether the indices enumerate it, and
/// the indices.
fn second_plan(
    m2: &CrashModel,
    budget: &Budget,
    seed2: u64,
) -> (Vec<(PointSpace, bool, Vec<u64>)>, Coverage) {
    let n2 = m2.crash_points();
    let mut spaces: Vec<Option<PointSpace>> = (0..n2).map(|k| Some(m2.space(k))).collect();
    let sum = spaces.iter().try_fold(0u64, |a, s| {
        s.as_ref()
            .and_then(|s| s.total)
            .and_then(|t| a.checked_add(t))
    });
    if sum.is_some_and(|t| t <= budget.double_exhaustive_limit) {
        let plan = spaces
            .into_iter()
            .flatten()
            .map(|s| {
                let t = s.total.unwrap_or(1);
                (s, true, (0..t).collect())
            })
            .collect();
        return (plan, Coverage::Exhaustive);
    }
    let dp = budget.double_points.max(1);
    let (points, coverage) = if n2 <= dp {
        ((0..n2).collect::<Vec<_>>(), Coverage::EveryPoint)
    } else {
        // Stratified: one seeded point per slice of the recovery, and the
        // points just before and after each namespace op (record writes,
        // removes, renames, directory syncs).
        let mut rng = SplitMix64::new(derive(seed2, 0x5a3b));
        let mut v: Vec<usize> = (0..dp)
            .map(|j| {
                let lo = j * n2 / dp;
                let hi = ((j + 1) * n2 / dp).max(lo + 1);
                lo + rng.below((hi - lo) as u64) as usize
            })
            .collect();
        for (j, op) in m2.trace().iter().enumerate() {
            if !matches!(op, Op::Write { .. } | Op::SetLen { .. } | Op::Flush { .. }) {
                v.push(j);
                v.push(j + 1);
            }
        }
        v.sort_unstable();
        v.dedup();
        v.retain(|&k| k < n2);
        (v, Coverage::SampledPoints)
    };
    let per = budget.double_samples_per_point.max(1);
    let plan = points
        .into_iter()
        .filter_map(|k| {
            let s = spaces.get_mut(k)?.take()?;
            Some(match s.total {
                Some(t) if t <= per => (s, true, (0..t).collect()),
                _ => {
                    // Rotate "all kept", "all lost" and a draw over the
                    // points; more samples are further draws.
                    let idx = (0..per)
                        .map(|j| if j < 3 { (k as u64 + j) % 3 } else { j })
                        .collect();
                    (s, false, idx)
                }
            })
        })
        .collect();
    (plan, coverage)
}

/// Run the checker on a first-crash state with the namespace recording:
/// the verdict, and the model of what its recovery wrote (None when it
/// wrote nothing).
fn record_recovery(
    scenario: &dyn Scenario,
    post: &Arc<CrashNamespace>,
    ctx: &CrashContext,
) -> (Result<(), String>, Option<CrashModel>) {
    let base = post.begin_recording();
    let dns: Arc<dyn Namespace> = post.clone();
    let verdict = check_caught(scenario, &dns, ctx);
    let (trace, marks) = post.finish_recording();
    if trace.is_empty() {
        return (verdict, None);
    }
    let m2 = CrashModel::new(base, post.snapshot(), trace, marks, scenario.sector_size());
    (verdict, Some(m2))
}

/// The command that re-runs the double-crash pass that found a violation:
/// round 0 at one first crash point, with the round's seed.
pub fn double_replay_command(
    scenario: &str,
    seed: u64,
    cli_strategy: &str,
    crash_point: usize,
) -> String {
    format!(
        "{} --double-crash-at {crash_point}",
        replay_command(scenario, seed, cli_strategy)
    )
}

/// One double-crash pass: `round` (0: all kept, all lost and one draw per
/// first crash point; later: one draw) with `budget.seed` as the round's
/// seed, over every first crash point or only `only_point`.
fn explore_double(
    scenario: &dyn Scenario,
    prepared: &Prepared,
    round: u64,
    only_point: Option<usize>,
    budget: &Budget,
) -> (DoubleTally, Vec<Violation>) {
    let mut tally = DoubleTally::default();
    let Some(model) = prepared.model.as_ref() else {
        return (tally, Vec::new());
    };
    let name = prepared.name.clone();
    let cli_strategy = scenario.cli_strategy();
    let seed = budget.seed;
    let n1 = model.crash_points();
    let spaces: Vec<PointSpace> = (0..n1).map(|k| model.space(k)).collect();
    // Every (first crash point, first state) of the round, in a spread
    // order: a round cut short (deadline, `max_states`) still covers the
    // whole run and every kind of first state.
    let all: Vec<(usize, u64)> = (0..n1)
        .filter(|k| only_point.is_none_or(|o| o == *k))
        .flat_map(|k| {
            first_states(&spaces[k], round)
                .into_iter()
                .map(move |n| (k, n))
        })
        .collect();
    let mut items: Vec<(usize, u64)> = spread(all.len()).into_iter().map(|i| all[i]).collect();
    if let Some(m) = budget.max_states {
        items.truncate(usize::try_from(m).unwrap_or(usize::MAX));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = Mutex::new(DoubleTally::default());
    let found = Mutex::new(Vec::<(usize, usize, u64, Violation)>::new());
    let past_deadline = || budget.deadline.is_some_and(|d| Instant::now() >= d);
    let cap = budget.max_violations.saturating_mul(4).max(64);

    let worker = || {
        let mut t = DoubleTally::default();
        let mut mine: Vec<(usize, usize, u64, Violation)> = Vec::new();
        let push = |mine: &mut Vec<_>, item: usize, k2: usize, s2: u64, v: Violation| {
            if mine.len() < cap {
                mine.push((item, k2, s2, v));
            }
        };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(k1, n)) = items.get(i) else { break };
            if past_deadline() {
                t.cut = true;
                break;
            }
            t.first_states += 1;
            let space = &spaces[k1];
            let choice = choose(space, false, seed, n);
            let marks = model.marks_before(k1);
            let ctx = |recovery| CrashContext {
                recovery,
                ..CrashContext::first(&name, Strategy::Random, seed, model, k1, n, marks.clone())
            };
            let first_desc = || model.describe(space, &choice);
            let violation =
                |description: String, sd: String, k2: Option<usize>, s2: Option<u64>| Violation {
                    scenario: name.clone(),
                    strategy: Strategy::Random,
                    seed,
                    crash_point: k1,
                    state: n,
                    description,
                    state_description: sd,
                    replay_command: double_replay_command(&name, seed, cli_strategy, k1),
                    recovery_crash_point: k2,
                    recovery_state: s2,
                };
            let post = model.state(space, &choice);
            let (verdict, m2) = record_recovery(scenario, &post, &ctx(None));
            drop(post);
            if let Err(e) = verdict {
                t.violations += 1;
                let v = violation(
                    format!("the recovery of the first crash failed: {e}"),
                    first_desc(),
                    None,
                    None,
                );
                push(&mut mine, i, 0, 0, v);
                continue;
            }
            // A recovery that wrote nothing leaves the first state: a
            // second crash in it is the first crash again.
            let Some(m2) = m2 else { continue };
            t.recoveries += 1;
            let seed2 = recovery_seed(seed, k1, n);
            let (plan, coverage) = second_plan(&m2, budget, seed2);
            match coverage {
                Coverage::Exhaustive => t.exhaustive += 1,
                Coverage::EveryPoint => t.every_point += 1,
                Coverage::SampledPoints => t.sampled_points += 1,
            }
            let n2 = m2.trace().len();
            'points: for (space2, enumerated, idxs) in &plan {
                t.points += 1;
                let k2 = space2.crash_point;
                for &s2 in idxs {
                    if past_deadline() {
                        t.cut = true;
                        break 'points;
                    }
                    let c2 = choose(space2, *enumerated, seed2, s2);
                    let post2: Arc<dyn Namespace> = m2.state(space2, &c2);
                    let cx = ctx(Some(RecoveryCrash {
                        crash_point: k2,
                        state: s2,
                        total_ops: n2,
                    }));
                    let verdict = check_caught(scenario, &post2, &cx);
                    t.states += 1;
                    if let Err(e) = verdict {
                        t.violations += 1;
                        let v = violation(
                            format!("after a crash at op {k2}/{n2} of the recovery: {e}"),
                            format!(
                                "first crash: {}; recovery crash: {}",
                                first_desc(),
                                m2.describe(space2, &c2)
                            ),
                            Some(k2),
                            Some(s2),
                        );
                        push(&mut mine, i, k2, s2, v);
                    }
                }
            }
        }
        total.lock().unwrap_or_else(|e| e.into_inner()).add(&t);
        found.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
    };
    run_workers(budget.threads, worker);
    tally = total.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut f = found.into_inner().unwrap_or_else(|e| e.into_inner());
    f.sort_by_key(|(i, k2, s2, _)| (*i, *k2, *s2));
    let violations = f
        .into_iter()
        .map(|(_, _, _, v)| v)
        .take(budget.max_violations)
        .collect();
    (tally, violations)
}

/// Double crashes on one scenario: `rounds` double-crash passes (round 0
/// with `budget.seed`, round r with `derive(seed, DOUBLE ^ r)`), no single
/// crash pass. `budget.max_states` caps the first states per round (taken
/// spread over the run, all kept first).
pub fn explore_double_crashes(scenario: &dyn Scenario, rounds: u64, budget: &Budget) -> Report {
    let start = Instant::now();
    let prepared = prepare(scenario);
    let (mut summary, mut violations) = double_start(scenario, &prepared, budget.seed);
    for round in 0..rounds {
        let b = Budget {
            seed: round_seed(budget.seed, round),
            ..budget.clone()
        };
        let (t, v) = explore_double(scenario, &prepared, round, None, &b);
        summary.double_crash_rounds += 1;
        summary.complete &= !t.cut;
        let room = budget.max_violations.saturating_sub(violations.len());
        violations.extend(v.into_iter().take(room));
        t.into_summary(&mut summary);
    }
    double_report(summary, violations, budget, start)
}

/// The double-crash pass a violation's replay command names: round 0 at
/// first crash point `crash_point` with `seed`.
pub fn run_double_at(
    scenario: &dyn Scenario,
    seed: u64,
    crash_point: usize,
    threads: usize,
) -> Report {
    let start = Instant::now();
    let budget = Budget {
        seed,
        threads,
        ..Budget::default()
    };
    let prepared = prepare(scenario);
    let (mut summary, mut violations) = double_start(scenario, &prepared, seed);
    let (t, v) = explore_double(scenario, &prepared, 0, Some(crash_point), &budget);
    summary.double_crash_rounds = 1;
    violations.extend(v);
    t.into_summary(&mut summary);
    double_report(summary, violations, &budget, start)
}

/// A double-crash report's summary and violations before its passes: the
/// scenario's, with its setup failure (if any) as the first violation.
fn double_start(
    scenario: &dyn Scenario,
    prepared: &Prepared,
    seed: u64,
) -> (ScenarioSummary, Vec<Violation>) {
    let mut summary = base_summary(prepared);
    let mut violations = Vec::new();
    if let Some(e) = &prepared.error {
        summary.violation_count += 1;
        violations.push(setup_violation(scenario, prepared, seed, e));
    }
    (summary, violations)
}

/// The report of one scenario's double-crash passes under `budget`.
fn double_report(
    summary: ScenarioSummary,
    violations: Vec<Violation>,
    budget: &Budget,
    start: Instant,
) -> Report {
    let mut report = Report::default();
    report.add_scenario(summary, violations, budget.max_violations);
    report.double_crash_samples_per_point = budget.double_samples_per_point;
    report.double_crash_sampled_points_per_recovery = budget.double_points as u64;
    report.set_timing(start);
    report
}

fn round_seed(seed: u64, round: u64) -> u64 {
    if round == 0 {
        seed
    } else {
        derive(seed, DOUBLE ^ round)
    }
}

fn base_summary(prepared: &Prepared) -> ScenarioSummary {
    ScenarioSummary {
        name: prepared.name.clone(),
        ops: prepared.model.as_ref().map_or(0, |m| m.trace().len()),
        crash_points_total: prepared
            .model
            .as_ref()
            .map_or(0, |m| m.crash_points() as u64),
        complete: true,
        ..Default::default()
    }
}

fn setup_violation(scenario: &dyn Scenario, prepared: &Prepared, seed: u64, e: &str) -> Violation {
    Violation {
        scenario: prepared.name.clone(),
        strategy: Strategy::Random,
        seed,
        crash_point: prepared.model.as_ref().map_or(0, |m| m.trace().len()),
        state: 0,
        description: e.to_string(),
        state_description: String::from("no crash"),
        replay_command: replay_command(&prepared.name, seed, scenario.cli_strategy()),
        recovery_crash_point: None,
        recovery_state: None,
    }
}

/// Re-check one double-crash state, as a violation names it (`seed` is the
/// violation's seed; `budget` supplies the double-crash limits, defaults
/// unless the run that found it changed them).
pub fn replay_double(
    scenario: &dyn Scenario,
    budget: &Budget,
    crash_point: usize,
    state: u64,
    recovery_crash_point: usize,
    recovery_state: u64,
) -> Result<(), String> {
    let prepared = prepare(scenario);
    let model = replay_model(&prepared)?;
    if crash_point >= model.crash_points() {
        return Err(format!("crash point {crash_point} out of range"));
    }
    let seed = budget.seed;
    let space = model.space(crash_point);
    let choice = choose(&space, false, seed, state);
    let name = scenario.name();
    let marks = model.marks_before(crash_point);
    let ctx = |recovery| CrashContext {
        recovery,
        ..CrashContext::first(
            &name,
            Strategy::Random,
            seed,
            model,
            crash_point,
            state,
            marks.clone(),
        )
    };
    let post = model.state(&space, &choice);
    let (verdict, m2) = record_recovery(scenario, &post, &ctx(None));
    verdict.map_err(|e| format!("the recovery of the first crash failed: {e}"))?;
    let m2 = m2.ok_or("the recovery wrote nothing")?;
    let (plan, _) = second_plan(&m2, budget, recovery_seed(seed, crash_point, state));
    let (space2, enumerated, _) = plan
        .iter()
        .find(|(s, _, _)| s.crash_point == recovery_crash_point)
        .ok_or_else(|| format!("recovery crash point {recovery_crash_point} is not in the plan"))?;
    let c2 = choose(
        space2,
        *enumerated,
        recovery_seed(seed, crash_point, state),
        recovery_state,
    );
    let post2: Arc<dyn Namespace> = m2.state(space2, &c2);
    let cx = ctx(Some(RecoveryCrash {
        crash_point: recovery_crash_point,
        state: recovery_state,
        total_ops: m2.trace().len(),
    }));
    scenario
        .check(&post2, &cx)
        .map_err(|e| format!("{e} ({})", m2.describe(space2, &c2)))
}

/// How `run_for_opts` spends its time.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub threads: usize,
    /// Crash the recoveries too (a double-crash phase per scenario).
    pub double_crash: bool,
    /// The part of each scenario's share the double-crash phase gets (the
    /// single-crash phase's unused time passes on to it).
    pub double_share: f64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(2),
            double_crash: true,
            double_share: 0.5,
        }
    }
}

/// The driver for `cargo xtask sim`: spend about `seconds` over the
/// scenarios (an equal share each, unused time passes on). Each scenario is
/// run once, explored with `Strategy::Exhaustive` and `seed`, then, while
/// time remains, with `Strategy::Random` rounds (seeds derived from `seed`
/// and the round number, printed in any violation) over the crash points
/// too large to enumerate. Then (its share's second half) double crashes:
/// rounds of first states whose recoveries are recorded and crashed again.
pub fn run_for(seconds: f64, seed: u64, scenarios: &[Arc<dyn Scenario>]) -> Report {
    run_for_opts(seconds, seed, scenarios, &RunOptions::default())
}

pub fn run_for_with(
    seconds: f64,
    seed: u64,
    scenarios: &[Arc<dyn Scenario>],
    threads: usize,
) -> Report {
    run_for_opts(
        seconds,
        seed,
        scenarios,
        &RunOptions {
            threads,
            ..RunOptions::default()
        },
    )
}

pub fn run_for_opts(
    seconds: f64,
    seed: u64,
    scenarios: &[Arc<dyn Scenario>],
    opts: &RunOptions,
) -> Report {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds.max(0.0));
    let mut report = Report::default();
    let max_violations = Budget::default().max_violations;
    let threads = opts.threads.max(1);
    for (i, sc) in scenarios.iter().enumerate() {
        let now = Instant::now();
        let left = end.saturating_duration_since(now);
        let share = left / (scenarios.len() - i) as u32;
        let deadline = now + share;
        let single_deadline = if opts.double_crash {
            now + share.mul_f64((1.0 - opts.double_share).clamp(0.0, 1.0))
        } else {
            deadline
        };
        let prepared = prepare(sc.as_ref());
        let mut budget = Budget {
            seed,
            deadline: Some(single_deadline),
            threads,
            ..Budget::default()
        };
        let (mut summary, mut violations) =
            explore_prepared(sc.as_ref(), &prepared, Strategy::Exhaustive, &budget);
        let mut round = 1u64;
        while Instant::now() < single_deadline && summary.complete {
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
        if opts.double_crash && prepared.model.is_some() {
            let mut round = 0u64;
            while Instant::now() < deadline {
                let b = Budget {
                    seed: round_seed(seed, round),
                    deadline: Some(deadline),
                    threads,
                    ..Budget::default()
                };
                let (t, v) = explore_double(sc.as_ref(), &prepared, round, None, &b);
                summary.double_crash_rounds += 1;
                let room = max_violations.saturating_sub(violations.len());
                violations.extend(v.into_iter().take(room));
                let (done, cut) = (t.first_states, t.cut);
                t.into_summary(&mut summary);
                round += 1;
                if done == 0 || cut {
                    break;
                }
            }
        }
        report.add_scenario(summary, violations, max_violations);
    }
    let d = Budget::default();
    report.double_crash_samples_per_point = d.double_samples_per_point;
    report.double_crash_sampled_points_per_recovery = d.double_points as u64;
    report.set_timing(start);
    report
}
