//! Throughput of the explorer: `cargo run --release -p chainfold-sim
//! --example perf -- [seconds] [threads] [small|large|all]`.

use std::sync::Arc;

use formats::{Access, Namespace};
use sim::{run_for_with, toy, CrashContext, Marks, Scenario};

/// The large toy with a checker that only opens the file and reads one
/// page: measures what the simulator itself costs per state.
struct SimOnly(Arc<dyn Scenario>);

impl Scenario for SimOnly {
    fn name(&self) -> String {
        format!("{}-sim-only", self.0.name())
    }
    fn setup(&self, ns: &Arc<dyn Namespace>) -> Result<(), String> {
        self.0.setup(ns)
    }
    fn run(&self, ns: &Arc<dyn Namespace>, marks: &Marks) -> Result<(), String> {
        self.0.run(ns, marks)
    }
    fn check(&self, ns: &Arc<dyn Namespace>, _ctx: &CrashContext) -> Result<(), String> {
        let f = ns
            .open(std::path::Path::new("/d/data"), Access::Read)
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 4096];
        f.read_at(&mut b, 1 << 20).map_err(|e| e.to_string())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let which = args.get(3).map(String::as_str).unwrap_or("all");
    let scenarios: Vec<Arc<dyn Scenario>> = match which {
        "small" => toy::correct(),
        "large" => vec![toy::large()],
        "sim-only" => vec![Arc::new(SimOnly(toy::large()))],
        _ => {
            let mut v = toy::correct();
            v.push(toy::large());
            v
        }
    };
    let r = run_for_with(seconds, 1, &scenarios, threads);
    for s in &r.scenarios {
        eprintln!(
            "{}: {} ops, {} crash points, {} states, {} rounds, {} violations",
            s.name, s.ops, s.crash_points_total, s.states_checked, s.rounds, s.violation_count
        );
    }
    eprintln!(
        "total {} states in {} ms = {:.0} states/s ({} threads)",
        r.states_checked, r.elapsed_ms, r.states_per_second, threads
    );
    assert_eq!(r.violation_count, 0, "{}", r.to_json());
}
