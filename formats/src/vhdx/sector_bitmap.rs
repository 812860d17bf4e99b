//! Sector bitmap blocks: 1 MiB each, one bit per logical sector of a
//! chunk, LSB first (bit i of byte k is sector 8k + i).

pub const BLOCK_SIZE: u64 = 1 << 20;
/// Sectors described by one sector bitmap block.
pub const SECTORS_PER_BLOCK: u64 = 1 << 23;

pub fn get_bit(bits: &[u8], i: u64) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Set bits `[start, start + n)` to `value` (ignores bits outside `bits`).
pub fn set_bits(bits: &mut [u8], start: u64, n: u64, value: bool) {
    for i in start..start.saturating_add(n) {
        if let Some(b) = bits.get_mut((i / 8) as usize) {
            if value {
                *b |= 1 << (i % 8);
            } else {
                *b &= !(1 << (i % 8));
            }
        }
    }
}

/// Length of the run of equal bits starting at `start`, at most `max`
/// (at least 1). Bits past the end of `bits` read as clear, like `get_bit`.
pub fn run_length(bits: &[u8], start: u64, max: u64) -> u64 {
    let v = get_bit(bits, start);
    let rest = crate::bitrun::same_bits(
        bits,
        crate::bitrun::BitOrder::LsbFirst,
        start.saturating_add(1),
        max.saturating_sub(1),
        v,
    );
    1 + rest
}

/// Number of set bits.
pub fn count_ones(bits: &[u8]) -> u64 {
    bits.iter().map(|b| u64::from(b.count_ones())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsb_first() {
        let bits = [0b0000_0001u8, 0b1000_0000];
        assert!(get_bit(&bits, 0));
        assert!(!get_bit(&bits, 7));
        assert!(get_bit(&bits, 15));
        assert!(!get_bit(&bits, 99));
    }

    proptest! {
        #[test]
        fn runs_agree_with_bits(bytes in proptest::collection::vec(any::<u8>(), 1..40), start in 0u64..300) {
            let total = bytes.len() as u64 * 8;
            let start = start % total;
            let n = run_length(&bytes, start, total - start);
            let v = get_bit(&bytes, start);
            for i in start..start + n {
                prop_assert_eq!(get_bit(&bytes, i), v);
            }
            if start + n < total {
                prop_assert_ne!(get_bit(&bytes, start + n), v);
            }
        }

        /// The word-at-a-time scan equals a bit-by-bit one, for long runs,
        /// any `max` (also past the end of the bitmap) and any start.
        #[test]
        fn run_length_matches_bit_by_bit(
            kinds in proptest::collection::vec(0u8..4, 1..60),
            start in 0u64..600,
            max in 0u64..700,
        ) {
            let bytes: Vec<u8> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| match k { 0 => 0, 1 => 0xFF, 2 => 0x0F, _ => (i * 37) as u8 })
                .collect();
            let v = get_bit(&bytes, start);
            let mut want = 1;
            while want < max && get_bit(&bytes, start + want) == v {
                want += 1;
            }
            prop_assert_eq!(run_length(&bytes, start, max), want);
        }

        #[test]
        fn set_then_get(start in 0u64..200, n in 0u64..100) {
            let mut b = vec![0u8; 40];
            set_bits(&mut b, start, n, true);
            prop_assert_eq!(count_ones(&b), n.min(320u64.saturating_sub(start)));
            for i in 0..320 {
                prop_assert_eq!(get_bit(&b, i), i >= start && i < start + n);
            }
        }
    }
}
