//! The crash recorder (DESIGN.md section 6): an in-memory namespace that
//! records every operation that matters to a crash while the code under
//! test runs on it ([`CrashNamespace`], `namespace`), the trace it records
//! (`trace`), file contents as shared pages (`pages`), and every
//! post-crash state rebuilt from one recorded run ([`CrashModel`],
//! `model`; seeded samples from `rng`).
//!
//! The simulator (sim/) explores these states with its scenarios and
//! checkers; the format crate's own tests crash through them directly.

pub mod model;
pub mod namespace;
pub mod pages;
pub mod rng;
pub mod trace;

pub use model::{Choice, CrashModel, Keep, PointSpace};
pub use namespace::{CrashNamespace, Snapshot};
pub use trace::{Ino, Op};
