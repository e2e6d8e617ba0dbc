//! The one place that chooses how an [`Execution`] runs: as a local process group, or in a
//! container when it has a [`ContainerSpec`](crate::ContainerSpec). It owns the connection to
//! the Docker Engine: made on first use, and when it fails, tried again after a backoff
//! (1 s doubling to 30 s) rather than remembered as failed for the life of the process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpfier_common::telemetry::{self, Attribute, Kind, Span};
use mcpfier_common::tool::paths::{self, PathError};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cgroup::Cgroups;
use crate::container::{self, Engine};
use crate::error::{ErrorKind, HasKind};
use crate::model::{Event, Execution, Outcome};
use crate::process;

/// First pause after a failed Docker connect.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between Docker connects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the reaper looks for leftover containers.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// Why an execution could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local process could not be run: empty command, bad working directory, or a spawn or
    /// wait failure.
    #[error(transparent)]
    Process(#[from] process::Error),
    /// A container call could not run: no daemon, missing image, or an Engine API failure.
    #[error(transparent)]
    Container(#[from] container::Error),
    /// A `path` argument was refused on this host (outside its directory, missing, ...).
    #[error(transparent)]
    Path(#[from] PathError),
    /// A container call has `path` arguments, which resolve on the host, not in the
    /// container.
    #[error("a container tool can't take `path` parameters (parameter `{0}`)")]
    PathInContainer(String),
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Process(e) => e.kind(),
            Error::Container(e) => e.kind(),
            Error::Path(_) => ErrorKind::InvalidArguments,
            Error::PathInContainer(_) => ErrorKind::Invalid,
        }
    }
}

enum Docker {
    Untried,
    Connected(Engine),
    Failed {
        at: Instant,
        backoff: Duration,
        why: String,
    },
}

/// Runs executions; cheap to clone (one Docker connection shared by all clones).
#[derive(Clone)]
pub struct Executor {
    owner: String,
    /// The Docker socket; `None`: `$DOCKER_HOST` or /var/run/docker.sock.
    socket: Option<Arc<PathBuf>>,
    docker: Arc<tokio::sync::Mutex<Docker>>,
    /// Container removals that outlive an abandoned call.
    tasks: TaskTracker,
    /// Per-call cgroups for local processes, when this host has them.
    cgroups: Option<Cgroups>,
}

impl Executor {
    /// An executor whose containers carry `owner` in their owner label (the agent id, or
    /// `embedded-<host>`).
    pub fn new(owner: impl Into<String>) -> Executor {
        Executor {
            owner: owner.into(),
            socket: None,
            docker: Arc::new(tokio::sync::Mutex::new(Docker::Untried)),
            tasks: TaskTracker::new(),
            cgroups: None,
        }
    }

    /// The same executor, running each local process in a cgroup of its own under
    /// `cgroups`, so that nothing it starts outlives the call.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Executor {
        self.cgroups = Some(cgroups);
        self
    }

    /// The per-call cgroups, when this executor uses them.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    /// The same executor, talking to the daemon at `socket` instead of the default one.
    pub fn with_docker_socket(mut self, socket: impl Into<PathBuf>) -> Executor {
        self.socket = Some(Arc::new(socket.into()));
        self
    }

    /// The Docker Engine, connecting if there is none yet and the backoff after the last
    /// failure has passed; otherwise the last failure again.
    pub async fn docker(&self) -> Result<Engine, container::Error> {
        let mut state = self.docker.lock().await;
        let backoff = match &*state {
            Docker::Connected(engine) => return Ok(engine.clone()),
            Docker::Failed { at, backoff, why } if at.elapsed() < *backoff => {
                return Err(container::Error::NoDaemon(why.clone()));
            }
            Docker::Failed { backoff, .. } => (*backoff * 2).min(MAX_BACKOFF),
            Docker::Untried => FIRST_BACKOFF,
        };
        let socket = self.socket.as_deref().map(PathBuf::as_path);
        match Engine::connect(&self.owner, socket, self.tasks.clone()).await {
            Ok(engine) => {
                if matches!(&*state, Docker::Failed { .. }) {
                    info!("Docker reachable again");
                }
                *state = Docker::Connected(engine.clone());
                Ok(engine)
            }
            Err(e) => {
                let why = match &e {
                    container::Error::NoDaemon(why) => why.clone(),
                    other => other.to_string(),
                };
                if !matches!(&*state, Docker::Failed { .. }) {
                    warn!(error = %e, "no Docker daemon; container calls fail until one answers");
                }
                *state = Docker::Failed {
                    at: Instant::now(),
                    backoff,
                    why,
                };
                Err(e)
            }
        }
    }

    /// Runs `exec` as a process group, or in a container when it has a container spec.
    /// `call_id` and `tool` label the container. Output within the caps goes to `events`
    /// live; a non-zero exit is an outcome; errors mean nothing ran. The run is the span
    /// `execute process` or `execute container` under `trace`.
    pub async fn run(
        &self,
        exec: &Execution,
        call_id: &str,
        tool: &str,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
        trace: &telemetry::Context,
    ) -> Result<Outcome, Error> {
        let span = Span::start(Kind::Internal, trace, || {
            let mut attributes = vec![
                Attribute::new("gen_ai.tool.name", tool.to_owned()),
                Attribute::new("mcpfier.call_id", call_id.to_owned()),
            ];
            let name = match &exec.container {
                Some(spec) => {
                    attributes.push(Attribute::new("container.image.name", spec.image.clone()));
                    "execute container"
                }
                None => "execute process",
            };
            (name.into(), attributes)
        });
        let result = self.run_untraced(exec, call_id, tool, events, cancel).await;
        match &result {
            Ok(o) => {
                if let Some(code) = o.exit_code {
                    span.set(Attribute::new("process.exit.code", i64::from(code)));
                }
                if o.timed_out {
                    span.fail("timeout", "timed out");
                } else if o.cancelled {
                    span.fail("cancelled", "cancelled");
                } else if o.exit_code != Some(0) {
                    span.fail("tool_error", "the command failed");
                }
            }
            Err(e) => span.fail(&e.kind().to_string(), e.to_string()),
        }
        result
    }

    async fn run_untraced(
        &self,
        exec: &Execution,
        call_id: &str,
        tool: &str,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, Error> {
        let resolved;
        // A marker with no path sent for it is refused by `substitute` too.
        let exec = if exec.paths.is_empty() && !exec.argv.iter().any(|a| a.contains('\0')) {
            exec
        } else {
            if let Some(p) = exec.container.as_ref().and(exec.paths.first()) {
                return Err(Error::PathInContainer(p.param.clone()));
            }
            let mut argv = exec.argv.clone();
            paths::substitute(&mut argv, &exec.paths)?;
            resolved = Execution {
                argv,
                paths: vec![],
                ..exec.clone()
            };
            &resolved
        };
        match &exec.container {
            None => {
                let group = match &self.cgroups {
                    Some(cgroups) => Some(cgroups.call().map_err(process::Error::Cgroup)?),
                    None => None,
                };
                Ok(process::run(exec, events, cancel, group).await?)
            }
            Some(spec) => {
                let result = match self.docker().await {
                    Ok(engine) => engine.run(exec, spec, call_id, tool, events, cancel).await,
                    Err(e) => Err(e),
                };
                let outcome = match &result {
                    Ok(o) if o.timed_out => "timed_out".to_owned(),
                    Ok(o) if o.cancelled => "cancelled".to_owned(),
                    Ok(o) if o.oom_killed => "oom_killed".to_owned(),
                    Ok(_) => "ran".to_owned(),
                    Err(e) => e.kind().to_string(),
                };
                metrics::counter!(mcpfier_common::metrics::CONTAINER_CALLS, "outcome" => outcome)
                    .increment(1);
                Ok(result?)
            }
        }
    }

    /// The reaper of this executor's leftover containers, to be run by its owner.
    pub fn reaper(&self) -> Reaper {
        Reaper {
            executor: self.clone(),
            every: REAP_EVERY,
        }
    }
}

/// Removes containers this executor's owner left behind (a crash, a killed process), now
/// and then every minute; on shutdown, waits for removals still in flight.
pub struct Reaper {
    executor: Executor,
    every: Duration,
}

impl Reaper {
    /// Reaps until `shutdown`, then waits (up to 10 s) for background removals to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.executor.docker().await {
                    Ok(engine) => {
                        if let Err(e) = engine.reap().await {
                            warn!(error = %e, "reaping containers failed");
                        }
                    }
                    Err(e) => debug!(error = %e, "no Docker to reap"),
                },
                () = shutdown.cancelled() => break,
            }
        }
        self.executor.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.executor.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.executor.tasks.len(),
                "container removals still running at shutdown"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> Execution {
        Execution {
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(500),
            ..Execution::new(argv.iter().copied())
        }
    }

    #[tokio::test]
    async fn an_execution_without_a_container_runs_as_a_process() {
        let executor = Executor::new("test");
        let out = executor
            .run(
                &exec(&["/bin/echo", "hi"]),
                "c",
                "t",
                None,
                CancellationToken::new(),
                &telemetry::Context::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }

    #[tokio::test]
    async fn a_start_failure_has_the_start_failed_kind() {
        let err = Executor::new("test")
            .run(
                &exec(&["/nonexistent/x"]),
                "c",
                "t",
                None,
                CancellationToken::new(),
                &telemetry::Context::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StartFailed);
    }

    #[tokio::test]
    async fn a_failed_docker_connect_is_retried_after_a_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let executor = Executor::new("test").with_docker_socket(&socket);
        let first = executor.docker().await.err().expect("no socket yet");
        assert_eq!(first.kind(), ErrorKind::NoDaemon);
        // Within the backoff the last failure comes back at once, without a new attempt.
        let t = Instant::now();
        assert!(executor.docker().await.is_err());
        assert!(t.elapsed() < Duration::from_millis(500));
        let real = std::path::Path::new("/var/run/docker.sock");
        assert!(
            real.exists(),
            "this test needs a Docker Engine at /var/run/docker.sock"
        );
        std::os::unix::fs::symlink(real, &socket).unwrap();
        // Once the backoff has passed the next use connects.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match executor.docker().await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.kind(), ErrorKind::NoDaemon);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("still not connected after the backoff: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn the_reaper_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let reaper = Executor::new("test-reaper").reaper();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), reaper.run(shutdown))
            .await
            .expect("the reaper ends after shutdown");
    }
}
