//! The job model of DESIGN.md section 8: state, progress and cancel.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    New,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => JobState::New,
            1 => JobState::Running,
            2 => JobState::Completed,
            3 => JobState::Failed,
            _ => JobState::Cancelled,
        }
    }
}

/// Shared, lock-free progress of one merge. Clone it to watch or cancel
/// from another thread.
#[derive(Debug, Clone, Default)]
pub struct JobHandle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    cancel: AtomicBool,
    committed: AtomicBool,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    preflight: std::sync::Mutex<Option<crate::Preflight>>,
}

/// A snapshot of a job's progress.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct JobStatus {
    pub state: JobState,
    pub percent_complete: u8,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub committed: bool,
}

impl JobHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the merge to stop. Honoured until the commit; afterwards the
    /// merge always finishes (DESIGN.md 8).
    pub fn cancel(&self) {
        self.inner.cancel.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> JobStatus {
        let done = self.inner.bytes_done.load(Ordering::Relaxed);
        let total = self.inner.bytes_total.load(Ordering::Relaxed);
        let state = JobState::from_u8(self.inner.state.load(Ordering::SeqCst));
        let percent = if state == JobState::Completed {
            100
        } else if total == 0 {
            0
        } else {
            // Copying is 99% of the work; 100 only once committed.
            ((done.min(total) as u128 * 99) / total as u128) as u8
        };
        JobStatus {
            state,
            percent_complete: percent,
            bytes_done: done,
            bytes_total: total,
            committed: self.inner.committed.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn set_state(&self, s: JobState) {
        self.inner.state.store(s as u8, Ordering::SeqCst);
    }
    pub(crate) fn set_total(&self, t: u64) {
        self.inner.bytes_total.store(t, Ordering::Relaxed);
    }
    pub(crate) fn add_done(&self, d: u64) {
        self.inner.bytes_done.fetch_add(d, Ordering::Relaxed);
    }
    /// What the merge found it will do, once its checks passed (before it
    /// writes anything): a front end prints it first.
    pub fn preflight(&self) -> Option<crate::Preflight> {
        *self
            .inner
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn set_preflight(&self, p: crate::Preflight) {
        *self
            .inner
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(p);
    }
    pub(crate) fn set_committed(&self) {
        self.inner.committed.store(true, Ordering::SeqCst);
    }
}
