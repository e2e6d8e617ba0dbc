//! The fleet: agents reached over mutual-TLS gRPC, their health, and dispatching calls to
//! them.
//!
//! Routing: among healthy agents whose labels include the tool's placement labels, the one
//! with the fewest running calls relative to its capacity (ties rotate). One HTTP/2
//! connection per agent, reused by every call.
//!
//! Semantics: before an agent accepts a call, any failure moves the call to another agent.
//! After it accepted, the call is never run twice: if the agent is lost, the call ends with
//! an error naming the agent and saying the outcome is unknown — unless the tool is
//! `idempotent: true`, which is retried once on another agent within its timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use mcpfier_common::glob::Globs;
use mcpfier_common::tls::{self, Identity, Role};
use mcpfier_exec::wire;
use mcpfier_exec::{ErrorKind, Event, Execution, HasKind, Outcome};
use mcpfier_proto::v1::{self, agent_client::AgentClient, execute_event};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::catalog::{FleetSettings, Tool};

/// Extra time past a call's timeout before a silent agent counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
/// How long an RPC for health or cancellation may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call could not be run on the fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no healthy agent can run this tool: {0}")]
    NoAgent(String),
    #[error("no agent took the call: {0}")]
    NotAccepted(String),
    #[error(
        "agent `{agent}` was lost after it accepted call {call_id} ({why}); the outcome is unknown: the command may or may not have run"
    )]
    AgentLost {
        agent: String,
        call_id: String,
        why: String,
    },
    #[error("agent `{agent}` could not start the command: {message}")]
    Start {
        agent: String,
        kind: ErrorKind,
        message: String,
    },
    #[error("call cancelled")]
    Cancelled,
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::NoAgent(_) => ErrorKind::NoAgent,
            Error::NotAccepted(_) => ErrorKind::NotAccepted,
            Error::AgentLost { .. } => ErrorKind::AgentLost,
            Error::Start { kind, .. } => *kind,
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// A status with the chain of causes behind it (TLS refusals hide in there).
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An agent's announced `allow_tools`: `None` (assume all) when it announced none.
fn peer_globs(patterns: &[String]) -> Option<Arc<Globs>> {
    (!patterns.is_empty()).then(|| Arc::new(Globs::lenient(patterns)))
}

/// What an agent last told us.
#[derive(Clone, Debug, Default)]
struct Status {
    healthy: bool,
    labels: BTreeMap<String, String>,
    capacity: u32,
    running: u32,
    draining: bool,
    last_error: Option<String>,
    info_known: bool,
    /// `policy.allow_tools` globs (`None`: not known yet, assume all).
    allow_tools: Option<Arc<Globs>>,
    /// Unix ms of the last record from etcd (etcd agents).
    updated_at: Option<u64>,
    /// Announced features (`docker`, ...).
    features: Vec<String>,
}

/// Where the coordinator learned of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Static,
    Etcd,
}

/// One agent: its connection and state.
pub struct Agent {
    pub id: String,
    pub address: String,
    pub source: Source,
    client: AgentClient<Channel>,
    status: RwLock<Status>,
    /// Calls this coordinator has in flight on it.
    inflight: AtomicU32,
    /// Bumped whenever routing may have changed.
    changes: Arc<watch::Sender<u64>>,
}

/// One agent as `/fleet` and logs show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentView {
    pub id: String,
    pub address: String,
    pub source: &'static str,
    pub healthy: bool,
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub running: u32,
    pub capacity: u32,
    pub inflight: u32,
    pub last_error: Option<String>,
    pub updated_at_ms: Option<u64>,
}

impl Agent {
    fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the status; tells routing watchers when it matters to them.
    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        let before = (
            status.healthy,
            status.draining,
            status.labels.clone(),
            status.allow_tools.clone(),
        );
        f(&mut status);
        let after = (
            status.healthy,
            status.draining,
            status.labels.clone(),
            status.allow_tools.clone(),
        );
        drop(status);
        if before != after {
            self.changes.send_modify(|v| *v += 1);
        }
    }

    fn view(&self) -> AgentView {
        let s = self.status();
        AgentView {
            id: self.id.clone(),
            address: self.address.clone(),
            source: match self.source {
                Source::Static => "static",
                Source::Etcd => "etcd",
            },
            healthy: s.healthy,
            draining: s.draining,
            labels: s.labels,
            running: s.running,
            capacity: s.capacity,
            inflight: self.inflight.load(Ordering::SeqCst),
            last_error: s.last_error,
            updated_at_ms: s.updated_at,
        }
    }

    /// Whether this agent may run `tool` now.
    fn can_run(&self, tool: &Tool) -> bool {
        let s = self.status();
        s.healthy
            && !s.draining
            && tool
                .placement
                .iter()
                .all(|(k, v)| s.labels.get(k) == Some(v))
            && s.allow_tools
                .as_ref()
                .is_none_or(|g| g.is_match(&tool.name))
            && (tool.container.is_none() || s.features.iter().any(|f| f == "docker"))
    }

    /// Takes the agent out of routing until a health check succeeds again.
    /// Takes in an agent's refusal before it accepted a call: a refusal of kind `kind`, or
    /// (`None`) a failure to talk to it at all.
    fn refused(&self, kind: Option<ErrorKind>, why: &str) {
        match kind {
            // It says so itself, and its next record or health check says when it is back.
            Some(ErrorKind::Draining | ErrorKind::Fenced) => self.update(|s| s.draining = true),
            Some(kind) if !kind.marks_agent_failed() => {}
            _ => self.mark_failed(why),
        }
    }

    fn mark_failed(&self, why: &str) {
        let was = self.status().healthy;
        self.update(|s| {
            s.healthy = false;
            s.last_error = Some(why.to_owned());
        });
        if was {
            warn!(agent = %self.id, error = %why, "agent out of routing");
        }
    }

    fn describe(&self) -> String {
        let s = self.status();
        let labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if s.healthy {
            "healthy".to_owned()
        } else {
            format!(
                "unhealthy: {}",
                s.last_error.as_deref().unwrap_or("not checked yet")
            )
        };
        let docker = if s.info_known && !s.features.iter().any(|f| f == "docker") {
            " no-docker"
        } else {
            ""
        };
        let policy = match &s.allow_tools {
            Some(g) if !g.matches_everything() => format!(" allows {g}"),
            _ => String::new(),
        };
        format!(
            "{} [{}]{policy}{docker} ({state})",
            self.id,
            labels.join(", ")
        )
    }

    async fn probe(&self) {
        let mut client = self.client.clone();
        let result = async {
            if !self.status().info_known {
                let info = tokio::time::timeout(RPC_TIMEOUT, client.info(v1::InfoRequest {}))
                    .await
                    .map_err(|_| "Info timed out".to_owned())?
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                if info.id != self.id {
                    return Err(format!("it says its id is `{}`", info.id));
                }
                if !wire::compatible(&info.protocol_version) {
                    return Err(format!(
                        "it speaks protocol {}, this coordinator {}",
                        info.protocol_version,
                        mcpfier_proto::PROTOCOL_VERSION
                    ));
                }
                self.update(|s| {
                    s.labels = info.labels.into_iter().collect();
                    s.capacity = info.capacity.max(1);
                    s.allow_tools = peer_globs(&info.allow_tools);
                    s.features = info.features;
                    s.info_known = true;
                });
            }
            let health = tokio::time::timeout(RPC_TIMEOUT, client.health(v1::HealthRequest {}))
                .await
                .map_err(|_| "Health timed out".to_owned())?
                .map_err(|s| status_text(&s))?
                .into_inner();
            Ok(health)
        }
        .await;
        match result {
            Ok(h) => {
                let was = self.status().healthy;
                self.update(|s| {
                    s.healthy = true;
                    s.running = h.running;
                    s.capacity = h.capacity.max(1);
                    s.draining = h.draining;
                    s.last_error = None;
                });
                if !was {
                    info!(agent = %self.id, address = %self.address, "agent healthy");
                }
            }
            Err(e) => self.mark_failed(&e),
        }
    }
}

/// Counts a call in flight on an agent while alive.
struct Inflight(Arc<Agent>);

impl Inflight {
    fn new(agent: Arc<Agent>) -> Self {
        agent.inflight.fetch_add(1, Ordering::SeqCst);
        Self(agent)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the coordinator knows of etcd.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EtcdView {
    pub configured: bool,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// The fleet: cheap to share behind an `Arc`.
pub struct Fleet {
    agents: RwLock<Vec<Arc<Agent>>>,
    /// Cancel RPCs that outlive the call they cancel.
    tasks: TaskTracker,
    rotate: AtomicUsize,
    material: tls::Material,
    connect_timeout: Duration,
    changes: Arc<watch::Sender<u64>>,
    etcd: RwLock<EtcdView>,
}

/// A finished remote call.
pub struct Ran {
    pub outcome: Outcome,
    pub agent: String,
}

/// A lazily connecting gRPC channel to `address` over TLS with `config`: one HTTP/2
/// connection, re-established when it breaks.
pub fn channel(
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    address: &str,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    let connector = TlsConnector::from(config);
    let address_for_dial = address.to_owned();
    let dial = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let address = address_for_dial.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked: the verifier checks the agent's identity instead.
            let name = ServerName::try_from("agent.mcpfier.invalid").expect("a valid DNS name");
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(dial))
}

impl Fleet {
    /// Connects (lazily) to every static agent and checks them once; follows etcd membership
    /// when configured; keeps checking static agents (and etcd agents out of routing) every
    /// `health_interval` until `shutdown`.
    pub async fn start(
        settings: &FleetSettings,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Fleet>> {
        let material = tls::load(&settings.tls)?;
        let fleet = Arc::new(Fleet {
            agents: RwLock::new(Vec::new()),
            tasks: tasks.clone(),
            rotate: AtomicUsize::new(0),
            material,
            connect_timeout: settings.connect_timeout,
            changes: Arc::new(watch::channel(0).0),
            etcd: RwLock::new(EtcdView {
                configured: settings.etcd.is_some(),
                ..EtcdView::default()
            }),
        });
        for entry in &settings.agents {
            let agent = fleet.new_agent(&entry.id, &entry.address, Source::Static)?;
            fleet.write_agents().push(agent);
        }
        futures::future::join_all(fleet.snapshot().iter().map(|a| a.probe())).await;
        if let Some(etcd) = &settings.etcd {
            let first =
                crate::membership::follow(fleet.clone(), etcd.clone(), tasks, shutdown.clone());
            // Route with a first list when etcd answers quickly; otherwise start anyway and
            // catch up when it does.
            let _ = tokio::time::timeout(Duration::from_secs(3), first).await;
        }
        {
            let fleet = fleet.clone();
            let every = settings.health_interval;
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let due: Vec<_> = fleet
                                .snapshot()
                                .into_iter()
                                .filter(|a| a.source == Source::Static || !a.status().healthy)
                                .collect();
                            futures::future::join_all(due.iter().map(|a| a.probe())).await;
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
            });
        }
        Ok(fleet)
    }

    fn new_agent(&self, id: &str, address: &str, source: Source) -> anyhow::Result<Arc<Agent>> {
        let config = tls::client_config(&self.material, Identity::new(Role::Agent, id))?;
        Ok(Arc::new(Agent {
            id: id.to_owned(),
            address: address.to_owned(),
            source,
            client: AgentClient::new(channel(config, address, self.connect_timeout)?),
            status: RwLock::new(Status::default()),
            inflight: AtomicU32::new(0),
            changes: self.changes.clone(),
        }))
    }

    fn write_agents(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Agent>>> {
        self.agents.write().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Vec<Arc<Agent>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bumped whenever routing may have changed (agents joining, leaving, health, drain).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether some agent may run `tool` now.
    pub fn can_run(&self, tool: &Tool) -> bool {
        self.snapshot().iter().any(|a| a.can_run(tool))
    }

    /// The routing table and etcd state, for `/fleet`.
    pub fn view(&self) -> (Vec<AgentView>, EtcdView) {
        let agents = self.snapshot().iter().map(|a| a.view()).collect();
        let etcd = self.etcd.read().unwrap_or_else(|p| p.into_inner()).clone();
        (agents, etcd)
    }

    /// Records whether etcd answers.
    pub(crate) fn set_etcd(&self, connected: bool, error: Option<String>) {
        let mut e = self.etcd.write().unwrap_or_else(|p| p.into_inner());
        e.connected = connected;
        if error.is_some() || connected {
            e.last_error = error;
        }
    }

    /// Applies an agent record from etcd: joins a new agent, or updates a known one.
    pub(crate) fn upsert_from_etcd(
        &self,
        id: &str,
        record: &mcpfier_common::membership::AgentRecord,
    ) {
        if !mcpfier_common::tls::valid_name(id) {
            warn!(agent = %id, "ignoring an etcd record with an invalid agent id");
            return;
        }
        let existing = self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.id == id && a.source == Source::Etcd)
            .cloned();
        let agent = match existing {
            Some(a) if a.address == record.address => a,
            other => {
                let agent = match self.new_agent(id, &record.address, Source::Etcd) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(agent = %id, error = %e, "cannot use this agent");
                        return;
                    }
                };
                let mut agents = self.write_agents();
                if let Some(old) = other {
                    agents.retain(|a| !Arc::ptr_eq(a, &old));
                }
                agents.push(agent.clone());
                drop(agents);
                info!(agent = %id, address = %record.address, "agent joined");
                // Trust the registration for routing; the first call's TLS handshake checks
                // the agent's identity, and a failure takes it out again.
                agent.update(|s| s.healthy = true);
                agent
            }
        };
        agent.update(|s| {
            s.labels = record.labels.clone();
            s.capacity = record.capacity.max(1);
            s.running = record.running;
            s.draining = record.draining;
            s.allow_tools = peer_globs(&record.allow_tools);
            s.features = record.capabilities.clone();
            s.updated_at = Some(record.updated_at);
            s.info_known = true;
        });
    }

    /// One agent's view, for `/fleet/agents/{id}`.
    pub fn agent_view(&self, id: &str) -> Option<AgentView> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.view())
    }

    /// Removes an etcd agent whose key is gone (lease expired or revoked).
    pub(crate) fn remove_from_etcd(&self, id: &str) {
        let mut agents = self.write_agents();
        let before = agents.len();
        agents.retain(|a| !(a.id == id && a.source == Source::Etcd));
        let removed = agents.len() != before;
        drop(agents);
        if removed {
            info!(agent = %id, "agent left");
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Replaces the etcd agents with a fresh listing.
    pub(crate) fn replace_etcd(
        &self,
        records: &BTreeMap<String, mcpfier_common::membership::AgentRecord>,
    ) {
        let gone: Vec<String> = self
            .snapshot()
            .iter()
            .filter(|a| a.source == Source::Etcd && !records.contains_key(&a.id))
            .map(|a| a.id.clone())
            .collect();
        for id in gone {
            self.remove_from_etcd(&id);
        }
        for (id, record) in records {
            self.upsert_from_etcd(id, record);
        }
    }

    /// The agent to run a call with these placement labels, skipping `exclude`.
    fn pick(&self, tool: &Tool, exclude: &[String]) -> Option<Arc<Agent>> {
        let agents = self.snapshot();
        let n = agents.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, Arc<Agent>)> = None;
        for k in 0..n {
            let agent = &agents[(start + k) % n];
            if exclude.contains(&agent.id) || !agent.can_run(tool) {
                continue;
            }
            let s = agent.status();
            let running = agent.inflight.load(Ordering::SeqCst).max(s.running);
            let load = running as f64 / s.capacity.max(1) as f64;
            if best.as_ref().is_none_or(|(b, _)| load < *b) {
                best = Some((load, agent.clone()));
            }
        }
        best.map(|(_, a)| a)
    }

    fn no_agent(&self, labels: &BTreeMap<String, String>) -> Error {
        let wanted = if labels.is_empty() {
            "any labels".to_owned()
        } else {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let agents: Vec<_> = self.snapshot().iter().map(|a| a.describe()).collect();
        Error::NoAgent(format!(
            "none healthy with labels {wanted}; agents: {}",
            if agents.is_empty() {
                "none configured".to_owned()
            } else {
                agents.join("; ")
            }
        ))
    }

    /// Runs `exec` for `tool` on an agent. Output goes to `events` as it arrives.
    pub async fn run(
        &self,
        tool: &Tool,
        exec: &Execution,
        request_id: &str,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
    ) -> Result<Ran, Error> {
        let started = Instant::now();
        let budget = exec.timeout + exec.kill_grace + LOST_AFTER;
        let mut tried: Vec<String> = Vec::new();
        let mut refusals: Vec<String> = Vec::new();
        let mut retried = false;
        let mut call_id = uuid::Uuid::new_v4().to_string();
        loop {
            let Some(agent) = self.pick(tool, &tried) else {
                return Err(if tried.is_empty() {
                    self.no_agent(&tool.placement)
                } else {
                    Error::NotAccepted(refusals.join("; "))
                });
            };
            tried.push(agent.id.clone());
            let _inflight = Inflight::new(agent.clone());
            let request = wire::request(exec, &call_id, request_id, &tool.name);
            let mut client = agent.client.clone();
            let response = tokio::select! {
                r = client.execute(request) => r,
                () = cancel.cancelled() => return Err(Error::Cancelled),
            };
            let mut stream = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    let text = status_text(&status);
                    let kind = wire::refusal_kind(&status);
                    agent.refused(kind, &text);
                    debug!(agent = %agent.id, kind = kind.map_or("transport", ErrorKind::as_str), "not accepted");
                    refusals.push(format!("agent `{}`: {text}", agent.id));
                    continue;
                }
            };
            // Wait for the agent to accept.
            let first = tokio::select! {
                r = tokio::time::timeout(RPC_TIMEOUT + Duration::from_secs(3), stream.next()) => r,
                () = cancel.cancelled() => return Err(Error::Cancelled),
            };
            match first {
                Ok(Some(Ok(v1::ExecuteEvent {
                    event: Some(execute_event::Event::Accepted(_)),
                }))) => {}
                Ok(Some(Err(status))) => {
                    let text = status_text(&status);
                    agent.refused(wire::refusal_kind(&status), &text);
                    refusals.push(format!("agent `{}`: {text}", agent.id));
                    continue;
                }
                other => {
                    let why = match other {
                        Err(_) => "no answer".to_owned(),
                        _ => "the stream ended before the call was accepted".to_owned(),
                    };
                    agent.mark_failed(&why);
                    refusals.push(format!("agent `{}`: {why}", agent.id));
                    continue;
                }
            }
            debug!(agent = %agent.id, call_id = %call_id, "accepted");
            let deadline = tokio::time::Instant::from_std(started + budget);
            let lost = loop {
                let next = tokio::select! {
                    n = tokio::time::timeout_at(deadline, stream.next()) => n,
                    () = cancel.cancelled() => {
                        let mut client = agent.client.clone();
                        let id = call_id.clone();
                        self.tasks.spawn(async move {
                            let _ = tokio::time::timeout(RPC_TIMEOUT, client.cancel(v1::CancelRequest { call_id: id })).await;
                        });
                        return Err(Error::Cancelled);
                    }
                };
                let event = match next {
                    Err(_) => break "no result within the call's timeout".to_owned(),
                    Ok(None) => break "the stream ended without a result".to_owned(),
                    Ok(Some(Err(status))) => {
                        break format!("stream failed: {}", status_text(&status));
                    }
                    Ok(Some(Ok(event))) => event,
                };
                match event.event {
                    Some(execute_event::Event::Started(s)) => {
                        if let Some(tx) = &events {
                            let _ = tx.send(wire::started(&s));
                        }
                    }
                    Some(execute_event::Event::Output(chunk)) => {
                        if let Some(tx) = &events {
                            let _ = tx.send(wire::output(chunk));
                        }
                    }
                    Some(execute_event::Event::Finished(f)) => {
                        return match wire::finished_result(f) {
                            Ok(outcome) => Ok(Ran {
                                outcome,
                                agent: agent.id.clone(),
                            }),
                            Err((kind, message)) => Err(Error::Start {
                                agent: agent.id.clone(),
                                kind,
                                message,
                            }),
                        };
                    }
                    Some(execute_event::Event::Accepted(_)) | None => {}
                }
            };
            agent.mark_failed(&lost);
            let time_left = started.elapsed() + Duration::from_millis(500) < exec.timeout;
            if tool.idempotent() && !retried && time_left {
                warn!(agent = %agent.id, call_id = %call_id, why = %lost, "agent lost; retrying the idempotent call on another agent");
                retried = true;
                call_id = uuid::Uuid::new_v4().to_string();
                continue;
            }
            return Err(Error::AgentLost {
                agent: agent.id.clone(),
                call_id,
                why: lost,
            });
        }
    }
}
