//! What the merge tests share. Each test file includes this with
//! `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use formats::Namespace;
use merge::{JobHandle, MergeOutcome, MergeRequest};

/// `merge::run` of `source` into `dest` (its parent when `None`) on `ns`,
/// with every other option at its default.
pub fn merge_into(ns: &Arc<dyn Namespace>, source: &Path, dest: Option<&Path>) -> MergeOutcome {
    merge::run(
        ns,
        &MergeRequest {
            source: source.to_path_buf(),
            destination: dest.map(Path::to_path_buf),
            ..Default::default()
        },
        &JobHandle::new(),
    )
}
