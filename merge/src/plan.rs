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
    /// Of those, bytes copied from a layer's file (the rest are zeros).
    pub bytes_copy: u64,
    /// Distinct destination blocks (of `block_size`) the runs touch: each
    /// needs a fresh block until the commit (copy-on-write), whether the
    /// destination held it before or not.
    pub blocks_touched: u64,
}

impl MergePlan {
    /// The plan, and what it will stage counted in one walk of its runs
    /// (`block_size`: the destination's block, for `blocks_touched`; 0 for
    /// a destination without blocks, a fixed VHD).
    pub fn new(chain: &Chain, destination: usize) -> Result<MergePlan> {
        let layers = chain.layers();
        let virtual_size = layers[0].virtual_size();
        let destination_size = layers[destination].virtual_size();
        let block_size = chain.links[destination].image.info().block_size;
        let mut plan = MergePlan {
            destination,
            virtual_size,
            destination_size,
            bytes_total: 0,
            bytes_copy: 0,
            blocks_touched: 0,
        };
        let (mut total, mut copy, mut blocks) = (0, 0, 0);
        // Runs come in virtual order: a block is new when it starts past
        // the last one counted.
        let mut next_block = 0u64;
        plan.for_each_run(&layers[..destination], &layers[destination + 1..], |r| {
            total += r.len;
            if matches!(r.source, Source::Layer { .. }) {
                copy += r.len;
            }
            if block_size > 0 && r.len > 0 {
                let first = (r.offset / block_size).max(next_block);
                let last = (r.offset + r.len - 1) / block_size;
                if last >= first {
                    blocks += last - first + 1;
                    next_block = last + 1;
                }
            }
            Ok(())
        })?;
        plan.bytes_total = total;
        plan.bytes_copy = copy;
        plan.blocks_touched = blocks;
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
        // NotHeld runs are dropped here, so stretches that no layer above
        // holds are skipped: a 64 TiB layer holding 1 GiB is not mapped
        // 256 MiB at a time over all of its 64 TiB.
        fold_windows(above, 0, held_end, true, |r| match r.source {
            Source::NotHeld => Ok(()),
            _ => f(r),
        })?;
        let others: Vec<&dyn Layer> = above.iter().chain(below).copied().collect();
        // Here NotHeld becomes a zero run: nothing may be skipped.
        fold_windows(&others, held_end, self.virtual_size, false, |r| {
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

/// Where the next data of a set of layers starts, for a walk that only
/// moves forward: each layer's last answer to `Layer::next_held` is kept.
/// An answer `Some(n)` stays true while the walk is at or before `n`, and
/// `None` (nothing held from there on) stays true for good. Asking again
/// every window would rescan the rest of an idle layer's BAT once per
/// window another layer holds data in: quadratic in the virtual size.
#[derive(Debug)]
pub struct NextHeld {
    answers: Vec<Option<Option<u64>>>,
}

impl NextHeld {
    /// For a walk over `layers` layers (the same ones, in the same order,
    /// at every call of `at`).
    pub fn new(layers: usize) -> Self {
        NextHeld {
            answers: vec![None; layers],
        }
    }

    /// The first offset in `[offset, end]` where one of `layers` may hold
    /// data; `end` when none holds any before it. `offset` never goes back.
    pub fn at(&mut self, layers: &[&dyn Layer], offset: u64, end: u64) -> Result<u64> {
        let mut next = end;
        for (l, known) in layers.iter().zip(self.answers.iter_mut()) {
            let answer = match *known {
                Some(Some(n)) if offset <= n => Some(n),
                Some(None) => None,
                _ => {
                    let a = l.next_held(offset)?;
                    *known = Some(a);
                    a
                }
            };
            if let Some(n) = answer {
                next = next.min(n.max(offset));
            }
        }
        Ok(next)
    }
}

/// Fold `layers` over `[start, end)` one `WINDOW` at a time (so the run list
/// stays bounded) and hand every run to `f`, in virtual order. With
/// `skip_unheld`, stretches where every layer says it holds nothing
/// (`Layer::next_held`) are jumped over: `f` then sees no NotHeld runs
/// for them.
fn fold_windows(
    layers: &[&dyn Layer],
    start: u64,
    end: u64,
    skip_unheld: bool,
    mut f: impl FnMut(&FoldedRun) -> Result<()>,
) -> Result<()> {
    let mut runs = Vec::new();
    let mut offset = start;
    let mut held = NextHeld::new(layers.len());
    while offset < end {
        if skip_unheld {
            offset = held.at(layers, offset, end)?;
            if offset >= end {
                break;
            }
        }
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use formats::chain::{open_image_file, ChainOptions};
    use formats::params::{CreateParams, DiskType, Identity};
    use formats::{Access, MemNamespace, Namespace};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A differencing layer over `parent` (or a dynamic base) with `writes`
    /// (offset, len) staged and committed.
    fn layer(ns: &Arc<dyn Namespace>, path: &Path, parent: Option<&Path>, writes: &[(u64, u64)]) {
        let mut params = CreateParams {
            virtual_size: 64 << 30,
            disk_type: DiskType::Dynamic,
            block_size: Some(32 << 20),
            ..Default::default()
        };
        if let Some(p) = parent {
            let img = open_image_file(ns, p, &ChainOptions::default()).unwrap();
            params.parent = Some(formats::create::parent_spec(ns, img.as_ref(), p, path).unwrap());
            params.disk_type = DiskType::Differencing;
        }
        formats::create::create_file(ns, path, &params).unwrap();
        let opts = ChainOptions {
            access: Access::Write,
            writable: true,
            ..Default::default()
        };
        let mut img = open_image_file(ns, path, &opts).unwrap();
        let mut batch = img.begin_batch().unwrap();
        for &(at, len) in writes {
            batch.write(at, &vec![0x5Au8; len as usize]).unwrap();
        }
        batch.prepare().unwrap();
        batch
            .commit(Identity::Vhdx {
                data_write_guid: formats::entropy::new_guid(),
            })
            .unwrap();
    }

    /// base <- mid <- top, each holding its `writes`; the opened chain.
    fn three_layers(base: &[(u64, u64)], mid: &[(u64, u64)], top: &[(u64, u64)]) -> Chain {
        let ns: Arc<dyn Namespace> = Arc::new(MemNamespace::new());
        let paths = [
            PathBuf::from("/p/base.vhdx"),
            PathBuf::from("/p/mid.avhdx"),
            PathBuf::from("/p/top.avhdx"),
        ];
        layer(&ns, &paths[0], None, base);
        layer(&ns, &paths[1], Some(&paths[0]), mid);
        layer(&ns, &paths[2], Some(&paths[1]), top);
        Chain::open(&ns, &paths[2], &ChainOptions::default()).unwrap()
    }

    #[test]
    fn skipping_unheld_stretches_yields_the_runs_of_a_full_fold() {
        // Held stretches far apart, across window edges, in the first and
        // the last block, in one layer or the other.
        let chain = three_layers(
            &[(0, MIB)],
            &[(5 << 30, 4096), ((64 << 30) - 4096, 4096)],
            &[(0, 512), ((256 * MIB) - 512, 1024), (40 << 30, 3 * MIB)],
        );
        let layers = chain.layers();
        let plan = MergePlan::new(&chain, 2).unwrap();
        let mut got = Vec::new();
        plan.for_each_run(&layers[..2], &[], |r| {
            got.push(*r);
            Ok(())
        })
        .unwrap();
        let mut want = Vec::new();
        fold_windows(&layers[..2], 0, 64 << 30, false, |r| {
            if !matches!(r.source, Source::NotHeld) {
                want.push(*r);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(plan.bytes_total, 512 + 1024 + 3 * MIB + 2 * 4096);
    }

    /// A layer that counts how often it is asked `next_held`.
    struct Counting<'a> {
        inner: &'a dyn Layer,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Layer for Counting<'_> {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn virtual_size(&self) -> u64 {
            self.inner.virtual_size()
        }
        fn logical_sector_size(&self) -> u32 {
            self.inner.logical_sector_size()
        }
        fn block_size(&self) -> u64 {
            self.inner.block_size()
        }
        fn is_differencing(&self) -> bool {
            self.inner.is_differencing()
        }
        fn map(&self, offset: u64, len: u64, out: &mut Vec<formats::Run>) -> Result<()> {
            self.inner.map(offset, len, out)
        }
        fn next_held(&self, offset: u64) -> Result<Option<u64>> {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.next_held(offset)
        }
        fn read_file(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
            self.inner.read_file(file_offset, buf)
        }
    }

    #[test]
    fn an_idle_layer_is_asked_once_while_another_holds_every_window() {
        // `mid` holds one block near the start and nothing after it;
        // `top` holds a sector in every window.
        let every_window: Vec<(u64, u64)> = (0..(64 << 30) / WINDOW)
            .map(|w| (w * WINDOW, 512))
            .collect();
        let chain = three_layers(&[], &[(0, 4096)], &every_window);
        let layers = chain.layers();
        let counting: Vec<Counting> = layers[..2]
            .iter()
            .map(|l| Counting {
                inner: *l,
                asked: Default::default(),
            })
            .collect();
        let views: Vec<&dyn Layer> = counting.iter().map(|c| c as &dyn Layer).collect();
        let mut held = 0;
        fold_windows(&views, 0, 64 << 30, true, |r| {
            if !matches!(r.source, Source::NotHeld) {
                held += r.len;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(held, 4096 + every_window.len() as u64 * 512 - 512);
        let windows = every_window.len();
        let asked: Vec<usize> = counting
            .iter()
            .map(|c| c.asked.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        // `top` (layer 0) answers "here" for each window in turn; `mid`
        // (layer 1) says "nothing from here on" after its first block and
        // must not be asked again.
        assert!(asked[0] <= windows + 1, "top asked {} times", asked[0]);
        assert!(asked[1] <= 2, "idle mid asked {} times", asked[1]);
    }
}
