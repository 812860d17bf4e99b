//! Chains: a top image and its ancestors down to a base (DESIGN.md 3).

pub mod fold;
pub mod reader;
pub mod resolve;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fold::{fold, FoldedRun, Source};
pub use reader::ChainReader;
pub use resolve::{linkage_matches, open_image_file, ChainOptions, Resolution};
pub use writer::write_through;

use crate::image::Image;
use crate::layer::Layer;
use crate::storage::Namespace;
use crate::{Error, Result};

/// Longest chain accepted; deeper ones are treated as hostile.
pub const MAX_DEPTH: usize = 256;

/// One image of a chain.
pub struct Link {
    pub path: PathBuf,
    pub image: Box<dyn Image>,
    /// How this image's parent was found (None for a base or when not tried).
    pub parent_resolution: Option<Resolution>,
}

/// An opened chain, top first. When a parent could not be opened the chain
/// stops there and `broken` says why (`info` still reports what it has).
pub struct Chain {
    pub links: Vec<Link>,
    pub broken: Option<Error>,
}

impl Chain {
    /// Open the chain rooted at `top`, stopping at the first unresolvable
    /// parent (recorded in `broken`). Errors opening `top` itself are returned.
    pub fn open_partial(ns: &Arc<dyn Namespace>, top: &Path, opts: &ChainOptions) -> Result<Chain> {
        let image = resolve::open_image_file(ns, top, opts)?;
        Self::open_partial_from(ns, top, image, opts)
    }

    /// Like `open_partial`, with the top image already opened (e.g.
    /// writable and exclusively locked while its parents are shared).
    pub fn open_partial_from(
        ns: &Arc<dyn Namespace>,
        top: &Path,
        image: Box<dyn Image>,
        opts: &ChainOptions,
    ) -> Result<Chain> {
        let mut links = vec![Link {
            path: top.to_path_buf(),
            image,
            parent_resolution: None,
        }];
        let mut identities = vec![ns.canonicalize(top).unwrap_or_else(|_| top.to_path_buf())];
        let mut broken = None;
        loop {
            let last = links.last_mut().expect("chain has a top");
            if !last.image.is_differencing() {
                break;
            }
            if links.len() >= MAX_DEPTH {
                broken = Some(Error::InvalidParameter(format!(
                    "chain deeper than {MAX_DEPTH} images"
                )));
                break;
            }
            let depth = links.len() - 1;
            let explicit = opts.parents.get(depth).map(PathBuf::as_path);
            let last = links.last_mut().expect("chain has a top");
            let mut res = Resolution::default();
            let r = resolve::resolve_parent(
                ns,
                &last.path,
                last.image.as_ref(),
                explicit,
                opts,
                &identities,
                &mut res,
            );
            last.parent_resolution = Some(res);
            match r {
                Ok(parent) => {
                    let id = ns
                        .canonicalize(&parent.path)
                        .unwrap_or_else(|_| parent.path.clone());
                    if identities.contains(&id) {
                        broken = Some(Error::Corrupt {
                            file: last.path.display().to_string(),
                            structure: "parent locator",
                            offset: 0,
                            kind: crate::CorruptionKind::ChainCycle,
                            message: format!(
                                "chain cycle: parent {} is already in the chain",
                                parent.path.display()
                            ),
                        });
                        break;
                    }
                    identities.push(id);
                    links.push(Link {
                        path: parent.path,
                        image: parent.image,
                        parent_resolution: None,
                    });
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        Ok(Chain { links, broken })
    }

    /// Open the whole chain or fail.
    pub fn open(ns: &Arc<dyn Namespace>, top: &Path, opts: &ChainOptions) -> Result<Chain> {
        let mut c = Self::open_partial(ns, top, opts)?;
        match c.broken.take() {
            Some(e) => Err(e),
            None => Ok(c),
        }
    }

    pub fn top(&self) -> &dyn Image {
        self.links[0].image.as_ref()
    }

    pub fn layers(&self) -> Vec<&dyn Layer> {
        self.links
            .iter()
            .map(|l| l.image.as_ref() as &dyn Layer)
            .collect()
    }

    pub fn reader(&self) -> ChainReader<'_> {
        ChainReader::new(self.layers())
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.links.iter().map(|l| l.path.clone()).collect()
    }
}
