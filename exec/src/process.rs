//! Runs one resolved command as a process group and reports what happened.
//!
//! Invariants: the child never sees the caller's environment (only [`DEFAULT_PATH`] and the
//! variables it is given); stdin is closed; each of stdout and stderr keeps at most
//! `max_output` bytes; when the leader exits, times out or is cancelled, every process left in
//! its group is killed; dropping the future kills the group too. With a per-call cgroup
//! ([`crate::cgroup`]) the same holds for descendants that left the group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::cgroup::CallGroup;
use crate::error::{ErrorKind, HasKind};
use crate::model::{Captured, Chunk, DEFAULT_PATH, Event, Execution, Outcome, Stream};
use crate::spawn;

/// How long output is still read after the process group is gone. A descendant that left the
/// group (setsid) could otherwise hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `argv` has no program.
    #[error("the command is empty")]
    EmptyCommand,
    /// The working directory (named here) is missing or not a directory.
    #[error("working directory {0} does not exist or is not a directory")]
    Workdir(PathBuf),
    #[error(
        "could not start `{program}`: {source} (command[0] must be an absolute path, or a program on the child's PATH: {path})"
    )]
    /// The OS could not start the program (not found, not executable, ...).
    Spawn {
        /// `argv[0]` as given.
        program: String,
        /// The `PATH` it was looked up on, or a placeholder when that `PATH` is a secret.
        path: String,
        /// The OS error from spawning.
        source: io::Error,
    },
    /// Waiting for the child's exit status failed.
    #[error("wait for the command: {0}")]
    Wait(io::Error),
    /// The call's cgroup could not be created.
    #[error("create the call's cgroup: {0}")]
    Cgroup(io::Error),
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::EmptyCommand => ErrorKind::Invalid,
            Error::Workdir(_) | Error::Spawn { .. } | Error::Wait(_) | Error::Cgroup(_) => {
                ErrorKind::StartFailed
            }
        }
    }
}

/// The file a call would run for `program` with the tool's `path` (its `PATH`) from `cwd`,
/// looked up as a call looks it up; `None` when there is no executable file there. For
/// checking a config before any call.
pub fn find_program(program: &str, path: &str, cwd: Option<&std::path::Path>) -> Option<PathBuf> {
    let found = spawn::resolve(program, path, cwd)?;
    let on_disk = match cwd {
        Some(cwd) if found.is_relative() => cwd.join(&found),
        _ => found.clone(),
    };
    spawn::is_executable(&on_disk).then_some(found)
}

/// Runs `exec` to completion, timeout or cancellation.
///
/// When `events` is given, it gets [`Event::Started`] and then output within the caps as it
/// arrives. A non-zero exit is an [`Outcome`], not an error; errors mean nothing ran.
///
/// With `group`, the child starts inside that cgroup, and everything in the cgroup is killed
/// when the run ends: descendants that left the process group (`setsid`) too.
pub async fn run(
    exec: &Execution,
    events: Option<UnboundedSender<Event>>,
    cancel: CancellationToken,
    group: Option<CallGroup>,
) -> Result<Outcome, Error> {
    let program = exec.argv.first().ok_or(Error::EmptyCommand)?;
    if let Some(dir) = &exec.workdir
        && !dir.is_dir()
    {
        return Err(Error::Workdir(dir.clone()));
    }
    let path_var = exec.env.iter().rfind(|v| v.name == "PATH");
    let path = path_var.map_or(DEFAULT_PATH, |v| v.value.as_str());
    let path_shown = match path_var {
        Some(v) if v.secret => "(the tool's PATH, a secret)",
        _ => path,
    };
    let spawn_error = |source| Error::Spawn {
        program: program.clone(),
        path: path_shown.to_owned(),
        source,
    };
    let resolved = match &exec.program {
        Some(resolved) => resolved.clone(),
        None => spawn::resolve(program, path, exec.workdir.as_deref()).ok_or_else(|| {
            spawn_error(io::Error::new(
                io::ErrorKind::NotFound,
                "no such program on the PATH",
            ))
        })?,
    };
    let mut env: Vec<(&str, &str)> = vec![("PATH", path)];
    env.extend(
        exec.env
            .iter()
            .filter(|v| v.name != "PATH")
            .map(|v| (v.name.as_str(), v.value.as_str())),
    );

    let started = Instant::now();
    let spawned = spawn::spawn(&spawn::Command {
        program: resolved,
        argv: &exec.argv,
        env,
        cwd: exec.workdir.as_deref(),
        cgroup: group.as_ref(),
    })
    .map_err(spawn_error)?;
    let mut child = spawned.child;
    let mut group_guard = GroupGuard(Some(Pid::from_raw(child.id() as i32)));
    // Dropped with the future, the cgroup kills what is left in it.
    let cgroup = group;
    if let Some(tx) = &events {
        let _ = tx.send(Event::Started { pid: child.id() });
    }

    let stop_reading = CancellationToken::new();
    let stdout = pipe::Receiver::from_owned_fd(spawned.stdout).map_err(Error::Wait)?;
    let stderr = pipe::Receiver::from_owned_fd(spawned.stderr).map_err(Error::Wait)?;
    // Both streams are read in this future (no task of their own), so reading ends with the
    // call, and dropping the call drops the readers.
    let readers = async {
        tokio::join!(
            read_capped(
                stdout,
                Stream::Stdout,
                exec.max_output,
                events.clone(),
                stop_reading.clone(),
            ),
            read_capped(
                stderr,
                Stream::Stderr,
                exec.max_output,
                events.clone(),
                stop_reading.clone(),
            )
        )
    };
    tokio::pin!(readers);
    let mut read: Option<(Captured, Captured)> = None;

    let mut timed_out = false;
    let mut cancelled = false;
    let status: ExitStatus = {
        let wait = async {
            tokio::select! {
                status = child.wait() => status.map_err(Error::Wait),
                () = tokio::time::sleep(exec.timeout) => {
                    timed_out = true;
                    group_guard.signal(Signal::SIGTERM);
                    match tokio::time::timeout(exec.kill_grace, child.wait()).await {
                        Ok(status) => status.map_err(Error::Wait),
                        Err(_) => {
                            group_guard.signal(Signal::SIGKILL);
                            child.wait().await.map_err(Error::Wait)
                        }
                    }
                }
                () = cancel.cancelled() => {
                    cancelled = true;
                    group_guard.signal(Signal::SIGKILL);
                    child.wait().await.map_err(Error::Wait)
                }
            }
        };
        tokio::pin!(wait);
        loop {
            tokio::select! {
                status = &mut wait => break status?,
                done = &mut readers, if read.is_none() => read = Some(done),
            }
        }
    };
    let duration = started.elapsed();
    // The leader is gone; anything it left in its group goes too, and in its cgroup.
    group_guard.signal(Signal::SIGKILL);
    group_guard.0 = None;
    if let Some(cgroup) = cgroup {
        cgroup.finish();
    }

    let (out, err) = match read {
        Some(done) => done,
        None => tokio::select! {
            done = &mut readers => done,
            () = tokio::time::sleep(DRAIN_AFTER_EXIT) => {
                stop_reading.cancel();
                readers.await
            }
        },
    };

    Ok(Outcome {
        exit_code: status.code(),
        signal: status.signal(),
        stdout: out.data,
        stderr: err.data,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        timed_out,
        cancelled,
        duration,
        oom_killed: false,
    })
}

/// Kills the whole process group when dropped while still armed.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.0 {
            // ESRCH only means the group is already empty.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    max: u64,
    output: Option<UnboundedSender<Event>>,
    stop: CancellationToken,
) -> Captured {
    let mut captured = Captured::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = stop.cancelled() => break,
        };
        let kept = captured.take(&buf[..n], max);
        if !kept.is_empty()
            && let Some(tx) = &output
        {
            let _ = tx.send(Event::Output(Chunk {
                stream,
                data: kept.to_vec(),
            }));
        }
        // Past the cap the bytes are read and dropped, so the child never blocks on a full pipe.
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EnvVar;

    fn exec(argv: &[&str]) -> Execution {
        Execution {
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(500),
            ..Execution::new(argv.iter().copied())
        }
    }

    fn alive(pid: i32) -> bool {
        u32::try_from(pid).is_ok_and(crate::cgroup::process_alive)
    }

    async fn wait_until_dead(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn captures_exit_code_and_both_streams() {
        let out = run(
            &exec(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
            None,
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.timed_out && !out.truncated());
    }

    #[tokio::test]
    async fn child_sees_only_the_given_environment() {
        let mut e = exec(&["/usr/bin/env"]);
        e.env.push(EnvVar {
            name: "GREETING".into(),
            value: "hi".into(),
            secret: false,
        });
        let out = run(&e, None, CancellationToken::new(), None).await.unwrap();
        let mut lines: Vec<_> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        lines.sort();
        assert_eq!(lines, vec!["GREETING=hi", &format!("PATH={DEFAULT_PATH}")]);
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_and_flagged() {
        let mut e = exec(&["/bin/sh", "-c", "head -c 100000 /dev/zero"]);
        e.max_output = 1000;
        let out = run(&e, None, CancellationToken::new(), None).await.unwrap();
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.stdout_truncated && !out.stderr_truncated);
        assert_eq!(out.exit_code, Some(0));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut e = exec(&["/bin/sh", "-c", &script]);
        e.timeout = Duration::from_millis(500);
        let out = run(&e, None, CancellationToken::new(), None).await.unwrap();
        assert!(out.timed_out);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_until_dead(pid).await, "grandchild {pid} survived");
    }

    /// Runs a command that starts a `setsid` daemon and exits; returns the daemon's pid.
    async fn leave_a_daemon(group: Option<CallGroup>) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("daemon");
        let script = format!(
            "setsid /bin/sh -c 'echo $$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 300' & while [ ! -s {f} ]; do :; done",
            f = pidfile.display()
        );
        let out = run(
            &exec(&["/bin/sh", "-c", &script]),
            None,
            CancellationToken::new(),
            group,
        )
        .await
        .unwrap();
        assert_eq!(out.exit_code, Some(0));
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_setsid_daemon_dies_with_its_call_in_a_cgroup() {
        let cgroups = crate::cgroup::Cgroups::open(&format!("test-{}", std::process::id()))
            .expect("this machine has a writable cgroup v2 (/sys/fs/cgroup/unified)");
        // Without the cgroup the daemon outlives the call (it left the process group)...
        let escaped = leave_a_daemon(None).await;
        assert!(alive(escaped), "the control daemon should have survived");
        let _ = nix::sys::signal::kill(Pid::from_raw(escaped), Signal::SIGKILL);
        // ...with it, it does not.
        let group = cgroups.call().unwrap();
        let held_a_daemon = group.dir().to_owned();
        let daemon = leave_a_daemon(Some(group)).await;
        assert!(
            wait_until_dead(daemon).await,
            "daemon {daemon} outlived its call"
        );
        // A cgroup that still held processes is removed (off the call's path: poll for it)...
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while held_a_daemon.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!held_a_daemon.exists(), "the call's cgroup was left");
        // ...and never handed out again; one its call left empty is.
        let group = cgroups.call().unwrap();
        let emptied = group.dir().to_owned();
        assert_ne!(emptied, held_a_daemon);
        let out = run(
            &exec(&["/bin/true"]),
            None,
            CancellationToken::new(),
            Some(group),
        )
        .await
        .unwrap();
        assert_eq!(out.exit_code, Some(0));
        let again = cgroups.call().unwrap();
        assert_eq!(again.dir(), emptied, "an empty cgroup was not reused");
        let procs = std::fs::read_to_string(again.dir().join("cgroup.procs")).unwrap();
        assert_eq!(procs, "", "a reused cgroup must be empty");
        again.finish();
        cgroups.close();
        assert!(
            !cgroups.base().exists(),
            "close left {}",
            cgroups.base().display()
        );
    }

    #[tokio::test]
    async fn a_term_ignoring_command_is_killed_after_the_grace() {
        let mut e = exec(&["/bin/sh", "-c", "trap '' TERM; sleep 300"]);
        e.timeout = Duration::from_millis(200);
        e.kill_grace = Duration::from_millis(200);
        let out = run(&e, None, CancellationToken::new(), None).await.unwrap();
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(9));
        assert!(out.duration < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancellation_kills_at_once() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let out = run(&exec(&["/bin/sleep", "300"]), None, cancel, None)
            .await
            .unwrap();
        assert!(out.cancelled && !out.timed_out);
        assert!(out.duration < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; sleep 300", pidfile.display());
        let e = exec(&["/bin/sh", "-c", &script]);
        let fut = run(&e, None, CancellationToken::new(), None);
        let _ = tokio::time::timeout(Duration::from_millis(500), fut).await;
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_until_dead(pid).await, "shell {pid} survived");
    }

    #[tokio::test]
    async fn output_is_streamed_live() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = run(
            &exec(&["/bin/sh", "-c", "echo a; echo b >&2"]),
            Some(tx),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        let mut seen = vec![];
        let mut started = false;
        while let Ok(event) = rx.try_recv() {
            match event {
                Event::Started { pid } => started = pid > 0 && seen.is_empty(),
                Event::Output(chunk) => seen.push((chunk.stream, chunk.data)),
            }
        }
        assert!(started, "Started comes first, with the pid");
        assert!(seen.contains(&(Stream::Stdout, b"a\n".to_vec())));
        assert!(seen.contains(&(Stream::Stderr, b"b\n".to_vec())));
        assert_eq!(out.exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let err = run(
            &exec(&["/nonexistent/tool"]),
            None,
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/tool"), "{err}");
        assert!(err.contains("absolute path"), "{err}");
    }

    #[tokio::test]
    async fn a_spawn_error_does_not_show_a_secret_path() {
        let mut e = exec(&["no-such-program-xyz"]);
        e.env.push(EnvVar {
            name: "PATH".into(),
            value: "/opt/secret-token-dir".into(),
            secret: true,
        });
        let err = run(&e, None, CancellationToken::new(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-program-xyz"), "{err}");
        assert!(!err.contains("secret-token-dir"), "{err}");
    }
}
