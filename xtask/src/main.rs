//! `cargo xtask`: chainfold's command line and the project's automation
//! (tests, simulation, fuzzing, benchmarks) in one place, instead of shell
//! scripts.

mod cli_util;
mod cmd_bench;
mod cmd_check;
mod cmd_ci;
mod cmd_compact;
mod cmd_convert;
mod cmd_create;
mod cmd_demo;
mod cmd_fuzz;
mod cmd_info;
mod cmd_map;
mod cmd_merge;
mod cmd_relink;
mod cmd_scan;
mod cmd_sim;
mod cmd_write;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "chainfold: merge, validate and inspect VHD/VHDX images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options shared by every command that opens a chain.
#[derive(Args, Debug, Clone, Default)]
pub struct ChainArgs {
    /// Parent of the image (repeatable, nearest first); bypasses the locators.
    #[arg(long = "parent", value_name = "PATH")]
    pub parents: Vec<PathBuf>,
    /// Also look for parents in this directory (repeatable).
    #[arg(long = "search-dir", value_name = "DIR")]
    pub search_dirs: Vec<PathBuf>,
    /// Follow symbolic links when opening parents.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Read structures whose checksum is wrong (reported, not refused).
    #[arg(long)]
    pub ignore_checksums: bool,
    /// Accept a parent whose linkage (DataWriteGuid / Unique Id) does not match.
    #[arg(long)]
    pub ignore_linkage: bool,
}

/// An image, `--json`, and how to open its chain: what `info` and
/// `check` take.
#[derive(Args)]
pub struct ImageArgs {
    pub image: PathBuf,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Describe an image and its chain.
    Info(cmd_info::InfoArgs),
    /// Show which layer of the chain provides each virtual range (--json, --svg FILE).
    Map(cmd_map::MapArgs),
    /// Validate an image and its chain (exit 0 clean, 1 errors, 2 unreadable).
    Check(cmd_check::CheckArgs),
    /// Write the virtual content of a chain to a raw file, or flatten it into a new .vhd/.vhdx.
    Convert(cmd_convert::ConvertArgs),
    /// Create a fixed, dynamic or differencing image.
    Create(cmd_create::CreateArgs),
    /// Write bytes at a virtual offset through an image.
    Write(cmd_write::WriteArgs),
    /// Give back unreferenced space: move tail blocks into gaps, cut the file, punch holes (Optimize-VHD).
    Compact(cmd_compact::CompactArgs),
    /// Find every VHD/VHDX under a folder and the chains they form: orphans, stale locators, siblings.
    Scan(cmd_scan::ScanArgs),
    /// Merge a differencing image into its parent or an ancestor (MergeVirtualHardDisk).
    Merge(cmd_merge::MergeArgs),
    /// Rewrite a differencing image's parent link (Set-VHD -ParentPath); refuses a parent that does not fit.
    SetParent(cmd_relink::SetParentArgs),
    /// Move a differencing image onto another parent, keeping its content (qemu-img rebase).
    Rebase(cmd_relink::RebaseArgs),
    /// Build a three-level VHDX chain under target/demo, merge it and verify the result.
    Demo(cmd_demo::DemoArgs),
    /// Run the crash simulator over the merge scenarios.
    Sim(cmd_sim::SimArgs),
    /// Run the libFuzzer targets (cargo-fuzz, installed when missing).
    Fuzz(cmd_fuzz::FuzzArgs),
    /// Merge throughput, memory and scaling against cp and qemu-img.
    Bench(cmd_bench::BenchArgs),
    /// Run a command and print its wall time and peak RSS (used by bench).
    #[command(hide = true)]
    Measure(cmd_bench::MeasureArgs),
    /// Run everything CI runs (fmt, clippy, tests, demo, sim and fuzz slices).
    Ci(cmd_ci::CiArgs),
}

fn main() -> ExitCode {
    cli_util::quiet_broken_pipe();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Info(a) => cmd_info::run(a),
        Cmd::Map(a) => cmd_map::run(a),
        Cmd::Check(a) => cmd_check::run(a),
        Cmd::Convert(a) => cmd_convert::run(a),
        Cmd::Create(a) => cmd_create::run(a),
        Cmd::Write(a) => cmd_write::run(a),
        Cmd::Merge(a) => cmd_merge::run(a),
        Cmd::Compact(a) => cmd_compact::run(a),
        Cmd::Scan(a) => cmd_scan::run(a),
        Cmd::SetParent(a) => cmd_relink::run_set_parent(a),
        Cmd::Rebase(a) => cmd_relink::run_rebase(a),
        Cmd::Demo(a) => cmd_demo::run(a),
        Cmd::Ci(a) => cmd_ci::run(a),
        Cmd::Bench(a) => cmd_bench::run(a),
        Cmd::Sim(a) => cmd_sim::run(a),
        Cmd::Fuzz(a) => cmd_fuzz::run(a),
        Cmd::Measure(a) => cmd_bench::measure(a),
    };
    ExitCode::from(code)
}
