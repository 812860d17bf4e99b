//! Replays every input under `fuzz/regressions/<target>/` through the same
//! `fuzz_targets::run` that libFuzzer calls, so a crash, hang or OOM found
//! by fuzzing stays fixed. Also runs every target on a handful of
//! generated inputs so each target's code path is known to work without
//! libFuzzer (and a target that panics on its own seeds is caught here).

use std::path::Path;
use std::time::{Duration, Instant};

fn replay_dir(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(targets) = std::fs::read_dir(dir) else {
        return 0;
    };
    for t in targets.flatten().filter(|t| t.path().is_dir()) {
        let target = t.file_name().to_string_lossy().into_owned();
        assert!(
            fuzz_targets::TARGETS.contains(&target.as_str()),
            "regressions/{target}: not a fuzz target"
        );
        let mut inputs: Vec<_> = std::fs::read_dir(t.path())
            .expect("regression dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
            .collect();
        inputs.sort();
        for p in inputs {
            let bytes = std::fs::read(&p).expect("read regression input");
            eprintln!("replaying {target} {}", p.display());
            let start = Instant::now();
            fuzz_targets::run(&target, &bytes);
            // libFuzzer's -timeout=1 with a generous margin for an
            // unoptimised or loaded test run.
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: took {:?}",
                p.display(),
                start.elapsed()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn regressions_replay_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let n = replay_dir(&dir);
    eprintln!("{n} regression inputs replayed");
}

#[test]
fn every_target_runs_on_generated_seeds() {
    let out = std::env::temp_dir().join(format!("chainfold-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let written = fuzz_targets::corpus::build(&out, None).expect("build corpus");
    assert!(!written.is_empty());
    for (target, _) in &written {
        let mut inputs: Vec<_> = std::fs::read_dir(out.join(target))
            .expect("seed dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        inputs.sort();
        for p in inputs.iter().take(6) {
            fuzz_targets::run(target, &std::fs::read(p).expect("seed"));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    // Empty and tiny inputs must be handled by every target.
    for t in fuzz_targets::TARGETS {
        fuzz_targets::run(t, &[]);
        fuzz_targets::run(t, &[0xff]);
        fuzz_targets::run(t, &[0x0f; 40]);
    }
}
