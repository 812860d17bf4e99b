//! `map IMAGE [--json] [--svg FILE]` through the real binary (issue 18
//! item 5): the map agrees with `convert` byte for byte, its runs tile the
//! virtual disk, partially present blocks come out split at 4 KiB, a huge
//! sparse image maps fast, and the SVG is well formed and renders.

mod common;
use common::{noise, s, write, xtask_ok as ok};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use formats::chain::{open_image_file, ChainOptions};
use formats::params::Identity;
use formats::{Access, FsNamespace, Namespace};
use serde_json::Value;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A 3-level chain base <- mid <- top of 64 MiB built with `create` and
/// `write`: data in every layer, zeros written over data (they hide the
/// layers below), a base block of zeros released by `compact
/// --zero-blocks` (VHDX: a ZERO block; VHD: unallocated), and layers
/// written in 4 KiB runs one page apart (partially present blocks).
fn three_level(dir: &Path, ext: &str, child_ext: &str) -> PathBuf {
    let base = dir.join(format!("base.{ext}"));
    let mid = dir.join(format!("mid.{child_ext}"));
    let top = dir.join(format!("top.{child_ext}"));
    ok(&["create", s(&base), "--size", "64M", "--block-size", "2M"]);
    write(&base, 0, &noise(3 * MIB as usize, 1), dir);
    write(&base, 8 * MIB, &vec![0; 2 * MIB as usize], dir);
    write(&base, 30 * MIB, &noise(MIB as usize, 2), dir);
    ok(&["compact", s(&base), "--zero-blocks"]);

    ok(&["create", s(&mid), "--parent", s(&base)]);
    for k in 0..16 {
        write(&mid, MIB + k * 8 * KIB, &noise(4096, 10 + k), dir);
    }
    write(&mid, 20 * MIB, &noise(3 * MIB as usize, 3), dir);
    // Zeros over the base's data: held by mid, hiding the base.
    write(&mid, 30 * MIB + 4 * KIB, &vec![0; 4096], dir);

    ok(&["create", s(&top), "--parent", s(&mid)]);
    write(&top, 2 * MIB, &vec![0; MIB as usize], dir);
    for k in 0..8 {
        write(
            &top,
            21 * MIB + k * 8 * KIB + 4 * KIB,
            &noise(4096, 40 + k),
            dir,
        );
    }
    write(&top, 64 * MIB - 4096, &noise(4096, 5), dir);
    top
}

fn map_json(image: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["map", s(image), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_slice(&ok(&args).stdout).unwrap()
}

fn read_at(path: &str, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

struct Run {
    start: u64,
    length: u64,
    layer: Option<usize>,
    offset: Option<u64>,
}

/// The runs tile [0, virtual size) in order, are joined, and each run's
/// bytes (from the named layer's file, or zeros) equal `convert`'s output.
fn check_against_convert(dir: &Path, image: &Path) -> (Vec<String>, Vec<Run>) {
    let map = map_json(image, &[]);
    let layers: Vec<String> = map["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(Path::new(&layers[0]), image);
    let runs: Vec<Run> = map["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.as_object().unwrap().len(), 4, "{r}");
            Run {
                start: r["start"].as_u64().unwrap(),
                length: r["length"].as_u64().unwrap(),
                layer: r["layer"].as_u64().map(|l| l as usize),
                offset: r["offset"].as_u64(),
            }
        })
        .collect();

    let raw = dir.join("converted.raw");
    ok(&["convert", s(image), s(&raw)]);
    let content = std::fs::read(&raw).unwrap();
    let size = content.len() as u64;
    assert_eq!(map["virtual_size"].as_u64(), Some(size));

    let mut at = 0;
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.start, at, "run {i} does not start where the last ended");
        assert!(r.length > 0, "run {i} is empty");
        assert_eq!(r.layer.is_none(), r.offset.is_none(), "run {i}");
        let want = &content[r.start as usize..(r.start + r.length) as usize];
        match (r.layer, r.offset) {
            (Some(l), Some(off)) => {
                assert!(l < layers.len(), "run {i}: layer {l}");
                let got = read_at(&layers[l], off, r.length);
                assert!(got == want, "run {i} ({}+{}) differs", r.start, r.length);
            }
            _ => assert!(
                want.iter().all(|&b| b == 0),
                "run {i} ({}+{}) is null but reads data",
                r.start,
                r.length
            ),
        }
        if let Some(p) = i.checked_sub(1).map(|p| &runs[p]) {
            let joinable = match (p.layer, r.layer) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b && p.offset.unwrap() + p.length == r.offset.unwrap(),
                _ => false,
            };
            assert!(!joinable, "runs {} and {i} should have been joined", i - 1);
        }
        at += r.length;
    }
    assert_eq!(at, size, "runs end short of the virtual size");
    (layers, runs)
}

fn expectations(runs: &[Run]) {
    let from = |l: usize| runs.iter().filter(|r| r.layer == Some(l)).count();
    assert!(
        from(0) > 0 && from(1) > 0 && from(2) > 0,
        "every layer shows"
    );
    // The 4 KiB runs one page apart: each a run of its own, the base
    // showing between them (sector bitmaps split the blocks).
    let at = |start: u64| runs.iter().find(|r| r.start == start);
    for k in 0..16 {
        let r = at(MIB + k * 8 * KIB).expect("a run at each mid 4 KiB write");
        assert_eq!((r.layer, r.length), (Some(1), 4096), "mid write {k}");
        if k < 15 {
            let gap = at(MIB + k * 8 * KIB + 4 * KIB).unwrap();
            assert_eq!((gap.layer, gap.length), (Some(2), 4096), "gap {k}");
        }
    }
    for k in 0..8 {
        let r = at(21 * MIB + k * 8 * KIB + 4 * KIB).expect("top 4 KiB write");
        assert_eq!((r.layer, r.length), (Some(0), 4096), "top write {k}");
    }
    // Zeros mid wrote over the base's data are mid's (written data).
    let z = at(30 * MIB + 4 * KIB).unwrap();
    assert_eq!((z.layer, z.length), (Some(1), 4096));
    // The released base block reads as zeros: a null run covers it.
    assert!(runs
        .iter()
        .any(|r| r.layer.is_none() && r.start <= 8 * MIB && r.start + r.length >= 10 * MIB));
}

/// The map of a `three_level` chain (`ext`, children `child_ext`) agrees
/// with `convert` and shows what the chain was built to hold.
fn map_agrees_with_convert(ext: &str, child_ext: &str) {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let top = three_level(tmp.path(), ext, child_ext);
    let (layers, runs) = check_against_convert(tmp.path(), &top);
    assert_eq!(layers.len(), 3);
    expectations(&runs);
}

#[test]
fn vhdx_map_agrees_with_convert() {
    map_agrees_with_convert("vhdx", "avhdx");
}

#[test]
fn vhd_map_agrees_with_convert() {
    map_agrees_with_convert("vhd", "avhd");
}

#[test]
fn human_output_names_layers_and_sums_their_bytes() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let top = three_level(tmp.path(), "vhdx", "avhdx");
    let out = String::from_utf8(ok(&["map", s(&top)]).stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("start") && lines[0].contains("length"));
    assert!(out.contains("zeros"));
    assert!(out.contains("bytes provided"));
    // The summary's bytes per layer match the JSON runs.
    let (_, runs) = check_against_convert(tmp.path(), &top);
    for l in 0..3usize {
        let bytes: u64 = runs
            .iter()
            .filter(|r| r.layer == Some(l))
            .map(|r| r.length)
            .sum();
        let prefix = format!("{l:>5}  ");
        let line = lines
            .iter()
            .find(|x| x.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no summary line for layer {l}:\n{out}"));
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(n, bytes, "{line}");
    }
}

/// A huge sparse VHDX `stem.vhdx` (`create` with `args`) holding `data`
/// at `at`, and an empty child `stem.avhdx` over it: the child's path.
fn sparse_pair(dir: &Path, stem: &str, args: &[&str], at: u64, data: &[u8]) -> PathBuf {
    let base = dir.join(format!("{stem}.vhdx"));
    let top = dir.join(format!("{stem}.avhdx"));
    ok(&[&["create", s(&base)], args].concat());
    write(&base, at, data, dir);
    ok(&["create", s(&top), "--parent", s(&base)]);
    top
}

#[test]
fn a_64_tib_sparse_chain_maps_fast() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(MIB as usize, 9);
    let top = sparse_pair(tmp.path(), "big", &["--size", "64T"], 40 << 40, &data);
    write(&top, (64 << 40) - 4096, &noise(4096, 8), tmp.path());
    let t = Instant::now();
    let map = map_json(&top, &[]);
    let took = t.elapsed();
    let runs = map["runs"].as_array().unwrap();
    assert_eq!(map["virtual_size"].as_u64(), Some(64 << 40));
    assert!(runs.len() <= 5, "{runs:?}");
    assert_eq!(runs.last().unwrap()["layer"].as_u64(), Some(0));
    // Walking 64 TiB window by window would take minutes.
    assert!(took < Duration::from_secs(10), "{took:?}");
}

// ---------------------------------------------------------------- SVG

/// Well formed enough: every tag closes in order, attributes quoted.
fn check_xml(doc: &str) {
    assert!(doc.starts_with("<svg"), "{}", &doc[..60.min(doc.len())]);
    let mut stack: Vec<String> = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        let j = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..j];
        assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
        rest = &rest[j + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(rest.trim().is_empty());
    // Entities are the five XML ones.
    for (k, _) in doc.match_indices('&') {
        let ent = &doc[k..doc.len().min(k + 7)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| ent.starts_with(e)),
            "bad entity {ent:?}"
        );
    }
}

fn chromium() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/chromium");
    p.exists().then_some(p)
}

/// Decode a PNG (8-bit RGB/RGBA, non-interlaced, as Chromium writes) and
/// count its distinct pixel values (capped).
fn png_colours(bytes: &[u8]) -> usize {
    assert!(
        bytes.len() > 8 && bytes[..8] == *b"\x89PNG\r\n\x1a\n",
        "not a PNG"
    );
    let (mut w, mut h, mut channels) = (0usize, 0usize, 0usize);
    let mut idat = Vec::new();
    let mut p = 8;
    while p + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
        let kind = &bytes[p + 4..p + 8];
        let body = &bytes[p + 8..p + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
                h = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                assert_eq!(body[8], 8, "bit depth");
                channels = match body[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
                assert_eq!(body[12], 0, "interlaced");
            }
            b"IDAT" => idat.extend_from_slice(body),
            _ => {}
        }
        p += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = w * channels;
    assert_eq!(raw.len(), h * (stride + 1), "decompressed size");
    // Undo the per-line filters.
    let mut img = vec![0u8; h * stride];
    for y in 0..h {
        let f = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                img[y * stride + x - channels]
            } else {
                0
            };
            let b = if y > 0 { img[(y - 1) * stride + x] } else { 0 };
            let c = if y > 0 && x >= channels {
                img[(y - 1) * stride + x - channels]
            } else {
                0
            };
            let pred = match f {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let pa = (i16::from(b) - i16::from(c)).abs();
                    let pb = (i16::from(a) - i16::from(c)).abs();
                    let pc = (i16::from(a) + i16::from(b) - 2 * i16::from(c)).abs();
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                _ => panic!("filter {f}"),
            };
            img[y * stride + x] = line[x].wrapping_add(pred);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for px in img.chunks(channels) {
        seen.insert(px.to_vec());
        if seen.len() > 1000 {
            break;
        }
    }
    seen.len()
}

/// Render `svg` headless; the PNG path, or None (skip) without chromium.
fn render(svg: &Path) -> Option<Vec<u8>> {
    let Some(chromium) = chromium() else {
        println!("skipping: chromium not installed (.ci/run installs it)");
        return None;
    };
    let png = svg.with_extension("png");
    let profile = svg.with_extension("profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,800",
            &format!("file://{}", svg.display()),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(!bytes.is_empty());
    Some(bytes)
}

#[test]
fn svg_has_a_row_per_layer_and_renders() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let top = three_level(tmp.path(), "vhdx", "avhdx");
    let svg = tmp.path().join("map.svg");
    let json = map_json(&top, &["--svg", s(&svg)]);
    assert_eq!(json["layers"].as_array().unwrap().len(), 3);
    let doc = std::fs::read_to_string(&svg).unwrap();
    check_xml(&doc);
    assert_eq!(doc.matches("class=\"row layer ").count(), 3);
    assert_eq!(doc.matches("class=\"row merged\"").count(), 1);
    for name in ["base.vhdx", "mid.avhdx", "top.avhdx"] {
        assert!(doc.contains(name), "legend names {name}");
    }
    assert!(doc.contains("drawn exactly"));
    if let Some(png) = render(&svg) {
        let colours = png_colours(&png);
        assert!(colours > 4, "only {colours} colours in the screenshot");
    }
}

/// A 2 TiB differencing VHDX with 4,000 scattered 4 KiB runs (written
/// through the library in one batch: 4,000 `write` processes would take
/// a minute) and a few far apart: the rows are bucketed, the SVG says
/// so, stays small and still renders.
#[test]
fn svg_of_a_2_tib_disk_with_many_runs_is_bucketed() {
    let _serial = testdata::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(4 * MIB as usize, 3);
    let args = ["--size", "2T", "--block-size", "1M"];
    let top = sparse_pair(tmp.path(), "top", &args, 1 << 40, &data);
    {
        let ns: Arc<dyn Namespace> = Arc::new(FsNamespace);
        let opts = ChainOptions {
            access: Access::Write,
            writable: true,
            ..Default::default()
        };
        let mut img = open_image_file(&ns, &top, &opts).unwrap();
        let mut batch = img.begin_batch().unwrap();
        let piece = noise(4096, 77);
        for k in 0..4000u64 {
            batch.write(k * 8 * KIB, &piece).unwrap();
        }
        batch.write((3 << 39) + 12 * KIB, &piece).unwrap();
        batch.write((2 << 40) - 4096, &piece).unwrap();
        batch.prepare().unwrap();
        batch
            .commit(Identity::Vhdx {
                data_write_guid: formats::entropy::new_guid(),
            })
            .unwrap();
    }
    let svg = tmp.path().join("map.svg");
    let t = Instant::now();
    let json = map_json(&top, &["--svg", s(&svg)]);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let runs = json["runs"].as_array().unwrap();
    assert!(runs.len() > 4000, "{}", runs.len());
    let doc = std::fs::read_to_string(&svg).unwrap();
    check_xml(&doc);
    assert_eq!(doc.matches("class=\"row layer ").count(), 2);
    assert!(doc.contains("buckets"), "the SVG says it bucketed");
    assert!(doc.contains("providing most of its bytes"));
    assert!(doc.contains("2 TiB"));
    assert!(doc.len() < 2 << 20, "{} bytes", doc.len());
    if let Some(png) = render(&svg) {
        let colours = png_colours(&png);
        assert!(colours > 4, "only {colours} colours in the screenshot");
    }
}
