//! Placeholder until the driver lands.
use std::sync::Arc;

use crate::image::Image;
use crate::params::OpenOptions;

use crate::{Error, Result, Storage};

/// Open a VHDX image (format already detected).
pub fn open_image(
    name: &str,
    _storage: Arc<dyn Storage>,

    _opts: OpenOptions,
) -> Result<Box<dyn Image>> {
    Err(Error::Unsupported {
        file: name.into(),
        message: "driver not built yet".into(),
    })
}

/// Placeholder.
pub fn create(_storage: &dyn Storage, _params: &crate::params::CreateParams) -> Result<()> {
    Err(Error::InvalidParameter("driver not built yet".into()))
}
