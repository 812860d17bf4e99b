//! Validation findings: what `check` reports.

use serde::Serialize;

use crate::corruption::CorruptionKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in one structure of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub file: String,
    pub structure: String,
    /// Absolute byte offset of the structure or field, when it has one.
    pub offset: Option<u64>,
    /// Which violation (stable snake_case in JSON; match this, not `message`).
    pub kind: CorruptionKind,
    pub message: String,
}

impl Finding {
    pub fn error(
        kind: CorruptionKind,
        file: &str,
        structure: &str,
        offset: impl Into<Option<u64>>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Error,
            file: file.to_string(),
            structure: structure.to_string(),
            offset: offset.into(),
            kind,
            message: message.into(),
        }
    }

    pub fn warning(
        kind: CorruptionKind,
        file: &str,
        structure: &str,
        offset: impl Into<Option<u64>>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Warning,
            ..Finding::error(kind, file, structure, offset, message)
        }
    }
}

impl Finding {
    /// An error finding that reports `e` (an image or chain that could
    /// not be opened), with the error's kind.
    pub fn from_error(file: &str, structure: &str, e: &crate::Error) -> Self {
        Finding::error(e.finding_kind(), file, structure, None, e.to_string())
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.offset {
            Some(o) => write!(
                f,
                "{sev}: {}: {} at offset {o:#x}: {}",
                self.file, self.structure, self.message
            ),
            None => write!(
                f,
                "{sev}: {}: {}: {}",
                self.file, self.structure, self.message
            ),
        }
    }
}
