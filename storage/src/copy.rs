//! Copies between two storages that share nothing the kernel could use:
//! through one bounded buffer (`copy_by_buffer`, the default of
//! `Storage::copy_from`), or pipelined, a second thread reading the next
//! piece while the caller writes the last (`copy_overlapped`, the fallback
//! of real files). Kernel copies and clones are `FileStorage`'s (`file`,
//! `clone`).

use std::io;

use crate::aligned::AlignedBuf;
use crate::traits::{CopyRange, Storage};

/// Copy through two 2 MiB buffers, a second thread reading the next piece
/// while this one writes the last: the fallback for real files when the
/// kernel cannot move the bytes itself (another filesystem, a source that
/// is not a file). Writes stay on the calling thread, in order.
pub fn copy_overlapped<D: Storage + ?Sized>(
    src: &dyn Storage,
    dst: &D,
    range: CopyRange,
) -> io::Result<()> {
    if range.len <= PIECE {
        return copy_by_buffer(src, dst, range);
    }
    copy_pipelined(src, range.src_offset, range.len, |buf, at| {
        dst.write_at(buf, range.dst_offset + at)
    })
}

/// One piece of a pipelined copy.
const PIECE: u64 = 2 << 20;

/// Read `src` in `PIECE`s on a second thread while this one hands the
/// previous piece to `write(bytes, offset from the start)`, in order.
fn copy_pipelined(
    src: &dyn Storage,
    src_offset: u64,
    len: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()> + Send,
) -> io::Result<()> {
    use std::sync::mpsc::sync_channel;
    // Read pieces (with their position) one way, emptied buffers back.
    let (full_tx, full_rx) = sync_channel::<io::Result<(AlignedBuf, u64)>>(1);
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(2);
    for _ in 0..2 {
        let _ = empty_tx.send(AlignedBuf::zeroed(PIECE as usize));
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut at = 0;
            while at < len {
                // A closed channel: the writer stopped (on an error).
                let Ok(mut buf) = empty_rx.recv() else {
                    return;
                };
                let n = PIECE.min(len - at) as usize;
                let r = src
                    .read_at(buf.piece(n), src_offset + at)
                    .map(|()| (buf, at));
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        // The writer owns its channel ends, so returning early (an error)
        // closes them and the reader stops instead of waiting forever.
        let mut write_all = move || -> io::Result<()> {
            let mut done = 0;
            while done < len {
                let (mut buf, at) = full_rx
                    .recv()
                    .map_err(|_| io::Error::other("copy: the reading thread stopped"))??;
                let n = PIECE.min(len - at) as usize;
                write(buf.piece(n), at)?;
                done = at + n as u64;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        };
        let r = write_all();
        // Dropping the writer closes its channel ends: the reader returns.
        drop(write_all);
        let _ = reader.join();
        r
    })
}

/// Copy through a bounded buffer (4 MiB pieces).
pub fn copy_by_buffer<D: Storage + ?Sized>(
    src: &dyn Storage,
    dst: &D,
    range: CopyRange,
) -> io::Result<()> {
    const PIECE: u64 = 4 << 20;
    let mut buf = vec![0u8; PIECE.min(range.len) as usize];
    let mut done = 0;
    while done < range.len {
        let n = PIECE.min(range.len - done) as usize;
        src.read_at(&mut buf[..n], range.src_offset + done)?;
        dst.write_at(&buf[..n], range.dst_offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{MemNamespace, MemStorage};
    use crate::traits::{Access, Namespace};
    use std::sync::Arc;

    #[test]
    fn overlapped_copy_reports_either_side_failing_and_returns() {
        // A read that fails half-way (the source ends at 5 MiB), then a
        // write that fails (a handle opened for reading): each is
        // reported, and neither leaves the other thread waiting (the test
        // would hang).
        let src = MemStorage::from_vec(vec![1u8; 5 << 20]);
        let e =
            copy_overlapped(&src, &MemStorage::new(), CopyRange::new(0, 0, 12 << 20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let ns = MemNamespace::new();
        ns.insert("/ro", vec![]);
        let dst = Arc::clone(&ns)
            .open(std::path::Path::new("/ro"), Access::Read)
            .unwrap();
        let src = MemStorage::from_vec(vec![1u8; 12 << 20]);
        let e = copy_overlapped(&src, dst.as_ref(), CopyRange::new(0, 0, 12 << 20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // A write that fails after some pieces went through.
        let mut written = 0;
        let e = copy_pipelined(&src, 0, 12 << 20, |b, at| {
            if at >= 5 << 20 {
                return Err(io::Error::other("injected write error"));
            }
            written += b.len();
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("injected write"), "{e}");
        assert_eq!(written, 6 << 20);
    }

    #[test]
    fn buffered_copies_move_every_byte() {
        let bytes: Vec<u8> = (0..(9u32 << 20) + 700)
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        let src = MemStorage::from_vec(bytes.clone());
        for copy in [copy_by_buffer::<MemStorage>, copy_overlapped::<MemStorage>] {
            let dst = MemStorage::from_vec(vec![7u8; 100]);
            copy(
                &src,
                &dst,
                CopyRange::new(300, 50, bytes.len() as u64 - 300),
            )
            .unwrap();
            let got = dst.to_vec();
            assert_eq!(&got[..50], &[7u8; 50][..]);
            assert!(got[50..] == bytes[300..]);
        }
    }
}
