//! The command line: `serve` (default), `check`, `echo`. Human output and exit codes live
//! here; no request logic does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError};

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "Edge authentication gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Serve(ConfigArg),
    /// Validate the configuration: every error as FILE:LINE:COLUMN: message.
    Check(ConfigArg),
    /// Run a tiny upstream that echoes each request as JSON.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, clap::Args, Default)]
pub struct ConfigArg {
    /// Config file (default: $GATEHOUSE_CONFIG, else ./gateway.yaml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os("GATEHOUSE_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
    }
}

fn report(err: &ConfigError) {
    match err {
        ConfigError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
        }
        ConfigError::Io { .. } => eprintln!("{err}"),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // On one CPU (a container limited to one core, or a pinned process) the work-stealing
    // scheduler only adds cross-thread bookkeeping; the current-thread scheduler serves the
    // same tasks with less overhead. Blocking work still goes to the blocking pool.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().thread_name("gatehouse").build()
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve(ConfigArg::default())) {
        Command::Check(arg) => match config::load(&arg.path()) {
            Ok(cfg) => {
                println!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(err) => {
                report(&err);
                ExitCode::FAILURE
            }
        },
        Command::Serve(arg) => {
            let cfg = match config::load(&arg.path()) {
                Ok(cfg) => cfg,
                Err(err) => {
                    report(&err);
                    return ExitCode::FAILURE;
                }
            };
            let _log = crate::telemetry::init(&cfg.log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::server::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("gatehouse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Echo { listen } => {
            let result = runtime().and_then(|rt| rt.block_on(crate::echo::run(listen)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse echo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
