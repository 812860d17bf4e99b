//! Merging the real differencing images of ../shared/testdata:
//! `image-differential.vhd` into `image.vhd` (refused without the checksum
//! override, exact with it), and the Hyper-V checkpoint
//! `differencing.avhdx` into a stand-in parent built as its README says.

mod common;
use common::{json, s, xtask};

use std::os::unix::fs::FileExt;
use std::path::Path;

use std::sync::Arc;

use formats::chain::{Chain, ChainOptions, Source};
use formats::{FsNamespace, Namespace};
use testdata::file_hashes as hashes;

#[test]
fn dfvfs_child_merges_into_its_parent_only_with_the_override() {
    let d = tempfile::tempdir().unwrap();
    let Some(parent) = testdata::real_image_copy("image.vhd", d.path()) else {
        return;
    };
    let Some(child) = testdata::real_image_copy("image-differential.vhd", d.path()) else {
        return;
    };
    let before = hashes(d.path());
    let out = xtask(&["merge", s(&child), "--json"]);
    let v = json(&out);
    assert_eq!(v["return_value"], 32776, "{v}");
    assert_eq!(v["error_kind"], "checksum", "{v}");
    assert_eq!(v["corruption_kind"], "footer_checksum", "{v}");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(hashes(d.path()), before, "a refused merge changed bytes");

    let out = xtask(&["merge", s(&child), "--json", "--ignore-checksums"]);
    let v = json(&out);
    assert_eq!(v["return_value"], 0, "{v}");
    assert_eq!(v["state"], "completed");
    let raw = d.path().join("merged.raw");
    // The commit rewrote the parent's footers with valid checksums.
    let conv = xtask(&["convert", s(&parent), s(&raw)]);
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    assert_eq!(
        testdata::sha256_file(&raw).unwrap(),
        "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25"
    );
    assert_eq!(xtask(&["check", s(&parent)]).status.code(), Some(0));
}

/// Patch both VHDX headers to carry `guid` as DataWriteGuid (what Hyper-V's
/// parent had), keeping every other field and fixing the CRC.
fn set_data_write_guid(path: &Path, guid: uuid::Uuid) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for slot in [64u64 << 10, 128 << 10] {
        let mut raw = vec![0u8; 4096];
        f.read_exact_at(&mut raw, slot).unwrap();
        let (mut h, ok) = formats::vhdx::header::VhdxHeader::parse(&raw).expect("header");
        assert!(ok);
        h.data_write_guid = guid;
        f.write_all_at(&h.to_bytes(), slot).unwrap();
    }
    f.sync_all().unwrap();
}

/// 256 MiB windows of the virtual disk that hold anything in `chain`.
fn held_windows(chain: &Chain) -> Vec<u64> {
    const W: u64 = 256 << 20;
    let size = chain.top().virtual_size();
    let mut r = chain.reader();
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let len = W.min(size - off);
        if r.runs(off, len)
            .unwrap()
            .iter()
            .any(|x| matches!(x.source, Source::Layer { .. }))
        {
            out.push(off);
        }
        off += len;
    }
    out
}

#[test]
fn hyperv_checkpoint_merges_into_a_stand_in_parent() {
    let d = tempfile::tempdir().unwrap();
    let Some(child) = testdata::real_image_copy("differencing.avhdx", d.path()) else {
        return;
    };
    let parent = d
        .path()
        .join("Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx");
    let o = xtask(&["create", s(&parent), "--size", "8G", "--block-size", "32M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Parent content under and around the child's present sectors.
    let input = d.path().join("in.bin");
    std::fs::write(&input, vec![0xEEu8; 3 << 20]).unwrap();
    for off in ["0", "537919488", "2181038080"] {
        let o = xtask(&["write", s(&parent), "--offset", off, "--input", s(&input)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    set_data_write_guid(
        &parent,
        "ff34003b-11ed-4cf8-a166-b2be05e20b80".parse().unwrap(),
    );

    let info = json(&xtask(&["info", "--json", s(&child)]));
    assert_eq!(info["parent"]["resolved"], true, "{info}");
    assert_eq!(info["chain"].as_array().unwrap().len(), 2);

    // The pre-merge view, saved as a sparse raw file.
    let expect = d.path().join("expect.raw");
    let o = xtask(&["convert", s(&child), s(&expect)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ns: Arc<dyn Namespace> = Arc::new(FsNamespace);
    let pre_windows = {
        let c = Chain::open(&ns, &child, &ChainOptions::default()).unwrap();
        held_windows(&c)
    };

    let v = json(&xtask(&["merge", s(&child), "--json"]));
    assert_eq!(v["return_value"], 0, "{v}");
    // 6200 sectors of 512 bytes came from the child.
    assert_eq!(v["bytes_merged"], 6200 * 512, "{v}");

    let dest = Chain::open(&ns, &parent, &ChainOptions::default()).unwrap();
    let mut windows = held_windows(&dest);
    windows.extend(pre_windows);
    windows.sort();
    windows.dedup();
    let raw = std::fs::File::open(&expect).unwrap();
    let mut r = dest.reader();
    let (mut a, mut b) = (vec![0u8; 256 << 20], vec![0u8; 256 << 20]);
    for w in windows {
        let n = (256u64 << 20).min(dest.top().virtual_size() - w) as usize;
        raw.read_exact_at(&mut a[..n], w).unwrap();
        r.read(w, &mut b[..n]).unwrap();
        assert!(
            a[..n] == b[..n],
            "merged parent differs from the pre-merge view in window {w:#x}"
        );
    }
    assert_eq!(xtask(&["check", s(&parent)]).status.code(), Some(0));
    // The checkpoint is kept but no longer links to the modified parent.
    let o = xtask(&["convert", s(&child), s(&d.path().join("x.raw"))]);
    assert!(!o.status.success());
}
