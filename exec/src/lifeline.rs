//! Nothing a call starts outlives the process that runs it (an agent, or a coordinator that
//! runs tools in-process), however that process dies.
//!
//! At start the runner reaps what earlier runners with its owner id left on this host when
//! they died (processes in their calls' cgroups, containers with their pid label), then
//! starts a supervisor: its own binary, run as `<binary> --cgroup-supervisor DIR --owner ID
//! --agent-pid PID` (each binary calls [`supervisor_requested`] before parsing its own
//! command line), whose stdin is a pipe the runner holds and never writes. When the runner is
//! gone — exit, crash or SIGKILL — the pipe reaches end of file, and the supervisor kills
//! every process in the runner's calls' cgroups (one `cgroup.kill`), removes the containers
//! it created and exits.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tracing::{debug, warn};

use crate::Executor;
use crate::cgroup::{self, Cgroups};
use crate::container::Leftovers;

/// The flag that starts a binary as a supervisor.
const SUPERVISOR_FLAG: &str = "--cgroup-supervisor";

/// The running supervisor; the lifeline is cut (and the supervisor acts) when this is
/// dropped or the runner dies.
pub struct Lifeline {
    pid: u32,
    _stdin: tokio::process::ChildStdin,
    _child: tokio::process::Child,
}

impl Lifeline {
    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// What a supervisor watches: the runner's call cgroups, its owner id and its pid.
#[derive(Debug, PartialEq, Eq)]
pub struct Supervised {
    /// The runner's cgroup directory, `<...>/mcpfier-<owner>/<pid>`.
    pub base: PathBuf,
    /// The runner's owner id (its containers carry it).
    pub owner: String,
    /// The runner's pid.
    pub pid: u32,
}

/// `Some` when this process was started as a supervisor (its first argument is
/// `--cgroup-supervisor`): what to supervise, or why the rest of the command line is wrong.
pub fn supervisor_requested() -> Option<Result<Supervised, String>> {
    parse_supervisor_args(std::env::args_os().skip(1))
}

fn parse_supervisor_args(
    mut args: impl Iterator<Item = OsString>,
) -> Option<Result<Supervised, String>> {
    if args.next()? != SUPERVISOR_FLAG {
        return None;
    }
    let usage = || format!("usage: {SUPERVISOR_FLAG} DIR --owner ID --agent-pid PID (internal)");
    let rest: Vec<OsString> = args.collect();
    let [base, owner_flag, owner, pid_flag, pid] = rest.as_slice() else {
        return Some(Err(usage()));
    };
    if owner_flag != "--owner" || pid_flag != "--agent-pid" {
        return Some(Err(usage()));
    }
    let (Some(owner), Some(pid)) = (owner.to_str(), pid.to_str().and_then(|p| p.parse().ok()))
    else {
        return Some(Err(usage()));
    };
    Some(Ok(Supervised {
        base: PathBuf::from(base),
        owner: owner.to_owned(),
        pid,
    }))
}

/// Reaps what dead runners with this owner id left on this host, and returns the cgroups for
/// this runner's calls with their supervisor; `None` for either, with a warning, when this
/// host has no usable cgroup v2 or the supervisor could not start.
pub async fn start(id: &str, executor: &Executor) -> (Option<Cgroups>, Option<Lifeline>) {
    let cgroups = match Cgroups::open(id) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "no per-call cgroups: a command's descendants that leave its process group (setsid), and the commands of a process killed with SIGKILL, can outlive their call");
            None
        }
    };
    if let Some(c) = &cgroups {
        let killed = c.reap_stale();
        if killed > 0 {
            warn!(killed, "killed processes an earlier run left");
        }
    }
    if let Ok(engine) = executor.docker().await {
        match engine.reap_leftovers(Leftovers::OfDeadProcesses).await {
            Ok(0) => {}
            Ok(removed) => warn!(removed, "removed containers an earlier run left"),
            Err(e) => warn!(error = %e, "could not look for containers an earlier run left"),
        }
    }
    let Some(cgroups) = cgroups else {
        return (None, None);
    };
    match spawn_supervisor(id, cgroups.base()) {
        Ok(lifeline) => (Some(cgroups), Some(lifeline)),
        Err(e) => {
            warn!(error = %e, "could not start the cgroup supervisor: the commands of a process killed with SIGKILL can outlive it");
            (Some(cgroups), None)
        }
    }
}

fn spawn_supervisor(id: &str, base: &Path) -> io::Result<Lifeline> {
    let context = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let exe = std::env::current_exe().map_err(context("find this process's own binary"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(SUPERVISOR_FLAG)
        .arg(base)
        .arg("--owner")
        .arg(id)
        .arg("--agent-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(context("start the cgroup supervisor"))?;
    let stdin = child.stdin.take().expect("stdin was piped");
    let pid = child.id().unwrap_or_default();
    // Debug: `mcpfier call` prints only the command's output; the agent logs it at info.
    debug!(pid, cgroup = %base.display(), "cgroup supervisor started");
    Ok(Lifeline {
        pid,
        _stdin: stdin,
        _child: child,
    })
}

/// The whole of a supervisor process's `main`: logs to stderr as `$MCPFIER_LOG` says
/// (`info` by default), supervises, and exits.
pub fn run_supervisor(requested: Result<Supervised, String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let supervised = match requested {
        Ok(s) => s,
        Err(usage) => {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
    };
    let from_env = std::env::var("MCPFIER_LOG").ok();
    if let Err(e) = mcpfier_common::logging::init(None, from_env.as_deref(), "info", false) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(supervise(supervised)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cgroup supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The supervisor process: waits for the runner to be gone, then kills what its calls left
/// under its cgroup and removes the containers it created.
pub async fn supervise(watched: Supervised) -> io::Result<()> {
    // Signals meant for the runner's service (SIGTERM, SIGINT) must not end the supervisor
    // before the runner is gone: it exits on its own right after.
    use tokio::signal::unix::{SignalKind, signal};
    let _term = signal(SignalKind::terminate())?;
    let _int = signal(SignalKind::interrupt())?;
    let _hup = signal(SignalKind::hangup())?;
    let Supervised { base, owner, pid } = watched;
    let dir = base.clone();
    let killed =
        tokio::task::spawn_blocking(move || cgroup::supervise(&dir, std::io::stdin().lock()))
            .await
            .map_err(io::Error::other)?;
    if killed > 0 {
        warn!(killed, cgroup = %base.display(), "process gone: killed what its calls left");
    }
    let executor = Executor::new(owner);
    if let Ok(engine) = executor.docker().await {
        match engine.reap_leftovers(Leftovers::OfPid(pid)).await {
            Ok(0) => {}
            Ok(removed) => warn!(
                removed,
                "process gone: removed the containers its calls left"
            ),
            Err(e) => warn!(error = %e, "process gone: could not remove its containers"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<Result<Supervised, String>> {
        parse_supervisor_args(args.iter().map(OsString::from))
    }

    #[test]
    fn only_the_supervisor_flag_first_starts_a_supervisor() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["serve", "--cgroup-supervisor"]), None);
        assert_eq!(
            parse(&[
                "--cgroup-supervisor",
                "/cg/x/1",
                "--owner",
                "a",
                "--agent-pid",
                "7"
            ]),
            Some(Ok(Supervised {
                base: "/cg/x/1".into(),
                owner: "a".into(),
                pid: 7,
            }))
        );
        for bad in [
            &["--cgroup-supervisor"][..],
            &[
                "--cgroup-supervisor",
                "/cg",
                "--owner",
                "a",
                "--agent-pid",
                "x",
            ],
            &[
                "--cgroup-supervisor",
                "/cg",
                "--agent-pid",
                "7",
                "--owner",
                "a",
            ],
            &[
                "--cgroup-supervisor",
                "/cg",
                "--owner",
                "a",
                "--agent-pid",
                "7",
                "more",
            ],
        ] {
            let err = parse(bad).unwrap().unwrap_err();
            assert!(err.contains("usage: --cgroup-supervisor DIR"), "{err}");
        }
    }
}
