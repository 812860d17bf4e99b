//! Clone instead of copy (issue 17): on XFS (reflink) and btrfs, loop
//! mounted for the test, `FileStorage::copy_from` between files of one file
//! system shares extents for the block-aligned part and copies the edges,
//! and a real merge writes almost none of its payload. Skips (with the
//! reason) when the file systems cannot be made or mounted (not root, no
//! mkfs tools).

mod common;
use common::data as pattern;
use common::{ok, s, write, xtask};

use std::path::Path;
use std::process::{Command, Output};

use formats::{Access, CopyRange, FsNamespace, Namespace, Storage};
use testdata::loopfs::{FsKind, LoopMount};

const MIB: u64 = 1 << 20;

fn mount(kind: FsKind, size: u64) -> Option<LoopMount> {
    match LoopMount::new(kind, size) {
        Ok(m) => Some(m),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// `mount`, for a test that counts the bytes a command writes: `None`
/// (said why) without /usr/bin/time too.
fn mount_counting(kind: FsKind, size: u64) -> Option<LoopMount> {
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("skipping: /usr/bin/time is not installed (apt-get install time)");
        return None;
    }
    mount(kind, size)
}

fn read_all(st: &dyn Storage, at: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    st.read_at(&mut v, at).unwrap();
    v
}

fn copies_share_extents(kind: FsKind) {
    let Some(m) = mount(kind, 1 << 30) else {
        return;
    };
    let (src_path, dst_path) = (m.path().join("src"), m.path().join("dst"));
    let bytes = pattern(1, 64 * MIB);
    std::fs::write(&src_path, &bytes).unwrap();
    std::fs::write(&dst_path, b"").unwrap();
    let src = FsNamespace.open(&src_path, Access::Read).unwrap();
    let dst = FsNamespace.open(&dst_path, Access::Write).unwrap();
    // Aligned: shared. Free space barely drops (64 MiB copied would).
    let before = m.free_bytes();
    dst.copy_from(&*src, CopyRange::new(0, 0, 64 * MIB))
        .unwrap();
    dst.flush().unwrap();
    let after = m.free_bytes();
    let used = before.saturating_sub(after);
    eprintln!("{kind:?}: a 64 MiB aligned copy used {} KiB", used >> 10);
    assert!(used < 4 * MIB, "{kind:?}: 64 MiB copy used {used} bytes");
    assert!(
        read_all(&*dst, 0, 64 * MIB) == bytes,
        "aligned copy differs"
    );

    // Congruent but unaligned: copied head and tail around a shared body.
    let mut model = bytes.clone();
    let (so, doff, n) = (4096 + 512, 80 * MIB + 512, 5 * MIB + 700);
    dst.copy_from(&*src, CopyRange::new(so, doff, n)).unwrap();
    model.resize((doff + n) as usize, 0);
    model[doff as usize..][..n as usize].copy_from_slice(&bytes[so as usize..][..n as usize]);
    // Not congruent: all copied.
    let (so, doff, n) = (100, 90 * MIB + 7, 3 * MIB + 1);
    dst.copy_from(&*src, CopyRange::new(so, doff, n)).unwrap();
    model.resize((doff + n) as usize, 0);
    model[doff as usize..][..n as usize].copy_from_slice(&bytes[so as usize..][..n as usize]);
    // Within one file (compaction): aligned and shared, and unaligned.
    let (so, doff, n) = (8 * MIB, 96 * MIB, 16 * MIB);
    dst.copy_from(&*dst, CopyRange::new(so, doff, n)).unwrap();
    model.resize((doff + n) as usize, 0);
    model.copy_within(so as usize..(so + n) as usize, doff as usize);
    let (so, doff, n) = (512, 120 * MIB + 4608, 2 * MIB + 9);
    dst.copy_from(&*dst, CopyRange::new(so, doff, n)).unwrap();
    model.resize((doff + n) as usize, 0);
    model.copy_within(so as usize..(so + n) as usize, doff as usize);
    dst.flush().unwrap();
    assert_eq!(dst.len().unwrap(), model.len() as u64);
    assert!(
        read_all(&*dst, 0, model.len() as u64) == model,
        "contents differ"
    );
    drop(dst);
    assert!(
        std::fs::read(&dst_path).unwrap() == model,
        "contents differ on disk"
    );
}

#[test]
fn copies_share_extents_and_stay_exact() {
    testdata::each_case(FsKind::ALL, |&case| copies_share_extents(case));
}

/// Bytes the command wrote, as the kernel counted them (`/usr/bin/time`
/// %O: file system outputs, 512-byte units).
fn run_counting_writes(args: &[&str]) -> (Output, u64) {
    let (out, wrote) = common::xtask_counting_writes(args);
    (out, wrote.expect("/usr/bin/time is checked before"))
}

fn raw_hash(img: &Path, dir: &Path) -> String {
    let raw = dir.join("view.raw");
    let _ = std::fs::remove_file(&raw);
    ok(xtask(&["convert", s(img), s(&raw)]), "convert");
    let h = testdata::sha256_file(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    h
}

fn merge_shares_payload(kind: FsKind, ext: (&str, &str)) {
    let Some(m) = mount_counting(kind, 2 << 30) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let base = m.path().join(format!("base.{}", ext.0));
    let child = m.path().join(format!("child.{}", ext.1));
    ok(xtask(&["create", s(&base), "--size", "1G"]), "create base");
    ok(
        xtask(&["create", s(&child), "--parent", s(&base)]),
        "create child",
    );
    // `write` places a VHD block's data just after its 512-byte bitmap (512
    // bytes past a page), while a merge places it on a page: such a copy
    // cannot be a clone (source and destination differ modulo the block
    // size) and is written. So the VHD child gets its payload by a merge
    // of its own child, as a chain that chainfold merged before has it;
    // VHDX blocks are aligned either way.
    let top = m.path().join(format!("top.{}", ext.1));
    let written = if ext.0 == "vhd" {
        ok(
            xtask(&["create", s(&top), "--parent", s(&child)]),
            "create top",
        );
        &top
    } else {
        &child
    };
    // 256 MiB in full blocks (any block size up to 32 MiB), at 64 MiB.
    let payload = 256 * MIB;
    let input = scratch.path().join("input.bin");
    std::fs::write(&input, pattern(7, payload)).unwrap();
    ok(
        xtask(&["write", s(written), "--offset", "64M", "--input", s(&input)]),
        "write",
    );
    std::fs::remove_file(&input).unwrap();
    if written == &top {
        ok(xtask(&["merge", s(&top)]), "merge top into child");
    }
    let want = raw_hash(&child, scratch.path());
    let free = m.free_bytes();
    let (out, wrote) = run_counting_writes(&["merge", s(&child), "--json"]);
    let out = ok(out, "merge");
    let used = free.saturating_sub(m.free_bytes());
    eprintln!(
        "{kind:?} {}: merge wrote {} KiB, used {} KiB of free space; {}",
        ext.0,
        wrote >> 10,
        used >> 10,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert_eq!(
        raw_hash(&base, scratch.path()),
        want,
        "merged content differs"
    );
    assert!(
        wrote < payload / 20,
        "{kind:?} {}: the merge wrote {wrote} bytes of a {payload}-byte payload",
        ext.0
    );
    ok(xtask(&["check", s(&base)]), "check");
}

#[test]
fn merge_shares_its_payload() {
    let cases = FsKind::ALL
        .into_iter()
        .flat_map(|fs| [("vhdx", "avhdx"), ("vhd", "vhd")].map(|ext| (fs, ext)));
    testdata::each_case(cases, |&(fs, ext)| merge_shares_payload(fs, ext));
}

/// `convert` of a VHDX holding 256 MiB in full blocks, on the same file
/// system, into raw and into a new VHDX and VHD: the payload is shared,
/// not written (`qemu-img convert` always copies). The VHD output places
/// its block data on pages, so its source's payload clones too.
fn convert_shares_payload(kind: FsKind) {
    let Some(m) = mount_counting(kind, 2 << 30) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let src = m.path().join("src.vhdx");
    ok(xtask(&["create", s(&src), "--size", "1G"]), "create");
    let payload = 256 * MIB;
    let input = scratch.path().join("input.bin");
    std::fs::write(&input, pattern(11, payload)).unwrap();
    ok(
        xtask(&["write", s(&src), "--offset", "128M", "--input", s(&input)]),
        "write",
    );
    std::fs::remove_file(&input).unwrap();
    let want = raw_hash(&src, scratch.path());
    for ext in ["raw", "vhdx", "vhd"] {
        let dest = m.path().join(format!("out.{ext}"));
        let free = m.free_bytes();
        let (out, wrote) = run_counting_writes(&["convert", s(&src), s(&dest)]);
        ok(out, &format!("convert to {ext}"));
        let used = free.saturating_sub(m.free_bytes());
        eprintln!(
            "{kind:?}: convert to {ext} wrote {} KiB, used {} KiB of free space",
            wrote >> 10,
            used >> 10
        );
        let got = if ext == "raw" {
            let h = testdata::sha256_file(&dest).unwrap();
            std::fs::remove_file(&dest).unwrap();
            h
        } else {
            ok(xtask(&["check", s(&dest)]), "check");
            let h = raw_hash(&dest, scratch.path());
            std::fs::remove_file(&dest).unwrap();
            h
        };
        assert_eq!(got, want, "{kind:?}: convert to {ext}: content differs");
        assert!(
            wrote < payload / 20,
            "{kind:?}: convert to {ext} wrote {wrote} bytes of a {payload}-byte payload"
        );
    }
}

#[test]
fn convert_shares_its_payload() {
    testdata::each_case(FsKind::ALL, |&case| convert_shares_payload(case));
}

/// Every destination kind (VHD and VHDX; fixed, dynamic, differencing)
/// on a file system that clones: a destination holding data, a child
/// with full blocks over some of it and 4 KiB runs a page apart over the
/// rest, merged; the merged content (sha256 of the whole virtual disk)
/// must be the child's view before the merge, and `check` clean. Clones
/// of partial blocks (the old block shared, the child's sectors written
/// over it) must not lose a byte of either.
fn every_kind_merges_exactly(fs: FsKind) {
    let Some(m) = mount(fs, 2 << 30) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    for (ext, cext) in [("vhdx", "avhdx"), ("vhd", "vhd")] {
        for kind in ["fixed", "dynamic", "differencing"] {
            let dir = m.path().join(format!("{kind}-{ext}"));
            std::fs::create_dir(&dir).unwrap();
            let dest = if kind == "differencing" {
                let base = dir.join(format!("base.{ext}"));
                ok(
                    xtask(&["create", s(&base), "--size", "64M", "--block-size", "2M"]),
                    "create base",
                );
                write(&base, 0, &pattern(1, 20 * MIB), scratch.path());
                let dest = dir.join(format!("dest.{cext}"));
                ok(
                    xtask(&["create", s(&dest), "--parent", s(&base)]),
                    "create dest",
                );
                dest
            } else {
                let dest = dir.join(format!("dest.{ext}"));
                ok(
                    xtask(&[
                        "create",
                        s(&dest),
                        "--size",
                        "64M",
                        "--type",
                        kind,
                        "--block-size",
                        "2M",
                    ]),
                    "create dest",
                );
                dest
            };
            write(&dest, 4 * MIB, &pattern(2, 24 * MIB), scratch.path());
            let child = dir.join(format!("child.{cext}"));
            ok(
                xtask(&["create", s(&child), "--parent", s(&dest)]),
                "create child",
            );
            // Full blocks over part of the destination's data.
            write(&child, 8 * MIB, &pattern(3, 8 * MIB), scratch.path());
            // 4 KiB runs a page apart over the rest of it and past it.
            for i in 0..48u64 {
                write(
                    &child,
                    20 * MIB + i * 8192,
                    &pattern(10 + i, 4096),
                    scratch.path(),
                );
            }
            let want = raw_hash(&child, scratch.path());
            let out = ok(xtask(&["merge", s(&child), "--json"]), "merge");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("\"return_value\": 0"),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert_eq!(
                raw_hash(&dest, scratch.path()),
                want,
                "{fs:?} {kind} {ext}: merged content differs"
            );
            ok(xtask(&["check", s(&dest)]), "check");
            eprintln!("{fs:?} {kind} {ext}: merged content ok");
        }
    }
}

#[test]
fn every_destination_kind_merges_exactly() {
    testdata::each_case(FsKind::ALL, |&case| every_kind_merges_exactly(case));
}

/// A dynamic VHD's BAT: (block size, bitmap bytes, file offset of each
/// allocated block's bitmap by block index).
fn vhd_blocks(img: &Path) -> (u64, u64, Vec<(u64, u64)>) {
    let f = std::fs::read(img).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
    let be32 = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
    let footer = f.len() - 512;
    let header = be64(footer + 16) as usize;
    let table = be64(header + 16) as usize;
    let entries = be32(header + 28) as usize;
    let block = u64::from(be32(header + 32));
    let bitmap = (block / 512 / 8).next_multiple_of(512);
    let blocks = (0..entries)
        .map(|i| (i as u64, be32(table + 4 * i)))
        .filter(|&(_, e)| e != u32::MAX)
        .map(|(i, e)| (i, u64::from(e) * 512))
        .collect();
    (block, bitmap, blocks)
}

/// `copy_file_range` calls the command made, counted by strace; `None`
/// when strace is not installed.
fn copy_calls(args: &[&str]) -> Option<(Output, usize)> {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("strace");
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=copy_file_range", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .ok()?;
    let text = std::fs::read_to_string(&log).ok()?;
    Some((
        out,
        text.lines()
            .filter(|l| l.contains("copy_file_range(") && !l.contains("resumed"))
            .count(),
    ))
}

/// The VHD batch's joined clones: a child laid out by a merge (data on
/// pages, 4 KiB between blocks) holding runs of consecutive full blocks,
/// blocks written in reverse file order (consecutive on the disk, not in
/// the file: never joined), a partial block and holes, merged into an
/// empty dynamic base. The merged content must be the child's view, the
/// payload shared (bytes written by the kernel's count < 5 %), the whole
/// blocks cloned in a few calls, not one per block, and every
/// destination bitmap the base's own: a byte planted in the padding of a
/// child bitmap (past the block's bits, which readers ignore) must not
/// come through the joined clone.
fn vhd_joined_clones(fs: FsKind) {
    let Some(m) = mount_counting(fs, 1 << 30) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let dir = m.path();
    let (base, child, top) = (
        dir.join("base.vhd"),
        dir.join("child.vhd"),
        dir.join("top.vhd"),
    );
    let bs = "512K";
    let block = 512 << 10;
    ok(
        xtask(&["create", s(&base), "--size", "128M", "--block-size", bs]),
        "create base",
    );
    ok(
        xtask(&[
            "create",
            s(&child),
            "--parent",
            s(&base),
            "--block-size",
            bs,
        ]),
        "create child",
    );
    ok(
        xtask(&["create", s(&top), "--parent", s(&child), "--block-size", bs]),
        "create top",
    );
    // 48 full blocks (24 MiB) at 0; 100 KiB inside a block at 40 MiB; 16
    // full blocks at 64 MiB; then 4 blocks at 32 MiB, one merge each, the
    // last block first (so the child's file holds them in reverse).
    write(&top, 0, &pattern(21, 48 * block), scratch.path());
    write(
        &top,
        40 * MIB + 4096,
        &pattern(40, 100 << 10),
        scratch.path(),
    );
    write(&top, 64 * MIB, &pattern(41, 16 * block), scratch.path());
    ok(xtask(&["merge", s(&top)]), "merge top into child");
    std::fs::remove_file(&top).unwrap();
    for k in (0..4u64).rev() {
        ok(
            xtask(&["create", s(&top), "--parent", s(&child), "--block-size", bs]),
            "create top",
        );
        write(
            &top,
            32 * MIB + k * block,
            &pattern(30 + k, block),
            scratch.path(),
        );
        ok(xtask(&["merge", s(&top)]), "merge top into child");
        std::fs::remove_file(&top).unwrap();
    }
    let (_, bitmap, blocks) = vhd_blocks(&child);
    assert_eq!(bitmap, 512);
    // The planted byte: past the 128 bytes of a 512 KiB block's bits, in
    // block 5 (inside the first run, so inside a joined clone).
    let planted = blocks.iter().find(|b| b.0 == 5).unwrap().1 + 300;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&child)
            .unwrap();
        f.write_all_at(&[0x5A], planted).unwrap();
    }
    ok(xtask(&["check", s(&child)]), "check child");
    let want = raw_hash(&child, scratch.path());
    let payload = (48 + 4 + 16) * block + (100 << 10);
    // Counted on a copy of the chain first (strace), the timed one after.
    let calls = if Command::new("strace").arg("-V").output().is_ok() {
        let cdir = dir.join("counted");
        std::fs::create_dir(&cdir).unwrap();
        for p in [&base, &child] {
            std::fs::copy(p, cdir.join(p.file_name().unwrap())).unwrap();
        }
        let (out, n) = copy_calls(&["merge", s(&cdir.join("child.vhd"))]).unwrap();
        ok(out, "merge (strace)");
        Some(n)
    } else {
        eprintln!("strace is not installed: copy calls not counted");
        None
    };
    let (out, wrote) = run_counting_writes(&["merge", s(&child)]);
    ok(out, "merge");
    eprintln!(
        "{fs:?}: merge wrote {} KiB of a {} KiB payload; copy_file_range calls: {calls:?}",
        wrote >> 10,
        payload >> 10
    );
    assert_eq!(
        raw_hash(&base, scratch.path()),
        want,
        "{fs:?}: merged content differs"
    );
    ok(xtask(&["check", s(&base)]), "check");
    assert!(
        wrote < payload / 20,
        "{fs:?}: the merge wrote {wrote} bytes of a {payload}-byte payload"
    );
    if let Some(n) = calls {
        // Two runs of whole blocks (one call each), the 4 reversed blocks
        // one call each, the partial block: far fewer than the 68 whole
        // blocks.
        assert!(n <= 12, "{fs:?}: {n} copy_file_range calls for 68 blocks");
    }
    // Every bitmap in the base is its own: the bits of what it holds, zero
    // past them.
    let f = std::fs::read(&base).unwrap();
    let (_, bitmap, blocks) = vhd_blocks(&base);
    assert_eq!(blocks.len(), 48 + 4 + 1 + 16);
    for (i, at) in blocks {
        let bits = &f[at as usize..(at + bitmap) as usize];
        assert!(
            bits[128..].iter().all(|&b| b == 0),
            "{fs:?}: block {i}: bitmap padding {:?}",
            bits[128..].iter().position(|&b| b != 0)
        );
        if i != 40 * MIB / block {
            assert!(bits[..128].iter().all(|&b| b == 0xFF), "{fs:?}: block {i}");
        }
    }
}

#[test]
fn vhd_merge_joins_whole_block_clones() {
    testdata::each_case(FsKind::ALL, |&case| vhd_joined_clones(case));
}
