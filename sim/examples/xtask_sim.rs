//! `cargo xtask sim` before it is wired into xtask: the same code
//! (xtask/src/cmd_sim.rs), behind a one-command clap parser.
//! `cargo run --release -p chainfold-sim --example xtask_sim -- --seconds 60 --json`

// xtask's closed-pipe-safe print, which cmd_sim.rs imports from its root.
mod out {
    macro_rules! outln {
        ($($arg:tt)*) => { println!($($arg)*) };
    }
    pub(crate) use outln;
}
pub(crate) use out::outln;

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
