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

pub use formats::chain::write_through;

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
