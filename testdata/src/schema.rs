//! Image structures patched through the library's own encoders: parse a
//! structure, let the test change fields, write it back with its checksum
//! recomputed. (What `raw` does by hand, for tests that want every field
//! by name.)

use formats::vhd::HardDiskFooter;
use formats::vhdx::header::{self, VhdxHeader};
use formats::vhdx::region_table::{self, RegionTable};

/// Both VHDX headers, changed by `f` and re-encoded.
pub fn vhdx_headers(b: &mut [u8], f: impl Fn(&mut VhdxHeader)) {
    for off in header::SLOT_OFFSETS {
        let at = off as usize..off as usize + header::SIZE;
        let (mut h, _) = VhdxHeader::parse(&b[at.clone()]).expect("a VHDX header");
        f(&mut h);
        b[at].copy_from_slice(&h.to_bytes());
    }
}

/// Both VHDX region table copies, changed by `f` and re-encoded.
pub fn vhdx_regions(b: &mut [u8], f: impl Fn(&mut RegionTable)) {
    for off in region_table::COPY_OFFSETS {
        let at = off as usize..off as usize + region_table::SIZE;
        let (mut t, _) = RegionTable::parse(&b[at.clone()], false).expect("a region table");
        f(&mut t);
        b[at].copy_from_slice(&t.to_bytes());
    }
}

/// File offset of the region `guid` (first region table).
pub fn vhdx_region(b: &[u8], guid: uuid::Uuid) -> u64 {
    let at = region_table::COPY_OFFSETS[0] as usize;
    let (t, _) =
        RegionTable::parse(&b[at..at + region_table::SIZE], false).expect("a region table");
    t.find(guid).expect("the region").file_offset
}

/// Both VHD footers (the end one, and the copy at 0 where there is one),
/// changed by `f` and re-encoded.
pub fn vhd_footers(b: &mut [u8], f: impl Fn(&mut HardDiskFooter)) {
    let n = b.len();
    for at in [0, n - 512] {
        let raw: &[u8; 512] = b[at..at + 512].try_into().expect("512 bytes");
        let (mut ft, _) = HardDiskFooter::parse(raw, "image", at as u64).expect("a footer");
        if ft.cookie_ok() {
            f(&mut ft);
            b[at..at + 512].copy_from_slice(&ft.to_bytes().expect("encode footer"));
        }
    }
}
