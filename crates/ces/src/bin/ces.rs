//! `ces`: the Container Execution Service. Started by the name of one of
//! the compatible commands (a link `ces-pull`, `ces-run` or `ces-gpu-run` to
//! it, as the Debian package installs them), it is that command.
fn main() -> std::process::ExitCode {
    let name = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    ces::main(match name.as_str() {
        "ces-pull" => ces::Entry::CesPull,
        "ces-run" => ces::Entry::CesRun,
        "ces-gpu-run" => ces::Entry::CesGpuRun,
        _ => ces::Entry::Ces,
    })
}
