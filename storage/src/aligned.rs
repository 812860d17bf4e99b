//! `AlignedBuf`: a buffer O_DIRECT takes as it is, and the alignment rule
//! (`DIRECT_ALIGN`, `direct_aligned`) that decides when a write may go
//! direct. A module of its own so that the copy pipeline, the direct writer
//! and the write combiner (in formats) share it without importing each
//! other.

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's
/// logical block; a page covers every device in use.
pub const DIRECT_ALIGN: u64 = 4096;

/// Whether O_DIRECT can take `buf` at `offset` as it is.
pub fn direct_aligned(buf: &[u8], offset: u64) -> bool {
    let a = DIRECT_ALIGN as usize;
    (buf.as_ptr() as usize).is_multiple_of(a)
        && buf.len().is_multiple_of(a)
        && offset.is_multiple_of(DIRECT_ALIGN)
}

/// A zeroed buffer whose start is aligned to `DIRECT_ALIGN`, so that
/// O_DIRECT takes it: the aligned window of a slightly larger vector
/// (which keeps its address when moved).
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        let a = DIRECT_ALIGN as usize;
        let bytes = vec![0u8; len + a];
        let start = (a - bytes.as_ptr() as usize % a) % a;
        AlignedBuf { bytes, start, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
    /// The first `n` bytes.
    pub(crate) fn piece(&mut self, n: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for len in [0, 1, 4096, 5000, 2 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            if len % 4096 == 0 {
                assert!(direct_aligned(b.as_slice(), 8192));
                assert!(!direct_aligned(b.as_slice(), 512) || len == 0);
            }
            assert_eq!(b.piece(len.min(10)).len(), len.min(10));
        }
    }
}
