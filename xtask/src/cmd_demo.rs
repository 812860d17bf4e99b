//! `demo`: a merge a new user can run with nothing prepared. Builds a
//! three-level VHDX chain with known content under `target/demo/`, merges
//! the top child into the base through the same code path as `merge`, and
//! verifies the result with `check` and a content comparison.

use std::path::{Path, PathBuf};

use clap::Args;
use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::{Access, Error};

use crate::cli_util::fs;
use crate::outln;

#[derive(Args)]
pub struct DemoArgs {
    /// Where to build the chain.
    #[arg(long, default_value = "target/demo")]
    pub dir: PathBuf,
}

fn write(path: &Path, offset: u64, data: &[u8]) -> Result<(), Error> {
    let ns = fs();
    let mut top_opts = ChainOptions {
        access: Access::Write,
        writable: true,
        ..ChainOptions::default()
    };
    let top = open_image_file(&ns, path, &top_opts)?;
    top_opts.access = Access::Read;
    top_opts.writable = false;
    let mut chain = Chain::open_partial_from(&ns, path, top, &top_opts)?;
    if let Some(e) = chain.broken.take() {
        return Err(e);
    }
    crate::cmd_write::write_through(&mut chain, offset, data)
}

fn hash_chain(path: &Path) -> Result<String, Error> {
    let ns = fs();
    let chain = Chain::open(&ns, path, &ChainOptions::default())?;
    testdata::hash_layers(chain.layers())
}

fn pattern(byte: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte ^ (i as u8)).collect()
}

pub fn demo(args: &DemoArgs) -> Result<bool, Error> {
    let d = &args.dir;
    if d.exists() {
        std::fs::remove_dir_all(d).map_err(|e| Error::io(d.display().to_string(), e))?;
    }
    std::fs::create_dir_all(d).map_err(|e| Error::io(d.display().to_string(), e))?;
    let base = d.join("base.vhdx");
    let mid = d.join("mid.avhdx");
    let top = d.join("top.avhdx");
    let mb = 1u64 << 20;

    outln!(
        "1. create {} (dynamic VHDX, 256 MiB, 1 MiB blocks)",
        base.display()
    );
    crate::cmd_create::create(&crate::cmd_create::CreateArgs {
        path: base.clone(),
        size: Some(256 * mb),
        kind: crate::cmd_create::Kind::Dynamic,
        block_size: Some(mb),
        logical_sector_size: 512,
        physical_sector_size: 4096,
        parent: None,
    })?;
    write(&base, 0, &pattern(0x11, 3 * mb as usize))?;
    write(&base, 100 * mb, &pattern(0x22, mb as usize))?;

    for (child, parent, byte, at) in [
        (&mid, &base, 0x33u8, mb + 4096),
        (&top, &mid, 0x44u8, 2 * mb - 512),
    ] {
        outln!("2. create {} over {}", child.display(), parent.display());
        crate::cmd_create::create(&crate::cmd_create::CreateArgs {
            path: child.clone(),
            size: None,
            kind: crate::cmd_create::Kind::Dynamic,
            block_size: Some(2 * mb),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent: Some(parent.clone()),
        })?;
        write(child, at, &pattern(byte, 8192 + 512))?;
        write(child, 200 * mb + 1000, &pattern(byte.wrapping_add(1), 5000))?;
    }

    let expected = hash_chain(&top)?;
    outln!(
        "3. content seen through {}: sha256 {expected}",
        top.display()
    );
    outln!("4. merge {} into {}", top.display(), base.display());
    let out = crate::cmd_merge::run_with_progress(
        merge::MergeRequest {
            source: top.clone(),
            destination: Some(base.clone()),
            ..Default::default()
        },
        false,
    );
    if out.return_value != 0 {
        outln!("   merge failed: {}", out.error.unwrap_or_default());
        return Ok(false);
    }
    outln!("   merged {} bytes", out.bytes_merged);
    let got = hash_chain(&base)?;
    let report = crate::cmd_check::report(&crate::cmd_check::CheckArgs {
        image: base.clone(),
        json: false,
        chain: Default::default(),
    });
    outln!("5. verify {}: sha256 {got}", base.display());
    outln!(
        "   check: {} error(s), {} warning(s)",
        report.errors,
        report.warnings
    );
    let ok = got == expected && report.errors == 0;
    outln!(
        "{}",
        if ok {
            "OK: the base now holds exactly what the top child showed."
        } else {
            "FAILED: the merged base differs from the pre-merge view."
        }
    );
    Ok(ok)
}

pub fn run(args: DemoArgs) -> u8 {
    match demo(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
