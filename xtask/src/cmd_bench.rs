//! `bench [--quick] [--json]`: merge throughput against `cp` and
//! `qemu-img commit`, convert against `qemu-img convert`, peak memory and
//! scaling with the virtual size. Workloads are made with chainfold's own
//! create/write code in a temp dir; every timed command runs as a child of
//! `xtask measure`, which reports its wall time and peak RSS from the
//! kernel's accounting (getrusage of that one child). Commands alternate
//! within each pair; medians are reported.
//!
//! `--only space`: the destination's apparent (`len`) and allocated
//! (`blocks * 512`) bytes after a full-overwrite merge of a full 64 MiB
//! disk, for every destination kind, over the in-place figure (the size
//! before the merge); and 20 cycles of (child, 25 % overwritten at random
//! in 1 MiB pieces, merge) into a dynamic VHDX and VHD, the final size over
//! the size after one cycle. Bytes written by each merge process come from
//! the same `xtask measure` child accounting (getrusage(RUSAGE_CHILDREN)
//! `ru_oublock`, see `Measurement::write_bytes`). Not timed comparisons:
//! the section's sizes do not depend on the machine.
//!
//! `--only clone` (in a full run too): merges on file systems that share
//! extents, XFS (reflink) and btrfs, each a loop mount the bench makes
//! (`testdata::loopfs`) and unmounts when its guard drops, also on an error
//! or a SIGINT / SIGTERM (which stop the section at its next step). A child
//! holding 1 GiB and 4 GiB (`--quick`: 1 GiB) in full blocks, VHDX and VHD,
//! and VHDX children with every 32 MiB block half written, each merged into
//! an empty dynamic base, against `cp --reflink=always` and
//! `cp --reflink=never` of the child file (then `sync -f`): seconds, bytes
//! the merge wrote (`Measurement::write_bytes`), peak RSS, the
//! destination's apparent and allocated size and the file system's free
//! space consumed. A file system that cannot be made or mounted (not root,
//! no mkfs tool) is skipped with the reason.
//!
//! `--only ext4-half` (in a full run too): children holding the first half
//! of every block (32 MiB VHDX, 2 MiB VHD; 1 GiB of data, `--quick` 256
//! MiB) merged into an empty dynamic base in the work directory, on the
//! repository's own file system (its type is printed), against
//! `cp CHILD X && sync -f X` in the same run: see `cmd_bench/ext4_half.rs`.

mod ext4_half;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType, Identity};
use formats::{Access, CopyRange, FsNamespace, Namespace};
use serde::Serialize;

#[derive(Args)]
pub struct BenchArgs {
    /// 1 GiB workloads only, fewer pairs.
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub json: bool,
    /// Timed pairs per comparison (at least 5).
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Work directory (default: a temp dir under target/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only the parts whose name contains one of these (comma
    /// separated), e.g. `vhdx-32M-full,memory,scaling`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Make the merge workloads (and the 64 TiB memory one) under `--dir`
    /// and stop: nothing is timed and nothing is removed, for profiling a
    /// merge by hand.
    #[arg(long, requires = "dir")]
    pub prepare_only: bool,
}

fn wanted(args: &BenchArgs, name: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()))
}

#[derive(Args)]
pub struct MeasureArgs {
    #[arg(trailing_var_arg = true, required = true)]
    pub cmd: Vec<String>,
}

#[derive(Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct Measurement {
    pub wall_s: f64,
    /// User + system CPU time of the child: unlike wall time, not at the
    /// mercy of how fast the disk writes back today.
    pub cpu_s: f64,
    /// User CPU time alone: the merge's own work, without the kernel's
    /// copy of the payload (whose speed on this VM varies several-fold
    /// from one minute to the next for the same bytes).
    pub user_s: f64,
    pub max_rss_kib: i64,
    pub success: bool,
    /// Bytes the child (with its threads and any children it waited for)
    /// caused to be written to storage: getrusage(RUSAGE_CHILDREN)
    /// `ru_oublock` x 512. On Linux that is the kernel's per-task I/O
    /// accounting (`write_bytes` of /proc/PID/io, which a parent cannot
    /// read once its child is reaped, and which RUSAGE_CHILDREN sums at
    /// reaping): page-cache pages when first dirtied plus O_DIRECT
    /// writes when submitted. Rewriting a page that is still dirty counts
    /// once; punched holes and truncation count nothing (dirty pages a
    /// truncation discards are not subtracted either). -1 when unknown.
    #[serde(default = "unknown_bytes")]
    pub write_bytes: i64,
}

fn unknown_bytes() -> i64 {
    -1
}

/// `xtask measure -- CMD...`: run CMD, print its wall time and peak RSS.
pub fn measure(args: MeasureArgs) -> u8 {
    let start = Instant::now();
    let status = Command::new(&args.cmd[0])
        .args(&args.cmd[1..])
        .stdout(std::process::Stdio::null())
        .status();
    let wall_s = start.elapsed().as_secs_f64();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let m = Measurement {
        wall_s,
        cpu_s: usage
            .map(|u| secs(u.user_time()) + secs(u.system_time()))
            .unwrap_or(f64::NAN),
        user_s: usage.map(|u| secs(u.user_time())).unwrap_or(f64::NAN),
        max_rss_kib: usage.map(|u| u.max_rss()).unwrap_or(-1),
        success: status.map(|s| s.success()).unwrap_or(false),
        write_bytes: usage
            .map(|u| u.block_writes().saturating_mul(512))
            .unwrap_or(-1),
    };
    println!("{}", serde_json::to_string(&m).unwrap_or_default());
    0
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xtask"))
}

fn timed(cmd: &[&str]) -> Measurement {
    let out = Command::new(exe())
        .arg("measure")
        .arg("--")
        .args(cmd)
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Measurement {
            wall_s: f64::NAN,
            cpu_s: f64::NAN,
            user_s: f64::NAN,
            max_rss_kib: -1,
            success: false,
            write_bytes: -1,
        })
}

fn sh(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ns() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
}

/// How the child's data is laid out.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Fill {
    /// Whole blocks.
    Full,
    /// 4 KiB written, 4 KiB not, over twice the space.
    Half,
    /// `n` runs of 512 bytes, one every `stride` bytes.
    Scattered { runs: u64, stride: u64 },
}

pub struct Workload {
    pub name: String,
    pub dir: PathBuf,
    pub base: PathBuf,
    pub child: PathBuf,
    pub data_bytes: u64,
    /// Bytes of virtual space the data is spread over (twice `data_bytes`
    /// for `Fill::Half`).
    pub extent_bytes: u64,
}

fn pattern(len: usize, salt: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        let x = (i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

/// Create a workload's directory and name its base and child images in it
/// (a VHDX child is an `.avhdx`, as Hyper-V names differencing disks).
fn workload_images(dir: &Path, vhdx: bool) -> formats::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|e| formats::Error::io(dir.display().to_string(), e))?;
    let (be, ce) = if vhdx {
        ("vhdx", "avhdx")
    } else {
        ("vhd", "vhd")
    };
    Ok((
        dir.join(format!("base.{be}")),
        dir.join(format!("child.{ce}")),
    ))
}

/// How a printed row reads a target's verdict.
fn holds(holds: bool) -> &'static str {
    if holds {
        "holds"
    } else {
        "FAILS"
    }
}

/// How a printed row reads the content check.
fn content(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "WRONG"
    }
}

/// Base (empty dynamic) + differencing child holding `data` bytes.
fn make_workload(
    root: &Path,
    name: &str,
    vhdx: bool,
    block: u32,
    virtual_size: u64,
    data: u64,
    fill: Fill,
) -> formats::Result<Workload> {
    let ns = ns();
    let dir = root.join(name);
    let (base, child) = workload_images(&dir, vhdx)?;
    let bp = CreateParams {
        virtual_size,
        disk_type: DiskType::Dynamic,
        block_size: Some(block),
        ..Default::default()
    };
    formats::create::create_file(&ns, &base, &bp)?;
    let parent = open_image_file(&ns, &base, &ChainOptions::default())?;
    let spec = formats::create::parent_spec(&ns, parent.as_ref(), &base, &child)?;
    drop(parent);
    formats::create::create_file(
        &ns,
        &child,
        &CreateParams {
            disk_type: DiskType::Differencing,
            parent: Some(spec),
            ..bp
        },
    )?;
    let mut img = open_image_file(
        &ns,
        &child,
        &ChainOptions {
            access: Access::Write,
            writable: true,
            ..Default::default()
        },
    )?;
    let id = img.identity();
    let mut batch = img.begin_batch()?;
    let piece = pattern(4 << 20, 7);
    match fill {
        Fill::Full => {
            let mut off = 0;
            while off < data {
                let n = (piece.len() as u64).min(data - off) as usize;
                batch.write(off, &piece[..n])?;
                off += n as u64;
            }
        }
        Fill::Half => {
            let mut off = 0;
            while off < 2 * data {
                batch.write(off, &piece[(off as usize) % (4 << 20)..][..4096])?;
                off += 8192;
            }
        }
        Fill::Scattered { runs, stride } => {
            for i in 0..runs {
                batch.write(i * stride, &piece[(i as usize * 512) % (4 << 20)..][..512])?;
            }
        }
    }
    batch.prepare()?;
    let new_id = match id {
        Identity::Vhdx { .. } => Identity::Vhdx {
            data_write_guid: formats::entropy::new_guid(),
        },
        v @ Identity::Vhd { .. } => v,
    };
    batch.commit(new_id)?;
    Ok(Workload {
        name: name.into(),
        dir,
        base,
        child,
        data_bytes: data,
        extent_bytes: match fill {
            Fill::Full => data,
            Fill::Half => 2 * data,
            Fill::Scattered { runs, stride } => runs * stride,
        },
    })
}

/// Fresh copies of the pristine workload files into `run/`.
fn fresh(w: &Workload) -> (PathBuf, PathBuf) {
    let run = w.dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::create_dir_all(&run);
    let b = run.join(w.base.file_name().unwrap_or_default());
    let c = run.join(w.child.file_name().unwrap_or_default());
    sh(&[
        "cp",
        "--reflink=auto",
        &w.base.display().to_string(),
        &b.display().to_string(),
    ]);
    sh(&[
        "cp",
        "--reflink=auto",
        &w.child.display().to_string(),
        &c.display().to_string(),
    ]);
    (b, c)
}

#[derive(Serialize, Debug)]
pub struct Comparison {
    pub workload: String,
    pub data_bytes: u64,
    pub chainfold_s: f64,
    pub baseline: String,
    pub baseline_s: f64,
    pub ratio: f64,
    pub target: f64,
    pub holds: bool,
    pub chainfold_max_rss_mib: f64,
    /// The device's durable-write floor for the data (median of
    /// `dd oflag=direct conv=fdatasync` of the same bytes, alternating with
    /// the other commands), when measured. Not a target; `ratio` to it says
    /// how far the merge is from what the device allows.
    pub device_floor_s: Option<f64>,
    /// The target asks for less than `device_floor_s`: no program can meet
    /// it on this device, so a miss says nothing about the merge.
    pub target_below_device_floor: bool,
}

#[derive(Serialize, Debug, Default)]
pub struct Report {
    pub command: String,
    pub comparisons: Vec<Comparison>,
    pub memory: Vec<MemoryResult>,
    pub scaling: Vec<ScalingResult>,
    pub space: Vec<SpaceResult>,
    pub space_cycles: Vec<SpaceCyclesResult>,
    pub clone: Vec<CloneResult>,
    /// Why clone rows or file systems were not measured.
    pub clone_skipped: Vec<String>,
    pub scan: Vec<ScanResult>,
    /// `--only ext4-half`: half-filled blocks merged on the repository's
    /// file system against cp + sync -f.
    pub ext4_half: Vec<ext4_half::HalfResult>,
}

/// `scan` of one folder of many small images (issue: < 5 s for 10,000).
#[derive(Serialize, Debug)]
pub struct ScanResult {
    pub images: u64,
    /// Wall time with the page cache dropped first (None when not root).
    pub cold_s: Option<f64>,
    /// Wall time right after (median of three).
    pub warm_s: f64,
    pub max_rss_mib: f64,
    pub images_found: u64,
    pub limit_s: f64,
    pub holds: bool,
}

/// 10,000 images (half VHDX, half VHD; every tenth a differencing child
/// of the one before it, so chains are resolved too) in one folder, then
/// `scan DIR --json`, cold (caches dropped, as root) and warm.
fn scan_section(root: &Path, report: &mut Report) -> Result<(), formats::Error> {
    const IMAGES: u64 = 10_000;
    let dir = root.join("scan-10k");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| formats::Error::io(dir.display().to_string(), e))?;
    let run = |args: &[&str]| -> Result<(), formats::Error> {
        let out = Command::new(exe())
            .args(args)
            .output()
            .map_err(|e| formats::Error::io("xtask", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(formats::Error::InvalidParameter(format!(
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    let s = |p: &Path| p.display().to_string();
    // Templates: a base and a child of it per format; copies of the pair
    // keep their links (the locator is relative: `.\base-N` would not
    // match a renamed copy, so children are made per chain).
    let mut made = 0u64;
    let mut n = 0u64;
    while made < IMAGES {
        let ext = if n.is_multiple_of(2) { "vhdx" } else { "vhd" };
        let base = dir.join(format!("b{n}.{ext}"));
        if n < 2 {
            run(&["create", &s(&base), "--size", "16M"])?;
        } else {
            let template = dir.join(format!("b{}.{ext}", n % 2));
            std::fs::copy(&template, &base).map_err(|e| formats::Error::io(s(&base), e))?;
        }
        made += 1;
        if n % 10 < 2 && made < IMAGES {
            let child = dir.join(format!("c{n}.{ext}"));
            run(&["create", &s(&child), "--parent", &s(&base)])?;
            made += 1;
        }
        n += 1;
    }
    let scan = || -> Result<(Measurement, u64), formats::Error> {
        let m = timed(&[&s(&exe()), "scan", &s(&dir), "--json"]);
        Ok((m, made))
    };
    // Dropping the page cache needs root; without it there is no cold run.
    let _ = Command::new("sync").status();
    let cold_s = if std::fs::write("/proc/sys/vm/drop_caches", b"3").is_ok() {
        Some(scan()?.0.wall_s)
    } else {
        None
    };
    let mut warm = Vec::new();
    let mut rss: f64 = 0.0;
    for _ in 0..3 {
        let (m, _) = scan()?;
        warm.push(m.wall_s);
        rss = rss.max(m.max_rss_kib as f64 / 1024.0);
    }
    warm.sort_by(f64::total_cmp);
    let found = {
        let out = Command::new(exe())
            .args(["scan", &s(&dir), "--json"])
            .output()
            .map_err(|e| formats::Error::io("xtask scan", e))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["images"].as_array().map_or(0, |a| a.len() as u64)
    };
    let limit_s = 5.0;
    let worst = cold_s.unwrap_or(0.0).max(warm[1]);
    report.scan.push(ScanResult {
        images: made,
        cold_s,
        warm_s: warm[1],
        max_rss_mib: rss,
        images_found: found,
        limit_s,
        holds: worst < limit_s && found == made,
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Serialize, Debug)]
pub struct MemoryResult {
    pub workload: String,
    pub max_rss_mib: f64,
    pub wall_s: f64,
    pub limit_mib: f64,
    pub holds: bool,
}

#[derive(Serialize, Debug)]
pub struct ScalingResult {
    pub small_virtual: u64,
    pub large_virtual: u64,
    pub small_s: f64,
    pub large_s: f64,
    pub difference_s: f64,
    /// One read of one 64 TiB image's BAT (16 MiB) into a fresh buffer,
    /// from a fresh copy of the file like the one each merge gets (median
    /// of 5).
    pub large_bat_read_s: f64,
    /// The same for every image of the 64 TiB chain (the child and the
    /// destination: a merge reads each of their BATs once, and cannot do
    /// with less). `holds` compares the difference with this.
    pub large_bats_read_s: f64,
    pub holds: bool,
    /// The stricter comparison with a single BAT read.
    pub holds_against_one_bat: bool,
    /// The same comparison on CPU time (medians): the disk's write-back
    /// speed varies by more than a second between identical runs here.
    pub small_cpu_s: f64,
    pub large_cpu_s: f64,
    pub cpu_difference_s: f64,
    pub cpu_holds: bool,
    /// And on user CPU time alone (medians), where work that grew with the
    /// virtual size (mapping windows, scanning tables) would show.
    pub small_user_s: f64,
    pub large_user_s: f64,
    pub user_difference_s: f64,
    pub user_holds: bool,
    pub pairs: usize,
}

fn merge_cmd(b: &Path, c: &Path) -> Vec<String> {
    vec![
        exe().display().to_string(),
        "merge".into(),
        c.display().to_string(),
        b.display().to_string(),
        "--json".into(),
    ]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn have(cmd: &str) -> bool {
    sh(&[cmd, "--version"])
}

/// Raw file with the same data as the workload (for cp and qemu).
fn raw_twin(w: &Workload, virtual_size: u64) -> formats::Result<PathBuf> {
    let raw = w.dir.join("data.raw");
    if !raw.exists() {
        let ns = ns();
        let chain = formats::chain::Chain::open(&ns, &w.child, &ChainOptions::default())?;
        let out = ns
            .create(&raw)
            .map_err(|e| formats::Error::io(raw.display().to_string(), e))?;
        let mut r = chain.reader();
        let runs: Vec<_> = r.runs(0, virtual_size)?.to_vec();
        for run in runs {
            if let formats::chain::Source::Layer { layer, file_offset } = run.source {
                out.copy_from(
                    chain.links[layer].image.storage().as_ref(),
                    CopyRange::new(file_offset, run.offset, run.len),
                )
                .map_err(|e| formats::Error::io("data.raw", e))?;
            }
        }
        out.set_len(virtual_size)
            .map_err(|e| formats::Error::io("data.raw", e))?;
    }
    Ok(raw)
}

fn compare_merge(
    w: &Workload,
    virtual_size: u64,
    pairs: usize,
    report: &mut Report,
) -> formats::Result<()> {
    let dense = w.dir.join("dense.bin");
    if !dense.exists() {
        std::fs::write(&dense, pattern(w.data_bytes as usize, 3))
            .map_err(|e| formats::Error::io("dense.bin", e))?;
    }
    let qemu = have("qemu-img");
    let mut qcow_ready = false;
    if qemu {
        let raw = raw_twin(w, virtual_size)?;
        let qb = w.dir.join("base.qcow2");
        let qo = w.dir.join("overlay.qcow2");
        let vs = virtual_size.to_string();
        qcow_ready = sh(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            &qb.display().to_string(),
            &vs,
        ]) && sh(&[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-B",
            &qb.display().to_string(),
            "-F",
            "qcow2",
            &raw.display().to_string(),
            &qo.display().to_string(),
        ]);
    }
    // Data in 4 KiB runs one page apart lands either as scattered pages or,
    // joined across the gaps, as the whole extent; a durable copy of a file
    // the extent's size is the floor for the second.
    let extent = (w.extent_bytes > w.data_bytes).then(|| w.dir.join("extent.bin"));
    if let Some(e) = &extent {
        if !e.exists() {
            std::fs::write(e, pattern(w.extent_bytes as usize, 5))
                .map_err(|e| formats::Error::io("extent.bin", e))?;
        }
    }
    let (mut ours, mut cps, mut qemus, mut rss) = (vec![], vec![], vec![], 0i64);
    let (mut cp_syncs, mut extent_syncs, mut floors) = (vec![], vec![], vec![]);
    for _ in 0..pairs {
        let (b, c) = fresh(w);
        // Every timed command starts with no dirty pages from the setup
        // copies, so none pays for writing back another's bytes.
        sh(&["sync"]);
        let m = timed(&as_strs(&merge_cmd(&b, &c)));
        if !m.success {
            return Err(formats::Error::InvalidParameter(format!(
                "bench merge of {} failed",
                w.name
            )));
        }
        ours.push(m.wall_s);
        rss = rss.max(m.max_rss_kib);
        let copy = w.dir.join("copy.bin");
        eprintln!("bench:   merge {:.3}s", m.wall_s);
        let _ = std::fs::remove_file(&copy);
        // One copy serves both baselines: `cp` alone (page cache) and the
        // durable copy, `cp` then `sync -d`, which is what a merge must at
        // least do (its commit needs the data on disk before the BAT names it).
        sh(&["sync"]);
        let cp = timed(&[
            "cp",
            &dense.display().to_string(),
            &copy.display().to_string(),
        ]);
        let flush = timed(&["sync", "-d", &copy.display().to_string()]);
        cps.push(cp.wall_s);
        cp_syncs.push(cp.wall_s + flush.wall_s);
        let _ = std::fs::remove_file(&copy);
        sh(&["sync"]);
        // The device's floor: the same bytes written straight to it in
        // 4 MiB pieces and made durable, with nothing else to do. A target
        // below this cannot be met by any program on this machine.
        let dd = timed(&[
            "dd",
            &format!("if={}", dense.display()),
            &format!("of={}", copy.display()),
            "bs=4M",
            "oflag=direct",
            "conv=fdatasync",
            "status=none",
        ]);
        if dd.success {
            floors.push(dd.wall_s);
        }
        let _ = std::fs::remove_file(&copy);
        sh(&["sync"]);
        if let Some(e) = &extent {
            let cp = timed(&["cp", &e.display().to_string(), &copy.display().to_string()]);
            let flush = timed(&["sync", "-d", &copy.display().to_string()]);
            extent_syncs.push(cp.wall_s + flush.wall_s);
            let _ = std::fs::remove_file(&copy);
            sh(&["sync"]);
        }
        if qcow_ready {
            let run = w.dir.join("qrun");
            let _ = std::fs::remove_dir_all(&run);
            let _ = std::fs::create_dir_all(&run);
            let qb = run.join("base.qcow2");
            let qo = run.join("overlay.qcow2");
            sh(&[
                "cp",
                "--reflink=auto",
                &w.dir.join("base.qcow2").display().to_string(),
                &qb.display().to_string(),
            ]);
            sh(&[
                "cp",
                "--reflink=auto",
                &w.dir.join("overlay.qcow2").display().to_string(),
                &qo.display().to_string(),
            ]);
            // The overlay names its backing file by the path it was made
            // with; point it at this run's copy.
            sh(&[
                "qemu-img",
                "rebase",
                "-u",
                "-F",
                "qcow2",
                "-b",
                &qb.display().to_string(),
                &qo.display().to_string(),
            ]);
            sh(&["sync"]);
            qemus.push(timed(&["qemu-img", "commit", "-q", &qo.display().to_string()]).wall_s);
        }
    }
    let ours_all = ours.clone();
    let (o, c) = (median(ours), median(cps));
    let q = (!qemus.is_empty()).then(|| median(qemus));
    let rss_mib = rss as f64 / 1024.0;
    eprintln!(
        "bench: {}: chainfold merge {o:.3}s (runs {ours_all:?}), cp {c:.3}s, qemu-img commit {q:?}, peak RSS {rss_mib:.1} MiB",
        w.name,
    );
    let floor = (!floors.is_empty()).then(|| median(floors));
    let mut compare = |baseline: &str, baseline_s: f64, target: f64| {
        report.comparisons.push(Comparison {
            workload: w.name.clone(),
            data_bytes: w.data_bytes,
            chainfold_s: o,
            baseline: baseline.into(),
            baseline_s,
            ratio: o / baseline_s,
            target,
            holds: o / baseline_s <= target,
            chainfold_max_rss_mib: rss_mib,
            device_floor_s: floor,
            target_below_device_floor: floor.is_some_and(|f| baseline_s * target < f),
        })
    };
    compare("cp", c, 1.1);
    compare("cp + fdatasync", median(cp_syncs), 1.1);
    if let Some(f) = floor {
        // Not a target of the issue: how far the merge is from the device.
        eprintln!(
            "bench: {}: device floor (dd oflag=direct conv=fdatasync) {f:.3}s; chainfold at {:.2}x it",
            w.name,
            o / f
        );
    }
    if !extent_syncs.is_empty() {
        compare("cp + fdatasync, extent", median(extent_syncs), 1.1);
    }
    if let Some(q) = q {
        compare("qemu-img commit", q, 0.5);
    }
    Ok(())
}

fn compare_convert(w: &Workload, pairs: usize, report: &mut Report) -> formats::Result<()> {
    if !have("qemu-img") {
        return Ok(());
    }
    let flat = w.dir.join("flat.vhdx");
    if !flat.exists() {
        let ok = sh(&[
            &exe().display().to_string(),
            "convert",
            &w.child.display().to_string(),
            &flat.display().to_string(),
        ]);
        if !ok {
            return Ok(());
        }
    }
    let (mut ours, mut theirs) = (vec![], vec![]);
    let out = w.dir.join("out.raw");
    for _ in 0..pairs {
        let _ = std::fs::remove_file(&out);
        sh(&["sync"]);
        ours.push(
            timed(&[
                &exe().display().to_string(),
                "convert",
                &w.child.display().to_string(),
                &out.display().to_string(),
            ])
            .wall_s,
        );
        let _ = std::fs::remove_file(&out);
        sh(&["sync"]);
        theirs.push(
            timed(&[
                "qemu-img",
                "convert",
                "-f",
                "vhdx",
                "-O",
                "raw",
                &flat.display().to_string(),
                &out.display().to_string(),
            ])
            .wall_s,
        );
        let _ = std::fs::remove_file(&out);
    }
    let (o, t) = (median(ours), median(theirs));
    report.comparisons.push(Comparison {
        workload: format!("{} (convert to raw)", w.name),
        data_bytes: w.data_bytes,
        chainfold_s: o,
        baseline: "qemu-img convert -O raw".into(),
        baseline_s: t,
        ratio: o / t,
        target: 1.0,
        holds: o <= t,
        chainfold_max_rss_mib: f64::NAN,
        device_floor_s: None,
        target_below_device_floor: false,
    });
    Ok(())
}

fn memory(w: &Workload, report: &mut Report) {
    let (b, c) = fresh(w);
    sh(&["sync"]);
    let m = timed(&as_strs(&merge_cmd(&b, &c)));
    let mib = m.max_rss_kib as f64 / 1024.0;
    report.memory.push(MemoryResult {
        workload: w.name.clone(),
        max_rss_mib: mib,
        wall_s: m.wall_s,
        limit_mib: 64.0,
        holds: m.success && mib < 64.0,
    });
}

/// Space after a merge, for one destination kind (`--only space`).
#[derive(Serialize, Debug)]
pub struct SpaceResult {
    pub kind: String,
    pub virtual_bytes: u64,
    pub block_bytes: u64,
    /// The destination before the merge: full, so what an in-place merge
    /// of a full overwrite leaves (it allocates nothing new).
    pub apparent_before: u64,
    pub allocated_before: u64,
    pub apparent_after: u64,
    pub allocated_after: u64,
    /// After / before: 1.0 is an in-place merge's figure.
    pub apparent_ratio: f64,
    pub allocated_ratio: f64,
    /// The allowance the tests (xtask/tests/space.rs) grant: one block
    /// over the in-place figure (apparent size).
    pub apparent_limit: u64,
    pub holds: bool,
    /// Bytes the merge process wrote (`Measurement::write_bytes`).
    pub merge_write_bytes: i64,
    pub merge_wall_s: f64,
    pub content_ok: bool,
}

/// Repeated merges into one base (`--only space`).
#[derive(Serialize, Debug)]
pub struct SpaceCyclesResult {
    pub kind: String,
    pub virtual_bytes: u64,
    pub block_bytes: u64,
    pub cycles: usize,
    /// Of the virtual disk, overwritten per cycle in 1 MiB pieces at
    /// distinct random 1 MiB-aligned offsets (seeded).
    pub overwrite_fraction: f64,
    pub apparent_initial: u64,
    pub allocated_initial: u64,
    pub apparent_after_first: u64,
    pub allocated_after_first: u64,
    pub apparent_final: u64,
    pub allocated_final: u64,
    /// Final / after the first cycle.
    pub apparent_ratio: f64,
    pub allocated_ratio: f64,
    /// Final within one block of the size after the first cycle.
    pub holds: bool,
    pub apparent_per_cycle: Vec<u64>,
    /// Bytes written by all the merge processes together.
    pub merges_write_bytes: i64,
    pub content_ok: bool,
}

const SPACE_MIB: u64 = 1 << 20;
const SPACE_SIZE: u64 = 64 * SPACE_MIB;

/// (name, vhdx, fixed, differencing, block): every destination kind. VHDX
/// blocks are 1 MiB (the smallest, so one block of allowance is tight),
/// VHD blocks 2 MiB (the usual; a fixed VHD has none).
const SPACE_KINDS: [(&str, bool, bool, bool, u64); 6] = [
    ("vhdx-fixed", true, true, false, SPACE_MIB),
    ("vhdx-dynamic", true, false, false, SPACE_MIB),
    ("vhdx-differencing", true, false, true, SPACE_MIB),
    ("vhd-fixed", false, true, false, 2 * SPACE_MIB),
    ("vhd-dynamic", false, false, false, 2 * SPACE_MIB),
    ("vhd-differencing", false, false, true, 2 * SPACE_MIB),
];

/// apparent (`len`) and allocated (`blocks * 512`) bytes.
fn file_sizes(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| (m.len(), m.blocks() * 512))
        .unwrap_or((0, 0))
}

fn space_err(what: &str) -> formats::Error {
    formats::Error::io(
        what.to_string(),
        std::io::Error::other(format!("bench space: {what} failed")),
    )
}

fn run_xtask(args: &[&str]) -> formats::Result<()> {
    let mut cmd = vec![exe().display().to_string()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    if sh(&as_strs(&cmd)) {
        Ok(())
    } else {
        Err(space_err(&args.join(" ")))
    }
}

/// Write `data` at `offset` through `img` (the `write` command).
fn space_write(img: &Path, offset: u64, data: &[u8], dir: &Path) -> formats::Result<()> {
    let input = dir.join("input.bin");
    std::fs::write(&input, data).map_err(|e| formats::Error::io(input.display().to_string(), e))?;
    run_xtask(&[
        "write",
        &img.display().to_string(),
        "--offset",
        &offset.to_string(),
        "--input",
        &input.display().to_string(),
    ])?;
    let _ = std::fs::remove_file(&input);
    Ok(())
}

fn space_create(path: &Path, kind: &str, block: u64, parent: Option<&Path>) -> formats::Result<()> {
    let (p, b) = (path.display().to_string(), block.to_string());
    match parent {
        Some(parent) => run_xtask(&[
            "create",
            &p,
            "--parent",
            &parent.display().to_string(),
            "--block-size",
            &b,
        ]),
        None => run_xtask(&[
            "create",
            &p,
            "--size",
            &SPACE_SIZE.to_string(),
            "--type",
            kind,
            "--block-size",
            &b,
        ]),
    }
}

/// A full destination of one kind in `dir` (a full dynamic base below a
/// differencing one).
fn space_destination(
    dir: &Path,
    vhdx: bool,
    fixed: bool,
    differencing: bool,
    block: u64,
) -> formats::Result<PathBuf> {
    let (be, ce) = if vhdx {
        ("vhdx", "avhdx")
    } else {
        ("vhd", "vhd")
    };
    let full = |salt| pattern(SPACE_SIZE as usize, salt);
    if differencing {
        let base = dir.join(format!("base.{be}"));
        space_create(&base, "dynamic", block, None)?;
        space_write(&base, 0, &full(11), dir)?;
        let dest = dir.join(format!("dest.{ce}"));
        space_create(&dest, "", block, Some(&base))?;
        space_write(&dest, 0, &full(12), dir)?;
        Ok(dest)
    } else {
        let dest = dir.join(format!("dest.{be}"));
        space_create(&dest, if fixed { "fixed" } else { "dynamic" }, block, None)?;
        space_write(&dest, 0, &full(12), dir)?;
        Ok(dest)
    }
}

/// sha256 of the virtual content of `img`'s chain.
fn space_sha(img: &Path, dir: &Path) -> Option<String> {
    use sha2::Digest;
    let raw = dir.join("content.raw");
    let _ = std::fs::remove_file(&raw);
    run_xtask(&[
        "convert",
        &img.display().to_string(),
        &raw.display().to_string(),
    ])
    .ok()?;
    let bytes = std::fs::read(&raw).ok()?;
    let _ = std::fs::remove_file(&raw);
    Some(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// Space after merges. For each destination kind: a full 64 MiB disk, a
/// child overwriting all of it, the merge; apparent and allocated bytes
/// after it over the in-place figure (the size before: a full overwrite of
/// a full disk allocates nothing new in place). Then 20 cycles of (child,
/// 25 % overwritten in 1 MiB pieces at random, merge) into a full dynamic
/// VHDX and VHD: the final size over the size after one cycle. Bytes
/// written by each merge process come from `xtask measure`.
fn space(root: &Path, report: &mut Report) -> formats::Result<()> {
    for (name, vhdx, fixed, differencing, block) in SPACE_KINDS {
        let dir = root.join(format!("space-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| formats::Error::io(dir.display().to_string(), e))?;
        let dest = space_destination(&dir, vhdx, fixed, differencing, block)?;
        let child = dir.join(if vhdx { "child.avhdx" } else { "child.vhd" });
        space_create(&child, "", block, Some(&dest))?;
        space_write(&child, 0, &pattern(SPACE_SIZE as usize, 13), &dir)?;
        let expect = space_sha(&child, &dir);
        sh(&["sync"]);
        let before = file_sizes(&dest);
        let m = timed(&as_strs(&merge_cmd(&dest, &child)));
        let after = file_sizes(&dest);
        let content_ok = m.success && expect.is_some() && space_sha(&dest, &dir) == expect;
        let r = SpaceResult {
            kind: name.into(),
            virtual_bytes: SPACE_SIZE,
            block_bytes: block,
            apparent_before: before.0,
            allocated_before: before.1,
            apparent_after: after.0,
            allocated_after: after.1,
            apparent_ratio: after.0 as f64 / before.0 as f64,
            allocated_ratio: after.1 as f64 / before.1 as f64,
            apparent_limit: before.0 + block,
            holds: m.success && after.0 <= before.0 + block,
            merge_write_bytes: m.write_bytes,
            merge_wall_s: m.wall_s,
            content_ok,
        };
        eprintln!("bench: {r:?}");
        report.space.push(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
    const CYCLES: usize = 20;
    for (name, vhdx, block) in [
        ("vhdx-dynamic", true, SPACE_MIB),
        ("vhd-dynamic", false, 2 * SPACE_MIB),
    ] {
        let dir = root.join(format!("space-cycles-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| formats::Error::io(dir.display().to_string(), e))?;
        let base = space_destination(&dir, vhdx, false, false, block)?;
        let mut model = pattern(SPACE_SIZE as usize, 12);
        let initial = file_sizes(&base);
        // SplitMix64, seeded per kind.
        let mut state: u64 = 0x5BACE + u64::from(vhdx);
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let slots = (SPACE_SIZE / SPACE_MIB) as usize;
        let (mut per_cycle, mut allocs, mut written, mut all_ok) = (vec![], vec![], 0i64, true);
        for cycle in 0..CYCLES {
            let child = dir.join(format!("c{cycle}.{}", if vhdx { "avhdx" } else { "vhd" }));
            space_create(&child, "", block, Some(&base))?;
            let mut order: Vec<usize> = (0..slots).collect();
            for i in 0..slots / 4 {
                let j = i + (next() % (slots - i) as u64) as usize;
                order.swap(i, j);
            }
            for (k, &slot) in order[..slots / 4].iter().enumerate() {
                let piece = pattern(SPACE_MIB as usize, 1000 + (cycle * 100 + k) as u64);
                let off = slot as u64 * SPACE_MIB;
                space_write(&child, off, &piece, &dir)?;
                model[off as usize..(off + SPACE_MIB) as usize].copy_from_slice(&piece);
            }
            let m = timed(&as_strs(&merge_cmd(&base, &child)));
            all_ok &= m.success;
            if m.write_bytes >= 0 && written >= 0 {
                written += m.write_bytes;
            } else {
                written = -1;
            }
            let _ = std::fs::remove_file(&child);
            let sz = file_sizes(&base);
            per_cycle.push(sz.0);
            allocs.push(sz.1);
        }
        let content_ok = all_ok && {
            use sha2::Digest;
            space_sha(&base, &dir) == Some(format!("{:x}", sha2::Sha256::digest(&model)))
        };
        let (first, last) = (
            (per_cycle[0], allocs[0]),
            (per_cycle[CYCLES - 1], allocs[CYCLES - 1]),
        );
        let r = SpaceCyclesResult {
            kind: name.into(),
            virtual_bytes: SPACE_SIZE,
            block_bytes: block,
            cycles: CYCLES,
            overwrite_fraction: 0.25,
            apparent_initial: initial.0,
            allocated_initial: initial.1,
            apparent_after_first: first.0,
            allocated_after_first: first.1,
            apparent_final: last.0,
            allocated_final: last.1,
            apparent_ratio: last.0 as f64 / first.0 as f64,
            allocated_ratio: last.1 as f64 / first.1 as f64,
            holds: all_ok && last.0 <= first.0 + block,
            apparent_per_cycle: per_cycle,
            merges_write_bytes: written,
            content_ok,
        };
        eprintln!("bench: {r:?}");
        report.space_cycles.push(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// One row of the clone section (`--only clone`): a merge into an empty
/// dynamic base on a loop-mounted file system that shares extents,
/// against `cp --reflink=always|never CHILD X && sync -f X` of the child
/// file, alternating within each pair; medians.
#[derive(Serialize, Debug)]
pub struct CloneResult {
    /// `xfs-reflink` or `btrfs`.
    pub fs: String,
    pub workload: String,
    pub vhdx: bool,
    pub fill: CloneFill,
    pub block_bytes: u64,
    /// Bytes of data the child holds (the payload).
    pub data_bytes: u64,
    pub pairs: usize,
    pub merge_s: f64,
    pub cp_reflink_s: f64,
    pub cp_copy_s: f64,
    pub merge_s_per_gib: f64,
    /// merge_s / cp_reflink_s.
    pub merge_over_reflink: f64,
    /// Bytes the merge process wrote as the kernel counted them
    /// (`Measurement::write_bytes`); -1 when unknown.
    pub merge_write_bytes: i64,
    /// merge_write_bytes / data_bytes.
    pub written_over_data: f64,
    pub cp_reflink_write_bytes: i64,
    pub cp_copy_write_bytes: i64,
    pub merge_max_rss_kib: i64,
    /// The destination's `stat -c '%s %b'` (apparent bytes, 512-byte
    /// blocks as bytes) just before and just after the first merge.
    pub dest_apparent_before: u64,
    pub dest_allocated_before: u64,
    pub dest_apparent_after: u64,
    pub dest_allocated_after: u64,
    /// statvfs free bytes before the merge minus after (each after
    /// `sync -f`), with the child still present; median (negative when the
    /// merge left more free space than it found).
    pub fs_used_bytes: i64,
    /// The destination's virtual content after the first merge equals the
    /// child's view before it (sha256 of the range the data was written to).
    pub content_ok: bool,
    pub s_per_gib_target: Option<f64>,
    pub reflink_ratio_target: Option<f64>,
    /// Target for written_over_data.
    pub written_target: f64,
    pub s_per_gib_holds: Option<bool>,
    pub reflink_ratio_holds: Option<bool>,
    pub written_holds: bool,
}

const CLONE_GIB: u64 = 1 << 30;

/// How a clone workload's child holds its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CloneFill {
    /// Whole blocks, written by `write`.
    Full,
    /// The first half of every block, written by `write` (one call per
    /// block): the other half is absent from the child.
    HalfBlocks,
    /// 4 KiB written, 4 KiB not, through every block (as `Fill::Half`):
    /// half of each block, in 4 KiB runs.
    Half4k,
    /// `HalfBlocks` over a base that holds every block the child touches
    /// (filled before the child is made): each merged block is replaced
    /// in part, the case `merge --held-blocks` decides.
    HalfOverFull,
}

/// The clone section's images, made on the mount.
struct CloneWorkload {
    name: String,
    dir: PathBuf,
    base: PathBuf,
    child: PathBuf,
    vhdx: bool,
    fill: CloneFill,
    block: u64,
    data: u64,
    /// Virtual bytes from 0 that the data was written over.
    extent: u64,
}

/// Run an xtask subcommand; its stderr in the error.
fn xtask_run(args: &[String]) -> formats::Result<()> {
    let out = Command::new(exe())
        .args(args)
        .output()
        .map_err(|e| formats::Error::io(args.join(" "), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(formats::Error::InvalidParameter(format!(
            "bench clone: `xtask {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn clone_args(parts: &[&dyn std::fmt::Display]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// `len` bytes of `pattern`, 4 MiB pieces salted by their index (so no two
/// blocks hold the same bytes), written to `path` without holding them.
fn write_pattern_file(path: &Path, len: u64, salt: u64) -> formats::Result<()> {
    use std::io::Write;
    let err = |e| formats::Error::io(path.display().to_string(), e);
    let mut f = std::fs::File::create(path).map_err(err)?;
    let (mut off, mut i) = (0u64, 0u64);
    while off < len {
        let n = (4u64 << 20).min(len - off);
        f.write_all(&pattern(n as usize, salt.wrapping_add(i)))
            .map_err(err)?;
        off += n;
        i += 1;
    }
    Ok(())
}

/// Base (empty dynamic) and differencing child on the mount, the child
/// holding `data` bytes from virtual offset 0 as `fill` says. VHD: `write` places a block's
/// data 512 bytes past a page (after its sector bitmap), where no clone can
/// reach it, so the data goes into a third level (top) that is then merged
/// into the child, which places the child's blocks on pages, as any chain
/// chainfold merged before has them. VHDX blocks are aligned either way.
fn clone_workload(
    mnt: &Path,
    scratch: &Path,
    name: &str,
    vhdx: bool,
    block: u64,
    data: u64,
    fill: CloneFill,
) -> formats::Result<CloneWorkload> {
    let dir = mnt.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let virtual_size = 4 * data;
    if fill == CloneFill::Half4k {
        let w = make_workload(
            mnt,
            name,
            vhdx,
            u32::try_from(block).unwrap_or(u32::MAX),
            virtual_size,
            data,
            Fill::Half,
        )?;
        return Ok(CloneWorkload {
            name: name.into(),
            dir,
            base: w.base,
            child: w.child,
            vhdx,
            fill,
            block,
            data,
            extent: w.extent_bytes,
        });
    }
    let (base, child) = workload_images(&dir, vhdx)?;
    let extent = if fill == CloneFill::Full {
        data
    } else {
        2 * data
    };
    xtask_run(&clone_args(&[
        &"create",
        &base.display(),
        &"--size",
        &virtual_size,
        &"--block-size",
        &block,
    ]))?;
    if fill == CloneFill::HalfOverFull {
        let input = scratch.join("clone-base-full.bin");
        write_pattern_file(&input, extent, 29)?;
        xtask_run(&clone_args(&[
            &"write",
            &base.display(),
            &"--offset",
            &0,
            &"--input",
            &input.display(),
        ]))?;
        let _ = std::fs::remove_file(&input);
    }
    xtask_run(&clone_args(&[
        &"create",
        &child.display(),
        &"--parent",
        &base.display(),
        &"--block-size",
        &block,
    ]))?;
    let top = dir.join(if vhdx { "top.avhdx" } else { "top.vhd" });
    let target = if vhdx {
        child.clone()
    } else {
        xtask_run(&clone_args(&[
            &"create",
            &top.display(),
            &"--parent",
            &child.display(),
            &"--block-size",
            &block,
        ]))?;
        top.clone()
    };
    if fill == CloneFill::Full {
        let input = scratch.join(format!("clone-input-{data}.bin"));
        if !input.exists() {
            write_pattern_file(&input, data, 17)?;
        }
        xtask_run(&clone_args(&[
            &"write",
            &target.display(),
            &"--offset",
            &0,
            &"--input",
            &input.display(),
        ]))?;
    } else {
        let input = scratch.join("clone-half.bin");
        let half = block / 2;
        for k in 0..data / half {
            write_pattern_file(&input, half, 1000 + k * 16)?;
            xtask_run(&clone_args(&[
                &"write",
                &target.display(),
                &"--offset",
                &(k * block),
                &"--input",
                &input.display(),
            ]))?;
        }
        let _ = std::fs::remove_file(&input);
    }
    if !vhdx {
        xtask_run(&clone_args(&[&"merge", &top.display()]))?;
        let _ = std::fs::remove_file(&top);
    }
    Ok(CloneWorkload {
        name: name.into(),
        dir,
        base,
        child,
        vhdx,
        fill,
        block,
        data,
        extent,
    })
}

/// sha256 of the first `len` virtual bytes of `img`'s chain.
fn view_sha(img: &Path, len: u64) -> Option<String> {
    use sha2::Digest;
    let chain = formats::chain::Chain::open(&ns(), img, &ChainOptions::default()).ok()?;
    let mut r = chain.reader();
    let mut buf = vec![0u8; 4 << 20];
    let mut h = sha2::Sha256::new();
    let mut off = 0;
    while off < len {
        let n = (buf.len() as u64).min(len - off) as usize;
        r.read(off, &mut buf[..n]).ok()?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Some(format!("{:x}", h.finalize()))
}

fn median_i64(v: &[i64]) -> i64 {
    if v.is_empty() || v.iter().any(|&x| x < 0) {
        return -1;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// `cp --reflink=WHEN FROM TO && sync -f TO`, under `xtask measure`.
fn timed_cp(when: &str, from: &Path, to: &Path) -> Measurement {
    timed(&[
        "sh",
        "-c",
        &format!("cp --reflink={when} \"$1\" \"$2\" && sync -f \"$2\""),
        "sh",
        &from.display().to_string(),
        &to.display().to_string(),
    ])
}

/// Set by SIGINT / SIGTERM while the clone section runs: the section stops
/// at its next step and returns, so its mounts are unmounted (their guards
/// dropped) instead of left behind by a killed process.
static CLONE_CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static CLONE_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn clone_check_cancel() -> formats::Result<()> {
    if CLONE_CANCELLED.load(std::sync::atomic::Ordering::SeqCst) {
        Err(formats::Error::io(
            "bench clone",
            std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted by a signal; its loop mounts are unmounted",
            ),
        ))
    } else {
        Ok(())
    }
}

/// Clears `CLONE_RUNNING` when the section ends, however it ends.
struct CloneRunning;
impl Drop for CloneRunning {
    fn drop(&mut self) {
        CLONE_RUNNING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn clone_install_signal_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Outside the clone section a signal ends the bench as it would
        // without a handler.
        let _ = ctrlc::set_handler(|| {
            if CLONE_RUNNING.load(std::sync::atomic::Ordering::SeqCst) {
                CLONE_CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        });
    });
}

/// Time one clone workload: `pairs` x (merge of fresh reflinked copies of
/// base and child, cp --reflink=always, cp --reflink=never), `sync` before
/// each.
fn clone_row(
    m: &testdata::loopfs::LoopMount,
    fs: &str,
    w: &CloneWorkload,
    pairs: usize,
) -> formats::Result<CloneResult> {
    let want = view_sha(&w.child, w.extent);
    let run = w.dir.join("run");
    let x = w.dir.join("x.bin");
    let (mut merges, mut reflinks, mut copies) = (vec![], vec![], vec![]);
    let (mut mw, mut rw, mut cw, mut used) = (vec![], vec![], vec![], vec![]);
    let (mut rss, mut content_ok) = (-1i64, false);
    let (mut before, mut after) = ((0, 0), (0, 0));
    for p in 0..pairs {
        clone_check_cancel()?;
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run)
            .map_err(|e| formats::Error::io(run.display().to_string(), e))?;
        let b = run.join(w.base.file_name().unwrap_or_default());
        let c = run.join(w.child.file_name().unwrap_or_default());
        for (from, to) in [(&w.base, &b), (&w.child, &c)] {
            if !sh(&[
                "cp",
                "--reflink=always",
                &from.display().to_string(),
                &to.display().to_string(),
            ]) {
                return Err(formats::Error::InvalidParameter(format!(
                    "bench clone: cp --reflink=always {} failed",
                    from.display()
                )));
            }
        }
        sh(&["sync"]);
        let dest0 = file_sizes(&b);
        let free0 = m.free_bytes();
        let mr = timed(&as_strs(&merge_cmd(&b, &c)));
        let free1 = m.free_bytes();
        let dest1 = file_sizes(&b);
        if !mr.success {
            return Err(formats::Error::InvalidParameter(format!(
                "bench clone: merge of {} on {fs} failed",
                w.name
            )));
        }
        eprintln!(
            "bench:   {fs} {}: merge {:.3}s, wrote {} bytes, fs used {} bytes",
            w.name,
            mr.wall_s,
            mr.write_bytes,
            free0 as i64 - free1 as i64
        );
        if p == 0 {
            before = dest0;
            after = dest1;
            content_ok = want.is_some() && view_sha(&b, w.extent) == want;
        }
        merges.push(mr.wall_s);
        mw.push(mr.write_bytes);
        used.push(free0 as i64 - free1 as i64);
        rss = rss.max(mr.max_rss_kib);
        let _ = std::fs::remove_dir_all(&run);
        for (when, times, wrote) in [
            ("always", &mut reflinks, &mut rw),
            ("never", &mut copies, &mut cw),
        ] {
            clone_check_cancel()?;
            let _ = std::fs::remove_file(&x);
            sh(&["sync"]);
            let cm = timed_cp(when, &w.child, &x);
            eprintln!(
                "bench:   {fs} {}: cp --reflink={when} {:.3}s{}",
                w.name,
                cm.wall_s,
                if cm.success { "" } else { " (failed)" }
            );
            times.push(if cm.success { cm.wall_s } else { f64::NAN });
            wrote.push(if cm.success { cm.write_bytes } else { -1 });
            let _ = std::fs::remove_file(&x);
        }
    }
    sh(&["sync"]);
    let (ms, rs, cs) = (median(merges), median(reflinks), median(copies));
    let gib = w.data as f64 / CLONE_GIB as f64;
    let written = median_i64(&mw);
    let written_over_data = if written < 0 {
        f64::NAN
    } else {
        written as f64 / w.data as f64
    };
    let (s_per_gib_target, reflink_ratio_target, written_target) = if w.fill == CloneFill::Full {
        (Some(0.1), Some(50.0), 0.05)
    } else {
        (None, None, 1.05)
    };
    let s_per_gib = ms / gib;
    Ok(CloneResult {
        fs: fs.into(),
        workload: w.name.clone(),
        vhdx: w.vhdx,
        fill: w.fill,
        block_bytes: w.block,
        data_bytes: w.data,
        pairs,
        merge_s: ms,
        cp_reflink_s: rs,
        cp_copy_s: cs,
        merge_s_per_gib: s_per_gib,
        merge_over_reflink: ms / rs,
        merge_write_bytes: written,
        written_over_data,
        cp_reflink_write_bytes: median_i64(&rw),
        cp_copy_write_bytes: median_i64(&cw),
        merge_max_rss_kib: rss,
        dest_apparent_before: before.0,
        dest_allocated_before: before.1,
        dest_apparent_after: after.0,
        dest_allocated_after: after.1,
        fs_used_bytes: {
            used.sort_unstable();
            used.get(used.len() / 2).copied().unwrap_or(0)
        },
        content_ok,
        s_per_gib_target,
        reflink_ratio_target,
        written_target,
        s_per_gib_holds: s_per_gib_target.map(|t| s_per_gib <= t),
        reflink_ratio_holds: reflink_ratio_target.map(|t| ms / rs <= t),
        written_holds: written_over_data <= written_target,
    })
}

/// `--only clone`: merges on XFS (reflink) and btrfs, each a loop mount
/// made here and unmounted when its guard drops (also on an error or a
/// SIGINT / SIGTERM, which stop the section at its next step). Rows: a
/// VHDX (32 MiB blocks) and a VHD (2 MiB blocks) child holding 1 GiB and
/// 4 GiB (`--quick`: 1 GiB) in full blocks, and two VHDX children with
/// 32 MiB blocks each half written (1 GiB of data; `--quick`: 256 MiB):
/// the first half of each block, and every other 4 KiB; each merged into
/// an empty dynamic base; against `cp --reflink=always` and
/// `cp --reflink=never` of the child (then `sync -f`).
fn clone_section(
    args: &BenchArgs,
    root: &Path,
    pairs: usize,
    report: &mut Report,
) -> formats::Result<()> {
    use testdata::loopfs::{FsKind, LoopMount};
    clone_install_signal_handler();
    CLONE_RUNNING.store(true, std::sync::atomic::Ordering::SeqCst);
    let _running = CloneRunning;
    let sizes: &[u64] = if args.quick {
        &[CLONE_GIB]
    } else {
        &[CLONE_GIB, 4 * CLONE_GIB]
    };
    let half_data = if args.quick { 256 << 20 } else { CLONE_GIB };
    // (name, vhdx, block, data, fill)
    let mut rows: Vec<(String, bool, u64, u64, CloneFill)> = vec![];
    for &data in sizes {
        let gib = data / CLONE_GIB;
        let full = CloneFill::Full;
        rows.push((format!("vhdx-32M-{gib}G"), true, 32 << 20, data, full));
        rows.push((format!("vhd-2M-{gib}G"), false, 2 << 20, data, full));
    }
    for (label, fill) in [
        ("half", CloneFill::HalfBlocks),
        ("half4k", CloneFill::Half4k),
        // The base holds every block: each is replaced in part (`auto`
        // rebuilds by a clone of the old block plus the new sectors).
        ("held-half", CloneFill::HalfOverFull),
    ] {
        let mib = half_data >> 20;
        rows.push((
            format!("vhdx-32M-{label}-{mib}M"),
            true,
            32 << 20,
            half_data,
            fill,
        ));
    }
    let scratch = root.join("clone-scratch");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| formats::Error::io(scratch.display().to_string(), e))?;
    fn skip(report: &mut Report, line: String) {
        eprintln!("bench: {line}");
        report.clone_skipped.push(line);
    }
    for (kind, fs, label, tool) in [
        (FsKind::Xfs, "xfs-reflink", "XFS (reflink)", "mkfs.xfs"),
        (FsKind::Btrfs, "btrfs", "btrfs", "mkfs.btrfs"),
    ] {
        clone_check_cancel()?;
        let selected: Vec<_> = rows
            .iter()
            .filter(|r| wanted(args, &format!("clone-{fs}-{}", r.0)))
            .collect();
        if selected.is_empty() {
            continue;
        }
        if !sh(&["sh", "-c", &format!("command -v {tool}")]) {
            skip(
                report,
                format!("clone: {label} skipped: {tool} is not installed"),
            );
            continue;
        }
        // Room for the largest row's top, child and a full copy, with slack
        // for metadata; sparse, so only what is written takes host space.
        let largest = selected.iter().map(|r| 2 * r.3).max().unwrap_or(CLONE_GIB);
        eprintln!("bench: clone: mounting {label}");
        let m = match LoopMount::new(kind, 4 * largest + 4 * CLONE_GIB) {
            Ok(m) => m,
            Err(reason) => {
                skip(report, format!("clone: {label} skipped: {reason}"));
                continue;
            }
        };
        // A mount that does not share extents (reflink off) is no clone
        // bench: say so rather than time copies.
        let probe = m.path().join("probe");
        let probe2 = m.path().join("probe2");
        let _ = std::fs::write(&probe, pattern(1 << 20, 1));
        if !sh(&[
            "cp",
            "--reflink=always",
            &probe.display().to_string(),
            &probe2.display().to_string(),
        ]) {
            skip(
                report,
                format!("clone: {label} skipped: cp --reflink=always is refused on the mount"),
            );
            continue;
        }
        let _ = std::fs::remove_file(&probe);
        let _ = std::fs::remove_file(&probe2);
        for (name, vhdx, block, data, fill) in selected {
            clone_check_cancel()?;
            eprintln!("bench: clone: preparing {fs} {name}");
            let w = match clone_workload(m.path(), &scratch, name, *vhdx, *block, *data, *fill) {
                Ok(w) => w,
                Err(e) => {
                    skip(report, format!("clone: {fs} {name} skipped: {e}"));
                    continue;
                }
            };
            clone_check_cancel()?;
            eprintln!("bench: clone: timing {fs} {name}");
            match clone_row(&m, fs, &w, pairs) {
                Ok(r) => {
                    eprintln!("bench: {r:?}");
                    report.clone.push(r);
                }
                Err(e) => {
                    clone_check_cancel()?;
                    skip(report, format!("clone: {fs} {name} failed: {e}"));
                }
            }
            let _ = std::fs::remove_dir_all(&w.dir);
        }
        drop(m);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

pub fn bench(args: &BenchArgs) -> formats::Result<Report> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let base = Path::new("target");
            let _ = std::fs::create_dir_all(base);
            tmp = tempfile::Builder::new()
                .prefix("bench-")
                .tempdir_in(base)
                .map_err(|e| formats::Error::io("target/bench", e))?;
            tmp.path().to_path_buf()
        }
    };
    let pairs = args.pairs.max(5);
    let mut report = Report {
        command: format!(
            "cargo xtask bench{}{}",
            if args.quick { " --quick" } else { "" },
            if args.json { " --json" } else { "" }
        ),
        ..Default::default()
    };
    if wanted(args, "space") && !args.prepare_only {
        eprintln!("bench: space");
        space(&root, &mut report)?;
    }
    if wanted(args, "scan") && !args.prepare_only {
        eprintln!("bench: scan");
        scan_section(&root, &mut report)?;
    }
    if (wanted(args, "clone") || args.only.iter().any(|o| o.contains("clone")))
        && !args.prepare_only
    {
        eprintln!("bench: clone");
        // Fewer pairs under --quick: each moves the data once more by cp.
        clone_section(args, &root, if args.quick { 3 } else { pairs }, &mut report)?;
    }
    // (`--only ext4-half-held` names one row of the section.)
    let ext4_half_row = args.only.iter().any(|o| o.starts_with("ext4-half"));
    if (wanted(args, "ext4-half") || ext4_half_row) && !args.prepare_only {
        eprintln!("bench: ext4-half");
        ext4_half::section(args, &root, pairs, &mut report)?;
    }
    const GIB: u64 = 1 << 30;
    let sizes: &[u64] = if args.quick { &[GIB] } else { &[GIB, 4 * GIB] };
    for &data in sizes {
        let gib = data / GIB;
        for (vhdx, block, fill, label) in [
            (true, 32u32 << 20, Fill::Full, "vhdx-32M-full"),
            (false, 2 << 20, Fill::Full, "vhd-2M-full"),
            (true, 32 << 20, Fill::Half, "vhdx-32M-half4k"),
            (false, 2 << 20, Fill::Half, "vhd-2M-half4k"),
        ] {
            let vs = 4 * data;
            let name = format!("{label}-{gib}G");
            if !wanted(args, &name) {
                continue;
            }
            eprintln!("bench: preparing {name}");
            let w = make_workload(&root, &name, vhdx, block, vs, data, fill)?;
            if args.prepare_only {
                eprintln!("bench: kept {} and {}", w.base.display(), w.child.display());
                continue;
            }
            eprintln!("bench: timing {name}");
            compare_merge(&w, vs, pairs, &mut report)?;
            if matches!(fill, Fill::Full) && vhdx {
                compare_convert(&w, pairs, &mut report)?;
            }
            let _ = std::fs::remove_dir_all(&w.dir);
        }
    }
    // Memory: a 64 TiB virtual VHDX holding 4 GiB (1 GiB in quick mode),
    // and 1,000,000 scattered 512-byte runs.
    let data = if args.quick { GIB } else { 4 * GIB };
    if wanted(args, "memory-64T") {
        eprintln!("bench: memory workloads");
        let w = make_workload(&root, "mem-64T", true, 32 << 20, 64 << 40, data, Fill::Full)?;
        if args.prepare_only {
            eprintln!("bench: kept {} and {}", w.base.display(), w.child.display());
            return Ok(report);
        }
        memory(&w, &mut report);
        eprintln!("bench: {:?}", report.memory.last());
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    if wanted(args, "memory-1M-runs") {
        let w = make_workload(
            &root,
            "mem-1M-runs",
            true,
            32 << 20,
            64 << 30,
            1_000_000 * 512,
            Fill::Scattered {
                runs: 1_000_000,
                stride: 64 << 10,
            },
        )?;
        memory(&w, &mut report);
        eprintln!("bench: {:?}", report.memory.last());
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    if !wanted(args, "scaling") {
        return Ok(report);
    }
    // Scaling: the same 1 GiB in a 64 GiB and a 64 TiB virtual disk.
    eprintln!("bench: scaling");
    let small = make_workload(
        &root,
        "scale-64G",
        true,
        32 << 20,
        64 << 30,
        GIB,
        Fill::Full,
    )?;
    let large = make_workload(
        &root,
        "scale-64T",
        true,
        32 << 20,
        64 << 40,
        GIB,
        Fill::Full,
    )?;
    if args.prepare_only {
        for w in [&small, &large] {
            eprintln!("bench: kept {} and {}", w.base.display(), w.child.display());
        }
        return Ok(report);
    }
    let (mut s, mut l, mut sc, mut lc) = (vec![], vec![], vec![], vec![]);
    let (mut su, mut lu) = (vec![], vec![]);
    // More pairs than elsewhere: the difference sought is a fraction of
    // the run-to-run spread of one merge.
    let scaling_pairs = 2 * pairs - 1;
    for _ in 0..scaling_pairs {
        // As in `compare_merge`: no merge pays for writing back the
        // setup copies' dirty pages.
        // Small then large in each pair, so drift hits both alike.
        for (w, wall, cpu, user) in [
            (&small, &mut s, &mut sc, &mut su),
            (&large, &mut l, &mut lc, &mut lu),
        ] {
            let (b, c) = fresh(w);
            sh(&["sync"]);
            let m = timed(&as_strs(&merge_cmd(&b, &c)));
            wall.push(m.wall_s);
            cpu.push(m.cpu_s);
            user.push(m.user_s);
        }
    }
    // Time to read the larger BATs: the BAT region (at 3 MiB in files
    // `create` makes) of each 64 TiB image, into a fresh buffer, from fresh
    // copies as the merges above see them (a cached BAT reads in 2 ms, a
    // fresh copy's, mostly holes the kernel zero-fills, in 15-18 ms).
    let bat_bytes: u64 = ((64u64 << 40) / (32 << 20)) * 8;
    let read_bat = |path: &Path| {
        let start = Instant::now();
        let mut buf = vec![0u8; bat_bytes as usize];
        if let Ok(f) = std::fs::File::open(path) {
            use std::os::unix::fs::FileExt;
            let _ = f.read_at(&mut buf, 3 << 20);
        }
        drop(buf);
        start.elapsed().as_secs_f64()
    };
    let (mut one, mut both) = (vec![], vec![]);
    for _ in 0..5 {
        let (b, c) = fresh(&large);
        sh(&["sync"]);
        let child_s = read_bat(&c);
        one.push(child_s);
        both.push(child_s + read_bat(&b));
    }
    let (bat_s, bats_s) = (median(one), median(both));
    let (ms, ml) = (median(s), median(l));
    let (cs, cl) = (median(sc), median(lc));
    let (us, ul) = (median(su), median(lu));
    report.scaling.push(ScalingResult {
        small_cpu_s: cs,
        large_cpu_s: cl,
        cpu_difference_s: cl - cs,
        cpu_holds: cl - cs < bats_s.max(0.0) || cl - cs <= 0.0,
        small_user_s: us,
        large_user_s: ul,
        user_difference_s: ul - us,
        user_holds: ul - us < bats_s.max(0.0) || ul - us <= 0.0,
        pairs: scaling_pairs,
        small_virtual: 64 << 30,
        large_virtual: 64 << 40,
        small_s: ms,
        large_s: ml,
        difference_s: ml - ms,
        large_bat_read_s: bat_s,
        large_bats_read_s: bats_s,
        holds: (ml - ms) < bats_s.max(0.0) || (ml - ms) <= 0.0,
        holds_against_one_bat: (ml - ms) < bat_s.max(0.0) || (ml - ms) <= 0.0,
    });
    let _ = std::fs::remove_dir_all(&small.dir);
    let _ = std::fs::remove_dir_all(&large.dir);
    Ok(report)
}

/// The clone section's table (one line per row) and its skip lines.
fn print_clone(r: &Report) {
    if r.clone.is_empty() && r.clone_skipped.is_empty() {
        return;
    }
    let mib = |b: i64| {
        if b < 0 {
            "?".to_string()
        } else {
            format!("{:.1}", b as f64 / (1u64 << 20) as f64)
        }
    };
    let verdict = |v: Option<bool>| match v {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "-",
    };
    if let Some(c) = r.clone.first() {
        println!(
            "clone: merge of the child into an empty dynamic base (held-half: a base holding every block the child half replaces) on a loop mount, vs `cp --reflink=always|never CHILD X && sync -f X` ({} alternating pairs, medians; wrote = bytes the process wrote as the kernel counted them; dest = the base's `stat -c '%s %b'` as MiB, apparent/allocated, before -> after the merge; fs used = statvfs free space the merge consumed, child still present)",
            c.pairs
        );
    }
    if !r.clone.is_empty() {
        println!(
            "{:<34} {:>8} {:>9} {:>8} {:>14} {:>16} {:>10} {:>20} {:>17} {:>8} {:>27} {:>8} {:>7}",
            "clone: workload",
            "merge s",
            "reflink s",
            "copy s",
            "s/GiB (<=0.1)",
            "/reflink (<=50)",
            "wrote MiB",
            "wrote/data (target)",
            "cp wrote MiB r/c",
            "RSS MiB",
            "dest MiB before -> after",
            "fs used",
            "content"
        );
    }
    for c in &r.clone {
        let s_per_gib = match c.s_per_gib_target {
            Some(_) => format!("{:.3} {}", c.merge_s_per_gib, verdict(c.s_per_gib_holds)),
            None => format!("{:.3}", c.merge_s_per_gib),
        };
        let ratio = match c.reflink_ratio_target {
            Some(_) => format!(
                "{:.1} {}",
                c.merge_over_reflink,
                verdict(c.reflink_ratio_holds)
            ),
            None => format!("{:.1}", c.merge_over_reflink),
        };
        let written = format!(
            "{:.4} (<={}) {}",
            c.written_over_data,
            c.written_target,
            verdict(Some(c.written_holds))
        );
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        println!(
            "{:<34} {:>8.3} {:>9.3} {:>8.3} {:>14} {:>16} {:>10} {:>20} {:>17} {:>8.1} {:>27} {:>8} {:>7}",
            format!("{} {}", c.fs, c.workload),
            c.merge_s,
            c.cp_reflink_s,
            c.cp_copy_s,
            s_per_gib,
            ratio,
            mib(c.merge_write_bytes),
            written,
            format!("{}/{}", mib(c.cp_reflink_write_bytes), mib(c.cp_copy_write_bytes)),
            c.merge_max_rss_kib as f64 / 1024.0,
            format!(
                "{:.1}/{:.1} -> {:.1}/{:.1}",
                mb(c.dest_apparent_before),
                mb(c.dest_allocated_before),
                mb(c.dest_apparent_after),
                mb(c.dest_allocated_after)
            ),
            format!("{:.1}", c.fs_used_bytes as f64 / (1u64 << 20) as f64),
            content(c.content_ok)
        );
    }
    for line in &r.clone_skipped {
        println!("{line}");
    }
}

pub fn run(args: BenchArgs) -> u8 {
    match bench(&args) {
        Ok(r) => {
            if args.json {
                crate::cli_util::print_json(&r);
            } else {
                println!("{}", r.command);
                println!(
                    "{:<28} {:>10} {:>28} {:>10} {:>7} {:>7} {:>6} {:>8}",
                    "workload",
                    "chainfold",
                    "baseline",
                    "base s",
                    "ratio",
                    "target",
                    "holds",
                    "RSS MiB"
                );
                for c in &r.comparisons {
                    println!(
                        "{:<28} {:>9.3}s {:>28} {:>9.3}s {:>7.2} {:>7.2} {:>6} {:>8.1}{}",
                        c.workload,
                        c.chainfold_s,
                        c.baseline,
                        c.baseline_s,
                        c.ratio,
                        c.target,
                        c.holds,
                        c.chainfold_max_rss_mib,
                        match (c.holds, c.target_below_device_floor, c.device_floor_s) {
                            (false, true, Some(f)) => format!(
                                "  (target {:.3}s is below the device floor {f:.3}s)",
                                c.baseline_s * c.target
                            ),
                            _ => String::new(),
                        }
                    );
                }
                let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                let wmib = |b: i64| {
                    if b < 0 {
                        "?".to_string()
                    } else {
                        format!("{:.1}", b as f64 / (1u64 << 20) as f64)
                    }
                };
                if !r.space.is_empty() {
                    println!(
                        "{:<28} {:>9} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7} {:>6} {:>8} {:>10}",
                        "space: full overwrite",
                        "block MiB",
                        "apparent MiB",
                        "-> after",
                        "ratio",
                        "alloc MiB",
                        "-> after",
                        "ratio",
                        "holds",
                        "content",
                        "wrote MiB"
                    );
                }
                for s in &r.space {
                    println!(
                        "{:<28} {:>9.0} {:>12.3} {:>12.3} {:>7.3} {:>12.3} {:>12.3} {:>7.3} {:>6} {:>8} {:>10}",
                        format!("{} {} MiB", s.kind, s.virtual_bytes >> 20),
                        mib(s.block_bytes),
                        mib(s.apparent_before),
                        mib(s.apparent_after),
                        s.apparent_ratio,
                        mib(s.allocated_before),
                        mib(s.allocated_after),
                        s.allocated_ratio,
                        s.holds,
                        content(s.content_ok),
                        wmib(s.merge_write_bytes)
                    );
                }
                for sc in &r.scan {
                    println!(
                        "scan: {} images in one folder: cold {} (caches dropped), warm {:.3}s (median of 3), peak RSS {:.1} MiB, {} found; target < {:.0}s: {}",
                        sc.images,
                        sc.cold_s.map_or("not measured (not root)".into(), |c| format!("{c:.3}s")),
                        sc.warm_s,
                        sc.max_rss_mib,
                        sc.images_found,
                        sc.limit_s,
                        holds(sc.holds)
                    );
                }
                for c in &r.space_cycles {
                    println!(
                        "space: {} cycles into {} {} MiB ({:.0} % each): apparent {:.3} MiB initially, {:.3} after cycle 1, {:.3} after cycle {} ({:.3}x); allocated {:.3} / {:.3} / {:.3} MiB ({:.3}x); merges wrote {} MiB; content {}: {}",
                        c.cycles,
                        c.kind,
                        c.virtual_bytes >> 20,
                        c.overwrite_fraction * 100.0,
                        mib(c.apparent_initial),
                        mib(c.apparent_after_first),
                        mib(c.apparent_final),
                        c.cycles,
                        c.apparent_ratio,
                        mib(c.allocated_initial),
                        mib(c.allocated_after_first),
                        mib(c.allocated_final),
                        c.allocated_ratio,
                        wmib(c.merges_write_bytes),
                        content(c.content_ok),
                        holds(c.holds)
                    );
                }
                print_clone(&r);
                ext4_half::print(&r);
                for m in &r.memory {
                    println!(
                        "memory {:<22} peak RSS {:>7.1} MiB (limit {}) in {:.2}s: {}",
                        m.workload,
                        m.max_rss_mib,
                        m.limit_mib,
                        m.wall_s,
                        holds(m.holds)
                    );
                }
                for s in &r.scaling {
                    println!(
                        "scaling 64 GiB {:.3}s vs 64 TiB {:.3}s: difference {:.3}s, reading the larger BATs (child and destination) {:.3}s: {}; one BAT {:.3}s: {}",
                        s.small_s, s.large_s, s.difference_s, s.large_bats_read_s, holds(s.holds),
                        s.large_bat_read_s, holds(s.holds_against_one_bat)
                    );
                    println!(
                        "scaling, CPU time: 64 GiB {:.3}s vs 64 TiB {:.3}s: difference {:.3}s: {}",
                        s.small_cpu_s,
                        s.large_cpu_s,
                        s.cpu_difference_s,
                        holds(s.cpu_holds)
                    );
                    println!(
                        "scaling, user CPU time: 64 GiB {:.3}s vs 64 TiB {:.3}s: difference {:.3}s: {} ({} pairs)",
                        s.small_user_s,
                        s.large_user_s,
                        s.user_difference_s,
                        holds(s.user_holds),
                        s.pairs
                    );
                }
            }
            0
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            1
        }
    }
}
