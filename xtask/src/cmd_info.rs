//! `info IMAGE [--json]`: the image's own fields, its parent locator, how
//! the parent was (or was not) found, and the chain down to the base.

use std::collections::BTreeMap;

use formats::chain::{Chain, Resolution};
use formats::params::ImageInfo;
use formats::Finding;
use serde::Serialize;

use crate::cli_util::{broken_chain_finding, chain_options, fs, print_failure, print_report};
use crate::outln;

pub type InfoArgs = crate::ImageArgs;

#[derive(Serialize)]
pub struct ParentReport {
    pub locator: Vec<LocatorEntry>,
    pub resolved: bool,
    pub resolved_path: Option<String>,
    pub resolved_by: Option<String>,
    pub tried: Vec<formats::chain::resolve::Attempt>,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct LocatorEntry {
    pub key: String,
    pub value: String,
}

#[derive(Serialize)]
pub struct InfoReport {
    pub path: String,
    pub format: formats::params::Format,
    pub disk_type: formats::params::DiskType,
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub details: BTreeMap<String, String>,
    pub parent: Option<ParentReport>,
    pub chain: Vec<String>,
    pub findings: Vec<Finding>,
}

pub fn report(args: &InfoArgs) -> Result<InfoReport, formats::Error> {
    let ns = fs();
    let mut opts = chain_options(&args.chain);
    // `info` describes what is there, even with a bad checksum (reported).
    opts.ignore_checksums = true;
    let chain = Chain::open_partial(&ns, &args.image, &opts)?;
    let top = chain.top();
    let ImageInfo {
        format,
        disk_type,
        virtual_size,
        block_size,
        logical_sector_size,
        physical_sector_size,
        details,
    } = top.info();
    let parent = top.parent_locator().map(|loc| {
        let res: Resolution = chain.links[0].parent_resolution.clone().unwrap_or_default();
        ParentReport {
            locator: loc
                .entries
                .iter()
                .map(|(k, v)| LocatorEntry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            resolved: res.resolved_path.is_some(),
            resolved_path: res.resolved_path,
            resolved_by: res.resolved_by,
            tried: res.attempts,
            error: if chain.links.len() == 1 {
                chain.broken.as_ref().map(|e| e.to_string())
            } else {
                None
            },
        }
    });
    let mut findings = top.open_findings();
    if let Some(e) = &chain.broken {
        if chain.links.len() > 1 {
            findings.push(broken_chain_finding(&chain, e));
        }
    }
    Ok(InfoReport {
        path: args.image.display().to_string(),
        format,
        disk_type,
        virtual_size,
        block_size,
        logical_sector_size,
        physical_sector_size,
        details: details.into_iter().collect(),
        parent,
        chain: chain
            .paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        findings,
    })
}

pub fn run(args: InfoArgs) -> u8 {
    match report(&args) {
        Ok(r) => {
            print_report(args.json, &r, print_text);
            0
        }
        Err(e) => {
            print_failure(args.json, &args.image, &e);
            2
        }
    }
}

fn print_text(r: &InfoReport) {
    outln!("{}", r.path);
    outln!("  format:               {}", r.format.name());
    outln!("  disk type:            {}", r.disk_type.name());
    outln!("  virtual size:         {} bytes", r.virtual_size);
    outln!("  block size:           {} bytes", r.block_size);
    outln!("  logical sector size:  {}", r.logical_sector_size);
    outln!("  physical sector size: {}", r.physical_sector_size);
    for (k, v) in &r.details {
        outln!("  {k}: {v}");
    }
    if let Some(p) = &r.parent {
        outln!("  parent locator:");
        for e in &p.locator {
            outln!("    {} = {}", e.key, e.value);
        }
        match &p.resolved_path {
            Some(path) => outln!(
                "  parent: {path} (via {})",
                p.resolved_by.as_deref().unwrap_or("?")
            ),
            None => outln!("  parent: UNRESOLVED"),
        }
        for t in &p.tried {
            outln!(
                "    tried {} {:?} -> {}: {}",
                t.hint,
                t.locator,
                t.path.as_deref().unwrap_or("-"),
                t.outcome
            );
        }
    }
    outln!("  chain: {}", r.chain.join(" -> "));
    for f in &r.findings {
        outln!("  {f}");
    }
}
