//! The real images of ../shared/testdata through the command line: `info`
//! reports the values its README lists, `convert` produces the listed hash
//! of the virtual content, `check` is clean except where the README says
//! the image is broken. Skips (with a printed reason) when the shared test
//! data is absent.

mod common;
use common::{json, xtask};

use std::path::{Path, PathBuf};
use std::process::Output;

use testdata::{real_image_cached, sha256_file};

struct Expect {
    name: &'static str,
    format: &'static str,
    disk_type: &'static str,
    virtual_size: u64,
    block_size: u64,
    logical: u64,
    physical: u64,
    /// sha256 of the whole virtual content; None where not available.
    sha256: Option<&'static str>,
    /// Hashing the whole disk takes long (10 GiB and more): only in the
    /// opt-in slow test.
    slow: bool,
}

const MIB: u64 = 1 << 20;

const IMAGES: &[Expect] = &[
    Expect {
        name: "fixed.vhd",
        format: "vhd",
        disk_type: "fixed",
        virtual_size: 10485760,
        block_size: 0,
        logical: 512,
        physical: 512,
        sha256: Some("459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"),
        slow: false,
    },
    Expect {
        name: "dynamic.vhd",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 10485760,
        block_size: 2 * MIB,
        logical: 512,
        physical: 512,
        sha256: Some("ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784"),
        slow: false,
    },
    Expect {
        name: "fixed.vhdx",
        format: "vhdx",
        disk_type: "fixed",
        virtual_size: 10485760,
        block_size: 2 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"),
        slow: false,
    },
    Expect {
        name: "dynamic.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10485760,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"),
        slow: false,
    },
    Expect {
        name: "vhdx-log-replay.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 1073741824,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"),
        slow: false,
    },
    Expect {
        name: "btrfs.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 1073741824,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("0b959f9cb4e18348ad8b646f152178282542c8304f02fddf765e3fd1a1de6864"),
        slow: false,
    },
    Expect {
        name: "swap.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10737418240,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("60dd30b4c74361427d1089510cabb36e2eeda0cc4747f467ea43173acd358c49"),
        slow: true,
    },
    Expect {
        name: "lvm2.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10737418240,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("f7dc6812a3b12a35f3ec895ce981bd59ff4558270fc80cd812c9cd522bff1295"),
        slow: true,
    },
    Expect {
        name: "iotest-dynamic-1G.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 1073741824,
        block_size: 32 * MIB,
        logical: 512,
        physical: 4096,
        sha256: Some("d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"),
        slow: false,
    },
    Expect {
        name: "iotest-dirtylog-10G-4M.vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10737418240,
        block_size: MIB,
        logical: 512,
        physical: 512,
        sha256: Some("179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f"),
        slow: true,
    },
    Expect {
        name: "hyperv2012r2-dynamic.vhd",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 136365211648,
        block_size: 2 * MIB,
        logical: 512,
        physical: 512,
        sha256: Some("dcb4f171cbcedb416d5da34e48d5a17ecc2828a0f14c416de3669b8463cb1d8e"),
        slow: true,
    },
    Expect {
        name: "virtualpc-dynamic.vhd",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 136365211648,
        block_size: 2 * MIB,
        logical: 512,
        physical: 512,
        sha256: Some("dcb4f171cbcedb416d5da34e48d5a17ecc2828a0f14c416de3669b8463cb1d8e"),
        slow: true,
    },
    Expect {
        name: "d2v-zerofilled.vhd",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 263454720,
        block_size: 2 * MIB,
        logical: 512,
        physical: 512,
        sha256: Some("1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"),
        slow: false,
    },
    Expect {
        name: "differencing.avhdx",
        format: "vhdx",
        disk_type: "differencing",
        virtual_size: 8589934592,
        block_size: 2 * MIB,
        logical: 512,
        physical: 4096,
        sha256: None,
        slow: false,
    },
];

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn info_reports_the_readme_values() {
    for e in IMAGES {
        let Some(p) = real_image_cached(e.name) else {
            return;
        };
        let out = xtask(&["info", "--json", path_str(&p)]);
        assert!(
            out.status.success(),
            "{}: {}",
            e.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json(&out);
        assert_eq!(v["format"], e.format, "{}", e.name);
        assert_eq!(v["disk_type"], e.disk_type, "{}", e.name);
        assert_eq!(v["virtual_size"], e.virtual_size, "{}", e.name);
        assert_eq!(v["block_size"], e.block_size, "{}", e.name);
        assert_eq!(v["logical_sector_size"], e.logical, "{}", e.name);
        assert_eq!(v["physical_sector_size"], e.physical, "{}", e.name);
        assert_eq!(v["chain"][0], path_str(&p), "{}", e.name);
        if e.disk_type == "differencing" {
            assert!(v["parent"].is_object(), "{}", e.name);
        } else {
            assert!(v["parent"].is_null(), "{}", e.name);
        }
    }
}

fn convert_and_hash(src: &Path, extra: &[&str]) -> (Output, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.raw");
    let mut args = vec!["convert", path_str(src), path_str(&out_path)];
    args.extend_from_slice(extra);
    let out = xtask(&args);
    let hash = out
        .status
        .success()
        .then(|| sha256_file(&out_path).expect("hash output"));
    (out, hash)
}

fn convert_matches(slow: bool) {
    for e in IMAGES.iter().filter(|e| e.slow == slow) {
        let Some(sha) = e.sha256 else { continue };
        let Some(p) = real_image_cached(e.name) else {
            return;
        };
        let (out, hash) = convert_and_hash(&p, &[]);
        assert!(
            out.status.success(),
            "{}: {}",
            e.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(hash.as_deref(), Some(sha), "{}", e.name);
    }
}

#[test]
fn convert_gives_the_readme_hashes() {
    convert_matches(false);
}

#[test]
#[ignore = "slow: hashes 10 GiB and 127 GiB virtual disks; run with --ignored"]
fn convert_gives_the_readme_hashes_of_large_images() {
    convert_matches(true);
}

#[test]
fn check_is_clean_on_every_real_image() {
    for e in IMAGES.iter().filter(|e| e.disk_type != "differencing") {
        let Some(p) = real_image_cached(e.name) else {
            return;
        };
        let out = xtask(&["check", "--json", path_str(&p)]);
        let v = json(&out);
        assert_eq!(v["errors"], 0, "{}: {}", e.name, v);
        assert_eq!(out.status.code(), Some(0), "{}", e.name);
    }
}

/// Copy the dfvfs pair into a private directory (the child finds its parent
/// by name next to it).
fn dfvfs_pair(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let parent = testdata::real_image_copy("image.vhd", dir)?;
    let child = testdata::real_image_copy("image-differential.vhd", dir)?;
    Some((parent, child))
}

#[test]
fn dfvfs_images_report_their_bad_footer_checksums_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let Some((parent, child)) = dfvfs_pair(dir.path()) else {
        return;
    };
    for p in [&parent, &child] {
        let out = xtask(&["check", "--json", path_str(p)]);
        let v = json(&out);
        assert_eq!(out.status.code(), Some(1), "{v}");
        let findings = v["findings"].as_array().unwrap();
        assert!(
            findings.iter().any(|f| f["severity"] == "error"
                && f["kind"] == "footer_checksum"
                && f["structure"].as_str().unwrap_or("").contains("footer")
                && f["offset"].is_u64()),
            "{v}"
        );
    }
}

#[test]
fn dfvfs_chain_needs_the_checksum_override() {
    let dir = tempfile::tempdir().unwrap();
    let Some((parent, child)) = dfvfs_pair(dir.path()) else {
        return;
    };
    let (out, _) = convert_and_hash(&parent, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    let expect = "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25";
    let (out, hash) = convert_and_hash(&parent, &["--ignore-checksums"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash.as_deref(), Some(expect));
    let (out, hash) = convert_and_hash(&child, &["--ignore-checksums"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash.as_deref(), Some(expect));
    let info = json(&xtask(&["info", "--json", path_str(&child)]));
    assert_eq!(info["chain"].as_array().unwrap().len(), 2, "{info}");
    assert_eq!(info["parent"]["resolved"], true, "{info}");
}

#[test]
fn hyperv_checkpoint_without_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = testdata::real_image_copy("differencing.avhdx", dir.path()) else {
        return;
    };
    let out = xtask(&["info", "--json", path_str(&p)]);
    assert!(out.status.success());
    let v = json(&out);
    let parent = &v["parent"];
    assert_eq!(parent["resolved"], false, "{v}");
    let keys: Vec<&str> = parent["locator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    for k in [
        "parent_linkage",
        "relative_path",
        "absolute_win32_path",
        "volume_path",
    ] {
        assert!(keys.contains(&k), "{k} missing in {v}");
    }
    let linkage = parent["locator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "parent_linkage")
        .unwrap();
    assert_eq!(
        linkage["value"].as_str().unwrap().to_ascii_lowercase(),
        "{ff34003b-11ed-4cf8-a166-b2be05e20b80}"
    );
    assert!(!parent["tried"].as_array().unwrap().is_empty(), "{v}");
    for cmd in ["check", "convert"] {
        let dst = dir.path().join("o.raw");
        let args: Vec<&str> = if cmd == "check" {
            vec!["check", path_str(&p)]
        } else {
            vec!["convert", path_str(&p), path_str(&dst)]
        };
        let out = xtask(&args);
        assert!(!out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("parent not found"), "{cmd}: {text}");
    }
}
