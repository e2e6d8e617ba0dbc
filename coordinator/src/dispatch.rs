//! Runs calls: takes a slot under the tool's and the server's concurrency limits, then runs
//! the resolved command on the fleet when one is configured, or with the embedded execution
//! engine in this process.

use std::sync::Arc;
use std::time::Duration;

use mcpfier_common::telemetry::{self, Kind, Span};
use mcpfier_exec::lifeline::{self, Lifeline};
use mcpfier_exec::{ErrorKind, Event, Execution, Executor, HasKind, Outcome, executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc::UnboundedSender};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, Tool};
use crate::fleet::{self, Fleet};
use crate::membership::Follower;

/// Why a call did not produce an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tool's `concurrency` slots stayed full for the tool's whole timeout.
    #[error(
        "tool `{tool}` is busy: {limit} of its calls are already running and none finished within {waited}; try again later"
    )]
    ToolBusy {
        /// The tool's name.
        tool: String,
        /// Its `concurrency` limit.
        limit: usize,
        /// How long the call waited (the tool's timeout, in whole seconds), e.g. `1m`.
        waited: String,
    },
    /// The server's `max_concurrency` slots stayed full for the tool's whole timeout.
    #[error(
        "mcpfier is busy: {limit} calls are already running (server.max_concurrency) and none finished within {waited}; try again later"
    )]
    ServerBusy {
        /// `server.max_concurrency`.
        limit: usize,
        /// How long the call waited (the tool's timeout, in whole seconds), e.g. `1m`.
        waited: String,
    },
    /// The call was cancelled while it waited for a slot.
    #[error("call cancelled before it started")]
    Cancelled,
    /// In-process mode: the embedded engine could not start the command.
    #[error("the command could not run: {0}")]
    Exec(#[from] executor::Error),
    /// Fleet mode: no agent could take the call, or the call failed on or with its agent.
    #[error(transparent)]
    Fleet(#[from] fleet::Error),
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::ToolBusy { .. } | Error::ServerBusy { .. } => ErrorKind::Busy,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Exec(e) => e.kind(),
            Error::Fleet(e) => e.kind(),
        }
    }
}

/// A finished call: what happened, and where it ran (`None`: in this process).
#[derive(Debug)]
pub struct Ran {
    /// What the command did.
    pub outcome: Outcome,
    /// The id of the agent that ran it; `None` when it ran in this process.
    pub agent: Option<String>,
    /// The call's id (on the agent, or for the container in this process).
    pub call_id: String,
}

/// Runs tool calls, on the fleet or in this process.
#[derive(Clone)]
pub struct Dispatcher {
    catalog: Arc<Catalog>,
    fleet: Option<Arc<Fleet>>,
    /// Runs in-process calls (processes, and containers through the local Docker Engine).
    executor: Executor,
    /// The supervisor of in-process calls' cgroups, while this dispatcher lives.
    _lifeline: Option<Arc<Lifeline>>,
    /// `server.audit`, open.
    audit: Option<Arc<crate::audit::Audit>>,
    /// The dashboard's record of calls.
    board: Arc<crate::board::Board>,
}

/// The owner label of containers an embedded coordinator starts.
pub fn embedded_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("embedded-{}", host.trim())
}

impl Dispatcher {
    /// A dispatcher that runs every call in this process.
    pub fn local(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            fleet: None,
            executor: Executor::new(embedded_owner()),
            _lifeline: None,
            audit: None,
            board: Arc::default(),
        }
    }

    /// A dispatcher for the catalog's mode: the fleet when the config has one, else this
    /// process, with a cgroup per call where this host allows (see
    /// [`mcpfier_exec::lifeline`]). Its long-running parts (the fleet's health loop and etcd follower, or the
    /// container reaper) run in `tasks` until `shutdown`; the caller waits for `tasks`.
    pub async fn start(
        catalog: Arc<Catalog>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let audit = match &catalog.audit {
            Some(settings) => Some(Arc::new(crate::audit::Audit::open(settings.clone())?)),
            None => None,
        };
        if let (Some(audit), Some(settings), Some(etcd)) = (
            &audit,
            &catalog.audit,
            catalog.fleet.as_ref().and_then(|f| f.etcd.as_ref()),
        ) {
            tasks.spawn(crate::audit::publish_head(
                audit.clone(),
                etcd.clone(),
                settings.chain.clone(),
                shutdown.clone(),
            ));
        }
        let mut executor = Executor::new(embedded_owner());
        let mut lifeline = None;
        let fleet = match &catalog.fleet {
            Some(settings) => {
                let (fleet, health) = Fleet::build(settings, tasks).await?;
                if let Some(etcd) = &settings.etcd {
                    let (follower, first) = Follower::new(etcd.clone(), fleet.clone());
                    tasks.spawn(follower.run(shutdown.clone()));
                    // Route with a first list when etcd answers quickly; otherwise start
                    // anyway and catch up when it does.
                    let _ = tokio::time::timeout(Duration::from_secs(3), first).await;
                }
                tasks.spawn(health.run(shutdown));
                Some(fleet)
            }
            None => {
                let (cgroups, supervisor) = lifeline::start(&embedded_owner(), &executor).await;
                if let Some(cgroups) = cgroups {
                    executor = executor.with_cgroups(cgroups);
                }
                lifeline = supervisor.map(Arc::new);
                if catalog.tools.values().any(|t| t.container.is_some()) {
                    // Leftovers of an earlier crash go now, and then every minute.
                    tasks.spawn(executor.reaper().run(shutdown));
                }
                None
            }
        };
        Ok(Self {
            catalog,
            fleet,
            executor,
            _lifeline: lifeline,
            audit,
            board: Arc::default(),
        })
    }

    /// The dashboard's record of calls.
    pub fn board(&self) -> &Arc<crate::board::Board> {
        &self.board
    }

    /// The audit file, when `server.audit` is set.
    pub fn audit(&self) -> Option<&Arc<crate::audit::Audit>> {
        self.audit.as_ref()
    }

    /// The tools this dispatcher runs, and the server's limits.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The fleet, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Runs `exec` for `tool`. Waiting for a free slot is bounded by the tool's timeout;
    /// the run itself then gets the whole timeout.
    pub async fn run(
        &self,
        tool: &Tool,
        exec: &Execution,
        request_id: &str,
        output: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
        trace: &telemetry::Context,
    ) -> Result<Ran, Error> {
        let queue = Span::start(Kind::Internal, trace, || ("queue".into(), vec![]));
        let queued = tokio::time::Instant::now();
        let deadline = queued + tool.timeout;
        let waited = || humantime::format_duration(round(tool.timeout)).to_string();
        let _tool_slot =
            match &tool.slots {
                Some(slots) => Some(acquire(slots, deadline, &cancel).await?.ok_or_else(|| {
                    Error::ToolBusy {
                        tool: tool.name.clone(),
                        limit: tool.concurrency.unwrap_or_default(),
                        waited: waited(),
                    }
                })?),
                None => None,
            };
        let _global_slot = acquire(&self.catalog.global_slots, deadline, &cancel)
            .await?
            .ok_or_else(|| Error::ServerBusy {
                limit: self.catalog.server.max_concurrency,
                waited: waited(),
            })?;
        metrics::histogram!(mcpfier_common::metrics::QUEUE_WAIT)
            .record(queued.elapsed().as_secs_f64());
        drop(queue);
        let _in_flight = InFlight::enter();
        match &self.fleet {
            Some(fleet) => {
                let ran = fleet
                    .run(tool, exec, request_id, output, cancel, trace)
                    .await?;
                Ok(Ran {
                    outcome: ran.outcome,
                    agent: Some(ran.agent),
                    call_id: ran.call_id,
                })
            }
            None => {
                let call_id = uuid::Uuid::new_v4().to_string();
                let outcome = self
                    .executor
                    .run(exec, &call_id, &tool.name, output, cancel, trace)
                    .await?;
                Ok(Ran {
                    outcome,
                    agent: None,
                    call_id,
                })
            }
        }
    }
}

/// Counts a call in `mcpfier_calls_in_flight` until dropped.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!(mcpfier_common::metrics::CALLS_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(mcpfier_common::metrics::CALLS_IN_FLIGHT).decrement(1.0);
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

async fn acquire(
    slots: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<Option<OwnedSemaphorePermit>, Error> {
    tokio::select! {
        permit = tokio::time::timeout_at(deadline, slots.clone().acquire_owned()) => {
            Ok(permit.ok().map(|p| p.expect("semaphores are never closed")))
        }
        () = cancel.cancelled() => Err(Error::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    /// Runs `exec` once, with no output channel, cancel or trace.
    async fn run_once(d: &Dispatcher, tool: &Tool, exec: &Execution) -> Result<Ran, Error> {
        d.run(
            tool,
            exec,
            "r",
            None,
            CancellationToken::new(),
            &telemetry::Context::new(),
        )
        .await
    }

    fn dispatcher(yaml: &str) -> Dispatcher {
        let catalog = crate::catalog::parse(yaml, Path::new("t.yaml"), &HashMap::new()).unwrap();
        Dispatcher::local(Arc::new(catalog))
    }

    #[tokio::test]
    async fn a_full_tool_fails_within_its_timeout_with_a_clear_error() {
        let d = dispatcher(
            "tools:\n  - {name: t, command: [/bin/true], concurrency: 1, timeout: 300ms}\n",
        );
        let tool = d.catalog().tool("t").unwrap().clone();
        let _held = tool.slots.clone().unwrap().acquire_owned().await.unwrap();
        let exec = tool.prepare(None).unwrap();
        let started = Instant::now();
        let err = run_once(&d, &tool, &exec).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, Error::ToolBusy { limit: 1, .. }), "{err}");
        assert!(err.to_string().contains("tool `t` is busy"), "{err}");
    }

    #[tokio::test]
    async fn a_full_server_fails_with_a_clear_error() {
        let d = dispatcher(
            "server: {max_concurrency: 1}\ntools:\n  - {name: t, command: [/bin/true], timeout: 300ms}\n",
        );
        let _held = d
            .catalog()
            .global_slots
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let tool = d.catalog().tool("t").unwrap().clone();
        let exec = tool.prepare(None).unwrap();
        let err = run_once(&d, &tool, &exec).await.unwrap_err();
        assert!(err.to_string().contains("server.max_concurrency"), "{err}");
    }

    #[tokio::test]
    async fn a_free_slot_lets_the_call_run() {
        let d = dispatcher("tools:\n  - {name: t, command: [/bin/echo, hi], concurrency: 1}\n");
        let tool = d.catalog().tool("t").unwrap().clone();
        let exec = tool.prepare(None).unwrap();
        let out = run_once(&d, &tool, &exec).await.unwrap();
        assert_eq!(out.outcome.stdout, b"hi\n");
        assert_eq!(out.agent, None);
    }
}
