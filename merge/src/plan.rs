//! The merge plan: which layers fold into which destination, and the
//! folded runs streamed window by window so memory stays bounded whatever
//! the virtual size.

use formats::chain::{fold, Chain, FoldedRun, Source};
use formats::layer::Layer;
use formats::Result;

/// Virtual bytes folded per step. Bounds the run list (at most one run per
/// sector pair in the worst bitmap) to a few MiB.
pub const WINDOW: u64 = 256 << 20;

/// What one merge does.
#[derive(Debug, Clone)]
pub struct MergePlan {
    /// Index of the destination in the chain (0 = source).
    pub destination: usize,
    /// The source's virtual size: the destination grows to it if smaller.
    pub virtual_size: u64,
    pub destination_size: u64,
    /// Bytes the folded layers hold (data and zero runs).
    pub bytes_total: u64,
}

impl MergePlan {
    pub fn new(chain: &Chain, destination: usize) -> Result<MergePlan> {
        let layers = chain.layers();
        let virtual_size = layers[0].virtual_size();
        let destination_size = layers[destination].virtual_size();
        let mut plan = MergePlan {
            destination,
            virtual_size,
            destination_size,
            bytes_total: 0,
        };
        let mut total = 0;
        plan.for_each_run(&layers[..destination], &layers[destination + 1..], |r| {
            total += r.len;
            Ok(())
        })?;
        plan.bytes_total = total;
        Ok(plan)
    }

    /// Call `f` for every folded run the destination must take, in virtual
    /// order: every run a layer above the destination holds (never
    /// `NotHeld`), and the whole region the destination grows into.
    ///
    /// Past its old end the destination is not part of the source's view
    /// (a layer reads as transparent past its end), but after the merge it
    /// is: whatever its last block or stale BAT entries hold there would
    /// show through. So that region is folded over every layer except the
    /// destination, and what no layer holds becomes an explicit zero run.
    /// `above` are the layers above the destination (source first), `below`
    /// its ancestors; the destination itself is never read, so the caller
    /// may hold it mutably. `Source::Layer` indices are chain indices
    /// (0 = source).
    pub fn for_each_run(
        &self,
        above: &[&dyn Layer],
        below: &[&dyn Layer],
        mut f: impl FnMut(&FoldedRun) -> Result<()>,
    ) -> Result<()> {
        let held_end = self.destination_size.min(self.virtual_size);
        fold_windows(above, 0, held_end, |r| match r.source {
            Source::NotHeld => Ok(()),
            _ => f(r),
        })?;
        let others: Vec<&dyn Layer> = above.iter().chain(below).copied().collect();
        fold_windows(&others, held_end, self.virtual_size, |r| {
            let source = match r.source {
                Source::NotHeld => Source::Zero,
                Source::Layer { layer, file_offset } if layer >= self.destination => {
                    Source::Layer {
                        layer: layer + 1,
                        file_offset,
                    }
                }
                s => s,
            };
            f(&FoldedRun { source, ..*r })
        })?;
        Ok(())
    }
}

/// Fold `layers` over `[start, end)` one `WINDOW` at a time (so the run list
/// stays bounded) and hand every run to `f`, in virtual order.
fn fold_windows(
    layers: &[&dyn Layer],
    start: u64,
    end: u64,
    mut f: impl FnMut(&FoldedRun) -> Result<()>,
) -> Result<()> {
    let mut runs = Vec::new();
    let mut offset = start;
    while offset < end {
        let len = WINDOW.min(end - offset);
        runs.clear();
        fold(layers, offset, len, &mut runs)?;
        for r in &runs {
            f(r)?;
        }
        offset += len;
    }
    Ok(())
}
