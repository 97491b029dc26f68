//! `ces-pull [<runtime>] <user> <token> <image>`: the compatible form of `ces pull`.
fn main() -> std::process::ExitCode {
    ces::main(ces::Entry::CesPull)
}
