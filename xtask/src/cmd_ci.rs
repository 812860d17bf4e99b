//! `ci`: everything CI runs, in order, failing fast: formatting, lints, the
//! test suite (which replays the fuzz regressions and an exhaustive slice
//! of the crash simulator), the demo merge, and bounded slices of the
//! simulator and the fuzzers.

use std::process::Command;

use clap::Args;

#[derive(Args)]
pub struct CiArgs {
    /// Seconds for the random crash-simulation slice.
    #[arg(long, default_value_t = 20)]
    pub sim_seconds: u64,
    /// Seconds per fuzz target (0 skips fuzzing).
    #[arg(long, default_value_t = 10)]
    pub fuzz_seconds: u64,
}

fn step(name: &str, cmd: &mut Command) -> bool {
    eprintln!("==> {name}: {cmd:?}");
    let start = std::time::Instant::now();
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    eprintln!(
        "<== {name}: {} in {:.1}s",
        if ok { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    ok
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(args: CiArgs) -> u8 {
    let exe = std::env::current_exe().ok();
    let mut steps: Vec<(&str, Command)> = Vec::new();
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    steps.push(("fmt", c));
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("clippy", c));
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    steps.push(("test", c));
    if let Some(exe) = &exe {
        let mut c = Command::new(exe);
        c.args(["demo"]);
        steps.push(("demo", c));
        let mut c = Command::new(exe);
        c.args(["sim", "--seconds", &args.sim_seconds.to_string()]);
        steps.push(("sim", c));
        if args.fuzz_seconds > 0 {
            let mut c = Command::new(exe);
            c.args(["fuzz", "--all", "--seconds", &args.fuzz_seconds.to_string()]);
            steps.push(("fuzz", c));
        }
    }
    for (name, mut cmd) in steps {
        if !step(name, &mut cmd) {
            eprintln!("ci: step {name} failed");
            return 1;
        }
    }
    eprintln!("ci: all steps passed");
    0
}
