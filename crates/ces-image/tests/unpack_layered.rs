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
