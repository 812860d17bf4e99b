use std::path::PathBuf;

/// Why a merge did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Format(#[from] formats::Error),

    #[error("{file}: not a differencing image; only a differencing source can be merged")]
    NotDifferencing { file: String },

    #[error("{destination}: not an ancestor of {source_path} (its chain is: {})", chain.join(" -> "))]
    NotAnAncestor {
        source_path: String,
        destination: String,
        chain: Vec<String>,
    },

    #[error("other images depend on {}: {}; merging would silently change their content (pass --force to merge anyway)", parents.join(", "), siblings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Siblings {
        parents: Vec<String>,
        siblings: Vec<PathBuf>,
    },

    #[error("{file}: has a saved VM state; structural changes are refused")]
    SavedState { file: String },

    #[error("{file}: failed validation: {findings}")]
    Unhealthy { file: String, findings: String },

    #[error("{destination}: its virtual size {destination_size} is larger than the {source_size} bytes its descendant {source_path} shows; the merged content would need the destination shrunk, which merge never does")]
    DestinationLarger {
        source_path: String,
        source_size: u64,
        destination: String,
        destination_size: u64,
    },

    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    #[error("merge cancelled before the commit; the destination is unchanged")]
    Cancelled,
}
