//! `ces`: the Container Execution Service.
fn main() -> std::process::ExitCode {
    ces::main(ces::Entry::Ces)
}
