//! The one view of an image that chains and merges need: which virtual
//! ranges this layer holds, and where their bytes are in its file.

use crate::Result;

/// What one layer says about a run of virtual bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Held by this layer; the bytes are at `file_offset` in its file
    /// (contiguous for the whole run).
    Present { file_offset: u64 },
    /// Held by this layer and reads as zeros; hides every layer below
    /// (VHDX ZERO / UNMAPPED / UNDEFINED, or a pending-journal zero range).
    Zero,
    /// Not held: read the parent (or zeros below the base). VHD bitmap bit 0
    /// in a differencing file, VHDX NOT_PRESENT, unallocated dynamic blocks.
    Transparent,
}

/// A run of virtual bytes `[offset, offset + len)` of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    pub kind: RunKind,
}

/// A readable image layer.
pub trait Layer: Send + Sync {
    /// Display name of the file (for errors).
    fn name(&self) -> &str;
    fn virtual_size(&self) -> u64;
    fn logical_sector_size(&self) -> u32;
    /// Allocation unit in bytes (0 for a fixed VHD, which has none).
    fn block_size(&self) -> u64;
    fn is_differencing(&self) -> bool;

    /// Append to `out` the runs describing `[offset, offset + len)`, in
    /// order, covering it exactly, adjacent runs of the same kind merged
    /// where cheap. `offset` and `len` are multiples of the logical sector
    /// size and the range lies inside the virtual size.
    fn map(&self, offset: u64, len: u64, out: &mut Vec<Run>) -> Result<()>;

    /// Where this layer may next hold data: an offset at or after `offset`
    /// before which `map` returns only `Transparent` runs, or None when it
    /// holds nothing from `offset` on. Lets a merge jump over the empty
    /// stretches of a huge sparse layer with a BAT scan instead of mapping
    /// them window by window. The default claims nothing: `offset` itself.
    fn next_held(&self, offset: u64) -> Result<Option<u64>> {
        Ok(Some(offset))
    }

    /// Read bytes of this layer's file (a `Present` run's `file_offset`).
    fn read_file(&self, file_offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Push a run, merging it into the previous one when they are contiguous
/// in both virtual and file space.
pub fn push_run(out: &mut Vec<Run>, run: Run) {
    if run.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.offset + last.len == run.offset {
            let merged = match (last.kind, run.kind) {
                (RunKind::Zero, RunKind::Zero) | (RunKind::Transparent, RunKind::Transparent) => {
                    true
                }
                (RunKind::Present { file_offset: a }, RunKind::Present { file_offset: b }) => {
                    a + last.len == b
                }
                _ => false,
            };
            if merged {
                last.len += run.len;
                return;
            }
        }
    }
    out.push(run);
}
