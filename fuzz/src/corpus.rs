//! The seed corpus: inputs for every target built from images chainfold
//! creates (on memory storage) and from the real images of
//! `../shared/testdata/real` (decompressed on the fly, never stored in the
//! repository). Written to `<out>/<target>/<name>`; `cargo xtask fuzz`
//! builds it under `fuzz/corpus/`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::harness;
use crate::mutate::{self, VHDX_HEADER_SLOTS, VHDX_REGION_TABLES};
use crate::template::{self, BaseSpec, ChildSpec, Op};

/// Raw whole-file seeds are kept at most this long (libFuzzer's -max_len
/// for `open_image` is set to match).
pub const RAW_SEED_LIMIT: usize = 1 << 20;
/// How much of a real image is kept (its structures sit near the start).
const HEAD: usize = 8 << 20;

/// One image file's bytes: the whole file when small, else its head and
/// the last 512 bytes (the VHD footer).
pub struct Sample {
    pub name: String,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub len: u64,
}

impl Sample {
    fn whole(&self) -> Option<&[u8]> {
        (self.head.len() as u64 == self.len).then_some(&self.head[..])
    }
    fn is_vhdx(&self) -> bool {
        self.head.starts_with(b"vhdxfile")
    }
    fn get(&self, at: u64, len: usize) -> Option<&[u8]> {
        let a = usize::try_from(at).ok()?;
        self.head.get(a..a.checked_add(len)?)
    }
}

fn read_sample(name: &str, r: &mut dyn Read) -> io::Result<Sample> {
    let mut head = Vec::new();
    r.take(HEAD as u64).read_to_end(&mut head)?;
    let mut len = head.len() as u64;
    let mut tail = head[head.len().saturating_sub(512)..].to_vec();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        tail.extend_from_slice(&buf[..n]);
        let cut = tail.len().saturating_sub(512);
        tail.drain(..cut);
    }
    Ok(Sample {
        name: name.to_string(),
        head,
        tail,
        len,
    })
}

/// The real images (compressed or not) in `dir`.
pub fn real_samples(dir: &Path) -> Vec<Sample> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let fname = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(f) = File::open(&p) else { continue };
        let (name, mut r): (String, Box<dyn Read>) = if let Some(n) = fname.strip_suffix(".gz") {
            (n.into(), Box::new(flate2::read::GzDecoder::new(f)))
        } else if let Some(n) = fname.strip_suffix(".bz2") {
            (n.into(), Box::new(bzip2::read::BzDecoder::new(f)))
        } else {
            (fname.clone(), Box::new(f))
        };
        if let Ok(s) = read_sample(&format!("real-{name}"), &mut r) {
            out.push(s);
        }
    }
    out
}

/// Images chainfold creates: every kind, both formats, with writes.
pub fn created_samples() -> Vec<Sample> {
    let mut out = Vec::new();
    for vhdx in [false, true] {
        if vhdx && super::targets::splice::templates(true).is_none() {
            continue;
        }
        for (kind, fixed, children) in [
            ("fixed", true, 0),
            ("dynamic", false, 0),
            ("diff", false, 1),
        ] {
            let base = BaseSpec {
                vhdx,
                fixed,
                big_sector: false,
                size_units: if vhdx { 255 } else { 2047 },
                block: 0,
                ops: vec![
                    Op::Write {
                        at: 3,
                        len: 40,
                        seed: 1,
                    },
                    Op::Zero { at: 100, len: 3 },
                ],
            };
            let kids: Vec<ChildSpec> = (0..children)
                .map(|_| ChildSpec {
                    block: 1,
                    grow: 0,
                    ops: vec![Op::Write {
                        at: 20,
                        len: 5,
                        seed: 9,
                    }],
                })
                .collect();
            let (m, ns) = harness::mem_ns();
            let (paths, _) = template::build_chain(&ns, &base, &kids);
            let top = paths.last().expect("top");
            let bytes = m.get(top).expect("file");
            let ext = if vhdx { "vhdx" } else { "vhd" };
            out.push(Sample {
                name: format!("created-{kind}.{ext}"),
                tail: bytes[bytes.len().saturating_sub(512)..].to_vec(),
                len: bytes.len() as u64,
                head: bytes,
            });
        }
    }
    out
}

struct Seeds<'a> {
    root: &'a Path,
    written: Vec<(String, usize)>,
}

impl Seeds<'_> {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let d = self.root.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        match self.written.iter_mut().find(|(t, _)| t == target) {
            Some((_, n)) => *n += 1,
            None => self.written.push((target.to_string(), 1)),
        }
        Ok(())
    }
    fn put_flagged(
        &mut self,
        target: &str,
        name: &str,
        flags: &[u8],
        bytes: &[u8],
    ) -> io::Result<()> {
        for f in flags {
            let mut v = vec![*f];
            v.extend_from_slice(bytes);
            self.put(target, &format!("{name}-f{f:02x}"), &v)?;
        }
        Ok(())
    }
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn vhd_seeds(s: &Sample, seeds: &mut Seeds<'_>) -> io::Result<()> {
    let n = &s.name;
    let footer = &s.tail[..];
    if footer.len() == 512 {
        seeds.put_flagged("vhd_footer", n, &[0x00, 0x10, 0x20, 0x42], footer)?;
        seeds.put_flagged("roundtrip", &format!("{n}-footer"), &[0], footer)?;
    }
    if let Some(h) = be_u64(footer, 16).filter(|h| *h != u64::MAX) {
        if let Some(hb) = s.get(h, 1024) {
            seeds.put_flagged("vhd_dynamic_header", n, &[0x00, 0x10, 0x22], hb)?;
            seeds.put_flagged("roundtrip", &format!("{n}-header"), &[1], hb)?;
            if let (Some(t), Some(e)) = (be_u64(hb, 16), be_u32(hb, 28)) {
                let len = (u64::from(e) * 4).min(4096) as usize;
                if let Some(bat) = s.get(t, len) {
                    seeds.put_flagged("vhd_bat", n, &[0x10, 0x20], bat)?;
                    seeds.put_flagged("roundtrip", &format!("{n}-bat"), &[2], bat)?;
                }
            }
        }
    }
    Ok(())
}

fn vhdx_seeds(s: &Sample, seeds: &mut Seeds<'_>) -> io::Result<()> {
    let n = &s.name;
    for (i, h) in VHDX_HEADER_SLOTS.iter().enumerate() {
        if let Some(b) = s.get(*h, 4096) {
            let f = if i == 0 { 0x00 } else { 0x40 };
            seeds.put_flagged(
                "vhdx_headers",
                &format!("{n}-h{i}"),
                &[f, f | 0x10, f | 0x22],
                b,
            )?;
        }
    }
    if let Some(b) = s.get(0, 4096) {
        seeds.put_flagged("vhdx_headers", &format!("{n}-ident"), &[0x80], b)?;
    }
    for (i, t) in VHDX_REGION_TABLES.iter().enumerate() {
        if let Some(b) = s.get(*t, 4096) {
            seeds.put_flagged(
                "vhdx_region_table",
                &format!("{n}-r{i}"),
                &[0x00, 0x90, 0x62],
                b,
            )?;
        }
    }
    if let Some((o, _)) = mutate::vhdx_region(&s.head, &mutate::METADATA_GUID_LE) {
        if let Some(b) = s.get(o, 68 << 10) {
            seeds.put_flagged("vhdx_metadata", n, &[0x00, 0x10, 0x22], b)?;
        }
        for (id, at, len) in mutate::vhdx_metadata_items(&s.head) {
            if id[..4] == [0x2D, 0x5F, 0xD3, 0xA8] {
                if let Some(b) = s.get(at, len.min(64 << 10) as usize) {
                    seeds.put_flagged("vhdx_parent_locator", n, &[0x40, 0x41], b)?;
                }
            }
        }
    }
    if let Some((o, _)) = mutate::vhdx_region(&s.head, &mutate::BAT_GUID_LE) {
        if let Some(b) = s.get(o, 4096) {
            seeds.put_flagged("vhdx_bat", n, &[0x10, 0x20, 0x12], b)?;
        }
    }
    if let Some((o, l)) = mutate::vhdx_log(&s.head, 0) {
        // The used part of the log: up to the first all-zero sector.
        let mut used = 0;
        while used < l.min(256 << 10) {
            match s.get(o + used, 4096) {
                Some(sec) if sec.iter().any(|b| *b != 0) => used += 4096,
                _ => break,
            }
        }
        if used > 0 {
            if let Some(b) = s.get(o, used as usize) {
                seeds.put_flagged("vhdx_log", n, &[0x10, 0x12], b)?;
            }
        }
    }
    Ok(())
}

/// Build the corpus for every target under `out`. Returns (target, seeds).
pub fn build(out: &Path, real_dir: Option<&Path>) -> io::Result<Vec<(String, usize)>> {
    let mut seeds = Seeds {
        root: out,
        written: Vec::new(),
    };
    let mut samples = created_samples();
    if let Some(d) = real_dir {
        samples.extend(real_samples(d));
    }
    for s in &samples {
        if let Some(w) = s.whole().filter(|w| w.len() <= RAW_SEED_LIMIT) {
            seeds.put_flagged("open_image", &s.name, &[0, 1], w)?;
        } else if s.is_vhdx() {
            let cut = &s.head[..s.head.len().min(RAW_SEED_LIMIT)];
            seeds.put_flagged("open_image", &format!("{}-head", s.name), &[0], cut)?;
        }
        if s.is_vhdx() {
            vhdx_seeds(s, &mut seeds)?;
        } else {
            vhd_seeds(s, &mut seeds)?;
        }
    }
    // Structured targets: a spread of byte patterns decodes into a spread
    // of valid specs.
    for i in 0u8..16 {
        let pat: Vec<u8> = (0..256u32)
            .map(|k| (k as u8).wrapping_mul(i | 1) ^ i.wrapping_mul(37))
            .collect();
        let name = format!("pattern{i:02}");
        seeds.put(
            "open_image",
            &name,
            &[&[2 + (i % 2) * 4][..], &pat].concat(),
        )?;
        seeds.put("open_chain", &name, &pat)?;
        seeds.put("merge_in_memory", &name, &pat)?;
        seeds.put("replay_log", &name, &[&[i << 4][..], &pat].concat())?;
        seeds.put(
            "vhd_parent_locator",
            &name,
            &[&[i & 0x47][..], &pat].concat(),
        )?;
        seeds.put(
            "vhdx_parent_locator",
            &name,
            &[&[i & 0x37][..], &pat].concat(),
        )?;
        seeds.put("roundtrip", &name, &[&[i % 4][..], &pat].concat())?;
    }
    Ok(seeds.written)
}
