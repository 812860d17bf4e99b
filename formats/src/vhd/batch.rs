//! The merge's atomic write path (DESIGN.md section 5, VHD bullets): which
//! commit protocol a batch uses, and what they share.
//!
//! - Dynamic / differencing: shadow paging (`shadow_batch.rs`), with the
//!   redo journal for the blocks the image already holds where
//!   `--held-blocks` asks for it.
//! - Fixed: every change through the redo journal (`journal_batch.rs`).

use super::footer::HardDiskFooter;
use super::geometry::chs_for_size;
use super::image::VhdImage;
use super::journal_batch::JournalBatch;
use super::shadow_batch::ShadowBatch;
use crate::image::MergeBatch;
use crate::params::Identity;
use crate::{Error, Result};

pub(super) fn begin(img: &mut VhdImage) -> Result<Box<dyn MergeBatch + '_>> {
    if !img.opts.writable {
        return Err(Error::PermissionDenied {
            file: img.name.clone(),
            message: "a merge batch needs a writable open".into(),
        });
    }
    if img.footer.saved_state != 0 {
        return Err(Error::Unsupported {
            file: img.name.clone(),
            message:
                "the image holds a saved VM state (Saved State = 1); structural changes are refused"
                    .into(),
        });
    }
    if img.sparse.is_some() {
        Ok(Box::new(ShadowBatch::new(img)?))
    } else {
        Ok(Box::new(JournalBatch::new(img)?))
    }
}

pub(super) fn new_footer(
    old: &HardDiskFooter,
    new_size: u64,
    id: Identity,
    name: &str,
) -> Result<HardDiskFooter> {
    let Identity::Vhd {
        unique_id,
        timestamp,
    } = id
    else {
        return Err(Error::InvalidParameter(format!(
            "{name}: a VHD takes a VHD identity (unique id + time stamp)"
        )));
    };
    let mut f = old.clone();
    f.unique_id = unique_id;
    f.time_stamp = timestamp;
    if new_size != old.current_size {
        f.current_size = new_size;
        let (c, h, s) = chs_for_size(new_size);
        f.cylinders = c;
        f.heads = h;
        f.sectors_per_track = s;
    }
    Ok(f)
}

pub(super) fn check_grow(name: &str, old: u64, new: u64, cap: u64) -> Result<()> {
    if new < old || !new.is_multiple_of(512) || new > cap {
        return Err(Error::InvalidParameter(format!(
            "{name}: cannot grow from {old} to {new} bytes (must not shrink, whole sectors, at most {cap})"
        )));
    }
    Ok(())
}
