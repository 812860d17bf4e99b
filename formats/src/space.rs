//! Where an image file's free space is: the gaps between the byte ranges
//! its committed metadata references. Compaction (`vhdx/compact.rs`,
//! `vhd/compact.rs`) moves blocks from the file's tail into these gaps and
//! gives the rest back to the file system.
//!
//! A gap is free only with respect to the *committed* state: a range staged
//! by an unfinished batch is a gap too, which is exactly what makes it safe
//! to overwrite (nothing a reader can reach points there).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::IoContext;
use crate::Result;

/// The free gaps of one file, below its current length.
#[derive(Debug, Clone, Default)]
pub struct SpaceMap {
    /// Gap start -> gap end, disjoint and sorted.
    gaps: BTreeMap<u64, u64>,
    /// End of the last referenced byte.
    used_end: u64,
}

impl SpaceMap {
    /// The gaps of a file of `len` bytes whose referenced ranges are `used`
    /// (any order, may overlap). Gap edges are rounded inwards to `granule`
    /// (a power of two), so every gap can hold whole units of that size.
    pub fn new(len: u64, used: impl IntoIterator<Item = Range<u64>>, granule: u64) -> Self {
        let mut used: Vec<Range<u64>> = used.into_iter().filter(|r| r.start < r.end).collect();
        used.sort_unstable_by_key(|r| r.start);
        let mut gaps = BTreeMap::new();
        let mut at = 0u64;
        let mut used_end = 0u64;
        let mut add = |start: u64, end: u64| {
            let s = start.div_ceil(granule).saturating_mul(granule);
            let e = end / granule * granule;
            if s < e {
                gaps.insert(s, e);
            }
        };
        for r in used {
            if r.start > at {
                add(at, r.start.min(len));
            }
            at = at.max(r.end);
            used_end = used_end.max(r.end);
        }
        if len > at {
            add(at, len);
        }
        SpaceMap { gaps, used_end }
    }

    /// End of the last referenced byte: the file may be cut just past it.
    pub fn used_end(&self) -> u64 {
        self.used_end
    }

    /// Every gap, lowest first.
    pub fn gaps(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.gaps.iter().map(|(&s, &e)| s..e)
    }

    /// Free bytes in gaps below `limit`.
    pub fn free_below(&self, limit: u64) -> u64 {
        self.gaps()
            .map(|g| g.end.min(limit).saturating_sub(g.start))
            .sum()
    }

    /// Take `len` bytes from the lowest gap where the unit fits wholly below
    /// `limit`. `place(gap_start)` chooses where in a gap the unit starts (an
    /// alignment); when that does not fit, the gap's start itself is tried.
    /// The taken range leaves the map.
    pub fn take_below(&mut self, len: u64, limit: u64, place: impl Fn(u64) -> u64) -> Option<u64> {
        let mut found = None;
        for (&s, &e) in self.gaps.range(..limit) {
            let end = e.min(limit);
            let aligned = place(s).max(s);
            if aligned.checked_add(len).is_some_and(|x| x <= end) {
                found = Some((s, e, aligned));
                break;
            }
            if s.checked_add(len).is_some_and(|x| x <= end) {
                found = Some((s, e, s));
                break;
            }
        }
        let (s, e, at) = found?;
        self.gaps.remove(&s);
        if at > s {
            self.gaps.insert(s, at);
        }
        if at + len < e {
            self.gaps.insert(at + len, e);
        }
        Some(at)
    }

    /// Return `r` to the free space (a unit moved away from there).
    pub fn release(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        if let Some((&ps, &pe)) = self.gaps.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.gaps.remove(&ps);
            }
        }
        while let Some((&ns, &ne)) = self.gaps.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.gaps.remove(&ns);
        }
        self.gaps.insert(s, e);
    }
}

/// Reads per zero test at most (a block is read in pieces this size).
const ZERO_PIECE: u64 = 4 << 20;

/// Whether `len` bytes at `offset` of `st` are all zero.
pub(crate) fn reads_zero(
    st: &dyn crate::Storage,
    name: &str,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZERO_PIECE);
        buf.resize(n as usize, 0);
        st.read_at(buf, offset + at).ctx(name)?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_lie_between_used_ranges_rounded_inwards() {
        let m = SpaceMap::new(100, [10..20, 15..30, 50..60], 4);
        assert_eq!(m.gaps().collect::<Vec<_>>(), vec![0..8, 32..48, 60..100]);
        assert_eq!(m.used_end(), 60);
        assert_eq!(m.free_below(50), 8 + 16);
    }

    #[test]
    fn take_prefers_the_lowest_fitting_gap_and_its_placement() {
        let mut m = SpaceMap::new(100, [4..10, 20..40], 1);
        // 0..4 is too small for 6; 10..20 fits at 12 (placement) then 18..20 stays.
        assert_eq!(m.take_below(6, 100, |s| s + 2), Some(12));
        assert_eq!(
            m.gaps().collect::<Vec<_>>(),
            vec![0..4, 10..12, 18..20, 40..100]
        );
        // Placement does not fit in 0..4 but the plain start does.
        assert_eq!(m.take_below(4, 100, |s| s + 1), Some(0));
        // Nothing fits below the limit.
        assert_eq!(m.take_below(30, 60, |s| s), None);
        m.release(12..18);
        assert_eq!(m.gaps().collect::<Vec<_>>(), vec![10..20, 40..100]);
    }
}
