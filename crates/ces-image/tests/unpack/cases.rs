use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ces_image::tar_limits::ExtensionKind;
use ces_image::unpack::{
    EscapeReason, UnpackError, UnpackOptions, UnpackStats, apply_layer, decompress, link_layer, unpack_layer,
};
use ces_testkit::layer::{Compression, Entry, Layer};

const SECRET: &str = "top secret\n";

/// Options that work for any user: ownership and devices left alone.
const PLAIN: UnpackOptions = UnpackOptions { preserve_ownership: false, create_devices: false };

/// Everything about a file that a stray write could change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: String,
    mode: u32,
    uid: u32,
    nlink: u64,
    mtime: (i64, i64),
    content: Vec<u8>,
}

fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for path in entries {
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let (kind, content) = if meta.file_type().is_symlink() {
            ("symlink", fs::read_link(&path).expect("readlink").into_os_string().into_encoded_bytes())
        } else if meta.is_dir() {
            ("dir", Vec::new())
        } else if meta.is_file() {
            ("file", fs::read(&path).expect("read"))
        } else {
            ("other", Vec::new())
        };
        out.insert(
            path.clone(),
            Seen {
                kind: kind.into(),
                mode: meta.mode(),
                uid: meta.uid(),
                nlink: meta.nlink(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
            },
        );
        if meta.is_dir() {
            snapshot(&path, skip, out);
        }
    }
}

/// A temp dir with `rootfs/` to unpack into and `outside/` that must stay as it is.
struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, Seen>,
    /// Where each layer is unpacked alone first, when [`super::LAYERED`].
    layers: tempfile::TempDir,
    /// The layers applied so far, for a fallback that starts over.
    applied: std::cell::RefCell<Vec<Vec<u8>>>,
    /// [`super::OVERLAY`]: each layer unpacked alone so far, and whether it
    /// can be an overlay's lower layer (`None` once one cannot).
    stack: std::cell::RefCell<Option<Vec<tempfile::TempDir>>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::in_dir(tempfile::tempdir().expect("tempdir"))
    }

    fn in_dir(tmp: tempfile::TempDir) -> Fixture {
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).expect("mkdir rootfs");
        fs::create_dir(&outside).expect("mkdir outside");
        fs::create_dir(outside.join("dir")).expect("mkdir outside/dir");
        fs::write(outside.join("secret"), SECRET).expect("write secret");
        fs::write(outside.join("dir/inner"), "inner\n").expect("write inner");
        let mut before = BTreeMap::new();
        snapshot(tmp.path(), &root, &mut before);
        // Beside the temp dir, not in it: the snapshot covers all of it.
        let layers = tempfile::tempdir_in(tmp.path().parent().expect("parent")).expect("layers dir");
        let stack = std::cell::RefCell::new(Some(Vec::new()));
        Fixture { tmp, root, outside, before, layers, applied: Default::default(), stack }
    }

    fn apply(&self, layer: &Layer) -> Result<UnpackStats, UnpackError> {
        self.apply_with(layer, &PLAIN)
    }

    fn apply_with(&self, layer: &Layer, options: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        let blob = layer.blob();
        let tar = decompress(blob.as_slice()).expect("decompress");
        if !super::LAYERED {
            return apply_layer(&self.root, tar, options);
        }
        self.applied.borrow_mut().push(blob.clone());
        let result = self.apply_layered(tar, options);
        if result.is_err() {
            // A layer that fails is not part of what a later one starts over from.
            self.applied.borrow_mut().pop();
        } else {
            self.check_overlay();
        }
        result
    }

    /// [`super::OVERLAY`]: the layers so far, mounted as an overlay's lower
    /// layers (as the runtime mounts an image), show exactly the root
    /// filesystem that applying them made: with `trusted.overlay.*`
    /// attributes (root's mount) and with `userxattr` (a rootless mount).
    fn check_overlay(&self) {
        let stack = self.stack.borrow();
        let Some(stack) = stack.as_ref().filter(|_| super::OVERLAY) else { return };
        assert!(is_root(), "the overlay cases mount overlays: run them as root");
        let mut expected = BTreeMap::new();
        snapshot(&self.root, Path::new(""), &mut expected);
        let empty = tempfile::tempdir_in(self.layers.path()).expect("empty layer");
        // Top first; an empty layer at the bottom, since an overlay without
        // an upper layer needs two.
        let lower: Vec<String> = stack
            .iter()
            .rev()
            .map(|d| d.path().display().to_string())
            .chain([empty.path().display().to_string()])
            .collect();
        for extra in ["", ",userxattr"] {
            let target = tempfile::tempdir_in(self.layers.path()).expect("mount point");
            let options = format!("ro,lowerdir={}{extra}", lower.join(":"));
            let status = std::process::Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(target.path())
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -o {options}");
            // Unmounted however this ends (a failed read panics), so that
            // no test leaves a mount behind on the host.
            struct Mounted<'a>(Option<&'a Path>);
            impl Drop for Mounted<'_> {
                fn drop(&mut self) {
                    if let Some(target) = self.0 {
                        let _ = std::process::Command::new("umount").arg("-l").arg(target).status();
                    }
                }
            }
            let mut mounted = Mounted(Some(target.path()));
            let mut seen = BTreeMap::new();
            snapshot(target.path(), Path::new(""), &mut seen);
            mounted.0 = None;
            let unmounted = std::process::Command::new("umount").arg(target.path()).status().expect("run umount");
            assert!(unmounted.success());
            let relative = |map: BTreeMap<PathBuf, Seen>, base: &Path| -> BTreeMap<PathBuf, Seen> {
                map.into_iter()
                    .map(|(path, mut seen)| {
                        // An overlay counts a merged directory's links its own way.
                        if seen.kind == "dir" {
                            seen.nlink = 0;
                        }
                        (path.strip_prefix(base).expect("under the base").to_owned(), seen)
                    })
                    .collect()
            };
            assert_eq!(
                relative(seen, target.path()),
                relative(expected.clone(), &self.root),
                "the overlay of the layers (mounted with {options:?}) differs from the applied layers"
            );
        }
    }

    fn apply_layered(&self, tar: impl std::io::Read, options: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        // As the store does: the layer alone into a directory of its own,
        // then linked into the root. What cannot be done so (a hard link to
        // a lower layer's file, two entries landing on one place) the store
        // does the old way, from the start: so does this.
        let dir = tempfile::tempdir_in(self.layers.path()).expect("layer dir");
        let alone = match unpack_layer(dir.path(), tar, options) {
            Err(UnpackError::Link { .. }) => return self.start_over(options),
            result => result?,
        };
        let linked = match link_layer(&self.root, dir.path(), &alone, options) {
            Err(UnpackError::Link { .. }) => return self.start_over(options),
            result => result?,
        };
        // As the store decides: a directory the layer only implies (it keeps
        // a lower layer's directory as it is, or is no directory at all in
        // the image) is right only in an assembled tree.
        let mut stack = self.stack.borrow_mut();
        if alone.overlay && alone.dir_modes.is_empty() && alone.implicit_dirs.is_empty() {
            if let Some(stack) = stack.as_mut() {
                stack.push(dir);
            }
        } else {
            *stack = None;
        }
        // What linking cannot see (data written, attributes, devices
        // skipped) is what unpacking the layer alone did.
        Ok(UnpackStats { entries: linked.entries, whiteouts: linked.whiteouts, ..alone.stats })
    }

    /// Every layer so far applied again, the old way, onto an empty root.
    fn start_over(&self, options: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        *self.stack.borrow_mut() = None;
        fs::remove_dir_all(&self.root).expect("empty the root");
        fs::create_dir(&self.root).expect("mkdir rootfs");
        let mut stats = UnpackStats::default();
        for blob in self.applied.borrow().iter() {
            stats = apply_layer(&self.root, decompress(blob.as_slice()).expect("decompress"), options)?;
        }
        Ok(stats)
    }

    /// A path inside the rootfs.
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// The absolute host path of `outside/`, as a malicious layer would name it.
    fn outside_str(&self) -> String {
        self.host("outside")
    }

    /// An absolute host path inside the temp dir: what a test names where a
    /// layer would name `/etc/passwd`, so that a regression stays in the temp
    /// dir.
    fn host(&self, path: &str) -> String {
        format!("{}/{path}", self.tmp.path().to_str().expect("utf-8 temp path"))
    }

    /// The place inside the rootfs that the absolute path `host` names.
    fn inside(&self, host: &str) -> PathBuf {
        self.root.join(host.trim_start_matches('/'))
    }

    /// Everything outside the rootfs is as it was: no new file, the secret
    /// unchanged (content, mode, link count, times).
    fn assert_outside_unchanged(&self) {
        let mut after = BTreeMap::new();
        snapshot(self.tmp.path(), &self.root, &mut after);
        assert_eq!(after, self.before, "something outside the rootfs changed");
        assert_eq!(fs::read_to_string(self.outside.join("secret")).expect("secret"), SECRET);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").permissions().mode() & 0o7777
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn assert_escape(result: Result<UnpackStats, UnpackError>, entry: &str, reason: EscapeReason) {
    match result {
        Err(UnpackError::Escape { entry: e, reason: r }) => {
            assert_eq!(e, Path::new(entry));
            assert_eq!(r, reason);
        }
        other => panic!("expected an escape of {entry}, got {other:?}"),
    }
}

// ----- regular unpacking -----

#[test]
fn unpacks_dirs_files_modes_symlinks_hardlinks_and_fifos() {
    let fx = Fixture::new();
    let stats = fx
        .apply(&Layer::new(vec![
            Entry::dir("bin"),
            Entry::file_mode("bin/tool", "#!/bin/sh\n", 0o755),
            Entry::Dir { path: "private".into(), mode: 0o700 },
            Entry::file_mode("private/key", "k", 0o600),
            Entry::file("etc/deep/config", "c=1\n"),
            Entry::symlink("bin/sh", "tool"),
            Entry::symlink("abs", "/etc/deep/config"),
            Entry::hardlink("bin/tool2", "bin/tool"),
            Entry::Fifo { path: "run/pipe".into() },
            Entry::Dir { path: "sticky".into(), mode: 0o1777 },
        ]))
        .expect("apply");

    assert_eq!(read(&fx.at("bin/tool")), "#!/bin/sh\n");
    assert_eq!(mode(&fx.at("bin/tool")), 0o755);
    assert_eq!(mode(&fx.at("private")), 0o700);
    assert_eq!(mode(&fx.at("private/key")), 0o600);
    assert_eq!(mode(&fx.at("sticky")), 0o1777, "the sticky bit is kept even without preserving ownership");
    // Missing parents are created, 0755.
    assert_eq!(mode(&fx.at("etc/deep")), 0o755);
    assert_eq!(read(&fx.at("etc/deep/config")), "c=1\n");
    assert_eq!(fs::read_link(fx.at("bin/sh")).expect("readlink"), Path::new("tool"));
    assert_eq!(fs::read_link(fx.at("abs")).expect("readlink"), Path::new("/etc/deep/config"));
    let tool = fs::metadata(fx.at("bin/tool")).expect("stat");
    let tool2 = fs::metadata(fx.at("bin/tool2")).expect("stat");
    assert_eq!((tool.dev(), tool.ino()), (tool2.dev(), tool2.ino()), "hard link shares the inode");
    assert_eq!(tool.nlink(), 2);
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert!(fs::symlink_metadata(fx.at("run/pipe")).expect("lstat").file_type().is_fifo());
    assert_eq!(mode(&fx.at("run/pipe")), 0o644);
    assert_eq!(fs::metadata(fx.at("bin")).expect("stat").mtime(), 1_700_000_000, "directory mtime set last");
    assert_eq!(stats.entries, 10);
    assert_eq!(stats.whiteouts, 0);
    assert_eq!(stats.bytes, 10 + 1 + 4);
    assert!(stats.skipped_devices.is_empty());
    fx.assert_outside_unchanged();
}

#[test]
fn root_directory_entry_is_ignored() {
    let fx = Fixture::new();
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let stats = fx.apply(&Layer::new(vec![Entry::Dir { path: "./".into(), mode: 0o777 }])).expect("apply");
    assert_eq!(stats.entries, 0);
    assert_eq!(mode(&fx.root), 0o755);
    fx.assert_outside_unchanged();
}

#[test]
fn absolute_symlink_parent_resolves_inside_root() {
    // `lib -> /usr/lib`, with /usr/lib spelled inside the temp dir.
    let fx = Fixture::new();
    let usr_lib = fx.host("usr/lib");
    fx.apply(&Layer::new(vec![
        Entry::dir(&usr_lib),
        Entry::symlink("lib", &usr_lib),
        Entry::file("lib/libc.so", "elf"),
    ]))
    .expect("apply");
    assert_eq!(read(&fx.inside(&usr_lib).join("libc.so")), "elf");
    assert!(fs::symlink_metadata(fx.at("lib")).expect("lstat").file_type().is_symlink());
    fx.assert_outside_unchanged();
}

#[test]
fn dangling_symlink_parent_gets_its_target_created_inside_root() {
    let fx = Fixture::new();
    let later = fx.host("made/later");
    fx.apply(&Layer::new(vec![Entry::symlink("var", &later), Entry::file("var/log/x", "x")])).expect("apply");
    assert_eq!(read(&fx.inside(&later).join("log/x")), "x");
    assert!(fs::symlink_metadata(fx.at("var")).expect("lstat").file_type().is_symlink());
    fx.assert_outside_unchanged();
}

#[test]
fn replacing_a_hardlinked_file_leaves_the_other_link_alone() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("a", "old"), Entry::hardlink("b", "a")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("a", "new")])).expect("layer 2");
    assert_eq!(read(&fx.at("a")), "new");
    assert_eq!(read(&fx.at("b")), "old", "a file is written to a fresh inode");
    fx.assert_outside_unchanged();
}

// ----- layers on layers -----

#[test]
fn whiteout_removes_a_lower_file_and_is_not_written() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::dir("a"), Entry::file("a/gone", "1"), Entry::file("a/stays", "2")]))
        .expect("layer 1");
    let stats = fx.apply(&Layer::new(vec![Entry::whiteout("a/gone")])).expect("layer 2");
    assert!(!exists(&fx.at("a/gone")));
    assert!(!exists(&fx.at("a/.wh.gone")), "whiteouts are never written");
    assert_eq!(read(&fx.at("a/stays")), "2");
    assert_eq!(stats.whiteouts, 1);
    assert_eq!(stats.entries, 0);
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_removes_a_lower_directory_recursively() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![
        Entry::dir("d"),
        Entry::dir("d/sub"),
        Entry::file("d/sub/x", "x"),
        Entry::symlink("d/sub/link", "../../../outside"),
        Entry::file("keep", "k"),
    ]))
    .expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::whiteout("d")])).expect("layer 2");
    assert!(!exists(&fx.at("d")));
    assert!(!exists(&fx.at(".wh.d")));
    assert_eq!(read(&fx.at("keep")), "k");
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_of_a_missing_entry_is_a_no_op() {
    let fx = Fixture::new();
    let stats = fx.apply(&Layer::new(vec![Entry::whiteout("nothing/here")])).expect("apply");
    assert!(!exists(&fx.at("nothing")));
    assert_eq!(stats.whiteouts, 1);
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_spares_entries_of_its_own_layer() {
    // OCI: "Files that are present in the same layer as a whiteout file can
    // only be hidden by whiteout files in subsequent layers."
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("f", "lower")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("f", "upper"), Entry::whiteout("f")])).expect("layer 2");
    assert_eq!(read(&fx.at("f")), "upper");
    fx.assert_outside_unchanged();
}

#[test]
fn opaque_dir_hides_lower_entries_but_keeps_this_layers() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![
        Entry::dir("o"),
        Entry::file("o/old", "old"),
        Entry::dir("o/sub"),
        Entry::file("o/sub/old2", "old"),
        Entry::dir("o/kept"),
        Entry::file("o/kept/lower_child", "old"),
        Entry::file("o/replaced", "old"),
        Entry::file("sibling", "s"),
    ]))
    .expect("layer 1");
    let stats = fx
        .apply(&Layer::new(vec![
            Entry::dir("o"),
            Entry::file("o/new", "new"),
            // A same-layer directory that existed below: it stays, its lower
            // children go.
            Entry::dir("o/kept"),
            Entry::file("o/kept/new_child", "new"),
            Entry::file("o/replaced", "new"),
            // The marker after entries of its own layer.
            Entry::opaque("o"),
            Entry::file("o/after", "after"),
        ]))
        .expect("layer 2");

    assert_eq!(read(&fx.at("o/new")), "new");
    assert_eq!(read(&fx.at("o/after")), "after");
    assert_eq!(read(&fx.at("o/kept/new_child")), "new");
    assert_eq!(read(&fx.at("o/replaced")), "new");
    assert!(!exists(&fx.at("o/old")));
    assert!(!exists(&fx.at("o/sub")));
    assert!(!exists(&fx.at("o/kept/lower_child")));
    assert!(!exists(&fx.at("o/.wh..wh..opq")), "the marker is never written");
    assert_eq!(read(&fx.at("sibling")), "s");
    let mut left: Vec<_> = fs::read_dir(fx.at("o")).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    left.sort();
    assert_eq!(left, ["after", "kept", "new", "replaced"]);
    assert_eq!(stats.whiteouts, 1);
    fx.assert_outside_unchanged();
}

#[test]
fn opaque_marker_keeps_entries_written_through_a_symlinked_parent() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![
        Entry::dir("usr/lib"),
        Entry::file("usr/lib/old", "old"),
        Entry::symlink("lib", "usr/lib"),
    ]))
    .expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("lib/new", "new"), Entry::opaque("usr/lib")])).expect("layer 2");
    assert_eq!(read(&fx.at("usr/lib/new")), "new");
    assert!(!exists(&fx.at("usr/lib/old")));
    fx.assert_outside_unchanged();
}

/// A layer with `tmp/x` and no `tmp/` entry leaves the lower `tmp`'s mode
/// (1777) alone; one with a `tmp/` entry sets it. (Unpacked alone, the
/// implied directory is listed so that linking does not overwrite it.)
#[test]
fn a_directory_a_layer_only_implies_keeps_the_lower_layers_metadata() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::Dir { path: "tmp".into(), mode: 0o1777 }, Entry::file("etc/keep", "k")]))
        .expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("tmp/x", "x"), Entry::file("etc/new", "n")])).expect("layer 2");
    assert_eq!(mode(&fx.at("tmp")), 0o1777 & if is_root() { 0o7777 } else { 0o1777 });
    assert_eq!(read(&fx.at("tmp/x")), "x");
    assert_eq!((read(&fx.at("etc/keep")), read(&fx.at("etc/new"))), ("k".into(), "n".into()));
    fx.apply(&Layer::new(vec![Entry::Dir { path: "tmp".into(), mode: 0o755 }])).expect("layer 3");
    assert_eq!(mode(&fx.at("tmp")), 0o755);
    fx.assert_outside_unchanged();
}

/// A directory the layer implies through a symbolic link of its own
/// (`a -> b`, then `a/c/x`) is the lower layer's `b/c`: left as it is. And
/// one it names explicitly through such a link gets the layer's mode.
#[test]
fn implied_and_explicit_directories_through_a_link_of_the_same_layer() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::dir("b"), Entry::Dir { path: "b/c".into(), mode: 0o1777 }])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("b/y", "y"), Entry::symlink("a", "b"), Entry::file("a/c/x", "x")]))
        .expect("layer 2");
    assert_eq!(mode(&fx.at("b/c")), 0o1777);
    assert_eq!(read(&fx.at("b/c/x")), "x");
    fx.apply(&Layer::new(vec![
        Entry::file("b/c/z", "z"),
        Entry::symlink("a", "b"),
        Entry::Dir { path: "a/c".into(), mode: 0o700 },
    ]))
    .expect("layer 3");
    assert_eq!(mode(&fx.at("b/c")), 0o700);
    fx.assert_outside_unchanged();
}

/// Two entries of one layer that land on one file through a lower layer's
/// link: the later in the tar wins.
#[test]
fn two_entries_landing_on_one_file_the_later_wins() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::dir("usr/bin"), Entry::symlink("bin", "usr/bin")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("usr/bin/sh", "usr-version"), Entry::file("bin/sh", "bin-version")]))
        .expect("layer 2");
    assert_eq!(read(&fx.at("usr/bin/sh")), "bin-version");
    fx.assert_outside_unchanged();
}

/// A whiteout is a whiteout whatever its tar type.
#[test]
fn a_whiteout_that_is_a_device_entry_still_hides() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("x", "x"), Entry::file("keep", "k")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::CharDevice { path: ".wh.x".into(), major: 0, minor: 0 }])).expect("layer 2");
    assert!(!exists(&fx.at("x")) && !exists(&fx.at(".wh.x")));
    assert_eq!(read(&fx.at("keep")), "k");
    fx.assert_outside_unchanged();
}

#[test]
fn file_replaces_lower_directory() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::dir("p"), Entry::dir("p/q"), Entry::file("p/q/x", "x")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("p", "now a file")])).expect("layer 2");
    let meta = fs::symlink_metadata(fx.at("p")).expect("lstat");
    assert!(meta.is_file());
    assert_eq!(read(&fx.at("p")), "now a file");
    fx.assert_outside_unchanged();
}

#[test]
fn directory_replaces_lower_file_and_symlink() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("f", "file"), Entry::dir("target"), Entry::symlink("s", "target")]))
        .expect("layer 1");
    fx.apply(&Layer::new(vec![
        Entry::dir("f"),
        Entry::file("f/child", "c"),
        Entry::dir("s"),
        Entry::file("s/in", "i"),
    ]))
    .expect("layer 2");
    assert!(fs::symlink_metadata(fx.at("f")).expect("lstat").is_dir());
    assert_eq!(read(&fx.at("f/child")), "c");
    assert!(fs::symlink_metadata(fx.at("s")).expect("lstat").is_dir(), "the symlink itself is replaced");
    assert_eq!(read(&fx.at("s/in")), "i");
    assert!(!exists(&fx.at("target/in")), "nothing was written through the old symlink");
    fx.assert_outside_unchanged();
}

#[test]
fn existing_directory_is_updated_in_place() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::dir("d"), Entry::file("d/lower", "l")])).expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::Dir { path: "d".into(), mode: 0o750 }, Entry::file("d/upper", "u")]))
        .expect("layer 2");
    assert_eq!(read(&fx.at("d/lower")), "l");
    assert_eq!(read(&fx.at("d/upper")), "u");
    assert_eq!(mode(&fx.at("d")), 0o750);
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_replaced_by_file_is_not_written_through() {
    let fx = Fixture::new();
    let secret = format!("{}/secret", fx.outside_str());
    fx.apply(&Layer::new(vec![Entry::symlink("rel", "../outside/secret"), Entry::symlink("abs", &secret)]))
        .expect("layer 1");
    fx.apply(&Layer::new(vec![Entry::file("rel", "replaced"), Entry::file("abs", "replaced")])).expect("layer 2");
    for name in ["rel", "abs"] {
        assert!(fs::symlink_metadata(fx.at(name)).expect("lstat").is_file(), "{name} is now a file");
        assert_eq!(read(&fx.at(name)), "replaced");
    }
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_then_file_of_the_same_name_in_one_layer_is_not_written_through() {
    let fx = Fixture::new();
    let secret = format!("{}/secret", fx.outside_str());
    fx.apply(&Layer::new(vec![Entry::symlink("s", &secret), Entry::file("s", "pwned")])).expect("apply");
    assert_eq!(read(&fx.at("s")), "pwned");
    assert!(fs::symlink_metadata(fx.at("s")).expect("lstat").is_file());
    fx.assert_outside_unchanged();
}

// ----- escapes -----

#[test]
fn dot_dot_entry_name_is_refused() {
    let fx = Fixture::new();
    let result = fx.apply(&Layer::new(vec![Entry::file("../escape", "pwned")]));
    assert_escape(result, "../escape", EscapeReason::NameAboveRoot);
    assert!(!exists(&fx.tmp.path().join("escape")));
    fx.assert_outside_unchanged();
}

#[test]
fn dot_dot_inside_a_name_climbing_above_the_root_is_refused() {
    let fx = Fixture::new();
    let result = fx.apply(&Layer::new(vec![Entry::file("a/../../escape", "pwned")]));
    assert_escape(result, "a/../../escape", EscapeReason::NameAboveRoot);
    assert!(!exists(&fx.tmp.path().join("escape")));
    let result = fx.apply(&Layer::new(vec![Entry::file("a/../../outside/secret", "pwned")]));
    assert_escape(result, "a/../../outside/secret", EscapeReason::NameAboveRoot);
    fx.assert_outside_unchanged();
}

#[test]
fn dot_dot_that_stays_inside_the_root_is_applied() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("a/../b", "b")])).expect("apply");
    assert_eq!(read(&fx.at("b")), "b");
    fx.assert_outside_unchanged();
}

#[test]
fn absolute_entry_name_lands_inside_root() {
    // `/etc/passwd`-style names, spelled inside the temp dir.
    let fx = Fixture::new();
    let passwd = fx.host("etc/passwd");
    let secret = fx.host("outside/secret");
    fx.apply(&Layer::new(vec![Entry::file(&passwd, "root:x:0:0::/:/bin/sh\n"), Entry::file(&secret, "pwned")]))
        .expect("apply");
    assert_eq!(read(&fx.inside(&passwd)), "root:x:0:0::/:/bin/sh\n");
    assert_eq!(read(&fx.inside(&secret)), "pwned");
    assert!(!exists(&fx.tmp.path().join("etc")));
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_to_parent_then_write_stays_inside() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![
        Entry::symlink("evil", "../outside"),
        Entry::file("evil/secret", "pwned"),
        Entry::file("evil/new", "pwned"),
        Entry::dir("sub"),
        Entry::symlink("sub/evil", "../../outside"),
        Entry::file("sub/evil/new2", "pwned"),
    ]))
    .expect("apply");
    // `..` stops at the root: both resolve to rootfs/outside.
    assert_eq!(read(&fx.at("outside/secret")), "pwned");
    assert_eq!(read(&fx.at("outside/new")), "pwned");
    assert_eq!(read(&fx.at("outside/new2")), "pwned");
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_to_slash_then_write_stays_inside() {
    let fx = Fixture::new();
    let aimed = fx.host("outside/new");
    fx.apply(&Layer::new(vec![Entry::symlink("evil", "/"), Entry::file(&format!("evil{aimed}"), "f")])).expect("apply");
    assert_eq!(read(&fx.inside(&aimed)), "f");
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_to_absolute_host_dir_then_write_stays_inside() {
    let fx = Fixture::new();
    let outside = fx.outside_str();
    fx.apply(&Layer::new(vec![
        Entry::symlink("evil", &outside),
        Entry::file("evil/secret", "pwned"),
        Entry::file("evil/dir/inner", "pwned"),
    ]))
    .expect("apply");
    let inside = fx.root.join(outside.trim_start_matches('/'));
    assert_eq!(read(&inside.join("secret")), "pwned");
    assert_eq!(read(&inside.join("dir/inner")), "pwned");
    fx.assert_outside_unchanged();
}

#[test]
fn symlink_chain_pointing_outside_then_write_stays_inside() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![
        Entry::dir("a"),
        Entry::symlink("a/up", ".."),
        Entry::symlink("a/upup", "up/.."),
        Entry::file("a/upup/outside/secret", "pwned"),
    ]))
    .expect("apply");
    assert_eq!(read(&fx.at("outside/secret")), "pwned");
    fx.assert_outside_unchanged();
}

#[test]
fn hardlink_climbing_above_root_is_refused() {
    let fx = Fixture::new();
    for target in ["../outside/secret", "a/../../outside/secret", "/../outside/secret"] {
        let result = fx.apply(&Layer::new(vec![Entry::hardlink("h", target)]));
        assert_escape(result, "h", EscapeReason::LinkTargetAboveRoot);
        assert!(!exists(&fx.at("h")));
    }
    fx.assert_outside_unchanged();
}

#[test]
fn hardlink_to_symlink_pointing_outside_links_the_symlink_itself() {
    let fx = Fixture::new();
    let secret = format!("{}/secret", fx.outside_str());
    fx.apply(&Layer::new(vec![
        Entry::symlink("rel", "../outside/secret"),
        Entry::symlink("abs", &secret),
        Entry::hardlink("h_rel", "rel"),
        Entry::hardlink("h_abs", "abs"),
    ]))
    .expect("apply");
    for (link, symlink) in [("h_rel", "rel"), ("h_abs", "abs")] {
        let meta = fs::symlink_metadata(fx.at(link)).expect("lstat");
        assert!(meta.file_type().is_symlink(), "{link} is the symlink itself");
        assert_eq!(meta.ino(), fs::symlink_metadata(fx.at(symlink)).expect("lstat").ino());
    }
    // assert_outside_unchanged also checks the secret's link count stayed 1.
    fx.assert_outside_unchanged();
}

#[test]
fn hardlink_through_symlinked_dir_to_outside_is_refused() {
    let fx = Fixture::new();
    let outside = fx.outside_str();
    for target in ["evil_abs/secret", "evil_rel/secret"] {
        let result = fx.apply(&Layer::new(vec![
            Entry::symlink("evil_abs", &outside),
            Entry::symlink("evil_rel", "../outside"),
            Entry::hardlink("h", target),
        ]));
        match result {
            Err(UnpackError::Link { entry, target: t, .. }) => {
                assert_eq!(entry, Path::new("h"));
                assert_eq!(t, Path::new(target));
            }
            other => panic!("expected a link error, got {other:?}"),
        }
        assert!(!exists(&fx.at("h")));
    }
    fx.assert_outside_unchanged();
}

#[test]
fn hardlink_with_absolute_target_links_inside_root() {
    // A `/etc/passwd`-style target, spelled inside the temp dir; the host
    // has a file there too.
    let fx = Fixture::new();
    let secret = fx.host("outside/secret");
    fx.apply(&Layer::new(vec![Entry::file(&secret, "inside"), Entry::hardlink("copy", &secret)])).expect("apply");
    let copy = fs::metadata(fx.at("copy")).expect("stat");
    assert_eq!(copy.ino(), fs::metadata(fx.inside(&secret)).expect("stat").ino());
    assert_eq!(read(&fx.at("copy")), "inside");
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_climbing_above_root_is_refused() {
    let fx = Fixture::new();
    let result = fx.apply(&Layer::new(vec![Entry::file("../.wh.outside", "")]));
    assert_escape(result, "../.wh.outside", EscapeReason::NameAboveRoot);
    let result = fx.apply(&Layer::new(vec![Entry::file("a/../../.wh.outside", "")]));
    assert_escape(result, "a/../../.wh.outside", EscapeReason::NameAboveRoot);
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_of_dot_or_dot_dot_is_refused() {
    let fx = Fixture::new();
    fx.apply(&Layer::new(vec![Entry::file("a/b/keep", "k")])).expect("layer 1");
    for name in ["a/b/.wh..", "a/b/.wh...", "a/b/.wh."] {
        let result = fx.apply(&Layer::new(vec![Entry::file(name, "")]));
        assert_escape(result, name, EscapeReason::WhiteoutName);
        assert_eq!(read(&fx.at("a/b/keep")), "k");
    }
    fx.assert_outside_unchanged();
}

#[test]
fn whiteout_through_symlink_pointing_outside_stays_inside() {
    let fx = Fixture::new();
    let outside = fx.outside_str();
    fx.apply(&Layer::new(vec![
        Entry::file("outside/secret", "inside copy"),
        Entry::file(&format!("{outside}/secret"), "inside copy"),
        Entry::file(&format!("{outside}/dir/inner"), "inside copy"),
        Entry::file(&format!("{outside}/other"), "inside copy"),
        Entry::symlink("evil_rel", "../outside"),
        Entry::symlink("evil_abs", &outside),
        Entry::symlink("evil_root", &format!("/..{}", fx.host(""))),
    ]))
    .expect("layer 1");
    fx.apply(&Layer::new(vec![
        Entry::whiteout("evil_rel/secret"),
        Entry::whiteout("evil_abs/secret"),
        Entry::whiteout("evil_abs/dir"),
        Entry::whiteout("evil_root/outside/other"),
    ]))
    .expect("layer 2");
    // The whiteouts hit the copies inside the root.
    assert!(!exists(&fx.at("outside/secret")));
    assert!(!exists(&fx.inside(&outside).join("secret")));
    assert!(!exists(&fx.inside(&outside).join("dir")));
    assert!(!exists(&fx.inside(&outside).join("other")));
    fx.assert_outside_unchanged();
}

#[test]
fn opaque_marker_through_symlink_pointing_outside_stays_inside() {
    let fx = Fixture::new();
    let outside = fx.outside_str();
    fx.apply(&Layer::new(vec![
        Entry::file("outside/secret", "inside copy"),
        Entry::file(&format!("{outside}/secret"), "inside copy"),
        Entry::file(&format!("{outside}/dir/inner"), "inside copy"),
        Entry::symlink("evil_rel", "../outside"),
        Entry::symlink("evil_abs", &outside),
        Entry::symlink("evil_root", "/"),
    ]))
    .expect("layer 1");
    fx.apply(&Layer::new(vec![
        Entry::opaque("evil_rel"),
        Entry::opaque(&format!("evil_root{outside}/dir")),
        Entry::opaque("evil_abs"),
    ]))
    .expect("layer 2");
    // The markers emptied the copies inside the root.
    assert_eq!(fs::read_dir(fx.at("outside")).expect("ls").count(), 0);
    assert_eq!(fs::read_dir(fx.inside(&outside)).expect("ls").count(), 0);
    fx.assert_outside_unchanged();
}

// ----- compression and corruption -----

#[test]
fn gzip_zstd_and_plain_layers_are_detected_from_bytes() {
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let fx = Fixture::new();
        let layer = Layer::new(vec![Entry::file("hello", "hello, world")]).compressed(compression);
        let stats = fx.apply(&layer).unwrap_or_else(|e| panic!("{compression:?}: {e:?}"));
        assert_eq!(read(&fx.at("hello")), "hello, world", "{compression:?}");
        assert_eq!(stats.bytes, 12);
        fx.assert_outside_unchanged();
    }
}

#[test]
fn concatenated_gzip_members_are_all_read() {
    let fx = Fixture::new();
    let tar = Layer::new(vec![Entry::file("a", "a"), Entry::file("b", "b")]).tar();
    let (first, second) = tar.split_at(1024);
    let mut blob = ces_testkit::layer::compress(first, Compression::Gzip);
    blob.extend(ces_testkit::layer::compress(second, Compression::Gzip));
    apply_layer(&fx.root, decompress(blob.as_slice()).expect("decompress"), &PLAIN).expect("apply");
    assert_eq!(read(&fx.at("a")), "a");
    assert_eq!(read(&fx.at("b")), "b");
    fx.assert_outside_unchanged();
}

fn apply_truncated(fx: &Fixture, blob: &[u8]) -> Result<UnpackStats, UnpackError> {
    apply_layer(&fx.root, decompress(blob).expect("decompress"), &PLAIN)
}

fn big_layer() -> Layer {
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes()).collect();
    Layer::new(vec![Entry::file("big", data), Entry::file("small", "s")])
}

#[test]
fn truncated_gzip_blob_is_an_error() {
    let blob = big_layer().compressed(Compression::Gzip).blob();
    // Cut in the middle, and cut only the trailer (CRC and length): the tar
    // inside may even be complete, the blob is not.
    for cut in [blob.len() / 2, blob.len() - 4, blob.len() - 1] {
        let fx = Fixture::new();
        let result = apply_truncated(&fx, &blob[..cut]);
        assert!(matches!(result, Err(UnpackError::Corrupt { .. })), "cut at {cut}: {result:?}");
        fx.assert_outside_unchanged();
    }
}

#[test]
fn truncated_zstd_blob_is_an_error() {
    let blob = big_layer().compressed(Compression::Zstd).blob();
    for cut in [blob.len() / 2, blob.len() - 1] {
        let fx = Fixture::new();
        let result = apply_truncated(&fx, &blob[..cut]);
        assert!(matches!(result, Err(UnpackError::Corrupt { .. })), "cut at {cut}: {result:?}");
        fx.assert_outside_unchanged();
    }
}

#[test]
fn corrupted_gzip_blob_is_an_error() {
    let mut blob = big_layer().compressed(Compression::Gzip).blob();
    let last = blob.len() - 5;
    blob[last] ^= 0xff; // the CRC
    let fx = Fixture::new();
    let result = apply_truncated(&fx, &blob);
    assert!(matches!(result, Err(UnpackError::Corrupt { .. })), "{result:?}");
    fx.assert_outside_unchanged();
}

#[test]
fn truncated_tar_body_is_an_error() {
    let tar = big_layer().tar();
    let fx = Fixture::new();
    // The header, then part of the data.
    let result = apply_truncated(&fx, &tar[..512 + 100_000]);
    match result {
        Err(UnpackError::Corrupt { entry, source }) => {
            assert_eq!(entry.as_deref(), Some(Path::new("big")));
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof);
        }
        other => panic!("expected a corrupt layer, got {other:?}"),
    }
    fx.assert_outside_unchanged();
}

#[test]
fn truncated_tar_header_is_an_error() {
    let tar = big_layer().tar();
    let fx = Fixture::new();
    // The first entry whole, then half of the second header.
    let second_header = 512 + 800_000usize.next_multiple_of(512);
    let result = apply_truncated(&fx, &tar[..second_header + 256]);
    assert!(matches!(result, Err(UnpackError::Corrupt { .. })), "{result:?}");
    fx.assert_outside_unchanged();
}

#[test]
fn garbage_is_an_error() {
    let fx = Fixture::new();
    let result = apply_truncated(&fx, &[0x42; 2048]);
    assert!(matches!(result, Err(UnpackError::Corrupt { entry: None, .. })), "{result:?}");
    fx.assert_outside_unchanged();
}

#[test]
fn unknown_entry_type_is_unsupported() {
    let fx = Fixture::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::new(b'V'));
    header.set_path("volume").expect("path");
    header.set_size(0);
    header.set_cksum();
    builder.append(&header, std::io::empty()).expect("append");
    let tar = builder.into_inner().expect("tar");
    let result = apply_layer(&fx.root, tar.as_slice(), &PLAIN);
    match result {
        Err(UnpackError::Unsupported { entry, kind }) => {
            assert_eq!(entry, Path::new("volume"));
            assert_eq!(kind, 'V');
        }
        other => panic!("expected unsupported, got {other:?}"),
    }
    fx.assert_outside_unchanged();
}

// ----- devices and ownership -----

#[test]
fn char_device_is_created_when_allowed() {
    if !is_root() {
        eprintln!("skipped: creating a device node needs root");
        return;
    }
    let fx = Fixture::new();
    let options = UnpackOptions { preserve_ownership: true, create_devices: true };
    let stats = fx
        .apply_with(&Layer::new(vec![Entry::CharDevice { path: "dev/null".into(), major: 1, minor: 3 }]), &options)
        .expect("apply");
    let meta = fs::symlink_metadata(fx.at("dev/null")).expect("lstat");
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(meta.mode() & 0o7777, 0o666);
    assert_eq!(stats.entries, 1, "dev/null; the implied dev/ is not an entry");
    assert!(stats.skipped_devices.is_empty());
    fx.assert_outside_unchanged();
}

#[test]
fn char_device_is_skipped_and_reported_when_not_allowed() {
    let fx = Fixture::new();
    let stats = fx
        .apply(&Layer::new(vec![
            Entry::dir("dev"),
            Entry::CharDevice { path: "dev/null".into(), major: 1, minor: 3 },
            Entry::file("after", "a"),
        ]))
        .expect("apply");
    assert!(!exists(&fx.at("dev/null")));
    assert_eq!(stats.skipped_devices, ["/dev/null"]);
    assert_eq!(stats.entries, 2);
    assert_eq!(read(&fx.at("after")), "a");
    fx.assert_outside_unchanged();
}

fn owned_layer() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, kind) in [
        ("owned", 0o4755, tar::EntryType::Regular),
        ("owned_dir", 0o2775, tar::EntryType::Directory),
        ("owned_link", 0o777, tar::EntryType::Symlink),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_path(path).expect("path");
        if kind == tar::EntryType::Symlink {
            header.set_link_name("owned").expect("link name");
        }
        let data: &[u8] = if kind == tar::EntryType::Regular { b"data" } else { b"" };
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(1234);
        header.set_gid(4321);
        header.set_mtime(1_600_000_000);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}

#[test]
fn ownership_is_preserved_as_root_but_setuid_files_are_not() {
    if !is_root() {
        eprintln!("skipped: preserving ownership needs root");
        return;
    }
    let fx = Fixture::new();
    let options = UnpackOptions { preserve_ownership: true, create_devices: true };
    apply_layer(&fx.root, owned_layer().as_slice(), &options).expect("apply");
    for path in ["owned", "owned_dir", "owned_link"] {
        let meta = fs::symlink_metadata(fx.at(path)).expect("lstat");
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321), "{path}");
    }
    // A setuid-root file in the cache would be root for any local user who
    // reaches it; in a container (no_new_privileges) the bit grants nothing.
    assert_eq!(mode(&fx.at("owned")), 0o755, "setuid is dropped");
    assert_eq!(mode(&fx.at("owned_dir")), 0o2775, "a directory's setgid stays");
    assert_eq!(fs::symlink_metadata(fx.at("owned_link")).expect("lstat").mtime(), 1_600_000_000);
    fx.assert_outside_unchanged();
}

#[test]
fn setuid_and_owner_are_dropped_without_preserve_ownership() {
    let fx = Fixture::new();
    apply_layer(&fx.root, owned_layer().as_slice(), &PLAIN).expect("apply");
    let euid = rustix::process::geteuid().as_raw();
    assert_eq!(fs::metadata(fx.at("owned")).expect("stat").uid(), euid);
    assert_eq!(mode(&fx.at("owned")), 0o755);
    assert_eq!(mode(&fx.at("owned_dir")), 0o775);
    fx.assert_outside_unchanged();
}

#[test]
fn options_for_root_preserve_ownership_and_create_devices() {
    let options = UnpackOptions::for_current_user();
    assert_eq!(options.preserve_ownership, is_root());
    assert_eq!(options.create_devices, is_root());
}

// ----- unprivileged unpacking -----

const CHILD_DIR_ENV: &str = "CES_UNPACK_TEST_UNPRIVILEGED_DIR";
/// This module's name in the test binary (test names start with it).
const CASES: &str = "cases";
const NOBODY: u32 = 65534;

/// Runs as `nobody` in a child process (see the test below).
fn unprivileged_scenario(dir: &Path) {
    assert!(!is_root(), "the scenario must run unprivileged");
    let fx = Fixture::in_dir(tempfile::tempdir_in(dir).expect("tempdir"));
    let options = UnpackOptions::for_current_user();
    assert_eq!(options, PLAIN);
    fx.apply_with(
        &Layer::new(vec![
            Entry::dir("usr"),
            Entry::Dir { path: "usr/bin".into(), mode: 0o555 },
            Entry::file_mode("usr/bin/a", "a", 0o755),
            Entry::file_mode("usr/bin/old", "old", 0o755),
            Entry::Dir { path: "ro".into(), mode: 0o555 },
            Entry::Dir { path: "ro/sub".into(), mode: 0o555 },
            Entry::file("ro/sub/f", "f"),
            Entry::Dir { path: "opaque".into(), mode: 0o555 },
            Entry::file("opaque/lower", "l"),
            // Closed even to its owner: unpacked alone, it must still be read.
            Entry::Dir { path: "closed".into(), mode: 0o000 },
            Entry::file("closed/f", "f"),
        ]),
        &options,
    )
    .expect("layer 1");
    assert_eq!(mode(&fx.at("usr/bin")), 0o555);
    assert_eq!(mode(&fx.at("closed")), 0o000);
    // Unpacked alone, as the store keeps it: a directory closed only to
    // writing has its mode on disk (the layer can be an overlay's); one its
    // owner could not read stays open, its mode kept off disk.
    let alone = tempfile::tempdir_in(dir).expect("layer dir");
    let tar = Layer::new(vec![
        Entry::Dir { path: "usr".into(), mode: 0o555 },
        Entry::Dir { path: "usr/bin".into(), mode: 0o555 },
        Entry::file_mode("usr/bin/a", "a", 0o755),
        Entry::Dir { path: "root".into(), mode: 0o550 },
        Entry::Dir { path: "closed".into(), mode: 0o000 },
        Entry::file("closed/f", "f"),
        Entry::Dir { path: "blind".into(), mode: 0o311 },
    ])
    .tar();
    let made = unpack_layer(alone.path(), tar.as_slice(), &options).expect("unpacked alone");
    assert_eq!(made.dir_modes, [(b"blind".to_vec(), 0o311), (b"closed".to_vec(), 0o000)]);
    assert!(made.overlay);
    for (path, want) in [("usr", 0o555), ("usr/bin", 0o555), ("root", 0o550), ("closed", 0o700), ("blind", 0o711)] {
        assert_eq!(mode(&alone.path().join(path)), want, "{path} on disk");
    }
    assert_eq!(read(&alone.path().join("usr/bin/a")), "a");
    ces_image::fs::remove_tree(alone.path()).expect("its owner removes it");
    let stats = fx
        .apply_with(
            &Layer::new(vec![
                Entry::file_mode("usr/bin/b", "b", 0o755),
                Entry::file_mode("usr/bin/old", "new", 0o755),
                Entry::whiteout("usr/bin/a"),
                Entry::whiteout("ro"),
                Entry::opaque("opaque"),
                Entry::CharDevice { path: "dev/null".into(), major: 1, minor: 3 },
            ]),
            &options,
        )
        .expect("layer 2");
    assert_eq!(read(&fx.at("usr/bin/b")), "b");
    assert_eq!(read(&fx.at("usr/bin/old")), "new");
    assert!(!exists(&fx.at("usr/bin/a")));
    assert!(!exists(&fx.at("ro")));
    assert!(!exists(&fx.at("opaque/lower")));
    assert_eq!(mode(&fx.at("usr/bin")), 0o555, "the lower mode is back");
    assert_eq!(mode(&fx.at("opaque")), 0o555);
    assert_eq!(stats.skipped_devices, ["/dev/null"]);
    assert_eq!(fs::metadata(fx.at("usr/bin/b")).expect("stat").uid(), NOBODY);
    fx.assert_outside_unchanged();
}

#[test]
fn unprivileged_unpack_changes_read_only_lower_directories() {
    use std::os::unix::process::CommandExt;

    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        unprivileged_scenario(Path::new(&dir));
        return;
    }
    if !is_root() {
        eprintln!("skipped: needs root to start the test as nobody");
        return;
    }
    // A copy of this test binary and a work dir that nobody can use, wherever
    // the checkout lives.
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = tmp.path().join("unpack-test");
    fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy test binary");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(tmp.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let output = std::process::Command::new(&exe)
        .args([
            "--exact",
            &format!("{}::unprivileged_unpack_changes_read_only_lower_directories", CASES),
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, tmp.path())
        .current_dir(tmp.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "unprivileged run failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A raw layer (zstd-compressed, as a registry serves it) holding one GNU
/// sparse (`S`) entry `huge`: a single hole of `real` bytes, no data, and
/// `extensions` sparse extension blocks (the shapes of the review's gen2.py
/// and gen.py). No layer writer produces it, so [`Layer`] cannot.
fn sparse_layer(real: u64, extensions: usize) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_path("huge").expect("path");
    header.set_size(0);
    header.set_mode(0o644);
    let gnu = header.as_gnu_mut().expect("a GNU header");
    octal(&mut gnu.sparse[0].offset, real);
    octal(&mut gnu.sparse[0].numbytes, 0);
    octal(&mut gnu.realsize, real);
    gnu.isextended[0] = u8::from(extensions > 0);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    for i in 0..extensions {
        let mut ext = tar::GnuExtSparseHeader::new();
        for block in &mut ext.sparse {
            octal(&mut block.offset, 0);
            octal(&mut block.numbytes, 0);
        }
        ext.isextended[0] = u8::from(i + 1 < extensions);
        tar.extend_from_slice(ext.as_bytes());
    }
    tar.extend_from_slice(&[0; 1024]);
    ces_testkit::layer::compress(&tar, Compression::Zstd)
}

#[test]
fn gnu_sparse_entries_are_refused_and_nothing_is_written() {
    // 64 MiB of hole: the old code wrote it as real blocks, past every byte
    // count (kept small so that a regression does not fill the disk).
    for (real, extensions) in [(64 << 20, 0), (0, 4096)] {
        let fx = Fixture::new();
        let blob = sparse_layer(real, extensions);
        let result = apply_layer(&fx.root, decompress(blob.as_slice()).expect("decompress"), &PLAIN);
        match result {
            Err(UnpackError::ExtensionTooLarge(refused)) => {
                assert_eq!(refused.kind, ExtensionKind::GnuSparse);
                let message = refused.to_string();
                assert!(message.contains("GNU sparse entry (tar type 'S')"), "{message}");
            }
            other => panic!("sparse layer ({real} bytes, {extensions} extension blocks) not refused: {other:?}"),
        }
        assert_eq!(fs::read_dir(&fx.root).expect("read rootfs").count(), 0, "something was written");
        fx.assert_outside_unchanged();
    }
}
