//! `DirectWriter`: a file's O_DIRECT handle, with long copies written on a
//! thread of their own while the caller reads what comes next.
//!
//! Why: a merge copies block by block. Done in turn, each block's read
//! (from the source's page cache) leaves the device idle, and each write
//! leaves the reader idle: with VHD's 2 MiB blocks that was 0.15 s per GiB
//! above the device's floor. Here `copy` reads a piece into a buffer and
//! queues it; the writer thread writes the queue in order, and the next
//! block's read overlaps the last block's write.
//!
//! Ordering rules (the owner, `FileStorage`, obeys them):
//! - queued writes are written in the order they were queued, so two
//!   copies to the same bytes land as they would have one after the other;
//! - before a read or a write of the file that overlaps a queued write, the
//!   owner waits for it (`settle_overlapping`). Queued ranges are whole
//!   pages (O_DIRECT), so bytes that do not overlap share no page either;
//! - before anything that sees the whole file (its length, `set_len`,
//!   holes, the flush that makes it durable, a kernel copy that reads it)
//!   the owner waits for all of them (`settle`);
//! - a failed queued write is reported by the next `settle` or
//!   `settle_overlapping`, and every batch ends in a flush, which settles:
//!   a failure never passes unseen into a commit.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::aligned::AlignedBuf;
use crate::traits::{CopyRange, Storage};

/// Bytes per queued write.
const PIECE: u64 = 2 << 20;
/// Buffers in use at most: one being written, one queued, one being read.
const BUFFERS: usize = 3;

pub(crate) struct DirectWriter {
    file: Arc<File>,
    shared: Arc<Shared>,
    /// Started with the first queued write.
    worker: Mutex<Option<Worker>>,
    /// The first copy is written in place, so that a file system that
    /// opens with O_DIRECT but refuses the writes is found while the caller
    /// can still fall back to buffered writes.
    proven: AtomicBool,
}

struct Worker {
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
}

struct Job {
    buf: AlignedBuf,
    len: usize,
    at: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Queued or running writes: (offset, length).
    queued: Vec<(u64, u64)>,
    free: Vec<AlignedBuf>,
    made: usize,
    /// The first failure since the last settle.
    error: Option<io::Error>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        write!(f, "DirectWriter({} queued)", s.queued.len())
    }
}

impl DirectWriter {
    pub(crate) fn new(file: File) -> Self {
        DirectWriter {
            file: Arc::new(file),
            shared: Arc::default(),
            worker: Mutex::new(None),
            proven: AtomicBool::new(false),
        }
    }

    /// The O_DIRECT handle, for writes made in place.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Copy `len` bytes (whole pages, to a page-aligned `dst_offset`) from
    /// `src`. Returns once the last piece is queued; see the module's
    /// ordering rules.
    pub(crate) fn copy(&self, src: &dyn Storage, range: CopyRange) -> io::Result<()> {
        let queue = self.proven.load(Ordering::Relaxed);
        let mut done = 0;
        while done < range.len {
            let n = PIECE.min(range.len - done) as usize;
            let mut buf = self.take_buffer();
            if let Err(e) = src.read_at(&mut buf.as_mut_slice()[..n], range.src_offset + done) {
                self.give_back(buf);
                return Err(e);
            }
            if queue {
                self.queue(buf, n, range.dst_offset + done)?;
            } else {
                let r = self
                    .file
                    .write_all_at(&buf.as_slice()[..n], range.dst_offset + done);
                self.give_back(buf);
                r?;
            }
            done += n as u64;
        }
        self.proven.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Wait for every queued write; the first failure among them.
    pub(crate) fn settle(&self) -> io::Result<()> {
        let mut s = self.shared.lock();
        while !s.queued.is_empty() {
            s = self.shared.wait(s);
        }
        s.error.take().map_or(Ok(()), Err)
    }

    /// Wait for the queued writes that overlap `[at, at + len)`; the first
    /// failure among all of them so far.
    pub(crate) fn settle_overlapping(&self, at: u64, len: u64) -> io::Result<()> {
        let end = at.saturating_add(len);
        let mut s = self.shared.lock();
        while s
            .queued
            .iter()
            .any(|&(q, n)| q < end && at < q.saturating_add(n))
        {
            s = self.shared.wait(s);
        }
        s.error.take().map_or(Ok(()), Err)
    }

    #[cfg(test)]
    pub(crate) fn buffers_made(&self) -> usize {
        self.shared.lock().made
    }

    fn take_buffer(&self) -> AlignedBuf {
        let mut s = self.shared.lock();
        loop {
            if let Some(b) = s.free.pop() {
                return b;
            }
            if s.made < BUFFERS {
                s.made += 1;
                return AlignedBuf::zeroed(PIECE as usize);
            }
            s = self.shared.wait(s);
        }
    }

    fn give_back(&self, buf: AlignedBuf) {
        self.shared.lock().free.push(buf);
        self.shared.changed.notify_all();
    }

    fn queue(&self, buf: AlignedBuf, len: usize, at: u64) -> io::Result<()> {
        let mut w = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        let worker = match &mut *w {
            Some(worker) => worker,
            slot @ None => slot.insert(self.start()?),
        };
        self.shared.lock().queued.push((at, len as u64));
        if let Err(failed) = worker.jobs.send(Job { buf, len, at }) {
            // The thread is gone (it panicked): nothing will write this.
            let mut s = self.shared.lock();
            if let Some(i) = s.queued.iter().position(|&q| q == (at, len as u64)) {
                s.queued.remove(i);
            }
            s.free.push(failed.0.buf);
            drop(s);
            self.shared.changed.notify_all();
            return Err(io::Error::other("the direct writer thread stopped"));
        }
        Ok(())
    }

    fn start(&self) -> io::Result<Worker> {
        // One job waits while one is written: the device never waits for
        // the reader, and memory stays at `BUFFERS` pieces.
        let (jobs, rx) = sync_channel::<Job>(1);
        let (file, shared) = (Arc::clone(&self.file), Arc::clone(&self.shared));
        let thread = std::thread::Builder::new()
            .name("chainfold-direct-writer".into())
            .spawn(move || {
                for job in rx {
                    let r = file.write_all_at(&job.buf.as_slice()[..job.len], job.at);
                    let mut s = shared.lock();
                    if let Err(e) = r {
                        s.error.get_or_insert(e);
                    }
                    if let Some(i) = s.queued.iter().position(|&q| q == (job.at, job.len as u64)) {
                        s.queued.remove(i);
                    }
                    s.free.push(job.buf);
                    drop(s);
                    shared.changed.notify_all();
                }
            })?;
        Ok(Worker { jobs, thread })
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish what it holds and end.
        let worker = self
            .worker
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Worker { jobs, thread }) = worker {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsNamespace;
    use crate::mem::MemStorage;
    use crate::traits::{Access, Namespace};

    /// A tiny generator: one seed, one sequence.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % below
        }
    }

    /// Long copies (queued behind the caller), short writes over them,
    /// reads, lengths and truncations in a random order, against a model
    /// that does each at once: every read and the flushed file agree.
    #[test]
    fn queued_copies_keep_the_order_of_a_file_written_in_place() {
        let (_dir, path) = crate::testing::temp_file(b"");
        let dst = FsNamespace.open(&path, Access::Write).unwrap();
        let src_bytes: Vec<u8> = (0..(8u32 << 20)).map(|i| (i * 131 % 251) as u8).collect();
        let src = MemStorage::from_vec(src_bytes.clone());
        let mut model: Vec<u8> = Vec::new();
        let put = |m: &mut Vec<u8>, at: usize, b: &[u8]| {
            if m.len() < at + b.len() {
                m.resize(at + b.len(), 0);
            }
            m[at..at + b.len()].copy_from_slice(b);
        };
        let mut rng = Lcg(7);
        for step in 0..60 {
            match rng.next(6) {
                0..=2 => {
                    let at = rng.next(6 << 8) * 4096;
                    let from = rng.next(4 << 8) * 4096;
                    let len = (1 << 20) + rng.next(3 << 8) * 4096;
                    dst.copy_from(&src, CopyRange::new(from, at, len)).unwrap();
                    put(
                        &mut model,
                        at as usize,
                        &src_bytes[from as usize..(from + len) as usize],
                    );
                }
                3 => {
                    let at = rng.next(10 << 20);
                    let b = vec![step as u8; 1 + rng.next(9000) as usize];
                    dst.write_at(&b, at).unwrap();
                    put(&mut model, at as usize, &b);
                }
                4 => {
                    let at = rng.next(model.len() as u64 + 1);
                    let n = rng.next(model.len() as u64 - at + 1) as usize;
                    let mut got = vec![0u8; n];
                    dst.read_at(&mut got, at).unwrap();
                    assert!(
                        got == model[at as usize..at as usize + n],
                        "step {step}: read at {at}+{n}"
                    );
                }
                _ => {
                    assert_eq!(dst.len().unwrap(), model.len() as u64, "step {step}");
                    if rng.next(4) == 0 {
                        let to = rng.next(model.len() as u64 + 1);
                        dst.set_len(to).unwrap();
                        model.truncate(to as usize);
                    }
                }
            }
        }
        dst.flush().unwrap();
        drop(dst);
        assert!(std::fs::read(&path).unwrap() == model);
    }

    /// A queued write that fails is reported by the next settle, not lost.
    #[test]
    fn a_failed_queued_write_is_reported_by_the_next_settle() {
        let (_dir, path) = crate::testing::temp_file(&vec![0u8; 4 << 20]);
        // A read-only handle: every write through it fails.
        let w = DirectWriter::new(File::open(&path).unwrap());
        let src = MemStorage::from_vec(vec![9u8; 4 << 20]);
        // Unproven, the copy is written in place and fails at once.
        assert!(w.copy(&src, CopyRange::new(0, 0, 2 << 20)).is_err());
        // Proven, it is queued; the failure comes with the settle.
        w.proven.store(true, Ordering::Relaxed);
        w.copy(&src, CopyRange::new(0, 0, 4 << 20)).unwrap();
        assert!(w.settle().is_err());
        assert!(w.settle().is_ok(), "reported once");
        w.copy(&src, CopyRange::new(0, 0, 2 << 20)).unwrap();
        assert!(w.settle_overlapping(4096, 10).is_err());
    }
}
