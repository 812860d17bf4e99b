//! insta snapshots of `info --json` for the real images: every field the
//! command reports, pinned. Paths are replaced by the image's name so the
//! snapshots do not depend on where the test data lives. Snapshot files live
//! in testdata/snapshots/.

use std::process::Command;

const IMAGES: &[&str] = &[
    "fixed.vhd",
    "dynamic.vhd",
    "d2v-zerofilled.vhd",
    "hyperv2012r2-dynamic.vhd",
    "virtualpc-dynamic.vhd",
    "image.vhd",
    "fixed.vhdx",
    "dynamic.vhdx",
    "differencing.avhdx",
    "vhdx-log-replay.vhdx",
    "btrfs.vhdx",
    "swap.vhdx",
    "lvm2.vhdx",
    "iotest-dynamic-1G.vhdx",
    "iotest-dirtylog-10G-4M.vhdx",
];

#[test]
fn info_json_of_real_images() {
    let dir = tempfile::tempdir().unwrap();
    for name in IMAGES {
        let Some(p) = testdata::real_image_copy(name, dir.path()) else {
            return;
        };
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["info", "--json", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}");
        let text = String::from_utf8(out.stdout)
            .unwrap()
            .replace(&format!("{}/", dir.path().display()), "");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        insta::with_settings!({
            snapshot_path => "../../testdata/snapshots",
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!(format!("info-{name}"), v);
        });
    }
}
