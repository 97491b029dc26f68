//! The container's root filesystem: an overlay whose lower layer is the
//! cached, unpacked image (never written) and whose upper layer is a fresh
//! directory in the run's state directory (gone at exit).
//!
//! As root, ces mounts the overlay itself (`nosuid,nodev`, in a mount
//! namespace of its own that the host never sees), before the build, at
//! `<state_dir>/rootfs`, and unmounts it after the container is deleted:
//! overlayfs then copies files up with root's credentials, so image files
//! owned by any user can be modified. Rootless, only a mount namespace owned
//! by the container's user namespace can mount an overlay (Linux >= 5.11), so
//! the overlay is the spec's first mount, with destination `/`: libcontainer
//! mounts it over the (empty) `<state_dir>/rootfs` inside the container's
//! namespaces before any other mount, and it disappears with them.
//!
//! Layout of the state directory:
//!
//! ```text
//! <state_dir>/bundle/config.json   the OCI spec
//! <state_dir>/overlay/upper        the run's writes
//! <state_dir>/overlay/work         overlayfs' scratch space
//! <state_dir>/rootfs               the container's `/`
//! ```

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ces_image::rootfs::{EntryKind, Rootfs};
use nix::mount::{MntFlags, MsFlags};

use super::oci::Overlay;

/// The paths of one run inside its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunDirs {
    pub state_dir: PathBuf,
    pub bundle: PathBuf,
    pub overlay: PathBuf,
    pub rootfs: PathBuf,
}

impl RunDirs {
    pub(crate) fn new(state_dir: &Path) -> RunDirs {
        RunDirs {
            state_dir: state_dir.to_owned(),
            bundle: state_dir.join("bundle"),
            overlay: state_dir.join("overlay"),
            rootfs: state_dir.join("rootfs"),
        }
    }

    pub(crate) fn overlay_for(&self, image: &Rootfs) -> Overlay {
        Overlay {
            lower: image.lower_dirs(),
            upper: self.overlay.join("upper"),
            work: self.overlay.join("work"),
            user_xattrs: image.needs_user_xattrs(),
            each_lower: false,
            volatile: ces_image::rootfs::overlay_volatile(),
        }
    }

    /// Where a rootless run without `lowerdir+` keeps the numbered links to
    /// its overlay's lower layers ([`fsconfig_lowers`]).
    pub(crate) fn numbered_lowers(&self) -> PathBuf {
        self.overlay.join("lowers")
    }

    /// Creates the directories. The upper layer's root gets the mode of the
    /// image's `/` (`image_root`: the directory an overlay takes it from),
    /// which the container sees as its own `/`, and with
    /// `owner_shift` its owner, shifted by that much (root mode's id block:
    /// see [`super::idmap`]). With `layer_size` (root only, in ces's
    /// private mount namespace), the overlay's directory is a tmpfs of that
    /// size, returned to be unmounted after the overlay: what the container
    /// writes to its own filesystem is then bounded, and counted in its
    /// memory (the pages are charged to the cgroup of the process that
    /// writes them).
    pub(crate) fn create(
        &self,
        image_root: &Path,
        owner_shift: Option<u32>,
        layer_size: Option<u64>,
    ) -> io::Result<Option<OverlayMount>> {
        let (upper, work) = (self.overlay.join("upper"), self.overlay.join("work"));
        for dir in [&self.bundle, &self.overlay] {
            fs::create_dir(dir).map_err(|e| annotate(e, dir))?;
        }
        fs::set_permissions(&self.bundle, fs::Permissions::from_mode(0o700)).map_err(|e| annotate(e, &self.bundle))?;
        let layer = layer_size.map(|size| OverlayMount::tmpfs(&self.overlay, size)).transpose()?;
        fs::set_permissions(&self.overlay, fs::Permissions::from_mode(0o700))
            .map_err(|e| annotate(e, &self.overlay))?;
        for dir in [&upper, &work, &self.rootfs] {
            fs::create_dir(dir).map_err(|e| annotate(e, dir))?;
        }
        let root = fs::metadata(image_root).map_err(|e| annotate(e, image_root))?;
        fs::set_permissions(&upper, fs::Permissions::from_mode(root.mode() & 0o7777))
            .map_err(|e| annotate(e, &upper))?;
        if let Some(shift) = owner_shift {
            let shifted = |id: u32| id.checked_add(shift).ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW));
            let (uid, gid) = (
                shifted(root.uid()).map_err(|e| annotate(e, image_root))?,
                shifted(root.gid()).map_err(|e| annotate(e, image_root))?,
            );
            std::os::unix::fs::lchown(&upper, Some(uid), Some(gid)).map_err(|e| annotate(e, &upper))?;
        }
        Ok(layer)
    }

    /// Removes what [`RunDirs::create`] made, and the state directory if it is
    /// then empty. Refuses to descend into `rootfs` while something is mounted
    /// there.
    pub(crate) fn remove(&self) -> io::Result<()> {
        if is_mount_point(&self.rootfs)? {
            return Err(io::Error::other(format!("{} is still mounted", self.rootfs.display())));
        }
        for dir in [&self.bundle, &self.overlay, &self.rootfs] {
            ces_image::fs::remove_tree(dir)?;
        }
        match fs::remove_dir(&self.state_dir) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => Ok(()),
            Err(e) => Err(annotate(e, &self.state_dir)),
        }
    }
}

/// `e` with `path` in its message (and its kind kept).
pub(super) fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Rejects a path overlayfs would split (`:` separates lower layers, `,`
/// separates options in the legacy mount data).
pub(crate) fn check_overlay_path(path: &Path) -> Result<(), PathBuf> {
    let s = path.to_string_lossy();
    if s.contains(':') || s.contains(',') || !path.is_absolute() {
        return Err(path.to_owned());
    }
    Ok(())
}

/// Creates what the container's mounts go on, inside `rootfs` (paths are
/// resolved within it, never on the host): directories, or empty files for
/// `(path, false)`. As root, ces does it with root's credentials; the
/// container's own root (a mapped user) may not create anything in an image
/// whose `/` belongs to the host's root.
///
/// With `owner` (root mode's block: see [`super::idmap`]), what is created
/// is given to it, so that the container's root owns it as it would an
/// image's directory (created by host root, it would be nobody's inside).
pub(crate) fn create_mount_points(rootfs: &Path, points: &[(&str, bool)], owner: Option<(u32, u32)>) -> io::Result<()> {
    let root = pathrs::Root::open(rootfs).map_err(io::Error::other)?;
    let dir_mode = fs::Permissions::from_mode(0o755);
    for (point, is_dir) in points {
        let path = Path::new(point);
        if root.resolve(path).is_ok() {
            continue;
        }
        // The prefixes of `point` that do not exist yet, to be given away.
        let missing: Vec<&Path> =
            if owner.is_some() { path.ancestors().filter(|p| root.resolve(p).is_err()).collect() } else { Vec::new() };
        if *is_dir {
            root.mkdir_all(path, &dir_mode).map_err(|e| io::Error::other(format!("{point}: {e}")))?;
        } else {
            if let Some(parent) = path.parent() {
                root.mkdir_all(parent, &dir_mode).map_err(|e| io::Error::other(format!("{point}: {e}")))?;
            }
            let flags = pathrs::flags::OpenFlags::O_CREAT | pathrs::flags::OpenFlags::O_CLOEXEC;
            root.create_file(path, flags, &fs::Permissions::from_mode(0o644))
                .map_err(|e| io::Error::other(format!("{point}: {e}")))?;
        }
        if let Some((uid, gid)) = owner {
            for created in missing {
                let handle = root.resolve_nofollow(created).map_err(|e| io::Error::other(format!("{point}: {e}")))?;
                nix::unistd::fchownat(
                    Some(handle.as_fd().as_raw_fd()),
                    "",
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    nix::fcntl::AtFlags::AT_EMPTY_PATH | nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io::Error::other(format!("{point}: chown: {e}")))?;
            }
        }
    }
    Ok(())
}

/// Rootless, before the overlay exists: creates directory `path` (absolute,
/// inside the container) in the upper layer when the image lacks it, so
/// that it appears in the container (it will be the working directory).
/// Only when every part of it the image has is a plain directory: creating
/// a directory in the upper layer over an image's symbolic link would hide
/// the link.
pub(crate) fn create_in_upper(overlay: &Overlay, image: &Rootfs, path: &str) -> io::Result<()> {
    let relative = Path::new(path).strip_prefix("/").unwrap_or(Path::new(path));
    let mut prefix = PathBuf::new();
    for component in relative.components() {
        let std::path::Component::Normal(name) = component else { return Ok(()) };
        prefix.push(name);
        let Some(inside) = prefix.to_str() else { return Ok(()) };
        match image.kind_nofollow(inside) {
            EntryKind::Directory => continue,
            // A file or a link: the image decides what it is.
            EntryKind::Other => return Ok(()),
            EntryKind::Missing => {
                let root = pathrs::Root::open(&overlay.upper).map_err(io::Error::other)?;
                root.mkdir_all(relative, &fs::Permissions::from_mode(0o755))
                    .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Readies `overlay` to be mounted by libcontainer through `fsconfig(2)`
/// (a rootless run), whose every value has at most
/// [`FSCONFIG_VALUE_MAX`](ces_image::rootfs::FSCONFIG_VALUE_MAX) bytes: each
/// lower layer its own `lowerdir+` value where the kernel takes it (`plus`);
/// else all of them in one `lowerdir`, by their paths where these fit, or
/// by number (`0:1:...`, top first), relative to the directory `links` made
/// here with a symbolic link of each number to its layer. Returns the
/// directory the mount must then be made from (its working directory).
pub(crate) fn fsconfig_lowers(overlay: &mut Overlay, links: &Path, plus: bool) -> io::Result<Option<PathBuf>> {
    use ces_image::rootfs::{FSCONFIG_VALUE_MAX, numbered_lowerdir};
    for dir in [&overlay.upper, &overlay.work] {
        if dir.as_os_str().len() > FSCONFIG_VALUE_MAX {
            return Err(io::Error::other(format!(
                "{}: a path longer than a mount option may be ({FSCONFIG_VALUE_MAX} bytes; a store at a shorter path)",
                dir.display()
            )));
        }
    }
    let fits = |l: &PathBuf| l.as_os_str().len() <= FSCONFIG_VALUE_MAX;
    if plus && overlay.lower.iter().all(fits) {
        overlay.each_lower = true;
        return Ok(None);
    }
    let joined: usize = overlay.lower.iter().map(|l| l.as_os_str().len() + 1).sum();
    if joined <= FSCONFIG_VALUE_MAX + 1 {
        return Ok(None);
    }
    if numbered_lowerdir(overlay.lower.len()).len() > FSCONFIG_VALUE_MAX {
        return Err(io::Error::other(format!(
            "{} lower layers do not fit in one mount option on this kernel (Linux 6.8 takes them one by one)",
            overlay.lower.len()
        )));
    }
    fs::create_dir(links).map_err(|e| annotate(e, links))?;
    for (i, layer) in overlay.lower.iter_mut().enumerate() {
        let name = PathBuf::from(i.to_string());
        std::os::unix::fs::symlink(&*layer, links.join(&name)).map_err(|e| annotate(e, links))?;
        *layer = name;
    }
    Ok(Some(links.to_owned()))
}

/// This process's working directory changed to a directory until dropped,
/// then back (see [`fsconfig_lowers`]): it is the whole process's, so
/// nothing may look up a relative path meanwhile. It goes back by path (or
/// to `/` when it had none): a descriptor held across the container's
/// creation would be inherited by its init.
pub(crate) struct WorkingDir(Option<PathBuf>);

impl WorkingDir {
    pub(crate) fn enter(dir: &Path) -> io::Result<WorkingDir> {
        let back = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        std::env::set_current_dir(dir).map_err(|e| annotate(e, dir))?;
        Ok(WorkingDir(Some(back)))
    }
}

impl Drop for WorkingDir {
    fn drop(&mut self) {
        if let Some(back) = self.0.take()
            && let Err(e) = std::env::set_current_dir(&back).or_else(|_| std::env::set_current_dir("/"))
        {
            tracing::warn!(error = %e, "cannot go back to the working directory");
        }
    }
}

/// An overlay (or the tmpfs under one) ces mounted; unmounted by
/// [`OverlayMount::unmount`] or, failing that, on drop.
#[derive(Debug)]
pub(crate) struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Mounts `overlay` on `target` (root only), `nosuid,nodev`; called in a
    /// mount namespace of this thread's own ([`private_mount_namespace`]):
    /// the host's other processes never see it.
    pub(crate) fn mount(overlay: &Overlay, target: &Path) -> io::Result<OverlayMount> {
        let data = overlay.options(false).join(",");
        if data.len() > ces_image::rootfs::MOUNT_DATA_MAX {
            return Err(io::Error::other(format!(
                "the overlay's mount options take {} bytes, more than the kernel reads ({} layers)",
                data.len(),
                overlay.lower.len()
            )));
        }
        let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        nix::mount::mount(Some("overlay"), target, Some("overlay"), flags, Some(data.as_str())).map_err(|e| {
            io::Error::new(io::Error::from(e).kind(), format!("mount overlay on {}: {e}", target.display()))
        })?;
        Ok(OverlayMount { target: target.to_owned(), mounted: true })
    }

    /// Mounts a tmpfs of `size` bytes on `target` (root only, `0700`,
    /// `nosuid,nodev`), as [`OverlayMount::mount`] does an overlay.
    pub(crate) fn tmpfs(target: &Path, size: u64) -> io::Result<OverlayMount> {
        let data = format!("size={size},mode=0700");
        let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        nix::mount::mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data.as_str())).map_err(|e| {
            io::Error::new(io::Error::from(e).kind(), format!("mount a tmpfs on {}: {e}", target.display()))
        })?;
        Ok(OverlayMount { target: target.to_owned(), mounted: true })
    }

    pub(crate) fn unmount(&mut self) -> io::Result<()> {
        if self.mounted {
            unmount(&self.target)?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(target = %self.target.display(), error = %e, "cannot unmount the container's rootfs");
        }
    }
}

/// Moves the calling thread into a mount namespace of its own, whose mounts
/// do not propagate back to the host's (`/` made a recursive slave: the
/// host's later mounts still show here). As root, ces mounts the
/// container's overlay there: mounted in the host's namespace it would be
/// listed in the world-readable `/proc/mounts`, and any local user who can
/// search the path could read what the container wrote, or run a file it
/// made setuid. The namespace, and the overlay with it, ends with the last
/// process in it, so a ces killed with SIGKILL leaves no mount on the host.
/// The container's own namespaces are made from this one.
pub(crate) fn private_mount_namespace() -> io::Result<PrivateNamespace> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("unshare the mount namespace: {e}")))?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("make / a slave mount: {e}")))?;
    Ok(PrivateNamespace(()))
}

/// Proof that this thread is in a mount namespace of its own
/// ([`private_mount_namespace`]): what is mounted for a run in `/run`
/// ([`super::idmap::Mounts`]) must never be mounted on the host.
#[derive(Debug)]
pub(crate) struct PrivateNamespace(());

/// Unmounts `target` (lazily: a process that still holds it open does not
/// keep the mount attached to the host's tree).
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::new(io::Error::from(e).kind(), format!("umount {}: {e}", target.display()))),
    }
}

/// Whether something is mounted exactly on `path` (in ces's mount namespace).
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let Ok(canonical) = fs::canonicalize(path) else { return Ok(false) };
    // This thread's namespace: ces mounts in one of its own (see
    // [`private_mount_namespace`]), maybe not the main thread's.
    // Bytes: another mount's path need not be UTF-8 (a user's FUSE mount).
    let mountinfo = fs::read("/proc/thread-self/mountinfo")?;
    Ok(mountinfo.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|mount_point| unescape(mount_point) == canonical.as_os_str().as_bytes())
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let digit = |j: usize| u32::from(bytes[i + j] - b'0');
            // The kernel writes 3 octal digits of one byte (never above \377).
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Checks that a process with `uid` and groups `gids` can reach `path`
/// (search permission on every ancestor): as root, the container's user is
/// the mapped host user, and libcontainer resolves the rootfs as that user.
pub(crate) fn check_searchable(path: &Path, uid: u32, gids: &[u32]) -> Result<(), PathBuf> {
    if uid == 0 {
        return Ok(());
    }
    let mut current = PathBuf::new();
    for component in path.components() {
        current.push(component);
        if current == path {
            break;
        }
        let Ok(meta) = fs::metadata(&current) else { return Err(current) };
        let mode = meta.mode();
        let ok = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if gids.contains(&meta.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(current);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rootless overlay's lower layers as libcontainer's fsconfig takes
    /// them: each its own value (Linux 6.8), all in one value of at most
    /// 255 bytes, or numbered links made for the run, relative to them.
    #[test]
    fn lower_layers_fit_in_fsconfig_values() {
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..30).map(|i| tmp.path().join(format!("layer-{i:060}"))).collect();
        let overlay = |n: usize| Overlay {
            lower: layers[..n].to_vec(),
            upper: tmp.path().join("upper"),
            work: tmp.path().join("work"),
            user_xattrs: true,
            each_lower: false,
            volatile: false,
        };
        let links = tmp.path().join("lowers");
        let mut each = overlay(30);
        assert_eq!(fsconfig_lowers(&mut each, &links, true).unwrap(), None);
        assert!(each.each_lower && each.lower == layers);
        let mut two = overlay(2);
        assert_eq!(fsconfig_lowers(&mut two, &links, false).unwrap(), None, "fit in one value");
        assert_eq!(two, overlay(2));
        let mut many = overlay(30);
        assert_eq!(fsconfig_lowers(&mut many, &links, false).unwrap(), Some(links.clone()));
        assert!(!many.each_lower);
        assert_eq!(many.options(true)[1], format!("lowerdir={}", ces_image::rootfs::numbered_lowerdir(30)));
        for (i, layer) in layers.iter().enumerate() {
            assert_eq!(many.lower[i], Path::new(&i.to_string()));
            assert_eq!(fs::read_link(links.join(i.to_string())).unwrap(), *layer, "link {i}");
        }
        // Root's own mount(2): options longer than the kernel reads are
        // refused before anything is mounted (it would cut them short).
        let mut long = overlay(30);
        long.lower = vec![layers[0].clone(); 60];
        let err = OverlayMount::mount(&long, tmp.path()).unwrap_err();
        assert!(err.to_string().contains("more than the kernel reads (60 layers)"), "{err}");
        // A path no fsconfig value can hold: numbered, whatever the kernel.
        let mut deep = overlay(1);
        deep.lower = vec![tmp.path().join("d".repeat(250))];
        assert_eq!(fsconfig_lowers(&mut deep, &tmp.path().join("deep"), true).unwrap(), Some(tmp.path().join("deep")));
        assert_eq!(deep.lower, [PathBuf::from("0")]);
        let mut upper = overlay(1);
        upper.upper = tmp.path().join("u".repeat(250));
        let err = fsconfig_lowers(&mut upper, &tmp.path().join("none"), true).unwrap_err();
        assert!(err.to_string().contains("a path longer than a mount option may be"), "{err}");
        let mut too_many = overlay(1);
        too_many.lower = vec![layers[0].clone(); 89];
        let err = fsconfig_lowers(&mut too_many, &tmp.path().join("more"), false).unwrap_err();
        assert!(err.to_string().contains("89 lower layers do not fit"), "{err}");
    }

    /// The most layers the store keeps an image as (its budget), at a
    /// typical store path, named as each kind of run names them: the mount
    /// options it emits fit (one page of mount(2) data as root, idmapped
    /// or not; 255-byte fsconfig values rootless, with or without
    /// `lowerdir+`).
    #[test]
    fn what_the_store_keeps_as_layers_fits_what_runs_emit() {
        use ces_image::rootfs::{FSCONFIG_VALUE_MAX, MOUNT_DATA_MAX};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ces");
        let store = ces_image::store::Store::open(&root).unwrap();
        let id = "20261206-223307-6a17efdd";
        let dirs = RunDirs::new(&root.join("runs").join(id).join("state"));
        let links = |n: usize| -> Vec<PathBuf> { (0..n).map(|i| root.join("l").join(format!("{i:012x}"))).collect() };
        let most = |root_run: bool, plus: bool| {
            (1..=ces_image::rootfs::MAX_LOWER_LAYERS)
                .take_while(|n| store.mount_options_fit(&links(*n), root_run, plus))
                .last()
                .unwrap()
        };
        let overlay = |lower: Vec<PathBuf>| Overlay { lower, ..dirs.overlay_for(&Rootfs::Tree(PathBuf::new())) };
        // Root: idmapped (root mode) or by the links (root for a sudo user).
        let n = most(true, false);
        let run = Path::new(crate::native::idmap::MOUNTS_ROOT).join(id);
        let idmapped = (0..n).map(|i| run.join(crate::native::idmap::lower_name(i))).collect();
        for lower in [idmapped, links(n)] {
            let mut o = overlay(lower);
            o.user_xattrs = true;
            assert!(o.options(false).join(",").len() <= MOUNT_DATA_MAX, "{n} layers as root");
        }
        // Rootless: every fsconfig value within its limit.
        for plus in [false, true] {
            let n = most(false, plus);
            let mut o = overlay(links(n));
            fsconfig_lowers(&mut o, &tmp.path().join(format!("numbered-{plus}")), plus).unwrap();
            for option in o.options(true) {
                let value = option.split_once('=').map_or("", |(_, v)| v);
                assert!(value.len() <= FSCONFIG_VALUE_MAX, "{n} layers rootless (lowerdir+: {plus}): {option}");
            }
        }
        assert!(most(true, false) >= 60 && most(false, false) == 88 && most(false, true) == 500);
    }

    #[test]
    fn overlay_paths_with_separators_are_refused() {
        assert!(check_overlay_path(Path::new("/a/b")).is_ok());
        assert!(check_overlay_path(Path::new("/a:b")).is_err());
        assert!(check_overlay_path(Path::new("/a,b")).is_err());
        assert!(check_overlay_path(Path::new("a/b")).is_err());
    }

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape(br"/a\040b\134c"), br"/a b\c");
        assert_eq!(unescape(b"/plain\xff"), b"/plain\xff");
    }
}
