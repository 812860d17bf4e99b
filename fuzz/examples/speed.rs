//! Time `fuzz_targets::run` per input, without libFuzzer:
//!
//!     cargo run --release -p chainfold-fuzz --example speed -- TARGET DIR [ROUNDS]
//!
//! Runs every file of DIR (e.g. `fuzz/corpus/open_image`) ROUNDS times
//! (default 3) and prints the executions per second and the slowest inputs:
//! where a target's time per input goes, before reaching for `perf`.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: speed TARGET DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: u32 = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read DIR")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read input"),
            )
        })
        .collect();
    inputs.sort();
    // Build templates and other per-process state outside the timing.
    if let Some((_, first)) = inputs.first() {
        fuzz_targets::run(target, first);
    }
    let mut per: Vec<(Duration, &str)> = inputs
        .iter()
        .map(|(n, _)| (Duration::ZERO, n.as_str()))
        .collect();
    let start = Instant::now();
    for _ in 0..rounds {
        for (i, (_, data)) in inputs.iter().enumerate() {
            let t = Instant::now();
            fuzz_targets::run(target, data);
            per[i].0 += t.elapsed();
        }
    }
    let total = start.elapsed();
    let execs = inputs.len() as u64 * u64::from(rounds);
    println!(
        "{target}: {execs} execs in {total:.2?}: {:.0} exec/s",
        execs as f64 / total.as_secs_f64().max(1e-9)
    );
    per.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (d, n) in per.iter().take(10) {
        println!("  {:>10.2?} per run  {n}", *d / rounds);
    }
}
