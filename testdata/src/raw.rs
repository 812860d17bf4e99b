//! Image bytes read and patched by hand, independently of the drivers:
//! integers at offsets, the VHDX region and metadata GUIDs, and the
//! checksums a test recomputes after damaging a field (so that the damage
//! itself, not the checksum, is what a reader meets). Offsets out of range
//! panic: these are test helpers.

use formats::checksum::{crc32c_zeroed, vhd_checksum};

fn field<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    b[o..o + N].try_into().unwrap()
}

pub fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(field(b, o))
}
pub fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(field(b, o))
}
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(field(b, o))
}
pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(field(b, o))
}

/// Overwrite `b` at `o` with `bytes`.
pub fn put(b: &mut [u8], o: usize, bytes: &[u8]) {
    b[o..o + bytes.len()].copy_from_slice(bytes);
}
pub fn put_be32(b: &mut [u8], o: usize, v: u32) {
    put(b, o, &v.to_be_bytes());
}
pub fn put_le32(b: &mut [u8], o: usize, v: u32) {
    put(b, o, &v.to_le_bytes());
}
pub fn put_le64(b: &mut [u8], o: usize, v: u64) {
    put(b, o, &v.to_le_bytes());
}

/// The two VHDX headers (4 KiB each, CRC-32C at offset 4).
pub const VHDX_HEADERS: [usize; 2] = [64 << 10, 128 << 10];
/// The two VHDX region tables (64 KiB each, CRC-32C at offset 4).
pub const VHDX_REGION_TABLES: [usize; 2] = [192 << 10, 256 << 10];

/// Region table entry GUID of the BAT (on-disk byte order).
pub const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
/// Region table entry GUID of the metadata region.
pub const META_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
/// Metadata item GUID of the file parameters (block size, flags).
pub const FILE_PARAMS: [u8; 16] = [
    0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
];
/// Metadata item GUID of the logical sector size.
pub const LSS_ITEM: [u8; 16] = [
    0x1D, 0xBF, 0x41, 0x81, 0x6F, 0xA9, 0x09, 0x47, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
];

/// Metadata item GUID of the virtual disk size.
pub const VIRTUAL_DISK_SIZE: [u8; 16] = [
    0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8,
];

/// Recompute the CRC-32C (at offset 4) of the `len`-byte structure at each
/// of `at`.
fn fix_crcs(b: &mut [u8], at: [usize; 2], len: usize) {
    for at in at {
        let c = crc32c_zeroed(&b[at..at + len], 4);
        put_le32(b, at + 4, c);
    }
}

/// Recompute both VHDX headers' checksums.
pub fn fix_vhdx_headers(b: &mut [u8]) {
    fix_crcs(b, VHDX_HEADERS, 4096);
}

/// Write `bytes` at offset `at` of both VHDX headers, then fix their
/// checksums.
pub fn patch_vhdx_headers(b: &mut [u8], at: usize, bytes: &[u8]) {
    for h in VHDX_HEADERS {
        put(b, h + at, bytes);
    }
    fix_vhdx_headers(b);
}

/// Recompute both VHDX region tables' checksums.
pub fn fix_vhdx_region_tables(b: &mut [u8]) {
    fix_crcs(b, VHDX_REGION_TABLES, 64 << 10);
}

/// (offset, length, byte offset of its entry) of the region `guid` in the
/// region table at `t`.
pub fn vhdx_region_in(b: &[u8], t: usize, guid: &[u8; 16]) -> (usize, usize, usize) {
    (0..le32(b, t + 8) as usize)
        .map(|i| t + 16 + 32 * i)
        .find(|e| &b[*e..*e + 16] == guid)
        .map(|e| (le64(b, e + 16) as usize, le32(b, e + 24) as usize, e))
        .expect("region present")
}

/// `vhdx_region_in` the first region table.
pub fn vhdx_region(b: &[u8], guid: &[u8; 16]) -> (usize, usize, usize) {
    vhdx_region_in(b, VHDX_REGION_TABLES[0], guid)
}

/// Absolute offset of the metadata item `guid` (from the first region
/// table's metadata region).
pub fn vhdx_item(b: &[u8], guid: &[u8; 16]) -> usize {
    let (m, _, _) = vhdx_region(b, &META_GUID);
    let n = u16::from_le_bytes([b[m + 10], b[m + 11]]) as usize;
    (0..n)
        .find_map(|i| {
            let e = m + 32 + 32 * i;
            (&b[e..e + 16] == guid).then(|| m + le32(b, e + 16) as usize)
        })
        .expect("item")
}

/// Recompute the checksum of the 512-byte VHD footer at `at`.
pub fn fix_vhd_footer(b: &mut [u8], at: usize) {
    let c = vhd_checksum(&b[at..at + 512], 64);
    put_be32(b, at + 64, c);
}

/// Recompute both VHD footers' checksums (the copy at 0 and the end one).
pub fn fix_vhd_footers(b: &mut [u8]) {
    let n = b.len();
    for at in [0, n - 512] {
        fix_vhd_footer(b, at);
    }
}

/// The VHD dynamic header's offset (the end footer's Data Offset).
pub fn vhd_header(b: &[u8]) -> usize {
    be64(b, b.len() - 512 + 0x10) as usize
}

/// Recompute the checksum of the 1024-byte VHD dynamic header at `at`.
pub fn fix_vhd_header(b: &mut [u8], at: usize) {
    let c = vhd_checksum(&b[at..at + 1024], 36);
    put_be32(b, at + 36, c);
}

/// Break the checksum of both VHDX headers (a byte each covers flipped).
pub fn break_vhdx_header_checksums(b: &mut [u8]) {
    for h in VHDX_HEADERS {
        b[h + 100] ^= 1;
    }
}

/// Break the checksum of both VHD footers (their Checksum fields flipped).
pub fn break_vhd_footer_checksums(b: &mut [u8]) {
    break_vhd_end_footer_checksum(b);
    b[64] ^= 0x55;
}

/// Break the checksum of the VHD footer at the end of the file only (the
/// copy at 0 stays good).
pub fn break_vhd_end_footer_checksum(b: &mut [u8]) {
    let n = b.len();
    b[n - 512 + 64] ^= 0x55;
}

/// Break the signature of the VHDX metadata table.
pub fn break_vhdx_metadata_table_signature(b: &mut [u8]) {
    let (m, _, _) = vhdx_region(b, &META_GUID);
    b[m] = b'X';
}
