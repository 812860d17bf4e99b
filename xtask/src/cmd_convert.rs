//! `convert SOURCE DEST`: the virtual content seen through SOURCE's chain,
//! as a raw file (sparse where zero) or flattened into a new dynamic
//! `.vhd` / `.vhdx`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use formats::chain::{Chain, Source};
use formats::params::{CreateParams, DiskType, Identity, OpenOptions};
use formats::{Access, CopyRange, Error, Namespace, Storage};

use crate::cli_util::{chain_options, fs, print_error_about};
use crate::ChainArgs;

#[derive(Args)]
pub struct ConvertArgs {
    pub source: PathBuf,
    /// `.raw`/`.img` (or any other name): raw; `.vhd`/`.vhdx`: a new dynamic image.
    pub dest: PathBuf,
    /// Block size of a .vhd/.vhdx output.
    #[arg(long, value_parser = crate::cli_util::parse_size)]
    pub block_size: Option<u64>,
    /// fdatasync a raw output before exiting. Off by default, as for `cp`
    /// and `qemu-img convert` (cache=unsafe): a convert interrupted by a
    /// crash is simply run again. Image outputs are always committed.
    #[arg(long)]
    pub sync: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
}

const CHUNK: u64 = 4 << 20;

pub fn convert(args: &ConvertArgs) -> Result<u64, Error> {
    let ns = fs();
    let chain = Chain::open(&ns, &args.source, &chain_options(&args.chain))?;
    match formats::create::format_for_path(&args.dest) {
        Ok(_) => to_image(&ns, &chain, &args.dest, args.block_size),
        Err(_) => to_raw(&ns, &chain, &args.dest, args.sync),
    }
}

/// Call `copy(layer storage, offset in it, virtual offset, length)` for
/// every run of the chain's virtual content that a layer holds, in order;
/// the runs no layer holds read as zeros and are left out. The chain is
/// folded a window of `64 * CHUNK` at a time, which bounds the run list.
fn for_each_held_run(
    chain: &Chain,
    mut copy: impl FnMut(&dyn Storage, u64, u64, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let size = chain.top().virtual_size();
    let mut reader = chain.reader();
    let mut runs = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = (64 * CHUNK).min(size - offset);
        runs.clear();
        runs.extend_from_slice(reader.runs(offset, len)?);
        for r in &runs {
            if let Source::Layer { layer, file_offset } = r.source {
                let src = chain.links[layer].image.storage();
                copy(src.as_ref(), file_offset, r.offset, r.len)?;
            }
        }
        offset += len;
    }
    Ok(())
}

fn to_raw(ns: &Arc<dyn Namespace>, chain: &Chain, dest: &Path, sync: bool) -> Result<u64, Error> {
    let name = dest.display().to_string();
    let out = ns.create(dest).map_err(|e| Error::io(&name, e))?;
    let size = chain.top().virtual_size();
    for_each_held_run(chain, |src, file_offset, offset, len| {
        // Let the kernel move the bytes where it can.
        out.copy_from(src, CopyRange::new(file_offset, offset, len))
            .map_err(|e| Error::io(&name, e))
    })?;
    out.set_len(size).map_err(|e| Error::io(&name, e))?;
    if sync {
        out.flush().map_err(|e| Error::io(&name, e))?;
    }
    Ok(size)
}

fn to_image(
    ns: &Arc<dyn Namespace>,
    chain: &Chain,
    dest: &Path,
    block_size: Option<u64>,
) -> Result<u64, Error> {
    let info = chain.top().info();
    let params = CreateParams {
        virtual_size: info.virtual_size,
        disk_type: DiskType::Dynamic,
        block_size: block_size.map(|b| b as u32),
        logical_sector_size: if formats::create::format_for_path(dest)?
            == formats::params::Format::Vhdx
        {
            info.logical_sector_size
        } else {
            512
        },
        physical_sector_size: info.physical_sector_size,
        parent: None,
    };
    formats::create::create_file(ns, dest, &params)?;
    let name = dest.display().to_string();
    let storage = ns
        .open(dest, Access::Write)
        .map_err(|e| Error::io(&name, e))?;
    let mut img = formats::image::open(
        &name,
        storage,
        None,
        OpenOptions {
            writable: true,
            ignore_checksums: false,
        },
    )?;
    let identity = match img.identity() {
        Identity::Vhdx { .. } => Identity::Vhdx {
            data_write_guid: formats::entropy::new_guid(),
        },
        Identity::Vhd { timestamp, .. } => Identity::Vhd {
            unique_id: *formats::entropy::new_guid().as_bytes(),
            timestamp,
        },
    };
    let size = info.virtual_size;
    let mut batch = img.begin_batch()?;
    for_each_held_run(chain, |src, file_offset, offset, len| {
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            batch.copy(offset + done, n, src, file_offset + done)?;
            done += n;
        }
        Ok(())
    })?;
    batch.prepare()?;
    batch.commit(identity)?;
    Ok(size)
}

pub fn run(args: ConvertArgs) -> u8 {
    match convert(&args) {
        Ok(n) => {
            eprintln!(
                "{} -> {}: {n} bytes of virtual disk",
                args.source.display(),
                args.dest.display()
            );
            0
        }
        Err(e) => {
            // Parameter errors (the output's block size) are about the
            // output.
            print_error_about(&args.dest, &e);
            if let Error::ParentNotFound { .. } | Error::FileNotFound { .. } = e {
                3
            } else {
                1
            }
        }
    }
}
