//! `ces-run [<runtime>] [options] <image> [args]`: the compatible form of `ces run`.
fn main() -> std::process::ExitCode {
    ces::main(ces::Entry::CesRun)
}
