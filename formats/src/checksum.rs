//! The two integrity checks of the formats. VHD uses a one's-complement
//! byte sum; VHDX uses CRC-32C (Castagnoli), never the IEEE CRC-32.
//!
//! Both run on every open of every image (a VHDX header is 4 KiB, a region
//! table 64 KiB, mostly zeros), so they avoid per-byte loops: the VHD sum
//! adds eight bytes a word, and the CRC skips a buffer's zero tail (found
//! with block compares) by applying the zero-run operator of the polynomial
//! instead of feeding the zeros through.

/// One's complement of the wrapping 32-bit sum of all bytes, with the 4-byte
/// checksum field at `field` treated as zero (VHD spec, footer and header).
pub fn vhd_checksum(bytes: &[u8], field: usize) -> u32 {
    let skip = bytes
        .get(field..(field + 4).min(bytes.len()))
        .unwrap_or(&[]);
    !byte_sum(bytes).wrapping_sub(byte_sum(skip))
}

/// The wrapping 32-bit sum of all bytes, eight at a time: the even and odd
/// bytes of each word are added in 16-bit lanes (at most 128 words per
/// round, so no lane overflows), the lanes folded at the end of a round.
fn byte_sum(bytes: &[u8]) -> u32 {
    const LANES: u64 = 0x00FF_00FF_00FF_00FF;
    let mut sum: u32 = 0;
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    let mut lanes = 0u64;
    for (i, w) in words.enumerate() {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        lanes += (w & LANES) + ((w >> 8) & LANES);
        if i % 128 == 127 {
            sum = sum.wrapping_add(fold_lanes(lanes));
            lanes = 0;
        }
    }
    sum = sum.wrapping_add(fold_lanes(lanes));
    rest.iter().fold(sum, |s, b| s.wrapping_add(u32::from(*b)))
}

/// The sum of the four 16-bit lanes of `x`.
fn fold_lanes(x: u64) -> u32 {
    let x = (x & 0x0000_FFFF_0000_FFFF) + ((x >> 16) & 0x0000_FFFF_0000_FFFF);
    ((x & 0xFFFF_FFFF) + (x >> 32)) as u32
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` zeroed
/// (VHDX header, region table, log entry).
pub fn crc32c_zeroed(bytes: &[u8], field: usize) -> u32 {
    let end = (field + 4).min(bytes.len());
    let start = field.min(bytes.len());
    let crc = crc32c_append(0, &bytes[..start]);
    let crc = zeros::append(crc, end - start);
    crc32c_append(crc, &bytes[end..])
}

/// Plain CRC-32C.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// `crc32c::crc32c_append`, with a zero tail applied as one operator.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    let data = zeros::data_len(bytes);
    let crc = crc32c::crc32c_append(crc, &bytes[..data]);
    zeros::append(crc, bytes.len() - data)
}

/// Runs of zero bytes in a CRC-32C: where a buffer's zero tail starts, and
/// the effect of `n` zero bytes on a CRC without reading them.
mod zeros {
    /// CRC-32C polynomial, reflected.
    const POLY: u32 = 0x82F6_3B78;
    /// Zero tails are found in blocks of this many bytes.
    const BLOCK: usize = 256;
    static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

    /// The length of `bytes` without its zero tail, rounded up to a whole
    /// block (a block compare against zeros runs outside the instrumented
    /// code of a fuzzing build, unlike a byte loop).
    pub fn data_len(bytes: &[u8]) -> usize {
        let mut end = bytes.len();
        while end > 0 {
            let start = (end - 1) / BLOCK * BLOCK;
            if bytes[start..end] != ZERO_BLOCK[..end - start] {
                break;
            }
            end = start;
        }
        end
    }

    /// a(x) * b(x) modulo the polynomial, in the reflected bit order (bit
    /// 31 is x^0).
    const fn multmodp(a: u32, mut b: u32) -> u32 {
        let mut m = 1u32 << 31;
        let mut p = 0u32;
        while m != 0 {
            if a & m != 0 {
                p ^= b;
            }
            m >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        }
        p
    }

    /// x^(2^k) modulo the polynomial, k = 0..32.
    const X2N: [u32; 32] = {
        let mut t = [0u32; 32];
        let mut p = 1u32 << 30; // x^1
        let mut k = 0;
        while k < 32 {
            t[k] = p;
            p = multmodp(p, p);
            k += 1;
        }
        t
    };

    /// `crc32c_append(crc, &[0; n])` in O(log n) steps: the CRC register
    /// (the complement of the CRC) times x^(8n).
    pub fn append(crc: u32, n: usize) -> u32 {
        if n == 0 {
            return crc;
        }
        let mut reg = !crc;
        let mut bits = n as u64;
        let mut k = 3; // n bytes are 8n = n * 2^3 bits
        while bits != 0 {
            if bits & 1 != 0 {
                reg = multmodp(X2N[k & 31], reg);
            }
            bits >>= 1;
            k += 1;
        }
        !reg
    }
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

    /// The fast paths against the plain definitions, on buffers with zero
    /// tails of every length around the block size, and zero runs of many
    /// lengths.
    #[test]
    fn fast_paths_match_the_definitions() {
        fn slow_sum(bytes: &[u8], field: usize) -> u32 {
            let mut sum: u32 = 0;
            for (i, b) in bytes.iter().enumerate() {
                if i < field || i >= field + 4 {
                    sum = sum.wrapping_add(u32::from(*b));
                }
            }
            !sum
        }
        let mut seed = 0x1234_5678u32;
        for len in [
            0usize, 1, 3, 4, 7, 8, 9, 255, 256, 257, 511, 512, 513, 1024, 4096, 5000,
        ] {
            for data in [0usize, 1, 5, 255, 256, 257, len / 2, len] {
                let data = data.min(len);
                let mut b = vec![0u8; len];
                for x in &mut b[..data] {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *x = (seed >> 16) as u8 | 1;
                }
                let all = vec![0xFFu8; len];
                for field in [0usize, 4, 0x40, len.saturating_sub(2), len + 3] {
                    assert_eq!(
                        vhd_checksum(&b, field),
                        slow_sum(&b, field),
                        "{len} {field}"
                    );
                    assert_eq!(vhd_checksum(&all, field), slow_sum(&all, field));
                    let mut z = b.clone();
                    let (s, e) = (field.min(len), (field + 4).min(len));
                    z[s..e].fill(0);
                    assert_eq!(
                        crc32c_zeroed(&b, field),
                        crc32c::crc32c(&z),
                        "{len} {field}"
                    );
                }
                assert_eq!(crc32c(&b), crc32c::crc32c(&b));
                assert_eq!(crc32c_append(7, &b), crc32c::crc32c_append(7, &b));
            }
        }
        for n in [1usize, 2, 3, 8, 100, 4096, 65_535, 65_536, 1 << 20] {
            let z = vec![0u8; n];
            for c in [0u32, 1, 0xE306_9283, u32::MAX] {
                assert_eq!(zeros::append(c, n), crc32c::crc32c_append(c, &z), "{n}");
            }
        }
    }
}
