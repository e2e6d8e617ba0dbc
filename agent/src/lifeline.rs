//! Nothing a call starts outlives the agent, however the agent dies.
//!
//! At start the agent reaps what earlier agents with its id left on this host when they
//! died (processes in their calls' cgroups, containers with their pid label), then starts a
//! supervisor: the agent's own binary in `--cgroup-supervisor` mode, whose stdin is a pipe
//! the agent holds and never writes. When the agent is gone — exit, crash or SIGKILL — the
//! pipe reaches end of file, and the supervisor kills every process in the agent's calls'
//! cgroups (one `cgroup.kill`), removes the containers the agent created and exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use mcpfier_exec::Executor;
use mcpfier_exec::cgroup::{self, Cgroups};
use mcpfier_exec::container::Leftovers;
use tracing::{info, warn};

/// The running supervisor; the lifeline is cut (and the supervisor acts) when this is
/// dropped or the agent dies.
pub struct Lifeline {
    _stdin: tokio::process::ChildStdin,
    _child: tokio::process::Child,
}

/// Reaps what dead agents with this id left on this host, and returns the cgroups for this
/// agent's calls with their supervisor; `None` for either, with a warning, when this host has
/// no usable cgroup v2 or the supervisor could not start.
pub async fn start(id: &str, executor: &Executor) -> (Option<Cgroups>, Option<Lifeline>) {
    let cgroups = match Cgroups::open(id) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "no per-call cgroups: a command's descendants that leave its process group (setsid), and the commands of an agent killed with SIGKILL, can outlive their call");
            None
        }
    };
    if let Some(c) = &cgroups {
        let killed = c.reap_stale();
        if killed > 0 {
            warn!(killed, "killed processes an earlier run of this agent left");
        }
    }
    if let Ok(engine) = executor.docker().await {
        match engine.reap_leftovers(Leftovers::OfDeadProcesses).await {
            Ok(0) => {}
            Ok(removed) => warn!(
                removed,
                "removed containers an earlier run of this agent left"
            ),
            Err(e) => warn!(error = %e, "could not look for containers an earlier run left"),
        }
    }
    let Some(cgroups) = cgroups else {
        return (None, None);
    };
    match spawn_supervisor(id, cgroups.base()) {
        Ok(lifeline) => (Some(cgroups), Some(lifeline)),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "could not start the cgroup supervisor: the commands of an agent killed with SIGKILL can outlive it");
            (Some(cgroups), None)
        }
    }
}

fn spawn_supervisor(id: &str, base: &Path) -> anyhow::Result<Lifeline> {
    let exe = std::env::current_exe().context("find the agent's own binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--cgroup-supervisor")
        .arg(base)
        .arg("--owner")
        .arg(id)
        .arg("--agent-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn().context("start the cgroup supervisor")?;
    let stdin = child.stdin.take().context("the supervisor's stdin")?;
    info!(
        pid = child.id().unwrap_or_default(),
        cgroup = %base.display(),
        "cgroup supervisor started"
    );
    Ok(Lifeline {
        _stdin: stdin,
        _child: child,
    })
}

/// The supervisor process: waits for agent `agent_pid` (owner `owner`) to be gone, then
/// kills what its calls left under `base` and removes the containers it created.
pub async fn supervise(base: PathBuf, owner: String, agent_pid: u32) -> anyhow::Result<()> {
    // Signals meant for the agent's service (SIGTERM, SIGINT) must not end the supervisor
    // before the agent is gone: it exits on its own right after.
    use tokio::signal::unix::{SignalKind, signal};
    let _term = signal(SignalKind::terminate())?;
    let _int = signal(SignalKind::interrupt())?;
    let _hup = signal(SignalKind::hangup())?;
    let watched = base.clone();
    let killed =
        tokio::task::spawn_blocking(move || cgroup::supervise(&watched, std::io::stdin().lock()))
            .await
            .context("the lifeline reader")?;
    if killed > 0 {
        warn!(killed, cgroup = %base.display(), "agent gone: killed the processes its calls left");
    }
    let executor = Executor::new(owner);
    if let Ok(engine) = executor.docker().await {
        match engine.reap_leftovers(Leftovers::OfPid(agent_pid)).await {
            Ok(0) => {}
            Ok(removed) => warn!(removed, "agent gone: removed the containers its calls left"),
            Err(e) => warn!(error = %e, "agent gone: could not remove its containers"),
        }
    }
    Ok(())
}
