//! `--only ext4-half`: a merge of a child holding half-filled blocks (the
//! first half of every block: 32 MiB VHDX blocks, and 2 MiB VHD blocks)
//! into an empty dynamic base, in the bench's work directory on the
//! repository's own file system (ext4 on the bench VM; its type is
//! printed), against `cp CHILD X && sync -f X` of the child file in the
//! same run: `pairs` pairs whose order alternates (merge first in even
//! pairs, cp first in odd ones), `sync` before each command, medians.
//! Bytes written are the kernel's count for each process
//! (`Measurement::write_bytes`, what `/usr/bin/time -f %O` reports), over
//! the bytes of data the child holds. Target: the merge (with its own
//! flushes) at most 1.1x the cp + sync.

use std::path::Path;

use serde::Serialize;

use super::{
    as_strs, clone_workload, file_sizes, median, median_i64, merge_cmd, sh, timed, view_sha,
    BenchArgs, CloneFill, Measurement, Report, CLONE_GIB,
};

/// One row of the section.
#[derive(Serialize, Debug)]
pub struct HalfResult {
    pub workload: String,
    /// `df --output=fstype` of the work directory.
    pub fs_type: String,
    pub vhdx: bool,
    pub block_bytes: u64,
    /// Bytes of data the child holds.
    pub data_bytes: u64,
    /// The child file's length (what cp copies).
    pub child_file_bytes: u64,
    pub pairs: usize,
    pub merge_s: f64,
    pub cp_sync_s: f64,
    /// merge_s / cp_sync_s.
    pub ratio: f64,
    pub target: f64,
    pub holds: bool,
    pub merge_write_bytes: i64,
    pub cp_write_bytes: i64,
    /// merge_write_bytes / data_bytes.
    pub merge_written_over_data: f64,
    pub cp_written_over_data: f64,
    pub merge_max_rss_kib: i64,
    /// Every timed run, in order.
    pub merge_runs_s: Vec<f64>,
    pub cp_runs_s: Vec<f64>,
    /// The base's virtual content after the first merge equals the
    /// child's view before it.
    pub content_ok: bool,
}

const TARGET: f64 = 1.1;

fn fs_type(dir: &Path) -> String {
    std::process::Command::new("df")
        .arg("--output=fstype")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn err(what: String) -> formats::Error {
    formats::Error::InvalidParameter(format!("bench ext4-half: {what}"))
}

pub(super) fn section(
    args: &BenchArgs,
    root: &Path,
    pairs: usize,
    report: &mut Report,
) -> formats::Result<()> {
    let data = if args.quick { 256 << 20 } else { CLONE_GIB };
    let label = if args.quick { "256M" } else { "1G" };
    let fs = fs_type(root);
    eprintln!(
        "bench: ext4-half: work directory {} is {fs}",
        root.display()
    );
    let scratch = root.join("half-scratch");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| formats::Error::io(scratch.display().to_string(), e))?;
    for (vhdx, block, name) in [
        (true, 32u64 << 20, format!("ext4-half-vhdx-32M-{label}")),
        (false, 2 << 20, format!("ext4-half-vhd-2M-{label}")),
    ] {
        if !super::wanted(args, &name) {
            continue;
        }
        eprintln!("bench: preparing {name}");
        let w = clone_workload(
            root,
            &scratch,
            &name,
            vhdx,
            block,
            data,
            CloneFill::HalfBlocks,
        )?;
        eprintln!("bench: timing {name}");
        let r = row(&w, &fs, pairs)?;
        eprintln!("bench: {r:?}");
        report.ext4_half.push(r);
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn row(w: &super::CloneWorkload, fs: &str, pairs: usize) -> formats::Result<HalfResult> {
    let want = view_sha(&w.child, w.extent);
    let pristine = w.dir.join("base.pristine");
    std::fs::copy(&w.base, &pristine)
        .map_err(|e| formats::Error::io(pristine.display().to_string(), e))?;
    let x = w.dir.join("x.bin");
    let child_name = w.child.display().to_string();
    let (mut merges, mut cps, mut mw, mut cw) = (vec![], vec![], vec![], vec![]);
    let (mut rss, mut content_ok) = (-1i64, false);
    for p in 0..pairs {
        let merge_first = p % 2 == 0;
        for step in 0..2 {
            if (step == 0) == merge_first {
                // The base as it was, and no marker of the last merge.
                std::fs::copy(&pristine, &w.base)
                    .map_err(|e| formats::Error::io(w.base.display().to_string(), e))?;
                for ext in ["cfmerged", "cfmerge"] {
                    let _ = std::fs::remove_file(format!("{child_name}.{ext}"));
                }
                sh(&["sync"]);
                let m: Measurement = timed(&as_strs(&merge_cmd(&w.base, &w.child)));
                if !m.success {
                    return Err(err(format!("merge of {} failed", w.name)));
                }
                eprintln!(
                    "bench:   {}: merge {:.3}s, wrote {} bytes",
                    w.name, m.wall_s, m.write_bytes
                );
                if p == 0 {
                    content_ok = want.is_some() && view_sha(&w.base, w.extent) == want;
                }
                merges.push(m.wall_s);
                mw.push(m.write_bytes);
                rss = rss.max(m.max_rss_kib);
            } else {
                let _ = std::fs::remove_file(&x);
                sh(&["sync"]);
                let m = timed(&[
                    "sh",
                    "-c",
                    "cp \"$1\" \"$2\" && sync -f \"$2\"",
                    "sh",
                    &child_name,
                    &x.display().to_string(),
                ]);
                if !m.success {
                    return Err(err(format!("cp of {} failed", w.name)));
                }
                eprintln!(
                    "bench:   {}: cp + sync -f {:.3}s, wrote {} bytes",
                    w.name, m.wall_s, m.write_bytes
                );
                cps.push(m.wall_s);
                cw.push(m.write_bytes);
                let _ = std::fs::remove_file(&x);
            }
        }
    }
    let (ms, cs) = (median(merges.clone()), median(cps.clone()));
    let (mwb, cwb) = (median_i64(&mw), median_i64(&cw));
    let over = |b: i64| {
        if b < 0 {
            f64::NAN
        } else {
            b as f64 / w.data as f64
        }
    };
    Ok(HalfResult {
        workload: w.name.clone(),
        fs_type: fs.into(),
        vhdx: w.vhdx,
        block_bytes: w.block,
        data_bytes: w.data,
        child_file_bytes: file_sizes(&w.child).0,
        pairs,
        merge_s: ms,
        cp_sync_s: cs,
        ratio: ms / cs,
        target: TARGET,
        holds: ms / cs <= TARGET,
        merge_write_bytes: mwb,
        cp_write_bytes: cwb,
        merge_written_over_data: over(mwb),
        cp_written_over_data: over(cwb),
        merge_max_rss_kib: rss,
        merge_runs_s: merges,
        cp_runs_s: cps,
        content_ok,
    })
}

/// The section's lines.
pub(super) fn print(r: &Report) {
    for h in &r.ext4_half {
        println!(
            "{} ({}, {} pairs alternating, medians): merge {:.3}s vs cp + sync -f {:.3}s: {:.2} (<= {}) {}; wrote {:.1} MiB = {:.3}x the child's {:.0} MiB of data (cp: {:.1} MiB = {:.3}x); RSS {:.1} MiB; content {}",
            h.workload,
            h.fs_type,
            h.pairs,
            h.merge_s,
            h.cp_sync_s,
            h.ratio,
            h.target,
            if h.holds { "holds" } else { "FAILS" },
            h.merge_write_bytes as f64 / (1u64 << 20) as f64,
            h.merge_written_over_data,
            h.data_bytes as f64 / (1u64 << 20) as f64,
            h.cp_write_bytes as f64 / (1u64 << 20) as f64,
            h.cp_written_over_data,
            h.merge_max_rss_kib as f64 / 1024.0,
            if h.content_ok { "ok" } else { "WRONG" }
        );
    }
}
