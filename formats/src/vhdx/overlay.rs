//! The read-only replay view: a `Storage` that shows the file as it would
//! be after replaying the log, without changing a byte of it.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::log::replay::ReplaySink;
use crate::{Result, Storage};

const SECTOR: u64 = 4096;

#[derive(Debug)]
pub struct ReplayOverlay {
    inner: Arc<dyn Storage>,
    /// Replayed data sectors by file offset (4 KiB aligned).
    sectors: BTreeMap<u64, Box<[u8; 4096]>>,
    /// Replayed zero ranges `[start, end)`. A data sector in `sectors` is
    /// always newer than any zero range covering it: applying a zero range
    /// removes the sectors it covers.
    zeros: Vec<(u64, u64)>,
    len: u64,
}

impl ReplayOverlay {
    pub fn new(inner: Arc<dyn Storage>) -> io::Result<Self> {
        let len = inner.len()?;
        Ok(ReplayOverlay {
            inner,
            sectors: BTreeMap::new(),
            zeros: Vec::new(),
            len,
        })
    }

    fn in_zero(&self, off: u64) -> bool {
        self.zeros.iter().any(|(s, e)| off >= *s && off < *e)
    }
}

impl ReplaySink for ReplayOverlay {
    fn data(&mut self, offset: u64, sector: &[u8; 4096]) -> Result<()> {
        self.sectors.insert(offset, Box::new(*sector));
        self.len = self.len.max(offset + SECTOR);
        Ok(())
    }
    fn zero(&mut self, offset: u64, length: u64) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let end = offset + length;
        let keys: Vec<u64> = self.sectors.range(offset..end).map(|(k, _)| *k).collect();
        for k in keys {
            self.sectors.remove(&k);
        }
        self.zeros.push((offset, end));
        self.len = self.len.max(end);
        Ok(())
    }
    fn extend_to(&mut self, len: u64) -> Result<()> {
        self.len = self.len.max(len);
        Ok(())
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "read-only replay view of a VHDX with a pending log",
    )
}

impl Storage for ReplayOverlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))?;
        let inner_len = self.inner.len()?;
        let mut pos = offset;
        while pos < end {
            let sec = pos / SECTOR * SECTOR;
            let piece_end = (sec + SECTOR).min(end);
            let b = &mut buf[(pos - offset) as usize..(piece_end - offset) as usize];
            if let Some(s) = self.sectors.get(&sec) {
                b.copy_from_slice(&s[(pos - sec) as usize..(piece_end - sec) as usize]);
            } else if self.in_zero(pos) {
                b.fill(0);
            } else if piece_end <= inner_len {
                self.inner.read_at(b, pos)?;
            } else if pos >= inner_len {
                b.fill(0);
            } else {
                let split = (inner_len - pos) as usize;
                self.inner.read_at(&mut b[..split], pos)?;
                b[split..].fill(0);
            }
            pos = piece_end;
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStorage;

    #[test]
    fn overlay_serves_replayed_sectors_and_leaves_file_alone() {
        let base = Arc::new(MemStorage::from_vec(vec![7u8; 3 * 4096]));
        let mut o = ReplayOverlay::new(base.clone()).unwrap();
        o.data(4096, &[1u8; 4096]).unwrap();
        o.zero(8192, 8192).unwrap();
        o.data(12288, &[2u8; 4096]).unwrap();
        o.extend_to(6 * 4096).unwrap();
        assert_eq!(o.len().unwrap(), 6 * 4096);
        let mut all = vec![0u8; 6 * 4096];
        o.read_at(&mut all, 0).unwrap();
        assert!(all[..4096].iter().all(|b| *b == 7));
        assert!(all[4096..8192].iter().all(|b| *b == 1));
        assert!(all[8192..12288].iter().all(|b| *b == 0));
        assert!(all[12288..16384].iter().all(|b| *b == 2));
        assert!(all[16384..].iter().all(|b| *b == 0));
        let mut b = [0u8; 10];
        o.read_at(&mut b, 4090).unwrap();
        assert_eq!(b, [7, 7, 7, 7, 7, 7, 1, 1, 1, 1]);
        assert!(o.write_at(&[0], 0).is_err());
        assert!(base.to_vec().iter().all(|b| *b == 7));
        // A later zero range hides an earlier data sector.
        o.zero(4096, 4096).unwrap();
        o.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0; 10]);
    }
}
