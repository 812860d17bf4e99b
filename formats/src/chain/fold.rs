//! Folding layers: for a virtual range, which layer answers each byte.
//! Reading a chain folds every layer (unheld bytes read zeros); a merge
//! folds only the layers above the destination (unheld bytes are skipped).

use crate::layer::{Layer, Run, RunKind};
use crate::Result;

/// Who answers a run of virtual bytes after folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Layer `layer` (0 = top) holds the bytes at `file_offset` in its file.
    Layer { layer: usize, file_offset: u64 },
    /// A layer holds the bytes as zeros (hides everything below).
    Zero,
    /// No folded layer holds the bytes.
    NotHeld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldedRun {
    pub offset: u64,
    pub len: u64,
    pub source: Source,
}

fn push(out: &mut Vec<FoldedRun>, run: FoldedRun) {
    if run.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.offset + last.len == run.offset {
            let merge = match (last.source, run.source) {
                (Source::Zero, Source::Zero) | (Source::NotHeld, Source::NotHeld) => true,
                (
                    Source::Layer {
                        layer: a,
                        file_offset: fa,
                    },
                    Source::Layer {
                        layer: b,
                        file_offset: fb,
                    },
                ) => a == b && fa + last.len == fb,
                _ => false,
            };
            if merge {
                last.len += run.len;
                return;
            }
        }
    }
    out.push(run);
}

/// Fold `layers` (top first) over `[offset, offset + len)`, appending runs
/// in virtual order. A layer smaller than the range holds nothing past its
/// end. `scratch` is reused between calls to keep allocation bounded.
pub fn fold(layers: &[&dyn Layer], offset: u64, len: u64, out: &mut Vec<FoldedRun>) -> Result<()> {
    fold_from(layers, 0, offset, len, out)
}

fn fold_from(
    layers: &[&dyn Layer],
    idx: usize,
    offset: u64,
    len: u64,
    out: &mut Vec<FoldedRun>,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let Some(layer) = layers.get(idx) else {
        push(
            out,
            FoldedRun {
                offset,
                len,
                source: Source::NotHeld,
            },
        );
        return Ok(());
    };
    let size = layer.virtual_size();
    let inside = if offset >= size {
        0
    } else {
        len.min(size - offset)
    };
    if inside > 0 {
        let mut runs: Vec<Run> = Vec::new();
        layer.map(offset, inside, &mut runs)?;
        let mut expect = offset;
        for r in runs {
            if r.offset != expect || r.len == 0 || r.offset + r.len > offset + inside {
                return Err(crate::Error::corrupt(
                    crate::CorruptionKind::LayerMapInvalid,
                    layer.name(),
                    "layer map",
                    r.offset,
                    "driver returned runs that do not tile the requested range",
                ));
            }
            expect += r.len;
            match r.kind {
                RunKind::Present { file_offset } => push(
                    out,
                    FoldedRun {
                        offset: r.offset,
                        len: r.len,
                        source: Source::Layer {
                            layer: idx,
                            file_offset,
                        },
                    },
                ),
                RunKind::Zero => push(
                    out,
                    FoldedRun {
                        offset: r.offset,
                        len: r.len,
                        source: Source::Zero,
                    },
                ),
                RunKind::Transparent => fold_from(layers, idx + 1, r.offset, r.len, out)?,
            }
        }
        if expect != offset + inside {
            return Err(crate::Error::corrupt(
                crate::CorruptionKind::LayerMapInvalid,
                layer.name(),
                "layer map",
                expect,
                "driver returned runs that do not cover the requested range",
            ));
        }
    }
    if inside < len {
        // Past this layer's end: it holds nothing; a larger child may still
        // sit above a smaller parent, whose end reads as zeros too.
        fold_from(layers, idx + 1, offset + inside, len - inside, out)?;
    }
    Ok(())
}
