//! Helpers shared by the commands.

use std::sync::Arc;

use formats::chain::{Chain, ChainOptions};
use formats::{Finding, FsNamespace, Namespace};

use crate::ChainArgs;

pub fn fs() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
}

pub fn chain_options(a: &ChainArgs) -> ChainOptions {
    ChainOptions {
        parents: a.parents.clone(),
        search_dirs: a.search_dirs.clone(),
        follow_symlinks: a.follow_symlinks,
        ignore_checksums: a.ignore_checksums,
        ignore_linkage: a.ignore_linkage,
        ..ChainOptions::default()
    }
}

/// The finding of a chain that stopped at `broken`: named after the last
/// image that did open, whose parent could not be followed.
pub fn broken_chain_finding(chain: &Chain, broken: &formats::Error) -> Finding {
    let last = chain
        .links
        .last()
        .map(|l| l.path.display().to_string())
        .unwrap_or_default();
    Finding::from_error(&last, "chain", broken)
}

/// Print a command's error, naming `path` first when the error names no
/// file of its own (a parameter or range error is about that file).
pub fn print_error_about(path: &std::path::Path, e: &formats::Error) {
    let shown = path.display().to_string();
    match e.file() {
        None if !e.to_string().contains(&shown) => eprintln!("error: {shown}: {e}"),
        _ => eprintln!("error: {e}"),
    }
}

/// Parse `10G`, `512K`, `1M`, `4096`, `64T` (1024-based).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// `println!` for command output, without its panic on a closed stdout.
///
/// A reader that went away (`info IMAGE | head -1`) makes every later write
/// fail with EPIPE (Rust ignores SIGPIPE, so the process is not killed);
/// `println!` turns that into a panic (exit 101 and a backtrace hint). Output
/// nobody reads is not an error: the write is dropped and the command
/// finishes with its usual exit code. Every command's stdout goes through
/// this (or [`print_json`]); `main` also installs [`quiet_broken_pipe`] for a
/// `println!` that slips through.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli_util::out_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli_util::out_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The stdout writer behind [`outln!`]: errors (a closed pipe) are dropped.
pub fn out_fmt(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(args);
}

pub fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        // A reader that went away (`| head`) is not worth a panic.
        Ok(s) => crate::outln!("{s}"),
        Err(e) => eprintln!("error: cannot serialise JSON: {e}"),
    }
}

/// Print a command's report as `--json` asked: JSON, or `text`.
pub fn print_report<R: serde::Serialize>(json: bool, r: &R, text: impl FnOnce(&R)) {
    if json {
        print_json(r);
    } else {
        text(r);
    }
}

/// Print why a command about the image `path` failed, as `--json` asked:
/// `{"path", "error"}` on stdout, or `error: ...` on stderr.
pub fn print_failure(json: bool, path: &std::path::Path, e: &formats::Error) {
    if json {
        print_json(&serde_json::json!({ "path": path, "error": e.to_string() }));
    } else {
        eprintln!("error: {e}");
    }
}

/// A panic hook that makes `println!`/`eprintln!` into a closed pipe end
/// the process quietly (exit 0, no message) instead of with exit 101; every
/// other panic goes to the default hook unchanged. This is the safety net
/// for output written with `println!` rather than [`outln!`]; std's message
/// for that panic is "failed printing to stdout: Broken pipe (os error 32)".
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("64T"), Ok(64 << 40));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
