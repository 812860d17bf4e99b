//! Typed errors. Every error that concerns bytes names the file, the
//! structure and the absolute byte offset, so that a user can open a hex
//! editor at the right place.

use std::io;

use crate::corruption::CorruptionKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: I/O error: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },

    /// A structure violates the specification.
    #[error("{file}: {structure} at offset {offset:#x}: {message}")]
    Corrupt {
        file: String,
        structure: &'static str,
        offset: u64,
        /// Which violation (stable; match this, not `message`).
        kind: CorruptionKind,
        message: String,
    },

    /// A stored checksum does not match the bytes.
    #[error(
        "{file}: {structure} at offset {offset:#x}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); pass --ignore-checksums to read it anyway"
    )]
    Checksum {
        file: String,
        structure: &'static str,
        offset: u64,
        /// Which structure's checksum (`HeaderChecksum`, `FooterChecksum`, ...).
        kind: CorruptionKind,
        stored: u32,
        computed: u32,
    },

    /// Neither a VHD nor a VHDX.
    #[error("{file}: not a VHD or VHDX image: {message}")]
    NotAnImage { file: String, message: String },

    /// Valid but outside what chainfold implements (e.g. split VHD).
    #[error("{file}: unsupported: {message}")]
    Unsupported { file: String, message: String },

    /// A differencing image whose parent could not be located.
    #[error("{file}: parent not found: {message} (tried: {})", tried.join(", "))]
    ParentNotFound {
        file: String,
        message: String,
        tried: Vec<String>,
    },

    /// The parent was found but does not match the child's linkage.
    #[error("{file}: broken parent linkage: {message}")]
    Linkage { file: String, message: String },

    /// A file is locked by another process (the image is "online").
    #[error("{file}: in use by another process: {message}")]
    Locked { file: String, message: String },

    #[error("{file}: permission denied: {message}")]
    PermissionDenied { file: String, message: String },

    #[error("{file}: file not found")]
    FileNotFound { file: String },

    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    #[error("operation cancelled")]
    Cancelled,
}

impl Error {
    pub fn corrupt(
        kind: CorruptionKind,
        file: impl Into<String>,
        structure: &'static str,
        offset: u64,
        message: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            file: file.into(),
            structure,
            offset,
            kind,
            message: message.into(),
        }
    }

    /// The violation, for the errors that are about an image's bytes
    /// (`Corrupt`, `Checksum`).
    pub fn corruption_kind(&self) -> Option<CorruptionKind> {
        match self {
            Error::Corrupt { kind, .. } | Error::Checksum { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The kind of the finding that reports this error (`check` turns an
    /// image it cannot open into one finding): the violation for the
    /// corruption errors, else what stopped the read.
    pub fn finding_kind(&self) -> CorruptionKind {
        match self {
            Error::Corrupt { kind, .. } | Error::Checksum { kind, .. } => *kind,
            Error::NotAnImage { .. } => CorruptionKind::NotAnImage,
            Error::Unsupported { .. } => CorruptionKind::UnsupportedFeature,
            Error::ParentNotFound { .. } => CorruptionKind::ParentNotFound,
            Error::Linkage { .. } => CorruptionKind::LinkageMismatch,
            Error::Io { .. }
            | Error::Locked { .. }
            | Error::PermissionDenied { .. }
            | Error::FileNotFound { .. }
            | Error::InvalidParameter(_)
            | Error::Cancelled => CorruptionKind::Unreadable,
        }
    }

    /// Classify an I/O error on `file` into the typed variants a caller can
    /// act on (missing, locked, permission), else a plain I/O error.
    pub fn io(file: impl Into<String>, source: io::Error) -> Self {
        let file = file.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::FileNotFound { file },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                file,
                message: source.to_string(),
            },
            io::ErrorKind::WouldBlock => Error::Locked {
                file,
                message: "the file is locked (an exclusive or conflicting lock is held)".into(),
            },
            _ => Error::Io { file, source },
        }
    }

    /// The file the error is about, when there is one.
    pub fn file(&self) -> Option<&str> {
        match self {
            Error::Io { file, .. }
            | Error::Corrupt { file, .. }
            | Error::Checksum { file, .. }
            | Error::NotAnImage { file, .. }
            | Error::Unsupported { file, .. }
            | Error::ParentNotFound { file, .. }
            | Error::Linkage { file, .. }
            | Error::Locked { file, .. }
            | Error::PermissionDenied { file, .. }
            | Error::FileNotFound { file } => Some(file),
            Error::InvalidParameter(_) | Error::Cancelled => None,
        }
    }
}

/// Extension to attach a file name to `io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, file: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, file: &str) -> Result<T> {
        self.map_err(|e| Error::io(file, e))
    }
}
