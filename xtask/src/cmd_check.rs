//! `check IMAGE [--json]`: validate every structure of every image of the
//! chain. Exit 0: no error; 1: errors found; 2: could not be read at all.

use formats::chain::{linkage_matches, Chain};
use formats::params::{Identity, ParentLinkage};
use formats::{CorruptionKind, Finding, Severity};
use serde::Serialize;

use crate::cli_util::{broken_chain_finding, chain_options, fs, print_json};
use crate::outln;

pub type CheckArgs = crate::ImageArgs;

#[derive(Serialize)]
pub struct CheckReport {
    pub path: String,
    pub readable: bool,
    pub errors: usize,
    pub warnings: usize,
    pub chain: Vec<String>,
    pub findings: Vec<Finding>,
}

pub fn report(args: &CheckArgs) -> CheckReport {
    let ns = fs();
    let mut opts = chain_options(&args.chain);
    // Checksums and linkage are findings here, not reasons to stop reading.
    opts.ignore_checksums = true;
    opts.ignore_linkage = true;
    let mut findings = Vec::new();
    let mut readable = true;
    let mut paths = Vec::new();
    match Chain::open_partial(&ns, &args.image, &opts) {
        Err(e) => {
            readable = false;
            findings.push(Finding::from_error(
                &args.image.display().to_string(),
                "image",
                &e,
            ));
        }
        Ok(chain) => {
            paths = chain
                .paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            for (i, link) in chain.links.iter().enumerate() {
                match link.image.check() {
                    Ok(f) => findings.extend(f),
                    Err(e) => findings.push(Finding::from_error(
                        &link.path.display().to_string(),
                        "image",
                        &e,
                    )),
                }
                if let (Some(linkage), Some(parent)) =
                    (link.image.parent_linkage(), chain.links.get(i + 1))
                {
                    let name = link.path.display().to_string();
                    let pid = parent.image.identity();
                    if let Err(msg) = linkage_matches(&linkage, &pid) {
                        findings.push(Finding::error(
                            CorruptionKind::LinkageMismatch,
                            &name,
                            "parent linkage",
                            None,
                            msg,
                        ));
                    } else if let (
                        ParentLinkage::Vhd {
                            parent_timestamp, ..
                        },
                        Identity::Vhd { timestamp, .. },
                    ) = (&linkage, &pid)
                    {
                        if parent_timestamp != timestamp {
                            findings.push(Finding::warning(
                                CorruptionKind::ParentTimestampMismatch,
                                &name,
                                "dynamic disk header",
                                None,
                                format!(
                                    "Parent Time Stamp {parent_timestamp} differs from the parent's footer Time Stamp {timestamp}"
                                ),
                            ));
                        }
                    }
                }
            }
            if let Some(e) = &chain.broken {
                readable = false;
                findings.push(broken_chain_finding(&chain, e));
            }
        }
    }
    CheckReport {
        path: args.image.display().to_string(),
        readable,
        errors: findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count(),
        warnings: findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count(),
        chain: paths,
        findings,
    }
}

pub fn run(args: CheckArgs) -> u8 {
    let r = report(&args);
    if args.json {
        print_json(&r);
    } else {
        for f in &r.findings {
            outln!("{f}");
        }
        outln!(
            "{}: {} error(s), {} warning(s){}",
            r.path,
            r.errors,
            r.warnings,
            if r.readable {
                ""
            } else {
                "; could not be read"
            }
        );
    }
    if !r.readable {
        2
    } else if r.errors > 0 {
        1
    } else {
        0
    }
}
