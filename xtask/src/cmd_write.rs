//! `write IMAGE --offset N [--input FILE]`: write bytes (stdin by default)
//! at a virtual offset through the top image of a chain. Unaligned edges
//! are read through the chain and written back whole.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use formats::chain::{open_image_file, Chain};
use formats::{Access, Error};

use crate::cli_util::{chain_options, fs, parse_size};
use crate::ChainArgs;

#[derive(Args)]
pub struct WriteArgs {
    pub image: PathBuf,
    #[arg(long, value_parser = parse_size)]
    pub offset: u64,
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub chain: ChainArgs,
}

const CHUNK: usize = 4 << 20;

/// Write `data` at `offset` through `chain`'s top image.
pub fn write_through(chain: &mut Chain, offset: u64, data: &[u8]) -> Result<(), Error> {
    let size = chain.top().virtual_size();
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|e| *e <= size)
        .ok_or_else(|| {
            Error::InvalidParameter(format!(
                "{} bytes at offset {offset} do not fit in the virtual size {size}",
                data.len()
            ))
        })?;
    if data.is_empty() {
        return Ok(());
    }
    let sector = u64::from(chain.top().logical_sector_size());
    let a_start = offset / sector * sector;
    let a_end = end.div_ceil(sector) * sector;
    let mut buf = vec![0u8; (a_end - a_start) as usize];
    if a_start != offset {
        chain.reader().read(a_start, &mut buf[..sector as usize])?;
    }
    if a_end != end {
        let n = buf.len();
        chain
            .reader()
            .read(a_end - sector, &mut buf[n - sector as usize..])?;
    }
    let s = (offset - a_start) as usize;
    buf[s..s + data.len()].copy_from_slice(data);
    chain.links[0].image.write_sectors(a_start, &buf)
}

pub fn write(args: &WriteArgs) -> Result<u64, Error> {
    let ns = fs();
    let mut opts = chain_options(&args.chain);
    let mut top_opts = opts.clone();
    top_opts.access = Access::Write;
    top_opts.writable = true;
    let top = open_image_file(&ns, &args.image, &top_opts)?;
    opts.access = Access::Read;
    let mut chain = Chain::open_partial_from(&ns, &args.image, top, &opts)?;
    if let Some(e) = chain.broken.take() {
        return Err(e);
    }
    let mut input: Box<dyn Read> = match &args.input {
        Some(p) => {
            Box::new(std::fs::File::open(p).map_err(|e| Error::io(p.display().to_string(), e))?)
        }
        None => Box::new(std::io::stdin()),
    };
    let mut offset = args.offset;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut n = 0;
        while n < CHUNK {
            let r = input
                .read(&mut buf[n..])
                .map_err(|e| Error::io("input", e))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        write_through(&mut chain, offset, &buf[..n])?;
        offset += n as u64;
        if n < CHUNK {
            break;
        }
    }
    Ok(offset - args.offset)
}

pub fn run(args: WriteArgs) -> u8 {
    match write(&args) {
        Ok(n) => {
            eprintln!(
                "wrote {n} bytes at offset {} of {}",
                args.offset,
                args.image.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
