//! Issue 8: parent resolution under hostile locators. Every case goes through
//! the library entry points (`Chain::open_partial`, `merge::run`) on a
//! `Namespace` wrapper that records every path the library asks the file
//! system about, so "the outside target is never opened" is observed, not
//! assumed. Each case must also fail fast (< 1 s) and change no byte.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use formats::chain::{open_image_file, Chain, ChainOptions};
use formats::params::{Identity, ParentSpec};
use formats::{Access, EntryKind, Error, FsNamespace, Namespace, Storage};
use merge::{JobHandle, MergeRequest};
use testdata::image::{self, exts, fs};
use testdata::{canonical_tempdir, file_hashes, make_dirs, mkfifo, quickly, serial};

/// FsNamespace, recording (operation, path) for every call.
#[derive(Debug, Default)]
struct Recording {
    calls: Mutex<Vec<(&'static str, PathBuf)>>,
}

impl Recording {
    fn note(&self, op: &'static str, p: &Path) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((op, p.to_path_buf()));
    }
    fn calls(&self) -> Vec<(&'static str, PathBuf)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn clear(&self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    /// Calls of kind `op` whose path lies under `prefix`.
    fn touching(&self, ops: &[&str], prefix: &Path) -> Vec<(&'static str, PathBuf)> {
        self.calls()
            .into_iter()
            .filter(|(op, p)| ops.contains(op) && p.starts_with(prefix))
            .collect()
    }
}

impl Namespace for Recording {
    fn open(&self, path: &Path, access: Access) -> std::io::Result<Arc<dyn Storage>> {
        self.note("open", path);
        FsNamespace.open(path, access)
    }
    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn Storage>> {
        self.note("create", path);
        FsNamespace.create(path)
    }
    fn kind(&self, path: &Path) -> std::io::Result<EntryKind> {
        self.note("kind", path);
        FsNamespace.kind(path)
    }
    fn canonicalize(&self, path: &Path) -> std::io::Result<PathBuf> {
        self.note("canonicalize", path);
        FsNamespace.canonicalize(path)
    }
    fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.note("read_dir", dir);
        FsNamespace.read_dir(dir)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.note("remove", path);
        FsNamespace.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.note("rename", from);
        FsNamespace.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.note("sync_dir", dir);
        FsNamespace.sync_dir(dir)
    }
}

fn recording() -> (Arc<Recording>, Arc<dyn Namespace>) {
    let r = Arc::new(Recording::default());
    let ns: Arc<dyn Namespace> = r.clone();
    (r, ns)
}

fn ext(vhdx: bool, child: bool) -> &'static str {
    let (base, diff) = exts(vhdx);
    if child {
        diff
    } else {
        base
    }
}

/// The file name of `p` as a string.
fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// Chain options that follow symbolic links.
fn follow() -> ChainOptions {
    ChainOptions {
        follow_symlinks: true,
        ..Default::default()
    }
}

/// A dynamic 8 MiB base with some data.
fn make_base(path: &Path, vhdx: bool) {
    let ns = fs();
    image::create(&ns, path, None, image::small(vhdx));
    image::open_writable(&ns, path)
        .write_sectors(0, &[0x11; 4096])
        .unwrap();
}

/// `make_base` at `dir/base.vhdx` (or `.vhd`).
fn base_in(dir: &Path, vhdx: bool) -> PathBuf {
    let base = dir.join(format!("base.{}", ext(vhdx, false)));
    make_base(&base, vhdx);
    base
}

/// The spec for a child of `parent`, with the parent's real identity.
fn spec_for(parent: &Path, child: &Path) -> ParentSpec {
    image::parent_spec(&fs(), parent, child)
}

/// A differencing child whose locators say what the test wants, linked to
/// `spec`'s identity (so a parent found by following them would match).
fn make_child(child: &Path, spec: ParentSpec, rel: &str, abs: &str, name: &str) {
    image::child_with_locators(&fs(), child, spec, rel, abs, name);
}

/// `make_child` whose relative locator is `.\name` and whose file-name
/// locator is `name`, with no absolute one.
fn make_child_named(child: &Path, spec: ParentSpec, name: &str) {
    make_child(child, spec, &format!(r".\{name}"), "", name);
}

/// `make_child` with the locators Hyper-V writes for a parent `name`
/// beside the child: relative `.\name`, absolute `C:\vms\name`, and
/// the file name.
fn make_child_beside(child: &Path, spec: ParentSpec, name: &str) {
    make_child(
        child,
        spec,
        &format!(r".\{name}"),
        &format!(r"C:\vms\{name}"),
        name,
    );
}

/// Open the chain of `child` through a recording namespace; returns the
/// number of links, the broken error text and the recorder.
fn open_partial(child: &Path, opts: ChainOptions) -> (usize, Option<String>, Arc<Recording>) {
    let (rec, ns) = recording();
    let child = child.to_path_buf();
    let (n, broken) = quickly("Chain::open_partial", move || {
        let c = Chain::open_partial(&ns, &child, &opts).unwrap();
        (
            c.links.len(),
            c.broken.map(|e| (e.to_string(), kind_of(&e))),
        )
    });
    match broken {
        Some((text, _)) => (n, Some(text), rec),
        None => (n, None, rec),
    }
}

/// `open_partial` of a chain that must stop at `child` (the parent not
/// linked, the chain broken); the error text and the recorder.
fn stops_at_child(child: &Path, opts: ChainOptions) -> (String, Arc<Recording>) {
    let (n, broken, rec) = open_partial(child, opts);
    assert_eq!(n, 1, "the parent must not be in the chain: {broken:?}");
    (broken.expect("chain must be broken"), rec)
}

/// `open_partial` of `child` with `opts` resolves its parent.
fn resolves(child: &Path, opts: ChainOptions) {
    let (n, broken, _) = open_partial(child, opts);
    assert_eq!((n, broken), (2, None), "the parent resolves");
}

/// The violation the broken chain of `child` reports, when it is one.
fn broken_kind(child: &Path) -> Option<formats::CorruptionKind> {
    let (_, ns) = recording();
    let c = Chain::open_partial(&ns, child, &ChainOptions::default()).unwrap();
    c.broken.and_then(|e| e.corruption_kind())
}

fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::ParentNotFound { .. } => "parent-not-found",
        Error::Corrupt { .. } => "corrupt",
        Error::InvalidParameter(_) => "invalid-parameter",
        Error::Linkage { .. } => "linkage",
        _ => "other",
    }
}

/// `merge::run` through a recording namespace, timed; every file under
/// `root` must be byte-identical afterwards.
fn merge_refused(
    root: &Path,
    child: &Path,
    opts: ChainOptions,
) -> (merge::MergeOutcome, Arc<Recording>) {
    let before = file_hashes(root);
    let (rec, ns) = recording();
    let req = MergeRequest {
        source: child.to_path_buf(),
        chain: opts,
        ..Default::default()
    };
    let out = quickly("merge::run", move || {
        merge::run(&ns, &req, &JobHandle::new())
    });
    assert_ne!(out.return_value, 0, "merge should have been refused");
    assert!(out.error.is_some());
    assert_eq!(file_hashes(root), before, "a refused merge changed bytes");
    (out, rec)
}

/// `merge_refused` answering 32779 (parent not found).
fn not_found(root: &Path, child: &Path, opts: ChainOptions) -> Arc<Recording> {
    let (out, rec) = merge_refused(root, child, opts);
    assert_eq!(out.return_value, 32779, "{:?}", out.error);
    rec
}

/// The chain of `top` is broken by a cycle (its error text `msg`), and a
/// merge of it is refused naming the cycle.
fn cycle_refused(root: &Path, top: &Path, msg: &str) {
    assert_eq!(
        broken_kind(top),
        Some(formats::CorruptionKind::ChainCycle),
        "{msg}"
    );
    let (out, _) = merge_refused(root, top, ChainOptions::default());
    assert_eq!(
        out.corruption_kind,
        Some(formats::CorruptionKind::ChainCycle),
        "{:?}",
        out.error
    );
}

/// Run `f` for VHDX and for VHD (one test at a time, see `serial`), each
/// in a fresh directory given by its canonical path.
fn each_format(f: impl Fn(bool, &Path)) {
    let _serial = serial();
    for vhdx in [true, false] {
        let (_guard, root) = canonical_tempdir();
        f(vhdx, &root);
    }
}

const ALL_OPS: &[&str] = &["open", "kind", "canonicalize", "read_dir", "create"];

#[test]
fn relative_locator_climbing_out_is_not_followed() {
    each_format(|vhdx, root| {
        let [elsewhere, child_dir] = make_dirs(root, ["elsewhere", "a/b"]);
        // A valid parent with the right identity: following the locator
        // would succeed.
        let parent = elsewhere.join(format!("p.{}", ext(vhdx, false)));
        make_base(&parent, vhdx);
        let child = child_dir.join(format!("c.{}", ext(vhdx, true)));
        let rel = format!(r"..\..\elsewhere\p.{}", ext(vhdx, false));
        make_child(
            &child,
            spec_for(&parent, &child),
            &rel,
            &parent.display().to_string(),
            &format!("../../elsewhere/p.{}", ext(vhdx, false)),
        );

        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(msg.contains("parent not found"), "{msg}");
        // The message quotes locators Debug-style (backslashes doubled).
        assert!(
            msg.contains(&format!("{rel:?}")),
            "error names the locator: {msg}"
        );
        assert!(msg.contains("leaves the child's directory"), "{msg}");
        assert!(
            msg.contains("--search-dir"),
            "error names the option: {msg}"
        );
        assert_eq!(
            rec.touching(ALL_OPS, &elsewhere),
            vec![],
            "touched the outside target"
        );

        let rec = not_found(root, &child, ChainOptions::default());
        assert_eq!(rec.touching(ALL_OPS, &elsewhere), vec![]);

        // Control: the options that widen the search do find it, so the
        // refusal above is the policy and not a broken parent.
        resolves(
            &child,
            ChainOptions {
                search_dirs: vec![elsewhere.clone()],
                ..Default::default()
            },
        );
        resolves(
            &child,
            ChainOptions {
                parents: vec![parent.clone()],
                ..Default::default()
            },
        );
    });
}

#[test]
fn locator_naming_etc_passwd_is_not_opened() {
    each_format(|vhdx, root| {
        let base = base_in(root, vhdx);
        let child = root.join(format!("c.{}", ext(vhdx, true)));
        make_child(
            &child,
            spec_for(&base, &child),
            "/etc/passwd",
            "/etc/passwd",
            "/etc/passwd",
        );
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(
            msg.contains("parent not found") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        assert_eq!(rec.touching(ALL_OPS, Path::new("/etc")), vec![]);
        // The only candidates are inside the child's directory.
        for (op, p) in rec.calls() {
            assert!(
                p.starts_with(root),
                "{op} {} is outside the child's dir",
                p.display()
            );
        }
        let rec = not_found(root, &child, ChainOptions::default());
        assert_eq!(rec.touching(ALL_OPS, Path::new("/etc")), vec![]);
    });
}

#[test]
fn devices_are_never_opened() {
    each_format(|vhdx, root| {
        let base = base_in(root, vhdx);
        let spec = spec_for(&base, &root.join("x"));

        // The plain device path in every locator: only its file name is
        // looked up, in the child's directory.
        let child = root.join(format!("dev.{}", ext(vhdx, true)));
        make_child(&child, spec.clone(), "/dev/null", "/dev/null", "/dev/null");
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(msg.contains("parent not found"));
        assert_eq!(rec.touching(ALL_OPS, Path::new("/dev")), vec![]);

        // The device given explicitly (--parent /dev/null): looked at, but
        // refused as not a regular file without being opened.
        let (msg, rec) = stops_at_child(
            &child,
            ChainOptions {
                parents: vec![PathBuf::from("/dev/null")],
                ..Default::default()
            },
        );
        assert!(msg.contains("not a regular file"), "{msg}");
        assert_eq!(rec.touching(&["open"], Path::new("/dev")), vec![]);

        // A symlink inside the directory resolving to the device.
        let link = root.join(format!("null.{}", ext(vhdx, false)));
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let child = root.join(format!("sym.{}", ext(vhdx, true)));
        let name = name_of(&link);
        make_child_named(&child, spec.clone(), &name);
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(msg.contains("--follow-symlinks"), "{msg}");
        assert_eq!(rec.touching(&["open"], Path::new("/dev")), vec![]);
        assert_eq!(rec.touching(&["open"], &link), vec![]);
        let (msg, rec) = stops_at_child(&child, follow());
        assert!(msg.contains("not a regular file"), "{msg}");
        assert_eq!(rec.touching(&["open"], Path::new("/dev")), vec![]);
        assert_eq!(rec.touching(&["open"], &link), vec![]);
        not_found(root, &child, follow());
    });
}

#[test]
fn fifo_and_socket_named_as_parent_do_not_hang() {
    each_format(|vhdx, root| {
        let base = base_in(root, vhdx);
        let spec = spec_for(&base, &root.join("x"));
        let fifo = root.join(format!("fifo.{}", ext(vhdx, false)));
        mkfifo(&fifo);
        let sock = root.join(format!("sock.{}", ext(vhdx, false)));
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for special in [&fifo, &sock] {
            let name = name_of(special);
            let child = root.join(format!("c-{name}.{}", ext(vhdx, true)));
            make_child_named(&child, spec.clone(), &name);
            for follow in [false, true] {
                let opts = ChainOptions {
                    follow_symlinks: follow,
                    ..Default::default()
                };
                let (msg, rec) = stops_at_child(&child, opts.clone());
                assert!(msg.contains("not a regular file"), "{msg}");
                assert!(msg.contains(&name), "error names the candidate: {msg}");
                assert_eq!(rec.touching(&["open"], special), vec![]);
                // merge: also the sibling scan must skip it (not hang).
                let rec = not_found(root, &child, opts);
                assert_eq!(rec.touching(&["open"], special), vec![]);
            }
            // A symlink to the FIFO, followed.
            let link = root.join(format!("l{name}"));
            std::os::unix::fs::symlink(special, &link).unwrap();
            let lname = name_of(&link);
            let child = root.join(format!("cl-{name}.{}", ext(vhdx, true)));
            make_child_named(&child, spec.clone(), &lname);
            let (msg, rec) = stops_at_child(&child, follow());
            assert!(msg.contains("not a regular file"));
            assert_eq!(rec.touching(&["open"], special), vec![]);
            assert_eq!(rec.touching(&["open"], &link), vec![]);
        }
    });
}

#[test]
fn symlinked_parent_needs_follow_symlinks() {
    each_format(|vhdx, root| {
        let [real, dir] = make_dirs(root, ["real", "vm"]);
        let target = real.join(format!("p.{}", ext(vhdx, false)));
        make_base(&target, vhdx);
        let link = dir.join(format!("p.{}", ext(vhdx, false)));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let child = dir.join(format!("c.{}", ext(vhdx, true)));
        let name = name_of(&link);
        make_child_beside(&child, spec_for(&target, &child), &name);
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(
            msg.contains("symbolic link") && msg.contains("--follow-symlinks"),
            "{msg}"
        );
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        assert_eq!(rec.touching(&["open", "kind"], &real), vec![]);
        assert_eq!(rec.touching(&["open"], &link), vec![]);
        let rec = not_found(root, &child, ChainOptions::default());
        assert_eq!(rec.touching(&["open", "kind"], &real), vec![]);

        resolves(&child, follow());
    });
}

#[test]
fn locator_naming_the_child_itself_is_a_cycle() {
    each_format(|vhdx, root| {
        let base = base_in(root, vhdx);
        let child = root.join(format!("self.{}", ext(vhdx, true)));
        let name = name_of(&child);
        make_child_beside(&child, spec_for(&base, &child), &name);
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(
            msg.contains("parent locator"),
            "error names the structure: {msg}"
        );
        let opens = rec.touching(&["open"], &child);
        assert_eq!(opens.len(), 1, "the child is opened once: {opens:?}");
        cycle_refused(root, &child, &msg);
    });
}

/// Replace every occurrence of `from` by `to` (same length) in `file`.
fn patch_all(file: &Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= b.len() {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, b).unwrap();
    n
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn identity(p: &Path) -> Identity {
    open_image_file(&fs(), p, &ChainOptions::default())
        .unwrap()
        .identity()
}

/// A's parent is B and B's parent is A, with matching linkage both ways.
fn two_file_cycle(dir: &Path, vhdx: bool) -> (PathBuf, PathBuf) {
    let a = dir.join(format!("a.{}", ext(vhdx, true)));
    let b = dir.join(format!("b.{}", ext(vhdx, true)));
    make_base(&a, vhdx);
    let old_a = identity(&a);
    let a_name = name_of(&a);
    make_child_named(&b, spec_for(&a, &b), &a_name);
    // Recreate A as a child of B (new identity), then point B at the new A.
    std::fs::remove_file(&a).unwrap();
    let b_name = name_of(&b);
    make_child_named(&a, spec_for(&b, &a), &b_name);
    let new_a = identity(&a);
    match (old_a, new_a) {
        (Identity::Vhdx { data_write_guid: o }, Identity::Vhdx { data_write_guid: n }) => {
            // parent_linkage is UTF-16 text in the metadata (no checksum).
            let mut hits = 0;
            for (fo, fnew) in [
                (o.hyphenated().to_string(), n.hyphenated().to_string()),
                (
                    o.hyphenated().to_string().to_uppercase(),
                    n.hyphenated().to_string().to_uppercase(),
                ),
            ] {
                hits += patch_all(&b, &utf16(&fo), &utf16(&fnew));
            }
            assert!(hits > 0, "parent_linkage not found in b");
        }
        (Identity::Vhd { unique_id: o, .. }, Identity::Vhd { unique_id: n, .. }) => {
            // Parent Unique ID in the dynamic header; fix its checksum.
            let mut bytes = std::fs::read(&b).unwrap();
            let ho = u64::from_be_bytes(bytes[16..24].try_into().unwrap()) as usize;
            assert_eq!(&bytes[ho + 0x28..ho + 0x38], &o);
            bytes[ho + 0x28..ho + 0x38].copy_from_slice(&n);
            let sum = formats::checksum::vhd_checksum(&bytes[ho..ho + 1024], 0x24);
            bytes[ho + 0x24..ho + 0x28].copy_from_slice(&sum.to_be_bytes());
            std::fs::write(&b, bytes).unwrap();
        }
        _ => unreachable!(),
    }
    (a, b)
}

#[test]
fn two_file_cycle_is_an_error_not_a_hang() {
    each_format(|vhdx, root| {
        let (a, b) = two_file_cycle(root, vhdx);
        for (top, other) in [(&a, &b), (&b, &a)] {
            let (n, broken, rec) = open_partial(top, ChainOptions::default());
            // The linkage matched one step (so the cycle is real), then the
            // second step found a file already in the chain.
            assert_eq!(n, 2, "{broken:?}");
            let msg = broken.unwrap();
            assert!(msg.contains("parent locator"), "{msg}");
            assert_eq!(rec.touching(&["open"], top).len(), 1);
            assert_eq!(rec.touching(&["open"], other).len(), 1);
            cycle_refused(root, top, &msg);
        }
    });
}

/// `kind` on an outside path would already reveal whether it exists (and for
/// automounted or network paths, trigger I/O): the recorder must not see any
/// call outside the child's directory when no option widens the search.
#[test]
fn no_filesystem_call_leaves_the_child_directory() {
    let _serial = serial();
    let (_guard, root) = canonical_tempdir();
    let [dir] = make_dirs(&root, ["vm"]);
    let base = root.join("base.vhdx");
    make_base(&base, true);
    let child = dir.join("c.avhdx");
    make_child(
        &child,
        spec_for(&base, &child),
        r"..\base.vhdx",
        &base.display().to_string(),
        "base.vhdx",
    );
    let (_, broken, rec) = open_partial(&child, ChainOptions::default());
    assert!(broken.is_some());
    for (op, p) in rec.calls() {
        assert!(p.starts_with(&dir), "{op} {}", p.display());
    }
    rec.clear();
    let rec = not_found(&root, &child, ChainOptions::default());
    for (op, p) in rec.calls() {
        assert!(p.starts_with(&dir), "merge: {op} {}", p.display());
    }
}

/// `.\sub\p.vhdx` where `sub` is a symlink to a directory outside: the
/// final component is a regular file, but reaching it follows a symlink, so
/// it needs `--follow-symlinks` like a symlinked file does.
#[test]
fn symlinked_directory_in_a_relative_locator_needs_follow_symlinks() {
    each_format(|vhdx, root| {
        let [elsewhere, dir] = make_dirs(root, ["elsewhere", "vm"]);
        let parent = elsewhere.join(format!("p.{}", ext(vhdx, false)));
        make_base(&parent, vhdx);
        std::os::unix::fs::symlink(&elsewhere, dir.join("sub")).unwrap();
        let child = dir.join(format!("c.{}", ext(vhdx, true)));
        let rel = format!(r".\sub\p.{}", ext(vhdx, false));
        // No name-only hints: the relative path is the only way there.
        make_child(&child, spec_for(&parent, &child), &rel, "", "");
        let (msg, rec) = stops_at_child(&child, ChainOptions::default());
        assert!(msg.contains("--follow-symlinks"), "{msg}");
        assert_eq!(rec.touching(&["open"], &dir.join("sub")), vec![]);
        not_found(root, &child, ChainOptions::default());
        resolves(&child, follow());
    });
}
