//! Runs of equal bits in the two on-disk bitmap orders, 64 bits per step.
//! VHD sector bitmaps are MSB-first (bit 7 of byte k is sector 8k), VHDX
//! ones LSB-first (bit 0 of byte k is sector 8k). Bits past the end of the
//! slice read as clear.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOrder {
    MsbFirst,
    LsbFirst,
}

/// How many bits from `from` on (at most `max`) equal `bit`.
pub fn same_bits(bytes: &[u8], order: BitOrder, from: u64, max: u64, bit: bool) -> u64 {
    let mut n = 0u64;
    while n < max {
        let Some(i) = from.checked_add(n) else {
            break;
        };
        let byte = usize::try_from(i / 8).unwrap_or(usize::MAX);
        let shift = (i % 8) as u32;
        let avail = bytes.len().saturating_sub(byte).min(8);
        if avail == 0 {
            if !bit {
                n = max;
            }
            break;
        }
        let mut w = [0u8; 8];
        w[..avail].copy_from_slice(&bytes[byte..byte + avail]);
        // Loaded so that bit `i` comes first: MSB-first bytes big-endian,
        // counted from the top; LSB-first bytes little-endian, from the
        // bottom. Flip to look for the first differing (set) bit.
        let flip = if bit { u64::MAX } else { 0 };
        let first_differing = match order {
            BitOrder::MsbFirst => ((u64::from_be_bytes(w) << shift) ^ flip).leading_zeros(),
            BitOrder::LsbFirst => ((u64::from_le_bytes(w) >> shift) ^ flip).trailing_zeros(),
        };
        // Only the bits actually loaded count; the rest is padding.
        let valid = avail as u64 * 8 - u64::from(shift);
        let same = u64::from(first_differing).min(valid);
        n += same;
        if same < valid {
            break;
        }
    }
    n.min(max)
}
