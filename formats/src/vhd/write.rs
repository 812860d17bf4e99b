//! The in-place write path (FORMATS.md 2.7): `write_sectors` and
//! `zero_sectors` on a writable open. Each call leaves the file consistent at
//! every crash point: old or new sectors, leaked space at worst.

use super::bat::BAT_UNALLOCATED;
use super::codec::align512;
use super::footer::FOOTER_SIZE;
use super::image::VhdImage;
use super::placement::{self, Blocks, Layout, Piece, Reach};
use super::sector_bitmap::SectorBitmap;
use crate::combine::Payload;
use crate::error::IoContext;
use crate::{Error, Result};

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
        let layout = Layout {
            block_size: s.block_size,
            bitmap_bytes: s.bitmap_bytes,
            differencing: s.differencing,
        };
        let mut w = WritePath { img: self, layout };
        placement::write(&mut w, offset, len, data.is_none(), |rel, n| match data {
            Some(d) => Payload::Bytes(&d[rel as usize..(rel + n) as usize]),
            None => Payload::Zeros(n),
        })
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
}

/// The write path's side of the placement (`placement.rs`): every change
/// lands in place, each block piece made durable in the order below before
/// the next one starts.
struct WritePath<'a> {
    img: &'a mut VhdImage,
    layout: Layout,
}

impl WritePath<'_> {
    fn sparse(&self) -> Result<&super::image::Sparse> {
        self.img
            .sparse
            .as_ref()
            .ok_or_else(|| Error::InvalidParameter("not a dynamic VHD".into()))
    }
}

impl Blocks for WritePath<'_> {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn entry(&self, b: u64) -> Result<u32> {
        Ok(self
            .sparse()?
            .bat
            .get(b as usize)
            .copied()
            .unwrap_or(BAT_UNALLOCATED))
    }

    fn reach(&mut self, p: Piece, entry: u32) -> Result<Reach> {
        let name = &self.img.name;
        let (span, table_offset) = {
            let s = self.sparse()?;
            (s.block_span(), s.header.table_offset)
        };
        let st = &self.img.storage;
        if entry != BAT_UNALLOCATED {
            let base = u64::from(entry) * 512;
            let data_at = base + self.layout.bitmap_bytes + p.in_block;
            if data_at + p.len > st.len().ctx(name)? {
                return Err(placement::outside_file(name, table_offset, p.block, base));
            }
            return Ok(Reach::InPlace(base));
        }
        let file_len = st.len().ctx(name)?;
        // The new block takes the place of the end footer (spec rule); the
        // file's real end wins if something (an abandoned batch) lies beyond.
        let start = align512(
            self.img
                .footer_offset
                .max(file_len.saturating_sub(FOOTER_SIZE as u64)),
        )
        .ok_or_else(|| Error::InvalidParameter("file too large".into()))?;
        // Refused (a block past 2 TiB) before anything is written.
        super::bat::entry_for(start, name)?;
        let footer = self.img.footer.to_bytes()?;
        // Ordering (a): the file must end in a valid footer at every crash
        // point, so the footer moves to the new end, durably, before the old
        // footer sector is overwritten by the bitmap.
        st.write_at(&footer, start + span).ctx(name)?;
        st.flush().ctx(name)?;
        // (b) bitmap (the piece's bits set: `set_bits` has nothing left to
        // do) and then data (`put`). The data area past the old end is
        // fresh (zeros); the bitmap overwrites the old footer sector.
        let mut bm = SectorBitmap {
            bytes: vec![0u8; self.layout.bitmap_bytes as usize],
        };
        let (k0, k1) = p.sectors();
        for k in k0..k1 {
            bm.set(k);
        }
        st.write_at(&bm.bytes, start).ctx(name)?;
        Ok(Reach::New(start))
    }

    fn put(&mut self, _r: Reach, at: u64, data: Payload<'_>) -> Result<()> {
        match data {
            Payload::Zeros(n) => self.img.write_zeros_at(at, n),
            d => d.put(&*self.img.storage, at).ctx(&self.img.name),
        }
    }

    fn set_bits(&mut self, r: Reach, p: Piece) -> Result<()> {
        let Reach::InPlace(base) = r else {
            // A new block's bitmap was written whole by `reach`.
            return Ok(());
        };
        let name = &self.img.name;
        // Ordering: data durable before the bitmap bit that exposes it, so a
        // crash shows the old (parent's) sectors, never unwritten ones.
        self.img.storage.flush().ctx(name)?;
        let (k0, k1) = p.sectors();
        if self.img.set_bits(base, k0, k1)? {
            self.img.storage.flush().ctx(name)?;
        }
        Ok(())
    }

    fn piece_done(&mut self, r: Reach, p: Piece) -> Result<()> {
        let Reach::New(start) = r else {
            return Ok(());
        };
        let name = self.img.name.clone();
        let (span, table_offset) = {
            let s = self.sparse()?;
            (s.block_span(), s.header.table_offset)
        };
        let sector = super::bat::entry_for(start, &name)?;
        let st = &self.img.storage;
        // (c) block durable before the BAT entry that references it.
        st.flush().ctx(&name)?;
        // (d) the 4-byte BAT entry (one sector write, cannot tear), (e) flush.
        st.write_at(&sector.to_be_bytes(), table_offset + 4 * p.block)
            .ctx(&name)?;
        st.flush().ctx(&name)?;
        self.img.footer_offset = start + span;
        if let Some(s) = &mut self.img.sparse {
            if let Some(e) = s.bat.get_mut(p.block as usize) {
                *e = sector;
            }
        }
        // (f) the footer content did not change, so the copy at 0 stays valid.
        Ok(())
    }
}
