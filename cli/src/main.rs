//! `cpulocal`: the side-by-side benchmark report. See `cpulocal --help`.

fn main() -> std::process::ExitCode {
    cpulocal_cli::main_with_args(std::env::args_os().skip(1))
}
