//! The return values of `Msvm_ImageManagementService.MergeVirtualHardDisk`
//! (DESIGN.md section 7) and how errors map onto them.

use serde::Serialize;

use crate::{JobState, MergeError};
use formats::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReturnValue {
    Completed = 0,
    JobStarted = 4096,
    Failed = 32768,
    AccessDenied = 32769,
    NotSupported = 32770,
    StatusUnknown = 32771,
    Timeout = 32772,
    InvalidParameter = 32773,
    SystemInUse = 32774,
    InvalidState = 32775,
    IncorrectDataType = 32776,
    SystemNotAvailable = 32777,
    OutOfMemory = 32778,
    FileNotFound = 32779,
}

impl ReturnValue {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// The job state and return value a run that ended with `r` reports.
pub(crate) fn end_of_run(r: &Result<(), MergeError>) -> (JobState, u32) {
    match r {
        Ok(()) => (JobState::Completed, ReturnValue::Completed.code()),
        Err(e @ MergeError::Cancelled) => (JobState::Cancelled, classify(e).code()),
        Err(e) => (JobState::Failed, classify(e).code()),
    }
}

/// Map a merge error to its return value.
pub fn classify(e: &MergeError) -> ReturnValue {
    match e {
        MergeError::NotDifferencing { .. } | MergeError::DestinationLarger { .. } => {
            ReturnValue::NotSupported
        }
        MergeError::NotAnAncestor { .. } | MergeError::InvalidParameter(_) => {
            ReturnValue::InvalidParameter
        }
        MergeError::Siblings { .. }
        | MergeError::SavedState { .. }
        | MergeError::IdMismatch { .. }
        | MergeError::Cycle { .. } => ReturnValue::InvalidState,
        MergeError::ParentMismatch { .. } => ReturnValue::InvalidParameter,
        MergeError::Unhealthy { .. } => ReturnValue::IncorrectDataType,
        // Hyper-V has no code of its own for a full volume.
        MergeError::Cancelled | MergeError::InsufficientSpace { .. } => ReturnValue::Failed,
        MergeError::Format(f) => classify_format(f),
    }
}

fn classify_format(e: &Error) -> ReturnValue {
    match e {
        Error::FileNotFound { .. } | Error::ParentNotFound { .. } => ReturnValue::FileNotFound,
        Error::Locked { .. } => ReturnValue::SystemInUse,
        Error::PermissionDenied { .. } => ReturnValue::AccessDenied,
        Error::Linkage { .. } => ReturnValue::InvalidState,
        Error::Corrupt { .. }
        | Error::Checksum { .. }
        | Error::NotAnImage { .. }
        | Error::Unsupported { .. } => ReturnValue::IncorrectDataType,
        Error::InvalidParameter(_) => ReturnValue::InvalidParameter,
        Error::Cancelled => ReturnValue::Failed,
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::OutOfMemory => {
            ReturnValue::OutOfMemory
        }
        Error::Io { .. } => ReturnValue::Failed,
    }
}
