//! `cargo xtask sim` before it is wired into xtask: the same code
//! (xtask/src/cmd_sim.rs), behind a one-command clap parser.
//! `cargo run --release -p chainfold-sim --example xtask_sim -- --seconds 60 --json`

#[path = "../../xtask/src/cmd_sim.rs"]
mod cmd_sim;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: cmd_sim::SimArgs,
}

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cmd_sim::run(Cli::parse().args))
}
