//! `ces generate-docs DIR` (hidden, for `scripts/package`): man pages and
//! shell completions, generated from the command-line definitions so that
//! they cannot drift from them.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::{CesPullCli, CesRunCli, Cli};

/// Writes `DIR/man1/*.1` and `DIR/completions/{bash,zsh,fish}/...`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man1");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let page = |command: clap::Command| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        clap_mangen::Man::new(command).render(&mut out)?;
        Ok(out)
    };
    let ces = Cli::command().name("ces");
    write(&man.join("ces.1"), &page(ces.clone())?)?;
    // One page per command (`ces-images`, `ces-proxy`...), as git has them;
    // `ces-pull` and `ces-run` are the compatible commands' own.
    for sub in ces.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ces-{}", sub.get_name());
        if name == "ces-pull" || name == "ces-run" {
            continue;
        }
        write(&man.join(format!("{name}.1")), &page(sub.clone().name(name.clone()))?)?;
    }
    write(&man.join("ces-pull.1"), &page(CesPullCli::command().name("ces-pull"))?)?;
    write(&man.join("ces-run.1"), &page(CesRunCli::command().name("ces-run"))?)?;
    write(&man.join("ces-gpu-run.1"), &page(CesRunCli::command().name("ces-gpu-run"))?)?;

    for (shell, file) in [
        (clap_complete::Shell::Bash, "bash/ces"),
        (clap_complete::Shell::Zsh, "zsh/_ces"),
        (clap_complete::Shell::Fish, "fish/ces.fish"),
    ] {
        let path = dir.join("completions").join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "ces", &mut out);
        write(&path, &out)?;
    }
    Ok(())
}
