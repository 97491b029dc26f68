//! The ces test kit: a real Docker Distribution registry on 127.0.0.1 (anonymous,
//! htpasswd basic auth, or bearer tokens from a GHCR-like token server of ours),
//! a live one-node Slurm cluster, fixture images built in code, and helpers
//! shared by the integration tests.
//!
//! Test code: failures here panic with a message saying what to install or fix.
#![allow(missing_docs, clippy::unwrap_used)]

pub mod debimage;
pub mod exe;
pub mod image;
pub mod layer;
pub mod misbehave;
pub mod mountinfo;
#[cfg(target_arch = "x86_64")]
pub mod probe;
pub mod registry;
pub mod slurm;
pub mod token;
pub mod user;
pub mod vm;

pub use image::{BuiltImage, ImageSpec, Style, busybox_image, index, many_layers_image};
pub use layer::{Compression, Entry, Layer};
pub use registry::{AuthMode, Registry};
pub use user::{TEST_USER, test_user};
