//! How ces runs containers: a [`RunSpec`] (one plan: image, mounts, limits,
//! env, argv, identity) handed to a [`Runtime`] backend. The native backend
//! turns it into an OCI runtime spec and runs it in-process with youki's
//! libcontainer; the podman backend renders the same plan as a `podman run`
//! command line. Policy lives in the plan, never in a backend.

pub mod host;
pub mod native;
pub mod netwatch;
pub mod plan;
pub mod podman;
pub mod spec;

pub use spec::{
    Access, ContainerUser, DeviceHook, DeviceMount, DeviceNode, DeviceType, Devices, EnvVar, Exit, HookStage,
    HostEndpoint, Identity, ImageSpec, Limits, MountKind, MountSpec, Pins, ProcessSpec, Publish, RequestedDevice,
    RunSpec,
};

/// A way to run a [`RunSpec`].
pub trait Runtime {
    /// The backend's name (`native`, `podman`).
    fn name(&self) -> &'static str;

    /// What the backend would do, for `--dry-run`: lines a person can read
    /// (for podman, the exact command). Creates nothing.
    fn describe(&self, spec: &RunSpec) -> Result<Vec<String>, RuntimeError>;

    /// Refuses a plan this backend cannot carry out as planned (a limit it
    /// cannot enforce here, a value it cannot express), before the caller
    /// prints or creates anything for the run. Creates nothing. [`run`]
    /// checks again.
    ///
    /// [`run`]: Runtime::run
    fn check(&self, spec: &RunSpec) -> Result<(), RuntimeError> {
        let _ = spec;
        Ok(())
    }

    /// Runs the container to the end. SIGINT and SIGTERM sent to ces while it
    /// runs are forwarded to the container; the container is removed whatever
    /// happens.
    fn run(&self, spec: &RunSpec) -> Result<Exit, RuntimeError>;
}

/// A backend failed to run the container (as opposed to the container failing).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A host file operation failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container could not be created or started.
    #[error("cannot start the container ({stage})")]
    Start {
        /// What was being done.
        stage: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A limit cannot be enforced here.
    #[error("cannot enforce the {limit} limit: {reason}")]
    Limit {
        /// `memory` or `cpu`.
        limit: &'static str,
        /// Why.
        reason: String,
    },
    /// An external program (podman) is missing or failed to start.
    #[error("cannot run {program}")]
    Program {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Rootful podman's root filesystem cannot be kept from other users:
    /// its directory's file system has no POSIX ACLs.
    #[error(
        "rootful podman needs POSIX ACLs to keep the run's root filesystem from other users, and the file system holding {} has none",
        path.display()
    )]
    NoAcl {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The request needs something this backend does not have.
    #[error("{what} is not supported by the {backend} runtime")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// The feature.
        what: &'static str,
    },
}
