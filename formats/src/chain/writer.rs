//! Writing through a chain: any byte range, any alignment, into the top
//! image. Partial sectors at the edges are read through the chain (so a
//! differencing child copies up its parent's bytes) and written back whole.

use super::Chain;
use crate::{Error, Result};

/// Write `data` at virtual `offset` through `chain`'s top image.
pub fn write_through(chain: &mut Chain, offset: u64, data: &[u8]) -> Result<()> {
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
    if a_start == offset && a_end == end {
        return chain.links[0].image.write_sectors(offset, data);
    }
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
