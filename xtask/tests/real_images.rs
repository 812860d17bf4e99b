//! The real images of ../shared/testdata through the command line: `info`
//! reports the values its README lists, `convert` produces the listed hash
//! of the virtual content, `check` is clean except where the README says
//! the image is broken. Skips (with a printed reason) when the shared test
//! data is absent.

mod common;
use common::{json, ok, xtask};

use std::path::{Path, PathBuf};
use std::process::Output;

use testdata::{real_image_cached, sha256_file, REAL_IMAGES as IMAGES};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn info_reports_the_readme_values() {
    for e in IMAGES {
        let Some(p) = real_image_cached(e.name) else {
            return;
        };
        let out = ok(xtask(&["info", "--json", path_str(&p)]), e.name);
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
        ok(out, e.name);
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
    ok(out, "convert --ignore-checksums parent");
    assert_eq!(hash.as_deref(), Some(expect));
    let (out, hash) = convert_and_hash(&child, &["--ignore-checksums"]);
    ok(out, "convert --ignore-checksums child");
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
