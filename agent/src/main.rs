//! The `mcpfier-agent` binary: runs tool calls for coordinators over mutual-TLS gRPC.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcpfier_agent::calls::Calls;
use mcpfier_agent::config;
use mcpfier_agent::membership::{self, Membership};
use mcpfier_agent::server::{self, TlsState};
use mcpfier_agent::service::{Admission, AgentService};
use mcpfier_exec::Executor;
use mcpfier_exec::lifeline;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Runs mcpfier tool calls for coordinators (gRPC over mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "mcpfier-agent", version, about)]
#[command(
    after_help = "Examples:\n  mcpfier-agent --config /etc/mcpfier/agent.yaml\n  mcpfier-agent validate --config agent.yaml\n\n\
Signals: SIGTERM or SIGINT drains it (no new calls; running ones get drain_grace, a second\n\
signal kills them), leaves etcd and exits 0; SIGHUP reloads the TLS files."
)]
struct Cli {
    /// The agent config file.
    #[arg(
        long,
        short,
        global = true,
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
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Check the config (and read its TLS files) without starting: every problem, then exit 1;
    /// or a summary and exit 0.
    #[command(after_help = "Example:\n  mcpfier-agent validate --config agent.yaml")]
    Validate,
}

fn main() -> ExitCode {
    // The agent's own cgroup supervisor (see `mcpfier_exec::lifeline`) runs this binary too.
    if let Some(supervised) = lifeline::supervisor_requested() {
        return lifeline::run_supervisor(supervised);
    }
    let cli = Cli::parse();
    if let Some(AgentCommand::Validate) = cli.command {
        return validate(&cli.config);
    }
    let from_env = std::env::var("MCPFIER_LOG").ok();
    if let Err(e) = mcpfier_common::logging::init(
        cli.log.as_deref(),
        from_env.as_deref(),
        "info",
        cli.log_json,
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
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

/// `mcpfier-agent validate`: loads the config as a start would, and says what it found.
fn validate(path: &std::path::Path) -> ExitCode {
    match config::load(path).and_then(|l| TlsState::load(l.tls.clone()).map(|_| l)) {
        Ok(loaded) => {
            let c = &loaded.config;
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "ok: agent `{}` listens on {}, capacity {}, labels {}, {}",
                c.id,
                loaded.listen,
                c.capacity,
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels.join(",")
                },
                match &c.etcd {
                    Some(e) => format!("registers in etcd under {}", e.prefix),
                    None => "static (listed in the coordinator's fleet.agents)".to_owned(),
                }
            );
            ExitCode::SUCCESS
        }
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
    let telemetry = match &config.telemetry {
        Some(t) => {
            let started = mcpfier_common::telemetry::Telemetry::start(t, "mcpfier-agent")
                .map_err(anyhow::Error::msg)?;
            info!(endpoint = %t.otlp_endpoint, "exporting traces over OTLP");
            Some(started)
        }
        None => None,
    };
    let calls = Arc::new(Calls::default());
    let admission = Arc::new(Admission::default());
    let (listener, local) = server::bind(loaded.listen).await?;
    info!(id = %config.id, address = %local, capacity = config.capacity, "agent listening on {local}");
    if config.policy.signers.required() {
        info!(keys = %config.policy.signers.trusted(), "runs only signed tools (policy.tool_signers)");
    }

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install a SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install a SIGHUP handler")?;
    // Every long-running task of the agent, and (apart) the running calls'.
    let tasks = TaskTracker::new();
    let call_tasks = TaskTracker::new();
    tasks.spawn(evict_finished_calls(calls.clone(), shutdown.clone()));
    let executor = Executor::new(config.id.clone());
    let (cgroups, supervisor) = lifeline::start(&config.id, &executor).await;
    if let (Some(l), Some(c)) = (&supervisor, &cgroups) {
        info!(pid = l.pid(), cgroup = %c.base().display(), "cgroup supervisor started");
    }
    let executor = match cgroups {
        Some(c) => executor.with_cgroups(c),
        None => executor,
    };
    let docker = match executor.docker().await {
        Ok(_) => {
            info!("Docker available: container calls enabled");
            true
        }
        Err(e) => {
            warn!(error = %e, "no Docker: container calls are refused and the docker capability is not advertised");
            false
        }
    };
    tasks.spawn(executor.reaper().run(shutdown.clone()));
    if let Some(addr) = loaded.metrics_listen {
        let listener = mcpfier_agent::metrics::bind(addr).await?;
        tasks.spawn(mcpfier_agent::metrics::serve(
            listener,
            calls.clone(),
            admission.clone(),
            config.capacity,
            config.etcd.is_some(),
            shutdown.clone(),
        ));
    }
    let service = AgentService::new(
        config.clone(),
        calls.clone(),
        admission.clone(),
        executor,
        docker,
        call_tasks.clone(),
    );
    let server_shutdown = CancellationToken::new();
    let mut server = tasks.spawn(server::serve(
        listener,
        tls.clone(),
        service,
        server_shutdown.clone(),
    ));
    let stop = |tasks: TaskTracker, call_tasks: TaskTracker| async move {
        call_tasks.close();
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            call_tasks.wait().await;
            tasks.wait().await;
        })
        .await;
    };

    let mut registration = None;
    if let Some(etcd) = &config.etcd {
        let address = match &config.advertise {
            Some(a) => a.clone(),
            None => local.to_string(),
        };
        let options = membership::Options {
            id: config.id.clone(),
            etcd: etcd.clone(),
            record: membership::initial_record(address, &config, docker),
            on_lease_loss: config.on_lease_loss,
            access: loaded.etcd_access.clone(),
        };
        let (m, rx) = Membership::build(options, calls.clone(), admission.clone());
        registration = Some(tasks.spawn(m.run(shutdown.clone())));
        // Wait for the first registration, but keep serving meanwhile; a duplicate id is fatal.
        let early_exit = tokio::select! {
            first = rx => match first {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(e.into())),
                Err(_) => Some(Err(anyhow::anyhow!("the etcd registration task ended unexpectedly"))),
            },
            _ = term.recv() => Some(Ok(())),
            _ = int.recv() => Some(Ok(())),
        };
        if let Some(result) = early_exit {
            shutdown.cancel();
            server_shutdown.cancel();
            calls.cancel_all();
            stop(tasks, call_tasks).await;
            return result;
        }
    }

    // Serve until a signal (or a fatal membership error).
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match tls.reload() {
                Ok(()) => info!("reloaded the TLS files"),
                Err(e) => error!(error = %format!("{e:#}"), "TLS reload failed; keeping the old certificates"),
            },
            () = shutdown.cancelled() => break,
            r = &mut server => return r.context("the gRPC server task")?,
        }
    }

    // Drain: no new calls; running ones get the grace, or until a second signal.
    let grace = config.drain_grace.get();
    info!(running = calls.running(), grace = %humantime::format_duration(grace), "draining");
    admission.set_draining();
    let mut running = calls.watch_running();
    tokio::select! {
        _ = running.wait_for(|n| *n == 0) => {}
        () = tokio::time::sleep(grace) => warn!(running = calls.running(), "drain grace over; killing what is left"),
        _ = term.recv() => warn!("second signal; killing what is left"),
        _ = int.recv() => warn!("second signal; killing what is left"),
    }
    calls.cancel_all();
    if tokio::time::timeout(Duration::from_secs(5), running.wait_for(|n| *n == 0))
        .await
        .is_err()
    {
        warn!(
            running = calls.running(),
            "calls still running 5s after they were killed"
        );
    }
    // Leave etcd (the lease is revoked), then stop serving.
    shutdown.cancel();
    if let Some(handle) = registration {
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
    server_shutdown.cancel();
    stop(tasks, call_tasks).await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// Forgets finished calls past their retention, every 5 s until `shutdown`.
async fn evict_finished_calls(calls: Arc<Calls>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => calls.evict_old(),
            () = shutdown.cancelled() => return,
        }
    }
}
