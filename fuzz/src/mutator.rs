//! A structure-aware libFuzzer mutator beside libFuzzer's byte mutator,
//! for the inputs that are whole image files (`open_image` modes 0 and 1:
//! raw VHD / VHDX bytes, seeded with real and created images).
//!
//! Half of the calls (by seed) set one named field of a structure the file
//! holds — footer, dynamic header, locator, BAT entry; header, region table,
//! metadata entry or item, BAT entry, log entry — to an interesting value
//! and recompute that structure's checksum (`mutate::Mutation::Named`), so
//! the change gets past the integrity checks; the other half, and every
//! other target, use the byte mutator. `fuzz/libfuzzer` wires it in with
//! `fuzz_mutator!`.

use arbitrary::{Arbitrary, Unstructured};

use crate::mutate::{self, Mutation, Named};
use crate::sparse::Pages;

/// xorshift64*, enough to turn libFuzzer's seed into choices.
fn bytes_from_seed(seed: u32, n: usize) -> Vec<u8> {
    let mut x = u64::from(seed) | 1 << 40;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Mutate `data[..size]` in place (at most `max_size` bytes); returns the
/// new size. `bytes` is libFuzzer's own mutator.
pub fn mutate(
    target: &str,
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    bytes: &mut dyn FnMut(&mut [u8], usize, usize) -> usize,
) -> usize {
    let raw_image = target == "open_image" && size > 1 && data[0] % 4 < 2;
    if !raw_image || seed & 1 == 0 {
        return bytes(data, size, max_size);
    }
    let choice = bytes_from_seed(seed >> 1, 48);
    let mut u = Unstructured::new(&choice);
    let (Ok(field), Ok(value)) = (Named::arbitrary(&mut u), Arbitrary::arbitrary(&mut u)) else {
        return bytes(data, size, max_size);
    };
    // Mostly with the checksum fixed: that is the point of this mutator.
    let keep_sum = choice[47].is_multiple_of(8);
    let mut file = Pages::from_bytes(&data[1..size]);
    mutate::apply_all(
        &mut file,
        &[Mutation::Named {
            field,
            value,
            keep_sum,
        }],
    );
    let out = file.get(0, size - 1);
    data[1..1 + out.len()].copy_from_slice(&out);
    1 + out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a real-looking VHD (a footer with a valid checksum), the
    /// structure-aware half changes the file and keeps the footer sum valid
    /// for most seeds; the byte half is the fallback.
    #[test]
    fn structure_half_changes_fields_with_sums_fixed() {
        let mut f = vec![0u8; 1 + 1024];
        let foot = 1 + 512;
        f[foot..foot + 8].copy_from_slice(b"conectix");
        f[foot + 0x30..foot + 0x38].copy_from_slice(&512u64.to_be_bytes());
        f[foot + 0x3C..foot + 0x40].copy_from_slice(&2u32.to_be_bytes());
        let s = formats::checksum::vhd_checksum(&f[foot..], 0x40);
        f[foot + 0x40..foot + 0x44].copy_from_slice(&s.to_be_bytes());
        let (mut changed, mut valid, mut fell_back) = (0, 0, 0);
        for seed in 0..400u32 {
            let mut d = f.clone();
            let n = d.len();
            let size = mutate("open_image", &mut d, n, n, seed, &mut |_, s, _| {
                fell_back += 1;
                s
            });
            assert_eq!(size, n, "field mutations keep the length");
            if d != f {
                changed += 1;
                let stored = u32::from_be_bytes(d[foot + 0x40..foot + 0x44].try_into().unwrap());
                if stored == formats::checksum::vhd_checksum(&d[foot..], 0x40) {
                    valid += 1;
                }
            }
        }
        assert_eq!(fell_back, 200, "even seeds use the byte mutator");
        assert!(changed > 20, "only {changed} of 200 changed the file");
        assert!(valid * 2 > changed, "{valid} of {changed} with a valid sum");
    }
}
