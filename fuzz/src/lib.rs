//! chainfold's fuzz targets, as plain functions of bytes.
//!
//! libFuzzer drives them through the tiny binaries of `fuzz/libfuzzer`
//! (`fuzz_targets::run("<target>", data)`), and `cargo test` replays every
//! input under `fuzz/regressions/<target>/` through the very same
//! [`run`], so a crash found once stays fixed without libFuzzer.
//!
//! Every target either feeds raw bytes to a parser, or — to get past the
//! first checksum — derives a *valid* image or chain from the bytes with
//! `arbitrary`, then overwrites fields at known structure offsets and
//! recomputes the structure's checksum before opening it. A failed assertion
//! (oracle mismatch) or a panic inside chainfold is a finding.

pub mod corpus;
mod harness;
mod mutate;
pub mod mutator;
mod reference;
mod sparse;
mod targets;
mod template;

/// Every target, in the order `cargo xtask fuzz --all` runs them.
pub const TARGETS: &[&str] = &[
    "open_image",
    "open_chain",
    "merge_in_memory",
    "roundtrip",
    "replay_log",
    "vhd_footer",
    "vhd_dynamic_header",
    "vhd_parent_locator",
    "vhd_bat",
    "vhdx_headers",
    "vhdx_region_table",
    "vhdx_metadata",
    "vhdx_parent_locator",
    "vhdx_bat",
    "vhdx_log",
];

/// Run one target on one input. Panics on a finding (that is what libFuzzer
/// and the regression test look for); returns normally otherwise.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "open_image" => targets::open_image::run(data),
        "open_chain" => targets::open_chain::run(data),
        "merge_in_memory" => targets::merge_in_memory::run(data),
        "roundtrip" => targets::roundtrip::run(data),
        "replay_log" => targets::vhdx::replay_log(data),
        "vhd_footer" => targets::vhd::footer(data),
        "vhd_dynamic_header" => targets::vhd::dynamic_header(data),
        "vhd_parent_locator" => targets::vhd::parent_locator(data),
        "vhd_bat" => targets::vhd::bat(data),
        "vhdx_headers" => targets::vhdx::headers(data),
        "vhdx_region_table" => targets::vhdx::region_table(data),
        "vhdx_metadata" => targets::vhdx::metadata(data),
        "vhdx_parent_locator" => targets::vhdx::parent_locator(data),
        "vhdx_bat" => targets::vhdx::bat(data),
        "vhdx_log" => targets::vhdx::log(data),
        other => panic!("unknown fuzz target {other:?} (known: {TARGETS:?})"),
    }
}
