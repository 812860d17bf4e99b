//! The two integrity checks of the formats. VHD uses a one's-complement
//! byte sum; VHDX uses CRC-32C (Castagnoli), never the IEEE CRC-32.

/// One's complement of the wrapping 32-bit sum of all bytes, with the 4-byte
/// checksum field at `field` treated as zero (VHD spec, footer and header).
pub fn vhd_checksum(bytes: &[u8], field: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, b) in bytes.iter().enumerate() {
        if i >= field && i < field + 4 {
            continue;
        }
        sum = sum.wrapping_add(u32::from(*b));
    }
    !sum
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` zeroed
/// (VHDX header, region table, log entry).
pub fn crc32c_zeroed(bytes: &[u8], field: usize) -> u32 {
    let end = (field + 4).min(bytes.len());
    let start = field.min(bytes.len());
    let crc = crc32c::crc32c(&bytes[..start]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4][..end - start]);
    crc32c::crc32c_append(crc, &bytes[end..])
}

/// Plain CRC-32C.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer_is_castagnoli_not_ieee() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_ne!(crc32c(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn zeroed_field_is_ignored() {
        let mut a = vec![7u8; 64];
        let b = a.clone();
        a[4..8].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(crc32c_zeroed(&a, 4), crc32c_zeroed(&b, 4));
        assert_eq!(vhd_checksum(&a, 4), vhd_checksum(&b, 4));
        let mut z = b.clone();
        z[4..8].fill(0);
        assert_eq!(crc32c_zeroed(&b, 4), crc32c(&z));
    }

    #[test]
    fn vhd_checksum_is_ones_complement_sum() {
        let bytes = [1u8, 2, 3, 0, 0, 0, 0, 250];
        assert_eq!(vhd_checksum(&bytes, 3), !(1u32 + 2 + 3 + 250));
    }
}
