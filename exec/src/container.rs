//! Runs a resolved execution in a hardened Docker container through the Engine API (bollard;
//! never the docker CLI).
//!
//! Whatever the tool asks: all capabilities dropped, no-new-privileges, an init process,
//! labels `mcpfier.call_id`, `mcpfier.tool`, `mcpfier.owner`; the environment goes through
//! the API (never argv); output is attached before start and capped like a process's; the
//! container is removed after the call, on timeout, on cancellation, and when the future is
//! dropped. A reaper removes containers carrying this owner's label that no call tracks.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::{ErrorKind, HasKind};
use crate::model::{
    Captured, Chunk, ContainerSpec, DEFAULT_PATH, Event, Execution, Outcome, Pull, Stream,
};

/// Label naming the call a container belongs to.
pub const LABEL_CALL: &str = "mcpfier.call_id";
/// Label naming the tool.
pub const LABEL_TOOL: &str = "mcpfier.tool";
/// Label naming the agent (or embedded coordinator) that owns the container.
pub const LABEL_OWNER: &str = "mcpfier.owner";
/// Label with the Unix time (ms) after which the call is over whatever happens: its start
/// plus timeout plus grace. The reaper leaves younger containers alone, so two processes
/// with the same owner never remove each other's running calls.
pub const LABEL_DEADLINE: &str = "mcpfier.deadline_ms";
/// Label: the pid of the process that created the container, so that what a dead process
/// left can be told from what a live one with the same owner runs.
pub const LABEL_PID: &str = "mcpfier.pid";

/// Which untracked containers of this owner a reap removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Those whose deadline has passed (the periodic reaper).
    PastDeadline,
    /// Those whose creating process is gone, and those past their deadline (an agent at
    /// start).
    OfDeadProcesses,
    /// Those created by this pid (a dead agent's supervisor).
    OfPid(u32),
}

/// Why a container call could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to or pinging the Docker daemon failed; holds the client's reason.
    #[error("no Docker daemon: {0} (is /var/run/docker.sock there and the daemon running?)")]
    NoDaemon(String),
    /// The image (named here) is not on the host and the pull policy is `never`.
    #[error(
        "image `{0}` is not present and the tool says pull: never; build or load it on this host"
    )]
    ImageMissing(String),
    /// Pulling a missing image failed.
    #[error("pull image `{image}`: {why}")]
    Pull {
        /// The image reference being pulled.
        image: String,
        /// The daemon's or registry's reason.
        why: String,
    },
    /// Any other Engine API call failed (inspect the image, create, attach, start, list).
    #[error("{what}: {why}")]
    Docker {
        /// The step that failed, as a verb phrase, e.g. `create the container`.
        what: &'static str,
        /// The Engine API's reason.
        why: String,
    },
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::NoDaemon(_) => ErrorKind::NoDaemon,
            Error::ImageMissing(_) => ErrorKind::ImageMissing,
            Error::Pull { .. } | Error::Docker { .. } => ErrorKind::StartFailed,
        }
    }
}

fn docker_err(what: &'static str) -> impl Fn(bollard::errors::Error) -> Error {
    move |e| Error::Docker {
        what,
        why: e.to_string(),
    }
}

/// A connection to the Docker Engine, and the containers this process owns.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    owner: String,
    tracked: Arc<Mutex<HashSet<String>>>,
    tasks: TaskTracker,
}

impl Engine {
    /// Connects to the daemon (`socket`, or the local default: `$DOCKER_HOST` or
    /// /var/run/docker.sock) and agrees on an API version. `owner` labels every container
    /// this engine creates (the agent id, or `embedded-<host>`); `tasks` runs removals that
    /// outlive an abandoned call.
    pub async fn connect(
        owner: &str,
        socket: Option<&Path>,
        tasks: TaskTracker,
    ) -> Result<Engine, Error> {
        let no_daemon = |e: bollard::errors::Error| Error::NoDaemon(e.to_string());
        let docker = match socket {
            Some(path) => Docker::connect_with_unix(
                &path.display().to_string(),
                120,
                bollard::API_DEFAULT_VERSION,
            ),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(no_daemon)?
        .negotiate_version()
        .await
        .map_err(no_daemon)?;
        docker.ping().await.map_err(no_daemon)?;
        Ok(Engine {
            docker,
            owner: owner.to_owned(),
            tracked: Arc::new(Mutex::new(HashSet::new())),
            tasks,
        })
    }

    /// The Engine API client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes containers with this owner's label that no call of this process tracks and
    /// whose deadline has passed (leftovers of a crash). Returns how many it removed.
    pub async fn reap(&self) -> Result<usize, Error> {
        self.reap_leftovers(Leftovers::PastDeadline).await
    }

    /// Removes the containers with this owner's label that no call of this process tracks
    /// and that `which` selects. Returns how many it removed.
    pub async fn reap_leftovers(&self, which: Leftovers) -> Result<usize, Error> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_OWNER}={}", self.owner)],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err("list containers"))?;
        let mut removed = 0;
        for c in list {
            let Some(id) = c.id else { continue };
            if self.tracked().contains(&id) {
                continue;
            }
            let label = |name: &str| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(name))
                    .and_then(|d| d.parse::<u64>().ok())
            };
            let past_deadline =
                label(LABEL_DEADLINE).unwrap_or(0) <= mcpfier_common::membership::now_ms();
            let pid = label(LABEL_PID).map(|p| p as u32);
            let leftover = match which {
                Leftovers::PastDeadline => past_deadline,
                Leftovers::OfDeadProcesses => {
                    past_deadline
                        || pid.is_some_and(|p| {
                            p != std::process::id() && !crate::cgroup::process_alive(p)
                        })
                }
                Leftovers::OfPid(of) => pid == Some(of),
            };
            if !leftover {
                continue;
            }
            if self.remove(&id).await {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, owner = %self.owner, "reaped leftover containers");
        }
        Ok(removed)
    }

    async fn remove(&self, id: &str) -> bool {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let removed = match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => true,
            Err(e) => {
                warn!(container = %id, error = %e, "could not remove a container");
                false
            }
        };
        let result = if removed { "removed" } else { "failed" };
        metrics::counter!(mcpfier_common::metrics::CONTAINER_REMOVALS, "result" => result)
            .increment(1);
        removed
    }

    async fn ensure_image(&self, spec: &ContainerSpec, within: Duration) -> Result<(), Error> {
        match self.docker.inspect_image(&spec.image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => match spec.pull {
                Pull::Never => Err(Error::ImageMissing(spec.image.clone())),
                Pull::Missing => {
                    let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
                        .from_image(&spec.image)
                        .build();
                    let mut pull = self.docker.create_image(Some(options), None, None);
                    let steps = async {
                        while let Some(step) = pull.next().await {
                            step.map_err(|e| Error::Pull {
                                image: spec.image.clone(),
                                why: e.to_string(),
                            })?;
                        }
                        Ok(())
                    };
                    // A pull never outlasts the call it is for.
                    tokio::time::timeout(within, steps)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Pull {
                                image: spec.image.clone(),
                                why: format!(
                                    "not done within the call's timeout ({})",
                                    humantime::format_duration(within)
                                ),
                            })
                        })
                }
            },
            Err(e) => Err(docker_err("inspect the image")(e)),
        }
    }

    /// Runs `exec` in a container per `spec` (its `container` section: only the
    /// [`Executor`](crate::executor::Executor) calls this). Like [`crate::process::run`]:
    /// output within the caps goes to `events` live; a non-zero exit is an outcome; the
    /// container is gone when this returns (or is dropped).
    pub(crate) async fn run(
        &self,
        exec: &Execution,
        spec: &ContainerSpec,
        call_id: &str,
        tool: &str,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, Error> {
        self.ensure_image(spec, exec.timeout).await?;
        let labels = HashMap::from([
            (LABEL_CALL.to_owned(), call_id.to_owned()),
            (LABEL_TOOL.to_owned(), tool.to_owned()),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
            (LABEL_PID.to_owned(), std::process::id().to_string()),
            (
                LABEL_DEADLINE.to_owned(),
                (mcpfier_common::membership::now_ms()
                    + (exec.timeout + exec.kill_grace + Duration::from_secs(30)).as_millis()
                        as u64)
                    .to_string(),
            ),
        ]);
        let mounts = spec
            .mounts
            .iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: Some(m.source.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(!m.rw),
                ..Default::default()
            })
            .collect();
        let host = HostConfig {
            memory: Some(spec.memory as i64),
            memory_swap: Some(spec.memory as i64),
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            pids_limit: Some(spec.pids),
            network_mode: Some(spec.network.clone()),
            readonly_rootfs: Some(spec.read_only),
            // Mode 1777 as a /tmp should be: Docker's default (0755, root-owned) is not
            // writable by the unprivileged user a tool runs as, in an image without /tmp.
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=64m,mode=1777".to_owned(),
            )])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(true),
            mounts: Some(mounts),
            auto_remove: Some(false),
            ..Default::default()
        };
        let mut env: Vec<String> = vec![format!(
            "PATH={}",
            exec.env
                .iter()
                .find(|v| v.name == "PATH")
                .map_or(DEFAULT_PATH, |v| v.value.as_str())
        )];
        env.extend(
            exec.env
                .iter()
                .filter(|v| v.name != "PATH")
                .map(|v| format!("{}={}", v.name, v.value)),
        );
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(exec.argv.clone()),
            entrypoint: Some(vec![]),
            env: Some(env),
            user: Some(spec.user.clone()),
            working_dir: exec.workdir.as_ref().map(|p| p.display().to_string()),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            network_disabled: Some(spec.network == "none"),
            host_config: Some(host),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
            .await
            .map_err(docker_err("create the container"))?;
        let id = created.id;
        self.tracked().insert(id.clone());
        let guard = RemoveOnDrop {
            engine: self.clone(),
            id: Some(id.clone()),
        };
        let outcome = self.attach_start_wait(&id, exec, events, cancel).await;
        let oom = match &outcome {
            Ok(_) => self
                .docker
                .inspect_container(&id, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.oom_killed)
                .unwrap_or(false),
            Err(_) => false,
        };
        guard.finish().await;
        let mut outcome = outcome?;
        outcome.oom_killed = oom;
        Ok(outcome)
    }

    async fn attach_start_wait(
        &self,
        id: &str,
        exec: &Execution,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, Error> {
        let attach = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            // Attached before start, so the stream has everything; `logs` would replay some
            // of it a second time when output races the attach.
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(docker_err("attach to the container"))?;
        let started = Instant::now();
        self.docker
            .start_container(id, None)
            .await
            .map_err(docker_err("start the container"))?;
        if let Some(tx) = &events {
            let _ = tx.send(Event::Started { pid: 0 });
        }
        let max = exec.max_output;
        // Read in this future (no task of its own), so reading ends with the call.
        let reader = async move {
            let mut output = attached.output;
            let mut out = Captured::default();
            let mut err = Captured::default();
            while let Some(Ok(item)) = output.next().await {
                let (capture, stream, data) = match item {
                    bollard::container::LogOutput::StdOut { message } => {
                        (&mut out, Stream::Stdout, message)
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        (&mut err, Stream::Stderr, message)
                    }
                    _ => continue,
                };
                let kept = capture.take(&data, max);
                if !kept.is_empty()
                    && let Some(tx) = &events
                {
                    let _ = tx.send(Event::Output(Chunk {
                        stream,
                        data: kept.to_vec(),
                    }));
                }
            }
            (out, err)
        };
        tokio::pin!(reader);
        let mut read: Option<(Captured, Captured)> = None;
        let mut wait = self.docker.wait_container(id, None);
        let mut timed_out = false;
        let mut cancelled = false;
        let timeout = tokio::time::sleep(exec.timeout);
        tokio::pin!(timeout);
        let code: Option<i64> = loop {
            tokio::select! {
                r = wait.next() => break exit_code(r),
                done = &mut reader, if read.is_none() => read = Some(done),
                () = &mut timeout => {
                    timed_out = true;
                    self.kill(id, "SIGTERM").await;
                    match tokio::time::timeout(exec.kill_grace, wait.next()).await {
                        Ok(r) => break exit_code(r),
                        Err(_) => {
                            self.kill(id, "SIGKILL").await;
                            break exit_code(wait.next().await);
                        }
                    }
                }
                () = cancel.cancelled() => {
                    cancelled = true;
                    self.kill(id, "SIGKILL").await;
                    break exit_code(wait.next().await);
                }
            }
        };
        let duration = started.elapsed();
        let (out, err) = match read {
            Some(done) => done,
            None => tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .unwrap_or_default(),
        };
        let (exit_code, signal) = match code {
            // The init process reports a signal death as 128 + signal.
            Some(c) if c > 128 && (timed_out || cancelled) => (None, Some((c - 128) as i32)),
            Some(c) => (Some(c as i32), None),
            None => (None, None),
        };
        Ok(Outcome {
            exit_code,
            signal,
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
}

impl Engine {
    async fn kill(&self, id: &str, signal: &str) {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        let _ = self.docker.kill_container(id, Some(options)).await;
    }
}

fn exit_code(
    r: Option<Result<bollard::models::ContainerWaitResponse, bollard::errors::Error>>,
) -> Option<i64> {
    match r {
        Some(Ok(w)) => Some(w.status_code),
        // bollard reports a non-zero exit as an error value carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        _ => None,
    }
}

/// Removes the container when the call ends — or, if the future is dropped, from a task of
/// the engine's tracker.
struct RemoveOnDrop {
    engine: Engine,
    id: Option<String>,
}

impl RemoveOnDrop {
    async fn finish(mut self) {
        if let Some(id) = self.id.take() {
            self.engine.remove(&id).await;
            self.engine.tracked().remove(&id);
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let engine = self.engine.clone();
            // The executor's tracker owns the task (its reaper waits for it at shutdown).
            if tokio::runtime::Handle::try_current().is_ok() {
                self.engine.tasks.spawn(async move {
                    engine.remove(&id).await;
                    engine.tracked().remove(&id);
                });
            }
        }
    }
}
