//! Layer unpacking against real files: OCI whiteout semantics, type changes,
//! compression, and every way a hostile layer might try to write outside the
//! root filesystem.
//!
//! Each test works in its own temp dir holding `rootfs/` and a sibling
//! `outside/` with a `secret`; after applying, everything but `rootfs/` must
//! be exactly as before.
//!
//! These tests run as root. Every path a malicious entry names (`..` climbs,
//! absolute names, symlink targets) is chosen so that, should containment
//! ever regress, the stray write or delete lands in the test's own temp dir,
//! where it is detected, and never elsewhere on the host: from `rootfs/`, one
//! `..` reaches the temp dir; absolute paths are built from the temp dir's
//! own path ([`Fixture::host`]), never `/etc`, `/usr` or `/` alone.
//!
//! The cases are in `unpack/cases.rs`; `unpack_layered.rs` runs them again
//! the way the store unpacks (each layer alone, then linked into the root).

/// Whether each layer is unpacked alone and then linked ([`unpack_layer`],
/// [`link_layer`]) rather than applied.
///
/// [`unpack_layer`]: ces_image::unpack::unpack_layer
/// [`link_layer`]: ces_image::unpack::link_layer
const LAYERED: bool = false;
/// See `unpack_overlay.rs`.
const OVERLAY: bool = false;

#[path = "unpack/cases.rs"]
mod cases;
