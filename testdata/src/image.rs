//! Building test images and chains through the library, on any
//! `Namespace`: the creation, parent linking and writable opening that the
//! crates' tests would otherwise each spell out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::params::{CreateParams, DiskType, ParentSpec};
use formats::{Access, FsNamespace, Image, Namespace};

/// The real file system as a `Namespace`.
pub fn fs() -> Arc<dyn Namespace> {
    Arc::new(FsNamespace)
}

/// The extensions of a base image and of a differencing child in `vhdx`
/// or VHD format (VHDX children are `.avhdx`).
pub fn exts(vhdx: bool) -> (&'static str, &'static str) {
    if vhdx {
        ("vhdx", "avhdx")
    } else {
        ("vhd", "vhd")
    }
}

/// Options that open one image for writing.
pub fn writable() -> ChainOptions {
    ChainOptions {
        access: Access::Write,
        writable: true,
        ..Default::default()
    }
}

/// Open the image at `path` alone, for writing.
pub fn open_writable(ns: &Arc<dyn Namespace>, path: &Path) -> Box<dyn Image> {
    open_image_file(ns, path, &writable())
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()))
}

/// Create `path` from `params`; with `parent`, as a differencing child
/// linked to the parent's real identity and locators.
pub fn create(
    ns: &Arc<dyn Namespace>,
    path: &Path,
    parent: Option<&Path>,
    mut params: CreateParams,
) {
    if let Some(pp) = parent {
        params.parent = Some(parent_spec(ns, pp, path));
        params.disk_type = DiskType::Differencing;
    }
    formats::create::create_file(ns, path, &params)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// What a child at `child` records of `parent`: its real identity and the
/// locators that lead to it.
pub fn parent_spec(ns: &Arc<dyn Namespace>, parent: &Path, child: &Path) -> ParentSpec {
    let p = open_image_file(ns, parent, &ChainOptions::default()).unwrap();
    formats::create::parent_spec(ns, p.as_ref(), parent, child).unwrap()
}

/// A differencing child at `child` (VHDX unless it ends in `.vhd`; the
/// block size of `small`) linked to `spec`'s identity, whose locators say
/// what the test wants: `rel` (relative), `abs` (absolute) and `name`
/// (file name), as a moved or hostile image may.
pub fn child_with_locators(
    ns: &Arc<dyn Namespace>,
    child: &Path,
    mut spec: ParentSpec,
    rel: &str,
    abs: &str,
    name: &str,
) {
    spec.relative_path = rel.into();
    spec.absolute_path = abs.into();
    spec.file_name = name.into();
    let params = CreateParams {
        virtual_size: spec.virtual_size,
        disk_type: DiskType::Differencing,
        parent: Some(spec),
        ..small(child.extension().is_none_or(|e| e != "vhd"))
    };
    formats::create::create_file(ns, child, &params)
        .unwrap_or_else(|e| panic!("create {}: {e}", child.display()));
}

/// An 8 MiB dynamic image (1 MiB VHDX / 512 KiB VHD blocks): what the
/// refusal tests build their chains from.
pub fn small(vhdx: bool) -> CreateParams {
    CreateParams {
        virtual_size: 8 << 20,
        disk_type: DiskType::Dynamic,
        block_size: Some(if vhdx { 1 << 20 } else { 512 << 10 }),
        ..Default::default()
    }
}

/// `small(vhdx)` at `path` (a child of `parent`, if given) with 8 KiB of
/// 0x5a written at sector 4096.
pub fn small_with_data(ns: &Arc<dyn Namespace>, path: &Path, parent: Option<&Path>, vhdx: bool) {
    create(ns, path, parent, small(vhdx));
    open_writable(ns, path)
        .write_sectors(4096, &[0x5a; 8192])
        .unwrap();
}

/// `base <- mid <- top` in `dir`, each a `small_with_data` image, the top
/// one named `top`; returns (base, mid, top).
pub fn small_chain(dir: &Path, vhdx: bool, top: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ns = fs();
    let (e, c) = exts(vhdx);
    let base = dir.join(format!("base.{e}"));
    let mid = dir.join(format!("mid.{c}"));
    let top = dir.join(format!("{top}.{c}"));
    small_with_data(&ns, &base, None, vhdx);
    small_with_data(&ns, &mid, Some(&base), vhdx);
    small_with_data(&ns, &top, Some(&mid), vhdx);
    (base, mid, top)
}

/// The whole virtual content of the chain whose top is `path`.
pub fn read_all(ns: &Arc<dyn Namespace>, path: &Path) -> Vec<u8> {
    let chain = Chain::open(ns, path, &ChainOptions::default()).expect("open chain");
    let mut buf = vec![0u8; chain.top().virtual_size() as usize];
    chain.reader().read(0, &mut buf).expect("read");
    buf
}
