//! The in-place write path (FORMATS.md 2.7): `write_sectors` and
//! `zero_sectors` on a writable open. Each call leaves the file consistent at
//! every crash point: old or new sectors, leaked space at worst.

use super::bat::BAT_UNALLOCATED;
use super::codec::align512;
use super::footer::FOOTER_SIZE;
use super::image::VhdImage;
use crate::error::IoContext;
use crate::{CorruptionKind, Error, Result};

pub(super) static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

impl VhdImage {
    fn require_writable(&self) -> Result<()> {
        if !self.opts.writable {
            return Err(Error::PermissionDenied {
                file: self.name.clone(),
                message: "image opened read-only".into(),
            });
        }
        Ok(())
    }

    /// Write `data` (or zeros when None) over `[offset, offset+len)`.
    pub(super) fn write_impl(&mut self, offset: u64, data: Option<&[u8]>, len: u64) -> Result<()> {
        self.require_writable()?;
        self.check_range(offset, len)?;
        let Some(s) = &self.sparse else {
            // Fixed: the data area is the virtual disk; sectors are written in
            // place (512-byte writes cannot tear).
            match data {
                Some(d) => self.storage.write_at(d, offset).ctx(&self.name)?,
                None => self.write_zeros_at(offset, len)?,
            }
            return Ok(());
        };
        let bs = s.block_size;
        let (differencing, end) = (s.differencing, offset + len);
        let mut pos = offset;
        while pos < end {
            let b = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let piece = data.map(|d| &d[(pos - offset) as usize..(pos - offset + n) as usize]);
            let allocated = self
                .sparse
                .as_ref()
                .and_then(|s| s.bat.get(b as usize).copied())
                .is_some_and(|e| e != BAT_UNALLOCATED);
            if !allocated && piece.is_none() && !differencing {
                // Dynamic: an unallocated block already reads zeros.
            } else if allocated {
                self.write_allocated(b, in_block, piece, n)?;
            } else {
                self.allocate_block(b, in_block, piece, n)?;
            }
            pos += n;
        }
        Ok(())
    }

    fn write_zeros_at(&self, at: u64, len: u64) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (ZEROS.len() as u64).min(len - done) as usize;
            self.storage
                .write_at(&ZEROS[..n], at + done)
                .ctx(&self.name)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Set bitmap bits for sectors `[k0, k1)` of the block whose bitmap is at
    /// `base`; returns whether anything changed on disk.
    pub(super) fn set_bits(&self, base: u64, k0: u64, k1: u64) -> Result<bool> {
        let (mut bm, first) = self.read_bitmap(base, k0, k1)?;
        let before = bm.bytes.clone();
        for k in k0..k1 {
            bm.set(k - first);
        }
        if bm.bytes == before {
            return Ok(false);
        }
        self.storage
            .write_at(&bm.bytes, base + first / 8)
            .ctx(&self.name)?;
        Ok(true)
    }

    fn write_allocated(
        &mut self,
        b: u64,
        in_block: u64,
        piece: Option<&[u8]>,
        n: u64,
    ) -> Result<()> {
        let Some(s) = &self.sparse else { return Ok(()) };
        let entry = s.bat.get(b as usize).copied().unwrap_or(BAT_UNALLOCATED);
        let base = u64::from(entry) * 512;
        let data_at = base + s.bitmap_bytes + in_block;
        let len = self.storage.len().ctx(&self.name)?;
        if data_at + n > len {
            return Err(Error::corrupt(
                CorruptionKind::BlockOutsideFile,
                &self.name,
                "block allocation table",
                s.header.table_offset + 4 * b,
                format!("block {b} at {base:#x} lies outside the file"),
            ));
        }
        match piece {
            Some(d) => self.storage.write_at(d, data_at).ctx(&self.name)?,
            None => self.write_zeros_at(data_at, n)?,
        }
        // Ordering: data durable before the bitmap bit that exposes it, so a
        // crash shows the old (parent's) sectors, never unwritten ones.
        self.storage.flush().ctx(&self.name)?;
        if self.set_bits(base, in_block / 512, (in_block + n) / 512)? {
            self.storage.flush().ctx(&self.name)?;
        }
        Ok(())
    }

    fn allocate_block(
        &mut self,
        b: u64,
        in_block: u64,
        piece: Option<&[u8]>,
        n: u64,
    ) -> Result<()> {
        let name = self.name.clone();
        let Some(s) = &self.sparse else { return Ok(()) };
        let (span, bitmap_bytes, table_offset) =
            (s.block_span(), s.bitmap_bytes, s.header.table_offset);
        let file_len = self.storage.len().ctx(&name)?;
        // The new block takes the place of the end footer (spec rule); the
        // file's real end wins if something (an abandoned batch) lies beyond.
        let start = align512(
            self.footer_offset
                .max(file_len.saturating_sub(FOOTER_SIZE as u64)),
        )
        .ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        let sector = super::bat::entry_for(start, &name)?;
        let new_footer_at = start + span;
        let footer = self.footer.to_bytes()?;
        // Ordering (a): the file must end in a valid footer at every crash
        // point, so the footer moves to the new end, durably, before the old
        // footer sector is overwritten by the bitmap.
        self.storage.write_at(&footer, new_footer_at).ctx(&name)?;
        self.storage.flush().ctx(&name)?;
        // (b) bitmap and data. The data area past the old end is fresh
        // (zeros); the bitmap overwrites the old footer sector.
        let mut bitmap = vec![0u8; bitmap_bytes as usize];
        let mut bm = super::sector_bitmap::SectorBitmap {
            bytes: std::mem::take(&mut bitmap),
        };
        for k in in_block / 512..(in_block + n) / 512 {
            bm.set(k);
        }
        self.storage.write_at(&bm.bytes, start).ctx(&name)?;
        if let Some(d) = piece {
            self.storage
                .write_at(d, start + bitmap_bytes + in_block)
                .ctx(&name)?;
        }
        // (c) block durable before the BAT entry that references it.
        self.storage.flush().ctx(&name)?;
        // (d) the 4-byte BAT entry (one sector write, cannot tear), (e) flush.
        self.storage
            .write_at(&sector.to_be_bytes(), table_offset + 4 * b)
            .ctx(&name)?;
        self.storage.flush().ctx(&name)?;
        self.footer_offset = new_footer_at;
        if let Some(s) = &mut self.sparse {
            if let Some(e) = s.bat.get_mut(b as usize) {
                *e = sector;
            }
        }
        // (f) the footer content did not change, so the copy at 0 stays valid.
        Ok(())
    }
}
