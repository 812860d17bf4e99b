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
//!
//! The `held` rows merge the same child into a base that already holds
//! every block (2 GiB of full 32 MiB VHDX or 2 MiB VHD blocks; `--quick`:
//! 512 MiB): each merged block is replaced in part, once with
//! `--held-blocks journal` (the new sectors into the VHDX log or the VHD
//! redo journal, then in place) and once with
//! `rebuild` (the block copied whole into fresh space, then moved back by
//! compaction), the two merges and the cp rotating through each round.
//! No target there: any protocol that keeps a live block intact until
//! the commit writes the new data twice on a file system that cannot
//! share extents; the rows report how close each strategy comes.

use std::path::Path;

use serde::Serialize;

use super::{
    as_strs, clone_workload, content, file_sizes, holds, median, median_i64, merge_cmd, sh, timed,
    view_sha, BenchArgs, CloneFill, Measurement, Report, CLONE_GIB,
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
    /// The base held every block the child touches before the merge.
    pub base_holds_blocks: bool,
    /// `merge --held-blocks` (auto, journal, rebuild).
    pub held_blocks: String,
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
    for (vhdx, block, name, fill, modes) in [
        (
            true,
            32u64 << 20,
            format!("ext4-half-vhdx-32M-{label}"),
            CloneFill::HalfBlocks,
            &["auto"][..],
        ),
        (
            false,
            2 << 20,
            format!("ext4-half-vhd-2M-{label}"),
            CloneFill::HalfBlocks,
            &["auto"][..],
        ),
        (
            true,
            32 << 20,
            format!("ext4-half-held-vhdx-32M-{label}"),
            CloneFill::HalfOverFull,
            &["journal", "rebuild"][..],
        ),
        (
            false,
            2 << 20,
            format!("ext4-half-held-vhd-2M-{label}"),
            CloneFill::HalfOverFull,
            &["journal", "rebuild"][..],
        ),
    ] {
        if !super::wanted(args, &name) {
            continue;
        }
        eprintln!("bench: preparing {name}");
        let w = clone_workload(root, &scratch, &name, vhdx, block, data, fill)?;
        eprintln!("bench: timing {name}");
        for r in row(&w, &fs, pairs, modes)? {
            eprintln!("bench: {r:?}");
            report.ext4_half.push(r);
        }
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn row(
    w: &super::CloneWorkload,
    fs: &str,
    pairs: usize,
    modes: &[&str],
) -> formats::Result<Vec<HalfResult>> {
    let want = view_sha(&w.child, w.extent);
    let pristine = w.dir.join("base.pristine");
    std::fs::copy(&w.base, &pristine)
        .map_err(|e| formats::Error::io(pristine.display().to_string(), e))?;
    let x = w.dir.join("x.bin");
    let child_name = w.child.display().to_string();
    // Per mode: times, bytes written, content; then the cp's.
    let mut merges = vec![Vec::new(); modes.len()];
    let mut mw = vec![Vec::new(); modes.len()];
    let mut content_ok = vec![false; modes.len()];
    let (mut cps, mut cw, mut rss) = (vec![], vec![], -1i64);
    // Steps 0..modes.len() are the merges, the last the cp; each round
    // starts one step later than the one before.
    let steps = modes.len() + 1;
    for p in 0..pairs {
        for k in 0..steps {
            let step = (p + k) % steps;
            if let Some(&mode) = modes.get(step) {
                // The base as it was, and no marker of the last merge.
                std::fs::copy(&pristine, &w.base)
                    .map_err(|e| formats::Error::io(w.base.display().to_string(), e))?;
                for ext in ["cfmerged", "cfmerge"] {
                    let _ = std::fs::remove_file(format!("{child_name}.{ext}"));
                }
                sh(&["sync"]);
                let mut cmd = merge_cmd(&w.base, &w.child);
                cmd.extend(["--held-blocks".into(), mode.into()]);
                let m: Measurement = timed(&as_strs(&cmd));
                if !m.success {
                    return Err(err(format!("merge ({mode}) of {} failed", w.name)));
                }
                eprintln!(
                    "bench:   {}: merge --held-blocks {mode} {:.3}s, wrote {} bytes",
                    w.name, m.wall_s, m.write_bytes
                );
                if p == 0 {
                    content_ok[step] = want.is_some() && view_sha(&w.base, w.extent) == want;
                }
                merges[step].push(m.wall_s);
                mw[step].push(m.write_bytes);
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
    let cs = median(cps.clone());
    let cwb = median_i64(&cw);
    let over = |b: i64| {
        if b < 0 {
            f64::NAN
        } else {
            b as f64 / w.data as f64
        }
    };
    Ok(modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let ms = median(merges[i].clone());
            let mwb = median_i64(&mw[i]);
            HalfResult {
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
                merge_runs_s: merges[i].clone(),
                cp_runs_s: cps.clone(),
                content_ok: content_ok[i],
                base_holds_blocks: w.fill == CloneFill::HalfOverFull,
                held_blocks: (*mode).into(),
            }
        })
        .collect())
}

/// The section's lines.
pub(super) fn print(r: &Report) {
    for h in &r.ext4_half {
        let target = if h.base_holds_blocks {
            // No target over held blocks (see the module comment).
            "no target: the base holds the blocks".to_string()
        } else {
            format!("(<= {}) {}", h.target, holds(h.holds))
        };
        println!(
            "{} --held-blocks {} ({}, {} rounds rotating, medians): merge {:.3}s vs cp + sync -f {:.3}s: {:.2} {}; wrote {:.1} MiB = {:.3}x the child's {:.0} MiB of data (cp: {:.1} MiB = {:.3}x); RSS {:.1} MiB; content {}",
            h.workload,
            h.held_blocks,
            h.fs_type,
            h.pairs,
            h.merge_s,
            h.cp_sync_s,
            h.ratio,
            target,
            h.merge_write_bytes as f64 / (1u64 << 20) as f64,
            h.merge_written_over_data,
            h.data_bytes as f64 / (1u64 << 20) as f64,
            h.cp_write_bytes as f64 / (1u64 << 20) as f64,
            h.cp_written_over_data,
            h.merge_max_rss_kib as f64 / 1024.0,
            content(h.content_ok)
        );
    }
}
