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
    sectors: BTreeMap<u64, Replayed>,
    /// Replayed zero ranges `[start, end)`. A data sector in `sectors` is
    /// always newer than any zero range covering it: applying a zero range
    /// removes the sectors it covers.
    zeros: Vec<(u64, u64)>,
    len: u64,
}

/// A replayed sector: its bytes, or where the log holds them. A log may
/// carry gigabytes (a merge's journal, `log::spool`), so an overlay keeps
/// the place of each sector, not its bytes; the file under a read-only
/// view does not change, so the place keeps holding them.
#[derive(Debug)]
enum Replayed {
    Bytes(Box<[u8; 4096]>),
    /// Bytes 8..4092 at `at` in the file, the rest from the descriptor.
    InLog {
        at: u64,
        lead: [u8; 8],
        trail: [u8; 4],
    },
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
        self.sectors
            .insert(offset, Replayed::Bytes(Box::new(*sector)));
        self.len = self.len.max(offset + SECTOR);
        Ok(())
    }
    fn data_in_log(
        &mut self,
        offset: u64,
        _sector: &[u8; 4096],
        at: u64,
        lead: &[u8; 8],
        trail: &[u8; 4],
    ) -> Result<()> {
        self.sectors.insert(
            offset,
            Replayed::InLog {
                at,
                lead: *lead,
                trail: *trail,
            },
        );
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
                let range = (pos - sec) as usize..(piece_end - sec) as usize;
                match s {
                    Replayed::Bytes(bytes) => b.copy_from_slice(&bytes[range]),
                    Replayed::InLog { at, lead, trail } => {
                        let mut whole = [0u8; 4096];
                        self.inner.read_at(&mut whole, *at)?;
                        super::log::data_sector::unframe(&mut whole, lead, trail);
                        b.copy_from_slice(&whole[range]);
                    }
                }
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

    #[test]
    fn overlay_reads_a_sector_kept_as_its_place_in_the_log() {
        // The "log" at 8192 holds a data sector: framing around 8..4092.
        let mut file = vec![7u8; 3 * 4096];
        file[8192..8196].copy_from_slice(b"data");
        file[8196..8200].fill(0xEE);
        file[8200..12284].fill(5);
        file[12284..].fill(0xEE);
        let base = Arc::new(MemStorage::from_vec(file));
        let mut o = ReplayOverlay::new(base).unwrap();
        o.data_in_log(0, &[0u8; 4096], 8192, &[1; 8], &[2; 4])
            .unwrap();
        let mut got = vec![0u8; 4096];
        o.read_at(&mut got, 0).unwrap();
        assert_eq!(got[..8], [1; 8]);
        assert!(got[8..4092].iter().all(|b| *b == 5));
        assert_eq!(got[4092..], [2; 4]);
        let mut mid = [0u8; 8];
        o.read_at(&mut mid, 4090).unwrap();
        assert_eq!(mid, [5, 5, 2, 2, 2, 2, 7, 7]);
    }
}
