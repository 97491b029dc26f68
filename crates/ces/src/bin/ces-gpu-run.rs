//! `ces-gpu-run ...`: `ces-run --gpu ...`.
fn main() -> std::process::ExitCode {
    ces::main(ces::Entry::CesGpuRun)
}
