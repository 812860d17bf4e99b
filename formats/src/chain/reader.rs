//! Reading the virtual disk seen through a chain, sector-exactly.

use super::fold::{fold, FoldedRun, Source};
use crate::layer::Layer;
use crate::{Error, Result};

/// Reads any virtual range of a chain (top layer first).
pub struct ChainReader<'a> {
    layers: Vec<&'a dyn Layer>,
    runs: Vec<FoldedRun>,
}

impl<'a> ChainReader<'a> {
    pub fn new(layers: Vec<&'a dyn Layer>) -> Self {
        ChainReader {
            layers,
            runs: Vec::new(),
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.virtual_size())
    }

    fn sector(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| u64::from(l.logical_sector_size()))
            .max()
            .unwrap_or(512)
            .max(512)
    }

    /// Fold the chain over a range (sector-aligned), for callers that want
    /// to skip zeros (convert) without reading them.
    pub fn runs(&mut self, offset: u64, len: u64) -> Result<&[FoldedRun]> {
        self.runs.clear();
        fold(&self.layers, offset, len, &mut self.runs)?;
        Ok(&self.runs)
    }

    /// Fill `buf` with the virtual bytes at `offset`. Any alignment.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.virtual_size();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= size)
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "read of {} bytes at {offset} is beyond the virtual size {size}",
                    buf.len()
                ))
            })?;
        let sector = self.sector();
        let a_start = offset / sector * sector;
        let a_end = end.div_ceil(sector) * sector;
        let a_end = a_end.min(size.div_ceil(sector) * sector);
        if a_start == offset && a_end == end {
            return self.read_aligned(offset, buf);
        }
        let mut tmp = vec![0u8; (a_end - a_start) as usize];
        self.read_aligned(a_start, &mut tmp)?;
        let s = (offset - a_start) as usize;
        buf.copy_from_slice(&tmp[s..s + buf.len()]);
        Ok(())
    }

    fn read_aligned(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.runs.clear();
        fold(&self.layers, offset, buf.len() as u64, &mut self.runs)?;
        for r in &self.runs {
            let s = (r.offset - offset) as usize;
            let dst = &mut buf[s..s + r.len as usize];
            match r.source {
                Source::Layer { layer, file_offset } => {
                    self.layers[layer].read_file(file_offset, dst)?
                }
                Source::Zero | Source::NotHeld => dst.fill(0),
            }
        }
        Ok(())
    }
}
