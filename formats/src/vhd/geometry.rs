//! CHS geometry for the footer (FORMATS.md 2.3, the spec's algorithm).

/// (cylinders, heads, sectors per track) for a disk of `size` bytes.
pub fn chs_for_size(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    let cyl = cth / heads;
    (
        u16::try_from(cyl).unwrap_or(u16::MAX),
        heads as u8,
        spt as u8,
    )
}

/// Bytes addressed by a CHS triple.
pub fn chs_size(c: u16, h: u8, s: u8) -> u64 {
    u64::from(c) * u64::from(h) * u64::from(s) * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_readme_values() {
        // testdata README: dynamic.vhd (10485760) has CHS size 10479616, the
        // 127 GiB images 136363130880.
        let (c, h, s) = chs_for_size(10_485_760);
        assert_eq!(chs_size(c, h, s), 10_479_616);
        let (c, h, s) = chs_for_size(136_365_211_648);
        assert_eq!(chs_size(c, h, s), 136_363_130_880);
        assert_eq!(chs_for_size(u64::MAX), (65535, 16, 255));
        assert_eq!(chs_for_size(0), (0, 4, 17));
    }
}
