//! `paynode` subcommands.

pub mod demo;
pub mod dlq;
pub mod plugin;
pub mod plugin_build;
pub mod plugin_scaffold;
pub mod reconcile;
pub mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// A payment-processing node whose PSP adapters, retry policies and ledger
/// posting rules are sandboxed WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "paynode", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file; `PAYNODE_*` variables override it
    /// (e.g. PAYNODE_KAFKA__BROKERS=host:9092).
    #[arg(long, global = true, env = "PAYNODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Dev mode (same as auth.dev = true): the built-in HS256 dev secret,
    /// plain-http JWKS and the simulator PSP are allowed. Never in production.
    #[arg(long, global = true)]
    pub dev: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node: HTTP API and every stage with workers > 0 in `[stages]`.
    Serve {
        /// Log format; JSON lines by default.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
    },
    /// Apply database migrations and create Kafka topics (with DLQs).
    Migrate,
    /// Mint an HS256 JWT with the configured secret (the dev secret with --dev).
    Token {
        /// Role(s): payment:write, FINANCE, ADMIN. Repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Subject: the client; idempotency keys are scoped by it.
        #[arg(long, default_value = "dev-client")]
        subject: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Author, test and manage components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Check ledger and pipeline invariants; non-zero exit on a breach.
    Reconcile {
        /// Unsent outbox rows older than this many seconds are a breach.
        #[arg(long, default_value_t = 300)]
        outbox_age_secs: i64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a candidate posting-rules component over recorded orders and
    /// print how its journals differ from the ledger's (writes nothing).
    /// Exits non-zero if the candidate fails or breaks an invariant on any order.
    Replay {
        /// The candidate `.wasm` (posting-rules slot).
        component: PathBuf,
        /// Guest configuration, repeatable: --set key=value
        #[arg(long = "set", value_parser = plugin::parse_pair)]
        config: Vec<(String, String)>,
        /// The most recent recordings to replay.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also exit non-zero when any order's journals would change.
        #[arg(long)]
        fail_on_change: bool,
    },
    /// Inspect and replay dead-lettered messages.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Post sample payments to a running node and print what happened.
    Demo {
        /// Base URL of the node.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value_t = 3)]
        payments: usize,
        /// Seconds to wait for every order to reach a final state.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref(), cli.dev)?;
    match cli.command {
        Command::Serve { log_format } => {
            crate::telemetry::init(matches!(log_format, LogFormat::Json));
            let mut node = crate::node::start(config).await?;
            let token = node.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested; finishing in-flight work");
                token.cancel();
            });
            let result = node.wait().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            crate::telemetry::init(false);
            let pool = crate::store::connect(&config.database).await?;
            crate::store::migrate(&pool).await?;
            crate::kafka::create_topics(&config.kafka).await?;
            println!("migrations applied; topics and DLQs present");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            roles,
            subject,
            ttl_secs,
        } => {
            config.auth.validate()?;
            println!(
                "{}",
                crate::api::auth::mint(&config.auth, &subject, &roles, ttl_secs)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(command) => plugin::run(&config, command).await,
        Command::Reconcile {
            outbox_age_secs,
            json,
        } => reconcile::run(&config, outbox_age_secs, json).await,
        Command::Replay {
            component,
            config: pairs,
            limit,
            json,
            fail_on_change,
        } => {
            let options = replay::Options {
                component: &component,
                config: pairs,
                limit,
                json,
                fail_on_change,
            };
            replay::run(&config, options).await
        }
        Command::Dlq(command) => dlq::run(&config, command).await,
        Command::Demo {
            url,
            payments,
            wait_secs,
        } => demo::run(&config, &url, payments, wait_secs).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
