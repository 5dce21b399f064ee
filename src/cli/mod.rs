//! Command line: parses arguments, sets up logging and signals, and calls into the
//! library. Thin on purpose: every command is a library function that tests can call.
//! Exit codes, the same for every subcommand: 0 success, 1 runtime failure, 2 usage or
//! configuration error (`EXIT_CODES`, printed by `--help`).

mod admin;
mod billing;
mod keys;

use crate::config::{Config, ProcessEnv};
use crate::server::{self, Listeners};
use crate::sim::{self, Latency, SimConfig};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// The footer of `--help`: what the exit status means, for scripts and service managers.
const EXIT_CODES: &str = "Exit status, every command: 0 success; 1 runtime failure (a store, Redis, the admin \
API or a listener failed, or the admin API refused the request); 2 usage or configuration error (bad \
arguments, a missing environment variable, an invalid config file). Logs go to stderr, coloured only \
on a terminal.";

/// A mistake in the command's arguments or environment: exit status 2, like a
/// configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[derive(Parser)]
#[command(
    name = "ekyc-gateway",
    version,
    about = "A gateway that resells Tencent Cloud eKYC (FaceID) call by call",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EKYC_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: the data listener (eKYC API) and the admin listener.
    Serve {
        /// TOML configuration file (see config/gateway.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Data listener address (eKYC API); overrides `[listen] data`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listener address; overrides `[listen] admin`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Run the eKYC API simulator that stands in for Tencent Cloud in tests and demos.
    UpstreamSim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// SecretId the simulator accepts (the gateway's EKYC_UPSTREAM_SECRET_ID).
        #[arg(long, env = "EKYC_SIM_SECRET_ID", default_value = "AKIDSIMULATOR")]
        secret_id: String,
        /// SecretKey the simulator verifies with (the gateway's EKYC_UPSTREAM_SECRET_KEY).
        #[arg(
            long,
            env = "EKYC_SIM_SECRET_KEY",
            hide_env_values = true,
            default_value = "simulator-secret-key"
        )]
        secret_key: String,
        /// Added latency in ms: `0`, `20`, or a uniform range `5..50`.
        #[arg(long, default_value = "0")]
        latency_ms: Latency,
        /// Share of calls answered with FailedOperation.ImageDecodeFailed (0.0-1.0).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
    },
    /// Operate a running gateway through its admin API: accounts, credentials, audit.
    Admin(admin::AdminArgs),
    /// The monthly billing job and the finance export, on the billing store.
    Billing(billing::BillingArgs),
    /// Reseal every SecretKey under EKYC_MASTER_KEY (old ones opened with
    /// EKYC_MASTER_KEY_PREVIOUS). See docs/CONFIGURATION.md, "Rotating the master key".
    RotateMasterKey {
        /// The gateway's configuration (for the store and Redis).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply the billing store's migrations (as `[store] migrate_url`, the schema owner,
    /// where set) and grant `[store] url`'s role what the gateway needs. `serve` and
    /// `billing` do the same at start; this runs it alone, e.g. before an upgrade.
    Migrate {
        /// The gateway's configuration; only its [store] section is read.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Everything on one machine with embedded defaults: simulator, gateway, demo account.
    Demo {
        /// Data listener address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Where the demo keeps its state; delete it to start over.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => {
            let overrides = crate::config::ListenOverrides {
                data: listen,
                admin: admin_listen,
            };
            // A gateway bills: without a price for every billable action it would count
            // calls nobody could be charged for.
            let config = match Config::load_with_listen(&config, &ProcessEnv, overrides)
                .and_then(|c| c.check_prices().map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let listeners = match Listeners::bind(config.data_listen, config.admin_listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "error: cannot listen on {} / {}: {e}",
                        config.data_listen, config.admin_listen
                    );
                    return ExitCode::from(1);
                }
            };
            exit(server::run(listeners, config, shutdown_signal()).await)
        }
        Command::UpstreamSim {
            listen,
            secret_id,
            secret_key,
            latency_ms,
            error_rate,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("error: --error-rate must be between 0.0 and 1.0");
                return ExitCode::from(2);
            }
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {listen}: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut config = SimConfig::new(secret_id, secret_key);
            config.latency = latency_ms;
            config.error_rate = error_rate;
            exit(sim::run(listener, config, shutdown_signal()).await)
        }
        Command::Billing(args) => exit(billing::run(args).await),
        Command::RotateMasterKey { config } => exit(keys::rotate(config).await),
        Command::Migrate { config } => {
            let urls = match Config::load_store_urls(&config, &ProcessEnv) {
                Ok(urls) => urls,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let owner_url = urls.migrate_url.as_deref().unwrap_or(&urls.url);
            exit(
                crate::store::Store::migrate(owner_url, Some(&urls.url))
                    .await
                    .map(|report| {
                        println!("schema at {} migrations", report.applied);
                        if let Some(role) = report.granted_to {
                            println!("role {role} granted the gateway's rights");
                        }
                    })
                    .map_err(Into::into),
            )
        }
        Command::Admin(args) => exit(admin::run(args).await),
        Command::Demo {
            listen,
            admin_listen,
            data_dir,
        } => {
            let options = crate::demo::DemoOptions {
                listen,
                admin_listen,
                data_dir,
            };
            exit(crate::demo::run(options, shutdown_signal()).await)
        }
    }
}

/// The exit status of a finished command (see `EXIT_CODES`).
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage =
                e.downcast_ref::<crate::config::ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EKYC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only help a person at a terminal; in a file or journald they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
