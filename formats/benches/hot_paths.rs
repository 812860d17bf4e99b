//! Microbenchmarks of the hot paths a merge and a read spend their CPU in:
//! sector bitmap run extraction, BAT scans, and CRC-32C of VHDX headers,
//! region tables and log entries. `cargo bench -p chainfold-formats`.
//! (Whole-merge throughput against cp and qemu-img is `cargo xtask bench`.)

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::{Access, Image, MemNamespace, Namespace, Run};

const MIB: u64 = 1 << 20;

/// A pseudo-random bitmap with runs of 1..=64 set or clear bits.
fn scattered_bitmap(bytes: usize) -> Vec<u8> {
    let mut bits = vec![0u8; bytes];
    let (mut i, mut set, mut x) = (0u64, false, 0x9E37_79B9_7F4A_7C15u64);
    while i < bytes as u64 * 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = x % 64 + 1;
        formats::vhdx::sector_bitmap::set_bits(&mut bits, i, n.min(bytes as u64 * 8 - i), set);
        i += n;
        set = !set;
    }
    bits
}

fn bitmap_runs(c: &mut Criterion) {
    // One VHDX sector bitmap block (1 MiB of bits covers 4 GiB of 512-byte
    // sectors): walk it run by run as the read path does.
    let bits = scattered_bitmap(MIB as usize);
    let total = bits.len() as u64 * 8;
    let mut g = c.benchmark_group("sector_bitmap");
    g.throughput(Throughput::Bytes(bits.len() as u64));
    g.bench_function("run_length/1MiB-scattered", |b| {
        b.iter(|| {
            let (mut at, mut runs) = (0u64, 0u64);
            while at < total {
                at += formats::vhdx::sector_bitmap::run_length(black_box(&bits), at, total - at);
                runs += 1;
            }
            runs
        })
    });
    g.finish();
}

fn create(ns: &Arc<dyn Namespace>, path: &str, params: CreateParams) -> Box<dyn Image> {
    formats::create::create_file(ns, Path::new(path), &params).expect("create");
    let opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    };
    open_image_file(ns, Path::new(path), &opts).expect("open")
}

/// Map `[0, size)` of `img` into `runs`; the number of runs.
fn map_all(img: &dyn Image, size: u64, runs: &mut Vec<Run>) -> usize {
    runs.clear();
    img.map(0, size, runs).unwrap();
    runs.len()
}

/// A differencing image whose blocks hold every other 4 KiB: the map of
/// each block is a bitmap walk.
fn layer_map(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_map");
    for (ext, block) in [("vhd", 2 * MIB), ("vhdx", 32 * MIB)] {
        let ns: Arc<dyn Namespace> = Arc::new(MemNamespace::new());
        let base = format!("/b/base.{ext}");
        let size = 256 * MIB;
        drop(create(
            &ns,
            &base,
            CreateParams {
                virtual_size: size,
                disk_type: DiskType::Dynamic,
                block_size: Some(block as u32),
                ..Default::default()
            },
        ));
        let child = format!("/b/child.{}", if ext == "vhd" { "vhd" } else { "avhdx" });
        let pimg = open_image_file(&ns, Path::new(&base), &ChainOptions::default()).unwrap();
        let parent =
            formats::create::parent_spec(&ns, pimg.as_ref(), Path::new(&base), Path::new(&child))
                .unwrap();
        drop(pimg);
        let mut img = create(
            &ns,
            &child,
            CreateParams {
                virtual_size: size,
                disk_type: DiskType::Differencing,
                block_size: Some(block as u32),
                parent: Some(parent),
                ..Default::default()
            },
        );
        let page = vec![0xA5u8; 4096];
        for k in (0..size / 4096).step_by(2) {
            img.write_sectors(k * 4096, &page).unwrap();
        }
        let runs_per_map = size / 4096;
        g.throughput(Throughput::Elements(runs_per_map));
        g.bench_with_input(
            BenchmarkId::new("every-other-4KiB", format!("{ext}-{}M-blocks", block / MIB)),
            &img,
            |b, img| {
                let mut runs: Vec<Run> = Vec::new();
                b.iter(|| map_all(img.as_ref(), size, &mut runs))
            },
        );
    }
    g.finish();
}

/// Mapping a whole 64 TiB VHDX that holds one block: a scan of its
/// 2,097,152-entry BAT.
fn bat_scan(c: &mut Criterion) {
    let ns: Arc<dyn Namespace> = Arc::new(MemNamespace::new());
    let size = 64u64 << 40;
    let mut img = create(
        &ns,
        "/s/huge.vhdx",
        CreateParams {
            virtual_size: size,
            disk_type: DiskType::Dynamic,
            block_size: Some(32 << 20),
            ..Default::default()
        },
    );
    img.write_sectors(size / 2, &[1u8; 4096]).unwrap();
    let mut g = c.benchmark_group("bat_scan");
    g.sample_size(20);
    g.throughput(Throughput::Elements(size / (32 * MIB)));
    g.bench_function("vhdx-64TiB-32MiB-blocks", |b| {
        let mut runs: Vec<Run> = Vec::new();
        b.iter(|| map_all(img.as_ref(), size, &mut runs))
    });
    g.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for (what, len, field) in [
        ("header-4KiB", 4096usize, 4usize),
        ("region-table-64KiB", 64 << 10, 4),
        ("log-entry-1MiB", 1 << 20, 4),
    ] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(what, |b| {
            b.iter(|| formats::checksum::crc32c_zeroed(black_box(&bytes), field))
        });
    }
    g.finish();
}

criterion_group!(benches, bitmap_runs, layer_map, bat_scan, crc32c);
criterion_main!(benches);
