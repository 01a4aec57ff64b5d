//! The command line: `serve` (default), `check`, `echo`, and the store commands `users` and
//! `keys`. Human output and exit codes live
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
    /// Manage users in the configured store (bootstrap the first admin without HTTP).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage keys in the configured store.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints it as JSON (with the generated password, if any, shown once).
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated roles (default: user).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List every user as JSON.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue an API key for a user; prints it as JSON (`key` shown once).
    Create {
        #[command(flatten)]
        config: ConfigArg,
        /// The owner: a user id or an email.
        #[arg(long)]
        user: String,
        /// `secret` (default) or `publishable`.
        #[arg(long, default_value = "secret")]
        kind: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated scopes (default: the owner's full rights).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
    },
    /// Revoke an API key by id.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
    /// Make a new token-signing key current; the previous one keeps verifying until the
    /// longest token it signed has expired.
    RotateSigning {
        #[command(flatten)]
        config: ConfigArg,
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

/// How long an idle blocking-pool thread stays on a one-CPU runtime.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(500);

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // On one CPU (a container limited to one core, or a pinned process) the work-stealing
    // scheduler only adds cross-thread bookkeeping; the current-thread scheduler serves the
    // same tasks with less overhead. Blocking work still goes to the blocking pool.
    //
    // On one CPU the serving thread is then the process's only thread most of the time, and
    // Linux skips taking a file reference (two atomics) on each socket call of a process
    // whose fd table no other thread shares: 0.3-0.4% of the core under the rig's load
    // (benches/README.md). So blocking-pool threads leave soon after their last job (tokio
    // keeps them 10 s; the 5 s signing-key re-read would keep one forever), as do the
    // hashing and log threads (auth::password, telemetry) and the config poll has no thread.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.thread_keep_alive(BLOCKING_KEEP_ALIVE);
        b
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
        Command::Users { command } => store_command(StoreCommand::Users(command)),
        Command::Keys { command } => store_command(StoreCommand::Keys(command)),
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

enum StoreCommand {
    Users(UsersCommand),
    Keys(KeysCommand),
}

impl StoreCommand {
    fn config(&self) -> &ConfigArg {
        match self {
            StoreCommand::Users(UsersCommand::Create { config, .. })
            | StoreCommand::Users(UsersCommand::List { config })
            | StoreCommand::Keys(KeysCommand::RotateSigning { config })
            | StoreCommand::Keys(KeysCommand::Create { config, .. })
            | StoreCommand::Keys(KeysCommand::Revoke { config, .. }) => config,
        }
    }
}

/// Runs a command that works on the configured store directly (no running gateway needed;
/// SQLite in WAL mode lets it run beside one).
fn store_command(cmd: StoreCommand) -> ExitCode {
    let cfg = match config::load(&cmd.config().path()) {
        Ok(cfg) => cfg,
        Err(err) => {
            report(&err);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(run_store_command(&cfg, cmd)));
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn describe(err: crate::accounts::AccountError) -> String {
    match err {
        crate::accounts::AccountError::Invalid(issues) => issues
            .iter()
            .map(|i| format!("{}: {}", i.field, i.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

async fn run_store_command(cfg: &config::Config, cmd: StoreCommand) -> Result<String, String> {
    use crate::accounts::{Accounts, NewUser};
    use crate::endpoints::{unix_now, wire::user_view};

    let store_cfg = cfg.store.clone();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let store = crate::state::open_store(&store_cfg, &metrics)
        .await
        .map_err(|e| e.to_string())?;
    let accounts = Accounts::start(store, cfg, unix_now())
        .await
        .map_err(describe)?;
    match cmd {
        StoreCommand::Users(UsersCommand::Create {
            email,
            username,
            name,
            roles,
            password_stdin,
            ..
        }) => {
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (crate::accounts::new_secret(), true)
            };
            let user = accounts
                .create_user(
                    cfg,
                    NewUser {
                        email,
                        username,
                        name,
                        roles,
                        password: password.clone(),
                    },
                    unix_now(),
                )
                .await
                .map_err(describe)?;
            let mut out = serde_json::to_value(user_view(&user)).map_err(|e| e.to_string())?;
            if let (true, Some(obj)) = (generated, out.as_object_mut()) {
                obj.insert("password".into(), password.into());
            }
            Ok(out.to_string())
        }
        StoreCommand::Users(UsersCommand::List { .. }) => {
            let users = accounts.all_users().await.map_err(describe)?;
            let views: Vec<_> = users.iter().map(user_view).collect();
            Ok(serde_json::json!({ "users": views }).to_string())
        }
        StoreCommand::Keys(KeysCommand::Create {
            user,
            kind,
            name,
            scopes,
            ..
        }) => {
            let kind = crate::store::ApiKeyKind::parse(&kind)
                .ok_or_else(|| format!("--kind must be secret or publishable, not {kind:?}"))?;
            let owner = accounts
                .user_by_id_or_email(&user)
                .await
                .map_err(describe)?;
            let (key, plain) = accounts
                .create_api_key(
                    &owner,
                    crate::accounts::NewApiKey {
                        name,
                        kind,
                        scopes,
                        expires_at: None,
                    },
                    unix_now(),
                )
                .await
                .map_err(describe)?;
            serde_json::to_string(&crate::endpoints::wire::created_key_view(&key, &plain))
                .map_err(|e| e.to_string())
        }
        StoreCommand::Keys(KeysCommand::Revoke { id, .. }) => {
            accounts
                .revoke_api_key(None, &id, unix_now())
                .await
                .map_err(describe)?;
            Ok(serde_json::json!({ "revoked": id }).to_string())
        }
        StoreCommand::Keys(KeysCommand::RotateSigning { .. }) => {
            let key = accounts
                .rotate_signing_key(cfg, unix_now())
                .await
                .map_err(describe)?;
            Ok(serde_json::json!({ "kid": key.kid, "alg": key.alg }).to_string())
        }
    }
}
