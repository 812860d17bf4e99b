//! `map IMAGE [--json] [--svg FILE]`: which layer of the chain ending at
//! IMAGE provides each virtual range, and where its bytes are in that
//! layer's file.
//!
//! The chain is folded (`formats::chain::fold`) one window at a time, and
//! stretches that no layer holds are jumped over with `Layer::next_held`
//! (a BAT scan), so the work follows the runs, not the virtual size: a
//! 64 TiB VHDX holding a few blocks maps in milliseconds. Partially present
//! blocks come out of the fold already split by their sector bitmaps.
//! Runs from one layer that are contiguous in the file are joined, within
//! and across windows; zeros and bytes no layer holds are both `null`.
//!
//! `--svg FILE` draws one row per layer (everything it holds, visible in
//! the merged view or not) and the merged view below it; a row with more
//! than [`EXACT_LIMIT`] ranges is drawn as buckets, each coloured by the
//! layer providing most of its bytes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use formats::chain::{fold, Chain, FoldedRun, Source};
use formats::layer::Layer;
use formats::Error;
use merge::plan::NextHeld;
use serde::Serialize;

use crate::cli_util::{chain_options, fs, print_failure};
use crate::ChainArgs;

#[derive(Args)]
pub struct MapArgs {
    pub image: PathBuf,
    /// Print {"layers": [path...], "virtual_size": N, "runs": [{"start",
    /// "length", "layer", "offset"}]} (layer: index into layers, 0 = IMAGE;
    /// layer and offset null for zeros).
    #[arg(long)]
    pub json: bool,
    /// Also draw the map into this SVG file: a row per layer, the merged view below.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// Virtual bytes folded per step (held stretches only: the rest is jumped).
const WINDOW: u64 = 1 << 30;

/// Joins runs handed over window by window: same source, adjacent in
/// virtual space and, for data, in the file.
struct Joiner {
    pending: Option<FoldedRun>,
}

fn joinable(a: &FoldedRun, b: &FoldedRun) -> bool {
    a.offset + a.len == b.offset
        && match (a.source, b.source) {
            (Source::Zero, Source::Zero) | (Source::NotHeld, Source::NotHeld) => true,
            (
                Source::Layer {
                    layer: la,
                    file_offset: fa,
                },
                Source::Layer {
                    layer: lb,
                    file_offset: fb,
                },
            ) => la == lb && fa + a.len == fb,
            _ => false,
        }
}

impl Joiner {
    fn push(&mut self, r: FoldedRun, f: &mut impl FnMut(FoldedRun)) {
        if r.len == 0 {
            return;
        }
        match &mut self.pending {
            Some(p) if joinable(p, &r) => p.len += r.len,
            p => {
                if let Some(done) = p.replace(r) {
                    f(done);
                }
            }
        }
    }

    fn finish(&mut self, f: &mut impl FnMut(FoldedRun)) {
        if let Some(done) = self.pending.take() {
            f(done);
        }
    }
}

/// Fold `layers` (top first) over `[0, size)` and hand every run to `f`, in
/// order, joined, covering the range exactly. A stretch before which every
/// layer's `next_held` says it holds nothing is one `NotHeld` run, found
/// without mapping it.
pub fn walk(layers: &[&dyn Layer], size: u64, mut f: impl FnMut(FoldedRun)) -> Result<(), Error> {
    let mut held = NextHeld::new(layers.len());
    let mut joiner = Joiner { pending: None };
    let mut runs = Vec::new();
    let mut off = 0;
    while off < size {
        let next = held.at(layers, off, size)?;
        if next > off {
            joiner.push(
                FoldedRun {
                    offset: off,
                    len: next - off,
                    source: Source::NotHeld,
                },
                &mut f,
            );
            off = next;
            continue;
        }
        let len = WINDOW.min(size - off);
        runs.clear();
        fold(layers, off, len, &mut runs)?;
        for r in &runs {
            joiner.push(*r, &mut f);
        }
        off += len;
    }
    joiner.finish(&mut f);
    Ok(())
}

/// One run as printed: `layer`/`offset` null for zeros and unheld bytes.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutRun {
    pub start: u64,
    pub length: u64,
    pub layer: Option<usize>,
    pub offset: Option<u64>,
}

/// The printed runs: fold runs with zeros and unheld bytes joined (both
/// read as zeros and print alike).
fn out_runs(runs: &[FoldedRun], mut f: impl FnMut(OutRun)) {
    let mut pending: Option<OutRun> = None;
    for r in runs {
        let (layer, offset) = match r.source {
            Source::Layer { layer, file_offset } => (Some(layer), Some(file_offset)),
            Source::Zero | Source::NotHeld => (None, None),
        };
        if let Some(p) = &mut pending {
            if p.layer.is_none() && layer.is_none() && p.start + p.length == r.offset {
                p.length += r.len;
                continue;
            }
            f(*p);
        }
        pending = Some(OutRun {
            start: r.offset,
            length: r.len,
            layer,
            offset,
        });
    }
    if let Some(p) = pending {
        f(p);
    }
}

struct MapReport {
    layers: Vec<String>,
    virtual_size: u64,
    runs: Vec<FoldedRun>,
}

fn report(chain: &Chain) -> Result<MapReport, Error> {
    let layers = chain.layers();
    let size = chain.top().virtual_size();
    let mut runs = Vec::new();
    walk(&layers, size, |r| runs.push(r))?;
    Ok(MapReport {
        layers: chain
            .paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        virtual_size: size,
        runs,
    })
}

/// The JSON document, one run per line (a map can have millions of runs).
fn write_json(r: &MapReport) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    writeln!(w, "{{")?;
    writeln!(w, "  \"layers\": {},", serde_json::to_string(&r.layers)?)?;
    writeln!(w, "  \"virtual_size\": {},", r.virtual_size)?;
    write!(w, "  \"runs\": [")?;
    let mut first = true;
    let mut res = Ok(());
    out_runs(&r.runs, |o| {
        if res.is_err() {
            return;
        }
        let sep = if first { "\n" } else { ",\n" };
        first = false;
        res = serde_json::to_string(&o)
            .map_err(std::io::Error::from)
            .and_then(|s| write!(w, "{sep}    {s}"));
    });
    res?;
    writeln!(w, "\n  ]")?;
    writeln!(w, "}}")?;
    w.flush()
}

/// Bytes each layer provides in the merged view, and the zeros.
struct Summary {
    per_layer: Vec<(u64, u64)>,
    zero: u64,
    not_held: u64,
}

fn summarise(r: &MapReport) -> Summary {
    let mut s = Summary {
        per_layer: vec![(0, 0); r.layers.len()],
        zero: 0,
        not_held: 0,
    };
    for run in &r.runs {
        match run.source {
            Source::Layer { layer, .. } => {
                s.per_layer[layer].0 += run.len;
                s.per_layer[layer].1 += 1;
            }
            Source::Zero => s.zero += run.len,
            Source::NotHeld => s.not_held += run.len,
        }
    }
    s
}

fn write_table(r: &MapReport) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let width = r.virtual_size.to_string().len().max(6);
    writeln!(w, "{:>width$}  {:>width$}  layer", "start", "length")?;
    let mut res = Ok(());
    out_runs(&r.runs, |o| {
        if res.is_err() {
            return;
        }
        let who = match o.layer {
            Some(l) => r.layers[l].as_str(),
            None => "zeros",
        };
        res = writeln!(w, "{:>width$}  {:>width$}  {who}", o.start, o.length);
    });
    res?;
    let s = summarise(r);
    writeln!(
        w,
        "\n{} ({} virtual), bytes provided:",
        r.layers[0],
        human(r.virtual_size)
    )?;
    for (i, (path, (bytes, n))) in r.layers.iter().zip(&s.per_layer).enumerate() {
        writeln!(
            w,
            "  {i:>3}  {bytes:>width$}  {:>10}  {n} runs  {path}",
            human(*bytes)
        )?;
    }
    writeln!(
        w,
        "       {:>width$}  {:>10}  zeros ({} held as zeros, {} held by no layer)",
        s.zero + s.not_held,
        human(s.zero + s.not_held),
        s.zero,
        s.not_held
    )?;
    w.flush()
}

/// `1536` -> "1.50 KiB"; exact multiples print without decimals.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut u = 0;
    while u + 1 < UNITS.len() && n >= 1u64 << (10 * (u + 1)) {
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    let unit = 1u64 << (10 * u);
    if n.is_multiple_of(unit) {
        format!("{} {}", n / unit, UNITS[u])
    } else {
        // Two decimals even when they are zeros: "1.00 MiB" is not 1 MiB.
        format!("{:.2} {}", n as f64 / unit as f64, UNITS[u])
    }
}

// ---------------------------------------------------------------- SVG

/// Rows with more ranges than this are drawn as buckets.
pub const EXACT_LIMIT: usize = 3000;

const CANVAS_W: f64 = 1400.0;
const TRACK_X: f64 = 300.0;
const TRACK_W: f64 = 1070.0;
/// One bucket per pixel of the track.
const BUCKETS: usize = 1070;
const ROW_H: f64 = 26.0;
const ROW_GAP: f64 = 10.0;

/// Distinct, colour-blind-friendlier hues, cycled for deep chains.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#e6550d", "#31a354", "#d62728", "#756bb1", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#393b79",
];
const ZERO_FILL: &str = "url(#zeros)";

fn colour(layer: usize) -> &'static str {
    PALETTE[layer % PALETTE.len()]
}

/// What a row is about: its label, tooltip and CSS class, its categories
/// (a fill and a name each) and the virtual size its track spans.
struct RowSpec {
    label: String,
    title: String,
    class: String,
    fills: Vec<&'static str>,
    names: Vec<String>,
    size: u64,
}

/// What one row draws: ranges of categories (an index into `spec.fills`).
struct Row {
    spec: RowSpec,
    count: usize,
    exact: Option<Vec<(u64, u64, usize)>>,
    /// `BUCKETS * fills.len()` bytes per (bucket, category).
    buckets: Vec<u64>,
}

impl Row {
    fn new(spec: RowSpec) -> Row {
        let n = spec.fills.len();
        Row {
            spec,
            count: 0,
            exact: Some(Vec::new()),
            buckets: vec![0; BUCKETS * n],
        }
    }

    fn bucket_start(&self, b: usize) -> u64 {
        (u128::from(self.spec.size) * b as u128 / BUCKETS as u128) as u64
    }

    fn bucket_of(&self, off: u64) -> usize {
        ((u128::from(off) * BUCKETS as u128 / u128::from(self.spec.size)) as usize).min(BUCKETS - 1)
    }

    fn add(&mut self, start: u64, len: u64, cat: usize) {
        let end = (start + len).min(self.spec.size);
        if start >= end {
            return;
        }
        self.count += 1;
        if let Some(v) = &mut self.exact {
            if v.len() < EXACT_LIMIT {
                v.push((start, end - start, cat));
            } else {
                self.exact = None;
            }
        }
        let n = self.spec.fills.len();
        for b in self.bucket_of(start)..=self.bucket_of(end - 1) {
            let lo = self.bucket_start(b).max(start);
            let hi = self.bucket_start(b + 1).min(end);
            if hi > lo {
                self.buckets[b * n + cat] += hi - lo;
            }
        }
    }

    fn x(&self, off: u64) -> f64 {
        TRACK_X + off as f64 / self.spec.size as f64 * TRACK_W
    }

    fn draw(&self, y: f64, s: &mut String) {
        let _ = writeln!(s, "<g class=\"{}\">", self.spec.class);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" class=\"label\">{}<title>{}</title></text>",
            TRACK_X - 8.0,
            y + ROW_H / 2.0 + 4.0,
            esc(&self.spec.label),
            esc(&self.spec.title)
        );
        let _ = writeln!(
            s,
            "<rect x=\"{TRACK_X}\" y=\"{y}\" width=\"{TRACK_W}\" height=\"{ROW_H}\" fill=\"#f7f7f7\" stroke=\"#999\" stroke-width=\"0.5\"/>"
        );
        match &self.exact {
            Some(ranges) => {
                for &(start, len, cat) in ranges {
                    let x = self.x(start);
                    // At least a pixel: a 4 KiB run on a 2 TiB axis must show.
                    let w = (self.x(start + len) - x).max(1.0);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.2}\" y=\"{y}\" width=\"{w:.2}\" height=\"{ROW_H}\" fill=\"{}\"><title>{} {}+{} ({})</title></rect>",
                        self.spec.fills[cat],
                        esc(&self.spec.names[cat]),
                        start,
                        len,
                        human(len)
                    );
                }
            }
            None => self.draw_buckets(y, s),
        }
        let _ = writeln!(s, "</g>");
    }

    /// Each bucket: the category with most bytes; opacity the share of
    /// the bucket held at all. Equal neighbours become one rectangle.
    fn draw_buckets(&self, y: f64, s: &mut String) {
        let n = self.spec.fills.len();
        let mut cells: Vec<Option<(usize, u32)>> = Vec::with_capacity(BUCKETS);
        for b in 0..BUCKETS {
            let cats = &self.buckets[b * n..(b + 1) * n];
            let held: u64 = cats.iter().sum();
            let blen = self.bucket_start(b + 1) - self.bucket_start(b);
            if held == 0 || blen == 0 {
                cells.push(None);
                continue;
            }
            let (best, _) = cats
                .iter()
                .enumerate()
                .max_by_key(|&(i, v)| (*v, std::cmp::Reverse(i)))
                .expect("a category");
            // Opacity in steps of 5%: at least 35% so a sliver shows.
            let share = held as f64 / blen as f64;
            let step = (7.0 + 13.0 * share).round() as u32;
            cells.push(Some((best, step.min(20))));
        }
        let mut b = 0;
        while b < BUCKETS {
            let Some((cat, step)) = cells[b] else {
                b += 1;
                continue;
            };
            let mut e = b + 1;
            while e < BUCKETS && cells[e] == Some((cat, step)) {
                e += 1;
            }
            let x0 = TRACK_X + b as f64 * TRACK_W / BUCKETS as f64;
            let x1 = TRACK_X + e as f64 * TRACK_W / BUCKETS as f64;
            let bytes: u64 = (b..e).map(|i| self.buckets[i * n + cat]).sum();
            let _ = writeln!(
                s,
                "<rect x=\"{x0:.2}\" y=\"{y}\" width=\"{:.2}\" height=\"{ROW_H}\" fill=\"{}\" fill-opacity=\"{:.2}\"><title>{}: {} in {}+{}</title></rect>",
                x1 - x0,
                self.spec.fills[cat],
                f64::from(step) / 20.0,
                esc(&self.spec.names[cat]),
                human(bytes),
                self.bucket_start(b),
                self.bucket_start(e) - self.bucket_start(b)
            );
            b = e;
        }
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// The last `max` characters of a path, "…" in front when cut.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let t: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{t}")
}

fn svg(chain: &Chain, r: &MapReport) -> Result<String, Error> {
    let size = r.virtual_size.max(1);
    let n = r.layers.len();
    let mut rows = Vec::with_capacity(n + 1);
    // What each layer holds on its own: a fold of that layer alone.
    for (i, layer) in chain.layers().into_iter().enumerate() {
        let mut row = Row::new(RowSpec {
            label: tail(&format!("{i}: {}", r.layers[i]), 40),
            title: r.layers[i].clone(),
            class: format!("row layer layer-{i}"),
            fills: vec![colour(i), ZERO_FILL],
            names: vec![format!("layer {i} data"), format!("layer {i} zeros")],
            size,
        });
        walk(&[layer], r.virtual_size, |run| match run.source {
            Source::Layer { .. } => row.add(run.offset, run.len, 0),
            Source::Zero => row.add(run.offset, run.len, 1),
            Source::NotHeld => {}
        })?;
        rows.push(row);
    }
    let mut fills: Vec<&'static str> = (0..n).map(colour).collect();
    fills.push(ZERO_FILL);
    let mut names: Vec<String> = (0..n).map(|i| format!("layer {i}")).collect();
    names.push("zeros".into());
    let mut merged = Row::new(RowSpec {
        label: "merged view".into(),
        title: "what a reader of the chain sees".into(),
        class: "row merged".into(),
        fills,
        names,
        size,
    });
    for run in &r.runs {
        match run.source {
            Source::Layer { layer, .. } => merged.add(run.offset, run.len, layer),
            Source::Zero => merged.add(run.offset, run.len, n),
            Source::NotHeld => {}
        }
    }

    let mut notes = Vec::new();
    for row in rows.iter().chain(std::iter::once(&merged)) {
        if row.exact.is_none() {
            notes.push(format!(
                "{}: {} ranges, drawn as {BUCKETS} buckets of about {} each; each bucket is coloured by the {} providing most of its bytes, its opacity is the share of the bucket held.",
                row.spec.label,
                row.count,
                human(size / BUCKETS as u64),
                if row.spec.class.contains("merged") { "layer" } else { "kind (data or zeros)" },
            ));
        }
    }
    if notes.is_empty() {
        notes.push(format!(
            "Every range drawn exactly (at least 1 px wide); rows with more than {EXACT_LIMIT} ranges would be bucketed."
        ));
    }

    let top = 58.0;
    let rows_h = (n as f64) * (ROW_H + ROW_GAP) + 14.0 + ROW_H;
    let axis_y = top + rows_h + 8.0;
    let notes_y = axis_y + 58.0;
    let legend_y = notes_y + notes.len() as f64 * 18.0 + 12.0;
    let legend_rows = n + 2;
    let height = legend_y + legend_rows as f64 * 20.0 + 10.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CANVAS_W}\" height=\"{height:.0}\" viewBox=\"0 0 {CANVAS_W} {height:.0}\" font-family=\"sans-serif\" font-size=\"13\">"
    );
    let _ = writeln!(
        s,
        "<defs><pattern id=\"zeros\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#d9d9d9\"/><rect width=\"2\" height=\"6\" fill=\"#8a8a8a\"/></pattern>\
         <style>.label{{font-size:12px}} .tick{{font-size:11px;fill:#444}}</style></defs>"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"24\" font-size=\"16\" font-weight=\"bold\">chainfold map: {}</text>",
        esc(&r.layers[0])
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"44\">{} virtual ({} bytes), {} layer{}; rows: what each layer holds (visible or not), then the merged view (colour = providing layer)</text>",
        human(r.virtual_size),
        r.virtual_size,
        n,
        if n == 1 { "" } else { "s" }
    );
    let mut y = top;
    for row in &rows {
        row.draw(y, &mut s);
        y += ROW_H + ROW_GAP;
    }
    let _ = writeln!(
        s,
        "<line x1=\"16\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#666\" stroke-dasharray=\"4 3\"/>",
        CANVAS_W - 16.0,
        y + 2.0,
        y + 2.0
    );
    y += 14.0;
    merged.draw(y, &mut s);

    // Axis: power-of-two steps, 4 to 8 of them.
    let mut step: u64 = 512;
    while step.saturating_mul(8) < size {
        step = step.saturating_mul(2);
    }
    let _ = writeln!(s, "<g class=\"axis\">");
    let _ = writeln!(
        s,
        "<line x1=\"{TRACK_X}\" x2=\"{:.1}\" y1=\"{axis_y:.1}\" y2=\"{axis_y:.1}\" stroke=\"#333\"/>",
        TRACK_X + TRACK_W
    );
    let mut t = 0u64;
    loop {
        let x = TRACK_X + t as f64 / size as f64 * TRACK_W;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#bbb\" stroke-width=\"0.5\"/>\
             <line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{axis_y:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"tick\">{}</text>",
            top - 4.0,
            axis_y,
            axis_y + 5.0,
            axis_y + 18.0,
            if t == 0 { "0".to_string() } else { human(t) }
        );
        match t.checked_add(step) {
            Some(nt) if nt < size && (size - nt) as f64 / size as f64 > 0.06 => t = nt,
            _ => break,
        }
    }
    let _ = writeln!(
        s,
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{axis_y:.1}\" y2=\"{1:.1}\" stroke=\"#333\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\" class=\"tick\">{3}</text>",
        TRACK_X + TRACK_W,
        axis_y + 5.0,
        axis_y + 18.0,
        human(r.virtual_size)
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"tick\">virtual offset (bytes; ticks every {} = {} bytes)</text>",
        TRACK_X + TRACK_W / 2.0,
        axis_y + 34.0,
        human(step),
        step
    );
    let _ = writeln!(s, "</g>");

    let _ = writeln!(s, "<g class=\"notes\">");
    for (k, note) in notes.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"16\" y=\"{:.1}\" font-size=\"12\">{}</text>",
            notes_y + k as f64 * 18.0,
            esc(note)
        );
    }
    let _ = writeln!(s, "</g>");

    let sum = summarise(r);
    let _ = writeln!(s, "<g class=\"legend\">");
    let mut ly = legend_y;
    let mut entry = |s: &mut String, fill: &str, stroke: &str, text: String| {
        let _ = writeln!(
            s,
            "<rect x=\"16\" y=\"{:.1}\" width=\"22\" height=\"14\" fill=\"{fill}\" stroke=\"{stroke}\"/><text x=\"46\" y=\"{:.1}\">{}</text>",
            ly - 11.0,
            ly,
            esc(&text)
        );
        ly += 20.0;
    };
    for (i, path) in r.layers.iter().enumerate() {
        let (bytes, runs) = sum.per_layer[i];
        entry(
            &mut s,
            colour(i),
            "none",
            format!(
                "layer {i}{}: {path} (provides {} in {runs} runs)",
                if i == 0 { " (IMAGE)" } else { "" },
                human(bytes)
            ),
        );
    }
    entry(
        &mut s,
        ZERO_FILL,
        "none",
        format!(
            "zeros held by a layer (hide the layers below): {}",
            human(sum.zero)
        ),
    );
    entry(
        &mut s,
        "#f7f7f7",
        "#999",
        format!("held by no layer (reads zeros): {}", human(sum.not_held)),
    );
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, "</svg>");
    Ok(s)
}

fn map(args: &MapArgs) -> Result<MapReport, Error> {
    let ns = fs();
    let chain = Chain::open(&ns, &args.image, &chain_options(&args.chain))?;
    let r = report(&chain)?;
    if let Some(path) = &args.svg {
        let doc = svg(&chain, &r)?;
        let name = path.display().to_string();
        std::fs::write(path, doc).map_err(|e| Error::io(&name, e))?;
    }
    Ok(r)
}

pub fn run(args: MapArgs) -> u8 {
    match map(&args) {
        Ok(r) => {
            // A reader that went away (`| head`) is not an error.
            let _ = if args.json {
                write_json(&r)
            } else {
                write_table(&r)
            };
            if let Some(p) = &args.svg {
                eprintln!("wrote {}", p.display());
            }
            0
        }
        Err(e) => {
            print_failure(args.json, &args.image, &e);
            if let Error::ParentNotFound { .. } | Error::FileNotFound { .. } = e {
                3
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.50 KiB");
        assert_eq!(human((1 << 20) + 4096), "1.00 MiB");
        assert_eq!(human(2 << 40), "2 TiB");
        assert_eq!(human(64 << 40), "64 TiB");
    }

    #[test]
    fn zeros_and_unheld_print_as_one_run() {
        let runs = [
            FoldedRun {
                offset: 0,
                len: 512,
                source: Source::Zero,
            },
            FoldedRun {
                offset: 512,
                len: 512,
                source: Source::NotHeld,
            },
            FoldedRun {
                offset: 1024,
                len: 512,
                source: Source::Layer {
                    layer: 1,
                    file_offset: 4096,
                },
            },
        ];
        let mut out = Vec::new();
        out_runs(&runs, |o| out.push(o));
        assert_eq!(
            out,
            [
                OutRun {
                    start: 0,
                    length: 1024,
                    layer: None,
                    offset: None
                },
                OutRun {
                    start: 1024,
                    length: 512,
                    layer: Some(1),
                    offset: Some(4096)
                }
            ]
        );
    }

    #[test]
    fn buckets_split_a_run_exactly() {
        let mut row = Row::new(RowSpec {
            label: "r".into(),
            title: "r".into(),
            class: "row".into(),
            fills: vec![colour(0), ZERO_FILL],
            names: vec!["a".into(), "z".into()],
            size: 3 << 40,
        });
        row.add(5, (3 << 40) - 10, 0);
        assert_eq!(row.buckets.iter().sum::<u64>(), (3 << 40) - 10);
    }
}
