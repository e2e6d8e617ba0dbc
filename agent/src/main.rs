//! The `mcpfier-agent` binary: runs tool calls for coordinators over mutual-TLS gRPC.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcpfier_agent::calls::Calls;
use mcpfier_agent::server::{self, TlsState};
use mcpfier_agent::{config, service::AgentService};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Runs mcpfier tool calls for coordinators (gRPC over mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "mcpfier-agent", version, about)]
#[command(
    after_help = "Example:\n  mcpfier-agent --config /etc/mcpfier/agent.yaml\n\n\
Signals: SIGTERM or SIGINT stops it (running calls are killed); SIGHUP reloads the TLS files."
)]
struct Cli {
    /// The agent config file.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/mcpfier/agent.yaml"
    )]
    config: PathBuf,
    /// Log filter, e.g. `debug` (logs go to stderr). Also $MCPFIER_LOG.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("MCPFIER_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = config::load(&cli.config)?;
    let tls = TlsState::load(loaded.tls.clone())?;
    let config = Arc::new(loaded.config);
    let calls = Arc::new(Calls::default());
    let (listener, local) = server::bind(loaded.listen).await?;
    info!(id = %config.id, address = %local, capacity = config.capacity, "agent listening on {local}");

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install a SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install a SIGHUP handler")?;
    {
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => match tls.reload() {
                        Ok(()) => info!("reloaded the TLS files"),
                        Err(e) => error!(error = %format!("{e:#}"), "TLS reload failed; keeping the old certificates"),
                    },
                }
            }
            info!("shutting down");
            shutdown.cancel();
        });
    }
    {
        let calls = calls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => calls.evict_old(),
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
    let service = AgentService::new(config, calls.clone());
    let served = server::serve(listener, tls, service, shutdown.clone()).await;
    calls.cancel_all();
    // Give cancelled calls a moment to kill their process groups and report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while calls.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served
}
