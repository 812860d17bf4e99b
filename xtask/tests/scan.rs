//! `scan DIR`: chains and problems found in a folder of images built with
//! chainfold's own `create`, checked through `--json` (the document
//! scripts read) and the exit status.

mod common;
use common::{s, xtask};

use std::path::Path;

use serde_json::Value;

fn create(dir: &Path, name: &str, parent: Option<&str>) {
    let p = dir.join(name);
    let out = match parent {
        Some(par) => xtask(&["create", s(&p), "--parent", s(&dir.join(par))]),
        None => xtask(&["create", s(&p), "--size", "16M"]),
    };
    assert!(
        out.status.success(),
        "create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `scan` with `extra` flags: (exit code, document).
fn scan(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["scan", s(dir), "--json"];
    args.extend_from_slice(extra);
    let out = xtask(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scan --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

/// The image entry whose path ends with `name`.
fn image<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no image {name} in {v}"))
}

fn ends(v: &Value, name: &str) -> bool {
    v.as_str().is_some_and(|p| p.ends_with(name))
}

/// (kind, path suffix) of every problem, sorted.
fn problems(v: &Value) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let path = p["path"].as_str().unwrap();
            let name = Path::new(path).file_name().unwrap().to_str().unwrap();
            (p["kind"].as_str().unwrap().to_string(), name.to_string())
        })
        .collect();
    p.sort();
    p
}

#[test]
fn a_clean_folder_is_one_tree_and_exit_0() {
    let d = tempfile::tempdir().unwrap();
    create(d.path(), "base.vhdx", None);
    create(d.path(), "a.avhdx", Some("base.vhdx"));
    create(d.path(), "b.avhdx", Some("a.avhdx"));
    std::fs::write(d.path().join("notes.txt"), b"not an image").unwrap();
    std::fs::write(d.path().join("empty"), b"").unwrap();
    let (code, v) = scan(d.path(), &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["images"].as_array().unwrap().len(), 3, "{v}");
    assert!(problems(&v).is_empty(), "{v}");
    let base = image(&v, "base.vhdx");
    assert_eq!(base["parent_status"], "none");
    assert!(base["parent"].is_null());
    assert_eq!(base["format"], "VHDX");
    assert_eq!(base["type"], "dynamic");
    assert_eq!(base["virtual_size"], 16 << 20);
    assert!(base["file_size"].as_u64().unwrap() > 0);
    assert!(ends(&base["children"][0], "a.avhdx"), "{v}");
    let b = image(&v, "b.avhdx");
    assert_eq!(b["parent_status"], "ok");
    assert_eq!(b["type"], "differencing");
    assert!(ends(&b["parent"], "a.avhdx"), "{v}");
    assert_eq!(b["children"].as_array().unwrap().len(), 0);

    let text = xtask(&["scan", s(d.path())]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("3 images in 1 chains; 0 problems"), "{text}");
    assert!(text.contains("└── "), "{text}");
}

#[test]
fn orphans_moved_parents_mismatches_siblings_and_junk_are_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Siblings: two children of one VHDX base.
    create(dir, "base.vhdx", None);
    create(dir, "a.avhdx", Some("base.vhdx"));
    create(dir, "c.avhdx", Some("base.vhdx"));
    // A parent moved into a subfolder: found by ID with --recursive,
    // missing without.
    create(dir, "moved.vhd", None);
    create(dir, "m.vhd", Some("moved.vhd"));
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::rename(dir.join("moved.vhd"), dir.join("sub/moved.vhd")).unwrap();
    // A parent re-created under the same name: a new identity.
    create(dir, "p.vhd", None);
    create(dir, "q.vhd", Some("p.vhd"));
    std::fs::remove_file(dir.join("p.vhd")).unwrap();
    create(dir, "p.vhd", None);
    // A VHDX signature over junk.
    std::fs::write(dir.join("broken.vhdx"), b"vhdxfile and nothing else").unwrap();

    let (code, v) = scan(dir, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        problems(&v),
        vec![
            ("id_mismatch".into(), "q.vhd".into()),
            ("orphan".into(), "m.vhd".into()),
            ("siblings".into(), "base.vhdx".into()),
            ("unreadable".into(), "broken.vhdx".into()),
        ],
        "{v}"
    );
    assert_eq!(image(&v, "m.vhd")["parent_status"], "missing");
    assert!(image(&v, "m.vhd")["parent"].is_null());
    let q = image(&v, "q.vhd");
    assert_eq!(q["parent_status"], "id_mismatch");
    assert!(ends(&q["parent"], "p.vhd"), "{v}");
    assert_eq!(
        image(&v, "base.vhdx")["children"].as_array().unwrap().len(),
        2
    );

    let (code, v) = scan(dir, &["--recursive"]);
    assert_eq!(code, 1, "{v}");
    let m = image(&v, "m.vhd");
    assert_eq!(m["parent_status"], "found_by_id", "{v}");
    assert!(ends(&m["parent"], "sub/moved.vhd"), "{v}");
    assert!(
        problems(&v).contains(&("stale_locator".into(), "m.vhd".into())),
        "{v}"
    );
    assert!(!problems(&v).iter().any(|(k, _)| k == "orphan"), "{v}");
}

#[test]
fn symlinks_out_of_the_folder_are_not_followed_unless_asked() {
    let outside = tempfile::tempdir().unwrap();
    create(outside.path(), "far.vhdx", None);
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path().join("far.vhdx"), d.path().join("link.vhdx"))
        .unwrap();
    let (code, v) = scan(d.path(), &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["images"].as_array().unwrap().len(), 0, "{v}");
    let (code, v) = scan(d.path(), &["--follow-symlinks"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["images"].as_array().unwrap().len(), 1, "{v}");
}

/// Set a dynamic VHD's Unique Id (footer offset 68) in both footer copies
/// and fix their checksums (offset 64: one's complement of the byte sum).
fn set_vhd_unique_id(path: &Path, id: &[u8; 16]) {
    let mut bytes = std::fs::read(path).unwrap();
    let end = bytes.len() - 512;
    for at in [0, end] {
        let f = &mut bytes[at..at + 512];
        f[68..84].copy_from_slice(id);
        f[64..68].fill(0);
        let sum: u32 = f.iter().map(|&b| u32::from(b)).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_cycle_of_parent_links_is_reported_once() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // y is x's child; then x is replaced by a child of y that carries old
    // x's Unique Id: each is the other's parent.
    create(dir, "x.vhd", None);
    let x = std::fs::read(dir.join("x.vhd")).unwrap();
    let old_id: [u8; 16] = x[68..84].try_into().unwrap();
    create(dir, "y.vhd", Some("x.vhd"));
    std::fs::remove_file(dir.join("x.vhd")).unwrap();
    create(dir, "x.vhd", Some("y.vhd"));
    set_vhd_unique_id(&dir.join("x.vhd"), &old_id);
    let (code, v) = scan(dir, &[]);
    assert_eq!(code, 1, "{v}");
    let p = problems(&v);
    assert_eq!(p.iter().filter(|(k, _)| k == "cycle").count(), 1, "{v}");
    assert_eq!(image(&v, "x.vhd")["parent_status"], "ok", "{v}");
    assert_eq!(image(&v, "y.vhd")["parent_status"], "ok", "{v}");
    let text = xtask(&["scan", s(dir)]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("[in a cycle]"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn an_unreadable_folder_is_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let out = xtask(&["scan", s(&d.path().join("absent")), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("absent"), "{v}");
}
