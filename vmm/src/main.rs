//! The `polyvisor` command.
#![deny(missing_docs)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
