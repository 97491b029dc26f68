//! The layer-unpacking cases of `unpack.rs` once more, unpacked as the store
//! does (`unpack_layered.rs`), and, after every layer, the layers so far
//! mounted as the lower layers of an overlay, as a run mounts an image that
//! the store keeps as its layers: what the overlay shows must be exactly the
//! root filesystem that applying the layers made (kinds, modes, owners,
//! times, contents). Whiteouts and opaque directories are then overlayfs'
//! own, and a layer that cannot be one (a directory it only implies) ends
//! the comparison for its case. Needs root (the overlays are mounted).

/// See `unpack.rs`.
const LAYERED: bool = true;
/// Whether the layers are also mounted as an overlay and compared.
const OVERLAY: bool = true;

#[path = "unpack/cases.rs"]
mod cases;
