//! The OCI distribution client of ces: pulls images from allowed registries
//! into the [`ces_image::Store`], with the GHCR-style token flow or Basic
//! auth, size limits on everything, and every blob verified as it streams.
//!
//! Hand-written on `reqwest` rather than on `oci-client`, whose pull keeps
//! whole layers in memory, sets no limits on manifest sizes, and reports a
//! wrong password as a missing image (see docs/facts.md).

pub mod auth;
pub mod client;
pub mod error;
pub mod pull;
/// The disk quotas a pull checks (in ces-image: a load checks them too).
pub use ces_image::quota;

pub use auth::{Credentials, Secret};
pub use client::{Client, ClientConfig, Mirror, RetryPolicy, Session, UPSTREAM_AUTHORIZATION};
pub use error::RegistryError;
pub use pull::{PullOptions, PullOutcome, PullReporter, Quiet, Retry, pull};
pub use reqwest::Url;
