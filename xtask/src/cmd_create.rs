//! `create PATH --size SIZE [--type fixed|dynamic] [--block-size SIZE]
//! [--logical-sector-size 512|4096] [--parent PARENT]`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use formats::chain::{open_image_file, ChainOptions};
use formats::params::{CreateParams, DiskType};
use formats::Error;

use crate::cli_util::{fs, parse_size, print_error_about};

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Fixed,
    Dynamic,
}

#[derive(Args)]
pub struct CreateArgs {
    /// .vhd / .avhd -> VHD, .vhdx / .avhdx -> VHDX.
    pub path: PathBuf,
    /// Virtual size (e.g. 10G); defaults to the parent's with --parent.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    #[arg(long = "type", value_enum, default_value = "dynamic")]
    pub kind: Kind,
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    #[arg(long, default_value_t = 512)]
    pub logical_sector_size: u32,
    #[arg(long, default_value_t = 4096)]
    pub physical_sector_size: u32,
    /// Make a differencing image over this parent.
    #[arg(long)]
    pub parent: Option<PathBuf>,
}

pub fn create(args: &CreateArgs) -> Result<(), Error> {
    let ns = fs();
    let mut params = CreateParams {
        virtual_size: args.size.unwrap_or(0),
        disk_type: match args.kind {
            Kind::Fixed => DiskType::Fixed,
            Kind::Dynamic => DiskType::Dynamic,
        },
        block_size: args
            .block_size
            .map(|b| {
                u32::try_from(b).map_err(|_| Error::InvalidParameter("block size too large".into()))
            })
            .transpose()?,
        logical_sector_size: args.logical_sector_size,
        physical_sector_size: args.physical_sector_size,
        parent: None,
    };
    if let Some(pp) = &args.parent {
        let parent = open_image_file(&ns, pp, &ChainOptions::default())?;
        let spec = formats::create::parent_spec(&ns, parent.as_ref(), pp, &args.path)?;
        if args.size.is_none() {
            params.virtual_size = spec.virtual_size;
        } else if params.virtual_size < spec.virtual_size {
            return Err(Error::InvalidParameter(format!(
                "--size {} is smaller than the parent's virtual size {}",
                params.virtual_size, spec.virtual_size
            )));
        }
        params.logical_sector_size = spec.logical_sector_size;
        params.physical_sector_size = spec.physical_sector_size;
        params.disk_type = DiskType::Differencing;
        params.parent = Some(spec);
    } else if args.size.is_none() {
        return Err(Error::InvalidParameter(
            "--size is required without --parent".into(),
        ));
    }
    formats::create::create_file(&ns, &args.path, &params)
}

pub fn run(args: CreateArgs) -> u8 {
    match create(&args) {
        Ok(()) => {
            eprintln!("created {}", args.path.display());
            0
        }
        Err(e) => {
            print_error_about(&args.path, &e);
            1
        }
    }
}
