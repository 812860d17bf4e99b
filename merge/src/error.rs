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

    #[error("other images depend on {}: {}; merging would silently change their content; first move each of them off it with `rebase CHILD --onto <the destination's parent>` (`--standalone` when it has none), or pass --force to merge anyway", parents.join(", "), siblings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Siblings {
        parents: Vec<String>,
        siblings: Vec<PathBuf>,
    },

    #[error("{file}: has a saved VM state; structural changes are refused")]
    SavedState { file: String },

    #[error("{file}: failed validation: {findings}")]
    Unhealthy {
        file: String,
        /// The kind of the first error finding.
        kind: formats::CorruptionKind,
        findings: String,
    },

    #[error("{destination}: its virtual size {destination_size} is larger than the {source_size} bytes its descendant {source_path} shows; the merged content would need the destination shrunk, which merge never does")]
    DestinationLarger {
        source_path: String,
        source_size: u64,
        destination: String,
        destination_size: u64,
    },

    #[error("{destination}: the merge may need up to {needed} bytes of extra space before its commit, but the file system has {free} bytes free; nothing was changed (free space, or pass --no-space-check)")]
    InsufficientSpace {
        destination: String,
        needed: u64,
        free: u64,
    },

    #[error("{child}: refused, nothing changed: {parent} is not the parent it records ({detail}); pass --ignore-id-mismatch to link it anyway")]
    IdMismatch {
        child: String,
        parent: String,
        detail: String,
    },

    #[error("{child}: refused, nothing changed: {parent} does not fit as its parent: {detail}")]
    ParentMismatch {
        child: String,
        parent: String,
        detail: String,
    },

    #[error("{child}: refused, nothing changed: {parent} descends from it (its chain: {}); the link would make a cycle", chain.join(" -> "))]
    Cycle {
        child: String,
        parent: String,
        chain: Vec<String>,
    },

    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    #[error("merge cancelled before the commit; the destination is unchanged")]
    Cancelled,
}

impl MergeError {
    /// Which violation, when the error is about an image's bytes (a corrupt
    /// or checksum error, or an image that failed validation: its first
    /// error finding). `corruption_kind` in the `--json` outcomes.
    pub fn corruption_kind(&self) -> Option<formats::CorruptionKind> {
        match self {
            MergeError::Format(f) => f.corruption_kind(),
            MergeError::Unhealthy { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// A stable snake_case name of the refusal or failure, for scripts
    /// (`error_kind` in `merge --json`).
    pub fn kind(&self) -> &'static str {
        match self {
            MergeError::Format(f) => match f {
                formats::Error::Io { .. } => "io",
                formats::Error::Corrupt { .. } => "corrupt",
                formats::Error::Checksum { .. } => "checksum",
                formats::Error::NotAnImage { .. } => "not_an_image",
                formats::Error::Unsupported { .. } => "unsupported",
                formats::Error::ParentNotFound { .. } => "parent_not_found",
                formats::Error::Linkage { .. } => "linkage_mismatch",
                formats::Error::Locked { .. } => "locked",
                formats::Error::PermissionDenied { .. } => "permission_denied",
                formats::Error::FileNotFound { .. } => "file_not_found",
                formats::Error::InvalidParameter(_) => "invalid_parameter",
                formats::Error::Cancelled => "cancelled",
            },
            MergeError::NotDifferencing { .. } => "not_differencing",
            MergeError::NotAnAncestor { .. } => "not_an_ancestor",
            MergeError::Siblings { .. } => "siblings",
            MergeError::SavedState { .. } => "saved_state",
            MergeError::Unhealthy { .. } => "unhealthy",
            MergeError::DestinationLarger { .. } => "destination_larger",
            MergeError::InsufficientSpace { .. } => "insufficient_space",
            MergeError::IdMismatch { .. } => "id_mismatch",
            MergeError::ParentMismatch { .. } => "parent_mismatch",
            MergeError::Cycle { .. } => "cycle",
            MergeError::InvalidParameter(_) => "invalid_parameter",
            MergeError::Cancelled => "cancelled",
        }
    }
}
