//! `fuzz [TARGET|--all] [--seconds N]`: build the seed corpus, run libFuzzer
//! targets through cargo-fuzz on the stable toolchain, summarise, and turn
//! every crash / timeout / OOM into a minimised input for the regression
//! replay.
//!
//! - cargo-fuzz is installed (`cargo install cargo-fuzz --locked`) when
//!   `cargo fuzz --version` fails.
//! - cargo-fuzz needs nightly flags (`-Zsanitizer`); `RUSTC_BOOTSTRAP=1` is
//!   set on the child command only, never in our own environment.
//! - Limits: `-malloc_limit_mb=256` per allocation and `-timeout=1` per
//!   input; `-rss_limit_mb=1024` for the whole process, which also holds
//!   libFuzzer's in-memory corpus: open_image's (inputs up to 1 MiB) grew
//!   to 63 MB in a 10-minute ASan run and, with ASan's shadow and
//!   quarantine, crossed 256 MB at an input that itself peaks at 5 MB
//!   (2026-12-07), a false "out-of-memory" finding.
//! - `-reload=0` unless `--jobs` asks for several processes.
//! - Findings are minimised with `cargo fuzz tmin` (the raw artifact is kept
//!   when that fails) and copied to `fuzz/regressions-pending/<target>/`: an
//!   unfixed bug must not break `cargo test`; whoever fixes it moves the
//!   file to `fuzz/regressions/<target>/`, which `cargo test` replays.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;
use serde::Serialize;

use crate::outln;

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// The target to run (see `--list`).
    pub target: Option<String>,
    /// Run every target, one after the other.
    #[arg(long)]
    pub all: bool,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only (re)build the seed corpus under fuzz/corpus/.
    #[arg(long)]
    pub corpus_only: bool,
    /// Parallel fuzzing processes per target (libFuzzer -fork).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Sanitizer for cargo-fuzz (address enforces -malloc_limit_mb per
    /// allocation; none runs faster).
    #[arg(long, default_value = "address")]
    pub sanitizer: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// List the targets and exit.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    target: String,
    seconds: u64,
    execs: u64,
    execs_per_sec: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    peak_rss_mb: u64,
    /// crash / timeout / oom artifacts, as copied into regressions-pending.
    findings: Vec<String>,
    /// libFuzzer's own words when a limit fired (timeout, OOM, crash).
    limit_events: Vec<String>,
    exit_ok: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_cargo_fuzz() -> bool {
    let ok = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    eprintln!("fuzz: cargo-fuzz missing, installing it (cargo install cargo-fuzz --locked)");
    cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Largest input libFuzzer may generate for `target`: the structure's size
/// (plus the flag byte) for splice targets, small for structured ones.
fn max_len(target: &str) -> usize {
    match target {
        "open_image" => fuzz_targets::corpus::RAW_SEED_LIMIT + 1,
        "vhd_footer" => 513,
        "vhd_dynamic_header" => 1025,
        "vhd_bat" | "vhdx_bat" | "vhdx_headers" | "vhdx_region_table" | "vhdx_parent_locator" => {
            (64 << 10) + 1
        }
        "vhdx_metadata" => (128 << 10) + 1,
        "vhdx_log" => (256 << 10) + 1,
        "roundtrip" => 8193,
        _ => 4096,
    }
}

fn build_corpus(root: &Path) -> bool {
    let out = root.join("fuzz/corpus");
    let real = root.join("../shared/testdata/real");
    let real = real.is_dir().then_some(real);
    if real.is_none() {
        eprintln!("fuzz: ../shared/testdata/real absent; corpus from chainfold-made images only");
    }
    match fuzz_targets::corpus::build(&out, real.as_deref()) {
        Ok(w) => {
            for (t, n) in w {
                eprintln!("fuzz: corpus {t}: {n} seeds");
            }
            true
        }
        Err(e) => {
            eprintln!("fuzz: building the corpus failed: {e}");
            false
        }
    }
}

fn num_after(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)? + key.len();
    line[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn parse_line(s: &mut Summary, line: &str) {
    if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
        s.execs = v.trim().parse().unwrap_or(s.execs);
    } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
        s.execs_per_sec = v.trim().parse().unwrap_or(s.execs_per_sec);
    } else if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
        s.peak_rss_mb = v.trim().parse().unwrap_or(s.peak_rss_mb);
    }
    if line.starts_with('#') && line.contains("cov: ") {
        if let Some(n) = num_after(line, "#") {
            s.execs = s.execs.max(n);
        }
        s.cov = num_after(line, "cov: ").unwrap_or(s.cov);
        s.ft = num_after(line, "ft: ").unwrap_or(s.ft);
        s.corpus = num_after(line, "corp: ").unwrap_or(s.corpus);
        if let Some(e) = num_after(line, "exec/s: ").or_else(|| num_after(line, "exec/s ")) {
            s.execs_per_sec = e;
        }
    }
    let l = line.to_ascii_lowercase();
    if l.contains("==error: libfuzzer")
        || l.contains("alarm: working on the last unit")
        || l.contains("out-of-memory")
        || l.contains("panicked at")
        || l.contains("deadly signal") && s.limit_events.len() < 20
    {
        s.limit_events.push(line.trim().to_string());
    }
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        ["crash-", "timeout-", "oom-", "leak-"]
                            .iter()
                            .any(|k| n.starts_with(k))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `cargo fuzz <sub> --fuzz-dir fuzz/libfuzzer --sanitizer S`, with the
/// nightly-feature switch set for this child only.
fn fuzz_cmd(root: &Path, args: &FuzzArgs, sub: &str) -> Command {
    let mut c = cargo();
    // ASan's quarantine of freed memory (256 MiB by default) would count
    // against -rss_limit_mb and fire on healthy inputs; keep it small.
    c.current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "ASAN_OPTIONS",
            "quarantine_size_mb=16:malloc_context_size=8:detect_odr_violation=0",
        )
        .args([
            "fuzz",
            sub,
            "--fuzz-dir",
            "fuzz/libfuzzer",
            "--sanitizer",
            &args.sanitizer,
        ]);
    c
}

/// Minimise `art` with cargo fuzz tmin; the minimised file, or `art`.
fn minimise(root: &Path, args: &FuzzArgs, target: &str, art: &Path) -> PathBuf {
    let dir = art.parent().unwrap_or(Path::new("."));
    let before: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let mut c = fuzz_cmd(root, args, "tmin");
    c.args(["-r", "500", target]).arg(art).args([
        "--",
        "-timeout=1",
        "-rss_limit_mb=256",
        "-malloc_limit_mb=256",
    ]);
    let ok = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let newest = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !before.contains(p))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("minimized-from-"))
                    })
                    .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            })
            .ok()
            .flatten();
        if let Some(m) = newest {
            return m;
        }
    }
    art.to_path_buf()
}

fn run_target(root: &Path, args: &FuzzArgs, target: &str) -> Summary {
    let mut s = Summary {
        target: target.to_string(),
        seconds: args.seconds,
        ..Default::default()
    };
    let corpus = root.join("fuzz/corpus").join(target);
    let art_dir = root.join("fuzz/libfuzzer/artifacts").join(target);
    let logs = root.join("fuzz/libfuzzer/logs");
    let _ = std::fs::create_dir_all(&corpus);
    let _ = std::fs::create_dir_all(&art_dir);
    let _ = std::fs::create_dir_all(&logs);
    let known = artifacts(&art_dir);
    let mut c = fuzz_cmd(root, args, "run");
    c.arg(target);
    c.arg(&corpus).arg("--").args([
        format!("-max_total_time={}", args.seconds),
        "-rss_limit_mb=1024".into(),
        "-malloc_limit_mb=256".into(),
        "-timeout=1".into(),
        format!("-max_len={}", max_len(target)),
        format!("-artifact_prefix={}/", art_dir.display()),
        "-print_final_stats=1".into(),
    ]);
    if args.jobs > 1 {
        c.arg(format!("-fork={}", args.jobs));
    } else {
        // One process owns the corpus directory: libFuzzer's default
        // `-reload=1` rereads it every second for units other processes
        // wrote, and its first reload re-runs every seed the initial pass
        // found redundant (a third of a 1,000-input corpus).
        c.arg("-reload=0");
    }
    eprintln!("fuzz: {target}: {c:?}");
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut log = std::fs::File::create(logs.join(format!("{target}.log"))).ok();
    match c.spawn() {
        Ok(mut child) => {
            if let Some(err) = child.stderr.take() {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Some(l) = log.as_mut() {
                        let _ = writeln!(l, "{line}");
                    }
                    parse_line(&mut s, &line);
                }
            }
            s.exit_ok = child.wait().is_ok_and(|st| st.success());
        }
        Err(e) => eprintln!("fuzz: cannot run cargo fuzz: {e}"),
    }
    for art in artifacts(&art_dir)
        .into_iter()
        .filter(|a| !known.contains(a))
    {
        let min = minimise(root, args, target, &art);
        let pending = root.join("fuzz/regressions-pending").join(target);
        let _ = std::fs::create_dir_all(&pending);
        let name = art
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "finding".into());
        let dst = pending.join(&name);
        if std::fs::copy(&min, &dst).is_ok() {
            s.findings.push(dst.display().to_string());
        }
    }
    s
}

pub fn run(args: FuzzArgs) -> u8 {
    if args.list {
        for t in fuzz_targets::TARGETS {
            outln!("{t}");
        }
        return 0;
    }
    let root = root();
    let targets: Vec<String> = match (&args.target, args.all) {
        (Some(t), false) if fuzz_targets::TARGETS.contains(&t.as_str()) => vec![t.clone()],
        (Some(t), false) => {
            eprintln!(
                "fuzz: unknown target {t:?}; known: {:?}",
                fuzz_targets::TARGETS
            );
            return 2;
        }
        (None, true) => fuzz_targets::TARGETS
            .iter()
            .map(|t| t.to_string())
            .collect(),
        _ if args.corpus_only => vec![],
        _ => {
            eprintln!("fuzz: give one TARGET or --all");
            return 2;
        }
    };
    if !build_corpus(&root) {
        return 1;
    }
    if args.corpus_only {
        return 0;
    }
    if !ensure_cargo_fuzz() {
        eprintln!("fuzz: cargo-fuzz is not available");
        return 1;
    }
    let mut out = Vec::new();
    for t in &targets {
        out.push(run_target(&root, &args, t));
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        outln!(
            "{:<22} {:>6} {:>12} {:>8} {:>7} {:>8} {:>6} {:>7}  findings",
            "target",
            "secs",
            "execs",
            "exec/s",
            "cov",
            "ft",
            "corp",
            "rss MB"
        );
        for s in &out {
            outln!(
                "{:<22} {:>6} {:>12} {:>8} {:>7} {:>8} {:>6} {:>7}  {}{}",
                s.target,
                s.seconds,
                s.execs,
                s.execs_per_sec,
                s.cov,
                s.ft,
                s.corpus,
                s.peak_rss_mb,
                s.findings.len(),
                if s.exit_ok { "" } else { " (libFuzzer failed)" }
            );
            for e in &s.limit_events {
                outln!("    {e}");
            }
            for f in &s.findings {
                outln!("    -> {f}");
            }
        }
    }
    let bad = out.iter().any(|s| !s.findings.is_empty() || !s.exit_ok);
    u8::from(bad)
}
