//! Images for ces: references and digests, manifests, the content-addressed
//! store (an OCI image layout on disk with an unpacked-rootfs cache), and safe
//! layer unpacking.
//!
//! This crate knows nothing of the network or the terminal: the registry
//! client feeds the store through [`store::BlobWriter`], and the binary reports
//! progress through callbacks.

pub mod archive;
pub mod digest;
pub mod follow;
pub mod fs;
pub mod manifest;
pub mod provenance;
pub mod quota;
pub mod quote;
mod read_ahead;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod tar_limits;
pub mod unpack;

pub use digest::Digest;
pub use provenance::Provenance;
pub use reference::ImageReference;
pub use store::{ImageRecord, Store, StoreError, Unpacked};
