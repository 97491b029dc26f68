//! The layer-unpacking cases of `unpack.rs` (containment, whiteouts, type
//! changes, hostile names), run the way the store unpacks an image: each
//! layer alone into a directory of its own ([`unpack_layer`]: whiteouts
//! kept as files, implied directories listed), then hard-linked into the
//! root filesystem ([`link_layer`]). Every case must come out as when the
//! layer's tar is applied directly.
//!
//! [`unpack_layer`]: ces_image::unpack::unpack_layer
//! [`link_layer`]: ces_image::unpack::link_layer

/// See `unpack.rs`.
const LAYERED: bool = true;
/// See `unpack_overlay.rs`.
const OVERLAY: bool = false;

#[path = "unpack/cases.rs"]
mod cases;

/// A layer whose whiteout cannot be made for want of room (here the
/// inodes of a small tmpfs) fails as a full disk does, at every size that
/// is too small; it is never kept in the `.wh.` format as if the file
/// system refused whiteouts (its image would then be assembled, taking
/// more of the room there is not).
#[test]
fn a_whiteout_without_room_is_a_full_disk_not_a_format() {
    use ces_image::unpack::{UnpackOptions, unpack_layer};
    use ces_testkit::{Entry, Layer};
    assert!(rustix::process::geteuid().is_root(), "mounts tmpfs file systems: run as root");
    let tar = Layer::new(vec![Entry::dir("a"), Entry::file("a/x", "x"), Entry::whiteout("a/gone")]).tar();
    let base = tempfile::tempdir().unwrap();
    let mut converted = false;
    for inodes in 2..12 {
        let mount = base.path().join(inodes.to_string());
        std::fs::create_dir(&mount).unwrap();
        let options = format!("size=1m,nr_inodes={inodes}");
        let mounted =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(&mount).status();
        assert!(mounted.unwrap().success());
        let layer = mount.join("layer");
        let made = std::fs::create_dir(&layer).map_err(|e| (e.raw_os_error(), e.to_string())).and_then(|()| {
            unpack_layer(&layer, tar.as_slice(), &UnpackOptions::for_current_user())
                .map_err(|e| (e.out_of_space(), e.to_string()))
        });
        let _ = std::process::Command::new("umount").arg(&mount).status();
        match made {
            Ok(made) => {
                assert!(made.overlay, "with {inodes} inodes the layer was made, so its whiteout must be too");
                converted = true;
                break;
            }
            Err((errno, error)) => assert!(errno.is_some(), "with {inodes} inodes: {error}"),
        }
    }
    assert!(converted, "12 inodes hold the layer");
}
