//! Validation findings: what `check` reports.

use serde::Serialize;

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
    pub message: String,
}

impl Finding {
    pub fn error(
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
            message: message.into(),
        }
    }

    pub fn warning(
        file: &str,
        structure: &str,
        offset: impl Into<Option<u64>>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Warning,
            ..Finding::error(file, structure, offset, message)
        }
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
