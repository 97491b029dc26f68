//! The command line: `ces <command>`, and the compatible `ces-pull` form.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ces: run researchers' containers in a Trusted Research Environment.
#[derive(Debug, Parser)]
#[command(name = "ces", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// The config file [default: /etc/ces/config.toml]
    #[arg(long, global = true, env = "CES_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Show debug logs (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No progress bars or status lines.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image from an allowed registry into the local store.
    Pull(PullArgs),
    /// List the images in the store.
    Images(ImagesArgs),
    /// Show an image's config, layers and provenance.
    Inspect(InspectArgs),
    /// Remove images from the store (blobs no longer used are deleted).
    Rmi(RmiArgs),
    /// Import an OCI archive or a `docker save` tarball (images brought in through an airlock).
    Load(LoadArgs),
    /// Delete blobs and unpacked filesystems that no image uses.
    Gc,
}

/// `ces pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: REGISTRY/NAMESPACE/NAME[:TAG|@sha256:DIGEST]
    pub reference: String,
    /// The registry user (with a token from --password-stdin or CES_REGISTRY_TOKEN).
    #[arg(long, short = 'u', env = "CES_REGISTRY_USER")]
    pub user: Option<String>,
    /// Read the token (or password) from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Pull only; leave the root filesystem unpacked later (by `ces run`).
    #[arg(long)]
    pub no_unpack: bool,
}

/// `ces images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `ces inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: a reference, or a digest prefix.
    pub image: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `ces rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The images: references, or digest prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `ces load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (`-` for standard input).
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// Name the image this way (required when the archive names none).
    #[arg(long, short = 't')]
    pub tag: Option<String>,
    /// Load only; leave the root filesystem unpacked later.
    #[arg(long)]
    pub no_unpack: bool,
}

/// The runtimes `ces-pull`/`ces-run` accept as their first argument.
pub const RUNTIMES: [&str; 2] = ["native", "podman"];

/// `ces-pull [<runtime>] <user> <token> <registry>/<ns>/<name>[:<tag>|@<digest>]`, as
/// the reference service has it; `""` `""` pulls anonymously, and a token of `-`
/// is read from standard input.
#[derive(Debug, Parser)]
#[command(name = "ces-pull", version, about = "Pull an image into ces (compatible form of `ces pull`)")]
pub struct CesPullCli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// [RUNTIME] USER TOKEN IMAGE
    #[arg(num_args = 3..=4, required = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// What `ces-pull`'s positional arguments mean.
#[derive(Debug, PartialEq, Eq)]
pub struct CompatPull {
    /// The runtime named, if any.
    pub runtime: Option<String>,
    /// The user (`""` for anonymous).
    pub user: String,
    /// The token (`""` for anonymous, `-` for standard input).
    pub token: String,
    /// The image reference.
    pub reference: String,
}

impl CesPullCli {
    /// Splits the positional arguments.
    pub fn compat(&self) -> Result<CompatPull, String> {
        let (runtime, rest) = match self.args.as_slice() {
            [runtime, rest @ ..] if rest.len() == 3 => (Some(runtime.clone()), rest),
            rest => (None, rest),
        };
        if let Some(runtime) = runtime.as_ref().filter(|r| !RUNTIMES.contains(&r.as_str())) {
            return Err(format!("unknown runtime {runtime:?} (expected one of: {})", RUNTIMES.join(", ")));
        }
        match rest {
            [user, token, reference] => {
                Ok(CompatPull { runtime, user: user.clone(), token: token.clone(), reference: reference.clone() })
            }
            _ => Err("expected [RUNTIME] USER TOKEN IMAGE".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compat(args: &[&str]) -> Result<CompatPull, String> {
        CesPullCli::try_parse_from(std::iter::once("ces-pull").chain(args.iter().copied())).unwrap().compat()
    }

    #[test]
    fn ces_pull_takes_three_or_four_positionals() {
        let c = compat(&["", "", "ghcr.io/a/b:1"]).unwrap();
        assert_eq!(
            (c.runtime, c.user.as_str(), c.token.as_str(), c.reference.as_str()),
            (None, "", "", "ghcr.io/a/b:1")
        );
        let c = compat(&["podman", "alice", "-", "ghcr.io/a/b"]).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("podman"));
        assert_eq!(c.token, "-");
        assert!(compat(&["docker", "u", "t", "ghcr.io/a/b"]).unwrap_err().contains("unknown runtime"));
        assert!(CesPullCli::try_parse_from(["ces-pull", "ghcr.io/a/b"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        CesPullCli::command().debug_assert();
    }
}
