//! Helpers shared by the commands.

use std::sync::Arc;

use formats::chain::ChainOptions;
use formats::{FsNamespace, Namespace};

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

pub fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        // A reader that went away (`| head`) is not worth a panic.
        Ok(s) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{s}");
        }
        Err(e) => eprintln!("error: cannot serialise JSON: {e}"),
    }
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
