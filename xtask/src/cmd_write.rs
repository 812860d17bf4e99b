//! `write IMAGE --offset N [--input FILE]`: write bytes (stdin by default)
//! at a virtual offset through the top image of a chain. Unaligned edges
//! are read through the chain and written back whole.
//!
//! The whole range is validated before the first byte is written: the
//! input's length is known up front (a regular file's size; any other input
//! is first copied into an anonymous temporary file, at most one byte past
//! what fits), so a refused write leaves the image byte-identical instead
//! of refusing at the chunk that crosses the end.

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use formats::chain::{open_image_file, Chain, Link};
use formats::params::OpenOptions;
use formats::{Access, Error, JournalSlot};

use crate::cli_util::{chain_options, fs, parse_size, print_error_about};
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

/// The input, its length and whether that length is exact. `limit`: the
/// longest input that can fit; a stream is spooled up to one byte more,
/// enough to know it is too long without holding (or copying) all of it.
fn open_input(path: Option<&PathBuf>, limit: u64) -> Result<(Box<dyn Read>, u64, bool), Error> {
    let name = path.map_or("stdin".to_string(), |p| p.display().to_string());
    let mut stream: Box<dyn Read> = match path {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io(&name, e))?;
            let meta = f.metadata().map_err(|e| Error::io(&name, e))?;
            if meta.is_file() {
                return Ok((Box::new(f), meta.len(), true));
            }
            Box::new(f)
        }
        None => Box::new(std::io::stdin().lock()),
    };
    let mut spool = tempfile::tempfile().map_err(|e| Error::io("temporary file", e))?;
    let len = std::io::copy(&mut (&mut stream).take(limit.saturating_add(1)), &mut spool)
        .map_err(|e| Error::io(&name, e))?;
    spool.rewind().map_err(|e| Error::io("temporary file", e))?;
    Ok((Box::new(spool), len, len <= limit))
}

/// Refuse a range that does not fit, before anything is written.
fn validate(offset: u64, len: u64, exact: bool, virtual_size: u64) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= virtual_size => Ok(()),
        _ => Err(Error::InvalidParameter(if exact {
            format!(
                "{len} bytes at offset {offset} do not fit in the virtual size {virtual_size}; nothing written"
            )
        } else {
            format!(
                "the input is longer than the {} bytes from offset {offset} to the virtual size {virtual_size}; nothing written",
                virtual_size.saturating_sub(offset)
            )
        })),
    }
}

pub fn write(args: &WriteArgs) -> Result<u64, Error> {
    let ns = fs();
    let mut opts = chain_options(&args.chain);
    // Locked for writing but opened read-only: opening an image writable
    // may already change it (a VHDX's header takes a new FileWriteGuid),
    // so the writable image comes only once the range is known to fit.
    let mut top_opts = opts.clone();
    top_opts.access = Access::Write;
    top_opts.writable = false;
    let top = open_image_file(&ns, &args.image, &top_opts)?;
    let size = top.virtual_size();
    let Some(limit) = size.checked_sub(args.offset) else {
        return Err(Error::InvalidParameter(format!(
            "offset {} is past the virtual size {size}; nothing written",
            args.offset
        )));
    };
    let (input, len, exact) = open_input(args.input.as_ref(), limit)?;
    validate(args.offset, len, exact, size)?;
    // Map the range through the top first: a block the write would land in
    // that lies outside the file (a corrupt BAT entry) is refused here,
    // before the writable reopen changes the first byte.
    // (Whole sectors: the edges of an unaligned range are read and
    // written back whole.)
    let sector = u64::from(top.logical_sector_size());
    let first = args.offset / sector * sector;
    let past = (args.offset + len).div_ceil(sector) * sector;
    top.map(first, past - first, &mut Vec::new())?;
    // The parents next, still read-only: a missing, locked, corrupt or
    // mislinked parent refuses the write before the top is reopened
    // writable (which would already give a VHDX a new FileWriteGuid).
    opts.access = Access::Read;
    let mut chain = Chain::open_partial_from(&ns, &args.image, top, &opts)?;
    if let Some(e) = chain.broken.take() {
        return Err(e);
    }
    // Every image opened: the same locked handle, now writable (as
    // `merge` does it).
    let real = ns
        .canonicalize(&args.image)
        .map_err(|e| Error::io(args.image.display().to_string(), e))?;
    let Link {
        path,
        image,
        parent_resolution,
    } = chain.links.remove(0);
    let image = image.reopen(
        Some(JournalSlot::for_image(Arc::clone(&ns), &real)),
        OpenOptions {
            writable: true,
            ignore_checksums: args.chain.ignore_checksums,
        },
    )?;
    chain.links.insert(
        0,
        Link {
            path,
            image,
            parent_resolution,
        },
    );
    // Exactly `len` bytes: a file that grew since is not written past the
    // validated range; one that shrank ends the write with an error.
    let mut input = input.take(len);
    let mut offset = args.offset;
    let end = args.offset + len;
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    while offset < end {
        let want = buf
            .len()
            .min(usize::try_from(end - offset).unwrap_or(CHUNK));
        input
            .read_exact(&mut buf[..want])
            .map_err(|e| Error::io("input (shorter than when it was measured)", e))?;
        write_through(&mut chain, offset, &buf[..want])?;
        offset += want as u64;
    }
    Ok(len)
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
            print_error_about(&args.image, &e);
            1
        }
    }
}
