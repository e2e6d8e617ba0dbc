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
use mcpfier_agent::exec::{Chunk, Event, Execution, Outcome, Stream};
use mcpfier_agent::wire;
use mcpfier_common::tls::{self, Identity, Role};
use mcpfier_proto::v1::{self, agent_client::AgentClient, execute_event};
use tokio::sync::mpsc::UnboundedSender;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;
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
    Start { agent: String, message: String },
    #[error("call cancelled")]
    Cancelled,
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
}

/// One agent: its connection and state.
pub struct Agent {
    pub id: String,
    pub address: String,
    client: AgentClient<Channel>,
    status: RwLock<Status>,
    /// Calls this coordinator has in flight on it.
    inflight: AtomicU32,
}

impl Agent {
    fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Takes the agent out of routing until a health check succeeds again.
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
        format!("{} [{}] ({state})", self.id, labels.join(", "))
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

/// The fleet: cheap to share behind an `Arc`.
pub struct Fleet {
    agents: Vec<Arc<Agent>>,
    rotate: AtomicUsize,
}

/// A finished remote call.
pub struct Ran {
    pub outcome: Outcome,
    pub agent: String,
}

fn connect(
    settings: &FleetSettings,
    material: &tls::Material,
    id: &str,
    address: &str,
) -> anyhow::Result<AgentClient<Channel>> {
    let config = tls::client_config(material, Identity::new(Role::Agent, id))?;
    Ok(AgentClient::new(channel(
        config,
        address,
        settings.connect_timeout,
    )?))
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
    /// Connects (lazily) to every agent, checks them once, and keeps checking every
    /// `health_interval` until `shutdown`.
    pub async fn start(
        settings: &FleetSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Fleet>> {
        let material = tls::load(&settings.tls)?;
        let mut agents = Vec::new();
        for entry in &settings.agents {
            agents.push(Arc::new(Agent {
                id: entry.id.clone(),
                address: entry.address.clone(),
                client: connect(settings, &material, &entry.id, &entry.address)?,
                status: RwLock::new(Status::default()),
                inflight: AtomicU32::new(0),
            }));
        }
        let fleet = Arc::new(Fleet {
            agents,
            rotate: AtomicUsize::new(0),
        });
        futures::future::join_all(fleet.agents.iter().map(|a| a.probe())).await;
        for agent in &fleet.agents {
            let agent = agent.clone();
            let shutdown = shutdown.clone();
            let every = settings.health_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => agent.probe().await,
                        () = shutdown.cancelled() => return,
                    }
                }
            });
        }
        Ok(fleet)
    }

    /// The agent to run a call with these placement labels, skipping `exclude`.
    fn pick(&self, labels: &BTreeMap<String, String>, exclude: &[String]) -> Option<Arc<Agent>> {
        let n = self.agents.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, Arc<Agent>)> = None;
        for k in 0..n {
            let agent = &self.agents[(start + k) % n];
            let s = agent.status();
            if !s.healthy || s.draining || exclude.contains(&agent.id) {
                continue;
            }
            if !labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
                continue;
            }
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
        let agents: Vec<_> = self.agents.iter().map(|a| a.describe()).collect();
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
            let Some(agent) = self.pick(&tool.placement, &tried) else {
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
                    let why = format!("agent `{}`: {text}", agent.id);
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    ) {
                        agent.mark_failed(&text);
                    }
                    debug!(agent = %agent.id, code = ?status.code(), "not accepted");
                    refusals.push(why);
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
                    agent.mark_failed(&text);
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
                        tokio::spawn(async move {
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
                            let _ = tx.send(Event::Started { pid: s.pid });
                        }
                    }
                    Some(execute_event::Event::Output(chunk)) => {
                        if let Some(tx) = &events {
                            let stream = if chunk.stream == v1::OutputStream::Stderr as i32 {
                                Stream::Stderr
                            } else {
                                Stream::Stdout
                            };
                            let _ = tx.send(Event::Output(Chunk {
                                stream,
                                data: chunk.data,
                            }));
                        }
                    }
                    Some(execute_event::Event::Finished(f)) => {
                        if !f.error.is_empty() {
                            return Err(Error::Start {
                                agent: agent.id.clone(),
                                message: f.error,
                            });
                        }
                        return Ok(Ran {
                            outcome: wire::outcome(f),
                            agent: agent.id.clone(),
                        });
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
