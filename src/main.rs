//! Process entry: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gatehouse::cli::run(gatehouse::cli::Cli::parse())
}
