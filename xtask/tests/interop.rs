//! Interoperability with independent tools (../shared/docs/ORACLES.md):
//! qemu-img / qemu-io for fixed and dynamic VHD (`-f vpc`) and VHDX, and
//! libvhdi (through ../shared/tools/chain_read.py) for differencing chains,
//! used only where their known bugs cannot bite (no ZERO blocks, 4 KiB
//! aligned VHD writes, disks under 4 GiB). Each test skips with a printed
//! reason when its tool is not installed.

mod common;
use common::{ok, s, write, xtask};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    ok(
        Command::new(cmd).args(args).output().expect("spawn"),
        &format!("{cmd} {args:?}"),
    )
}

fn our_sha(img: &Path, dir: &Path) -> String {
    let raw = dir.join(format!(
        "{}.ours.raw",
        img.file_name().unwrap().to_str().unwrap()
    ));
    let _ = std::fs::remove_file(&raw);
    ok(xtask(&["convert", s(img), s(&raw)]), "convert");
    testdata::sha256_file(&raw).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8) ^ ((i >> 9) as u8))
        .collect()
}

#[test]
fn qemu_made_images_read_the_same_through_chainfold() {
    if !testdata::have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for (fmt, ext, opts) in [
        ("vpc", "vhd", "subformat=fixed,force_size=on"),
        ("vpc", "vhd", "subformat=dynamic,force_size=on"),
        ("vhdx", "vhdx", "subformat=dynamic"),
        ("vhdx", "vhdx", "subformat=fixed,block_size=1M"),
    ] {
        let img = d
            .path()
            .join(format!("q-{}.{ext}", opts.replace([',', '='], "-")));
        run(
            "qemu-img",
            &["create", "-q", "-f", fmt, "-o", opts, s(&img), "24M"],
        );
        for (pat, off, len) in [
            ("0xab", "0", "1M"),
            ("0x5c", "3M+512", "70k"),
            ("0x11", "23M", "1M"),
        ] {
            let off = off.replace("3M+512", &((3 << 20) + 512).to_string());
            run(
                "qemu-io",
                &[
                    "-f",
                    fmt,
                    "-c",
                    &format!("write -P {pat} {off} {len}"),
                    s(&img),
                ],
            );
        }
        let theirs = d.path().join("theirs.raw");
        run(
            "qemu-img",
            &["convert", "-f", fmt, "-O", "raw", s(&img), s(&theirs)],
        );
        assert_eq!(
            our_sha(&img, d.path()),
            testdata::sha256_file(&theirs).unwrap(),
            "{}",
            img.display()
        );
        let chk = xtask(&["check", s(&img)]);
        assert_eq!(
            chk.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&chk.stdout)
        );
    }
}

#[test]
fn chainfold_made_images_pass_qemu() {
    if !testdata::have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for (name, fmt, kind, block) in [
        ("f.vhd", "vpc", "fixed", "2M"),
        ("d512k.vhd", "vpc", "dynamic", "512K"),
        ("d2m.vhd", "vpc", "dynamic", "2M"),
        ("f.vhdx", "vhdx", "fixed", "1M"),
        ("d1m.vhdx", "vhdx", "dynamic", "1M"),
        ("d32m.vhdx", "vhdx", "dynamic", "32M"),
    ] {
        let img = d.path().join(name);
        ok(
            xtask(&[
                "create",
                s(&img),
                "--size",
                "40M",
                "--type",
                kind,
                "--block-size",
                block,
            ]),
            "create",
        );
        let mut model = vec![0u8; 40 << 20];
        for (off, len, seed) in [
            (0u64, 5000usize, 1u8),
            (1_048_000, 2_100_000, 2),
            ((40 << 20) - 777, 777, 3),
        ] {
            let p = pattern(seed, len);
            write(&img, off, &p, d.path());
            model[off as usize..off as usize + len].copy_from_slice(&p);
        }
        let raw = d.path().join("model.raw");
        std::fs::write(&raw, &model).unwrap();
        if fmt == "vhdx" {
            run("qemu-img", &["check", "-f", "vhdx", s(&img)]);
        }
        run(
            "qemu-img",
            &["compare", "-f", fmt, "-F", "raw", s(&img), s(&raw)],
        );
        assert_eq!(xtask(&["check", s(&img)]).status.code(), Some(0), "{name}");
    }
}

/// base <- c1 <- c2 made and written by chainfold (4 KiB aligned writes, no
/// ZERO blocks: libvhdi's known bugs cannot bite).
fn chain(d: &Path, ext_base: &str, ext_child: &str, block: &str) -> (PathBuf, PathBuf, PathBuf) {
    chain_over(d, ext_base, ext_child, block, "dynamic")
}

fn chain_over(
    d: &Path,
    ext_base: &str,
    ext_child: &str,
    block: &str,
    base_type: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let base = d.join(format!("base.{ext_base}"));
    let c1 = d.join(format!("c1.{ext_child}"));
    let c2 = d.join(format!("c2.{ext_child}"));
    ok(
        xtask(&[
            "create",
            s(&base),
            "--size",
            "48M",
            "--block-size",
            block,
            "--type",
            base_type,
        ]),
        "create",
    );
    write(&base, 0, &pattern(9, 6 << 20), d);
    ok(
        xtask(&[
            "create",
            s(&c1),
            "--parent",
            s(&base),
            "--block-size",
            block,
        ]),
        "create c1",
    );
    write(&c1, 4096, &pattern(1, 3 * 4096), d);
    write(&c1, 5 << 20, &pattern(2, 3 << 20), d);
    ok(
        xtask(&["create", s(&c2), "--parent", s(&c1), "--block-size", block]),
        "create c2",
    );
    write(&c2, 8192, &pattern(3, 4096), d);
    write(&c2, (20 << 20) + 4096, &pattern(4, 40960), d);
    (base, c1, c2)
}

#[test]
fn differencing_chains_read_the_same_through_libvhdi() {
    if !testdata::have_libvhdi() {
        return;
    }
    for (eb, ec, block) in [
        ("vhdx", "avhdx", "1M"),
        ("vhdx", "avhdx", "32M"),
        ("vhd", "vhd", "2M"),
        ("vhd", "vhd", "512K"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (base, c1, c2) = chain(d.path(), eb, ec, block);
        assert_eq!(
            testdata::libvhdi_sha(&c2, &[&c1, &base]),
            our_sha(&c2, d.path()),
            "{ec} {block}"
        );
    }
}

#[test]
fn merged_destinations_pass_qemu_and_libvhdi() {
    let qemu = testdata::have_qemu();
    let libvhdi = testdata::have_libvhdi();
    for (eb, ec, fmt, block) in [("vhdx", "avhdx", "vhdx", "1M"), ("vhd", "vhd", "vpc", "2M")] {
        for base_type in ["dynamic", "fixed"] {
            // Into the base (fixed or dynamic): qemu can check and compare it.
            let d = tempfile::tempdir().unwrap();
            let (base, _, c2) = chain_over(d.path(), eb, ec, block, base_type);
            let before = our_sha(&c2, d.path());
            let expect_raw = d.path().join(format!(
                "{}.ours.raw",
                c2.file_name().unwrap().to_str().unwrap()
            ));
            ok(
                xtask(&["merge", s(&c2), s(&base), "--json"]),
                "merge into base",
            );
            assert_eq!(our_sha(&base, d.path()), before);
            if qemu {
                if fmt == "vhdx" {
                    run("qemu-img", &["check", "-f", "vhdx", s(&base)]);
                }
                run(
                    "qemu-img",
                    &["compare", "-f", fmt, "-F", "raw", s(&base), s(&expect_raw)],
                );
            }
        }
        // Into the parent (differencing): libvhdi reads the shortened chain.
        let d = tempfile::tempdir().unwrap();
        let (base, c1, c2) = chain(d.path(), eb, ec, block);
        let before = our_sha(&c2, d.path());
        ok(xtask(&["merge", s(&c2), "--json"]), "merge into parent");
        assert_eq!(our_sha(&c1, d.path()), before);
        if libvhdi {
            assert_eq!(testdata::libvhdi_sha(&c1, &[&base]), before, "{ec}");
        }
    }
}

#[test]
fn convert_flattens_into_images_qemu_reads() {
    if !testdata::have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_base, _c1, c2) = chain(d.path(), "vhdx", "avhdx", "1M");
    let expect = our_sha(&c2, d.path());
    let expect_raw = d.path().join(format!(
        "{}.ours.raw",
        c2.file_name().unwrap().to_str().unwrap()
    ));
    for (out, fmt) in [("flat.vhdx", "vhdx"), ("flat.vhd", "vpc")] {
        let p = d.path().join(out);
        ok(xtask(&["convert", s(&c2), s(&p)]), "convert to image");
        assert_eq!(our_sha(&p, d.path()), expect);
        run(
            "qemu-img",
            &["compare", "-f", fmt, "-F", "raw", s(&p), s(&expect_raw)],
        );
    }
}
