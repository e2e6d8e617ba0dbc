//! The agent's gRPC service: `Execute`, `Cancel`, `Info`, `Health`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use mcpfier_common::telemetry::{self, Attribute, Kind, Span};
use mcpfier_proto::v1::{
    self, AgentInfo, CancelRequest, CancelResponse, ExecuteEvent, ExecuteRequest, HealthRequest,
    HealthResponse, InfoRequest, agent_server, execute_event::Event,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, warn};

use crate::calls::{Call, Calls, Start};
use crate::config::AgentConfig;
use mcpfier_exec::{ErrorKind, Execution, Executor, HasKind, wire};
use tokio_util::task::TaskTracker;

/// Features this agent announces in `Info`.
pub const FEATURES: &[&str] = &["local-exec", "attach", "cancel", "path-args"];

/// Whether the agent takes new calls.
///
/// Invariant: with etcd, [`Admission::fenced`] is true whenever the lease's TTL has passed
/// since the last renewal etcd confirmed, computed at the moment of asking from the monotonic
/// clock: no loop has to notice first, so a hung etcd request or a SIGSTOP can't make it late.
pub struct Admission {
    /// Set on SIGTERM: running calls finish, new ones go elsewhere.
    pub draining: AtomicBool,
    /// Set when the agent must take no calls whatever the lease says (its id was taken).
    pub fenced: AtomicBool,
    /// Set once the agent registered in etcd (with etcd configured); for `/readyz`.
    pub registered: AtomicBool,
    /// Woken when either flag changes.
    pub changed: tokio::sync::Notify,
    /// The lease's TTL in milliseconds; 0 without etcd.
    lease_ttl_ms: AtomicU64,
    /// When the last confirmed renewal was sent, in milliseconds since `epoch`.
    renewed_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            draining: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            lease_ttl_ms: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Admission {
    /// Starts draining (there is no way back) and wakes waiters on `changed`.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Fences (`true`) or unfences (`false`) the agent whatever its lease says, and wakes
    /// waiters on `changed`.
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Starts the lease clock: from now on the agent is fenced whenever `ttl` passes without
    /// a [`Admission::renewed`]. The time until the first renewal counts from now.
    pub fn use_lease(&self, ttl: Duration) {
        self.renewed_ms.store(self.now_ms(), Ordering::SeqCst);
        self.lease_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::SeqCst);
    }

    /// Records a renewal that etcd confirmed, for a request sent at `sent` (the lease runs
    /// from when etcd saw it, which is no earlier than that).
    pub fn renewed(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.epoch).as_millis() as u64;
        self.renewed_ms.fetch_max(at, Ordering::SeqCst);
    }

    /// Time since the last confirmed renewal (zero without etcd).
    pub fn since_renewal(&self) -> Duration {
        if self.lease_ttl_ms.load(Ordering::SeqCst) == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.renewed_ms.load(Ordering::SeqCst)),
        )
    }

    /// Whether the lease's TTL has passed since the last confirmed renewal.
    pub fn lease_lapsed(&self) -> bool {
        let ttl = self.lease_ttl_ms.load(Ordering::SeqCst);
        ttl > 0 && self.since_renewal() > Duration::from_millis(ttl)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the agent is draining: it refuses new calls until it exits.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether the agent is fenced: its lease lapsed (see [`Admission::lease_lapsed`]) or its
    /// id was taken. It refuses new calls until that ends.
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst) || self.lease_lapsed()
    }

    /// Why the agent would refuse a new call now, for `/readyz`; `None` when it takes calls.
    /// `etcd`: whether it registers in etcd, so that it is not ready before it has.
    pub fn not_ready(&self, etcd: bool) -> Option<&'static str> {
        if self.draining() {
            Some("draining: running calls finish, new ones go elsewhere")
        } else if etcd && !self.registered.load(Ordering::SeqCst) {
            Some("not registered in etcd yet")
        } else if self.fenced() {
            Some("fenced: the etcd lease lapsed or the id is taken")
        } else {
            None
        }
    }
}

/// The service: cheap to clone.
#[derive(Clone)]
pub struct AgentService {
    config: Arc<AgentConfig>,
    calls: Arc<Calls>,
    admission: Arc<Admission>,
    executor: Executor,
    /// Whether a Docker daemon answered at start (announced as the `docker` feature).
    docker: bool,
    /// The running calls' tasks; the agent waits for them before it exits.
    tasks: TaskTracker,
}

/// The features an agent announces: [`FEATURES`], plus `docker` when it can run containers.
pub fn features(docker: bool) -> Vec<String> {
    let mut f: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
    if docker {
        f.push("docker".into());
    }
    f
}

impl AgentService {
    /// The service; `docker` says whether `executor` reached a daemon at start. Each call
    /// runs as a task of `tasks`.
    pub fn new(
        config: Arc<AgentConfig>,
        calls: Arc<Calls>,
        admission: Arc<Admission>,
        executor: Executor,
        docker: bool,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            config,
            calls,
            admission,
            executor,
            docker,
            tasks,
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ExecuteEvent, Status>> + Send>>;

impl AgentService {
    /// Admits `req` and starts it (or attaches to it); a new call takes `trace` into its task,
    /// which ends the span when the call finishes.
    fn start_call(
        &self,
        req: ExecuteRequest,
        trace: &mut Option<Span>,
    ) -> Result<Response<EventStream>, Status> {
        let agent = &self.config.id;
        if !wire::compatible(&req.protocol_version) {
            return Err(wire::refusal(
                ErrorKind::Version,
                format!(
                    "agent `{agent}` speaks protocol {}, the coordinator {:?}: upgrade one so their major versions match",
                    mcpfier_proto::PROTOCOL_VERSION,
                    req.protocol_version
                ),
            ));
        }
        let exec = wire::execution(&req).map_err(|why| {
            wire::refusal(ErrorKind::Invalid, format!("invalid execution: {why}"))
        })?;
        let exec = match self.config.policy.admit(&req.tool, exec) {
            Ok(exec) => exec,
            Err(refusal) => {
                warn!(call_id = %req.call_id, tool = %req.tool, %refusal, "refused by policy");
                metrics::counter!(mcpfier_common::metrics::AGENT_POLICY_REFUSALS, "reason" => refusal.reason())
                    .increment(1);
                return Err(wire::refusal(
                    refusal.kind(),
                    format!("agent `{agent}` refuses: {refusal}"),
                ));
            }
        };
        let accepted = v1::Accepted {
            agent_id: agent.clone(),
            attached: false,
        };
        let known = self.calls.get(&req.call_id).is_some();
        if !known && self.admission.draining() {
            return Err(wire::refusal(
                ErrorKind::Draining,
                format!("agent `{agent}` is draining and takes no new calls"),
            ));
        }
        if !known && self.admission.fenced() {
            return Err(wire::refusal(
                ErrorKind::Fenced,
                format!(
                    "agent `{agent}` lost its etcd lease and takes no calls until it renews it"
                ),
            ));
        }
        match self
            .calls
            .start(&req.call_id, self.config.capacity as usize, accepted)
        {
            Start::Existing(call) => {
                info!(call_id = %req.call_id, "attached to a known call");
                let first = ExecuteEvent {
                    event: Some(Event::Accepted(v1::Accepted {
                        agent_id: agent.clone(),
                        attached: true,
                    })),
                };
                let first = futures::stream::once(async move { Ok(first) });
                Ok(Response::new(Box::pin(first.chain(call.follow(1)))))
            }
            Start::Full { running } => Err(wire::refusal(
                ErrorKind::Capacity,
                format!(
                    "agent `{agent}` is at capacity ({running} of {} calls running)",
                    self.config.capacity
                ),
            )),
            Start::New(call) => {
                let stream = call.follow(0);
                let trace = trace.take().unwrap_or_else(Span::none);
                let span = tracing::info_span!(
                    "execute",
                    call_id = %req.call_id,
                    request_id = %req.request_id,
                    trace_id = %trace.trace_id(),
                    tool = %req.tool
                );
                let executor = self.executor.clone();
                let (call_id, tool) = (req.call_id.clone(), req.tool.clone());
                let in_chunks = mcpfier_proto::streams_output(&req.protocol_version);
                self.tasks.spawn(
                    run(
                        self.calls.clone(),
                        call,
                        exec,
                        executor,
                        call_id,
                        tool,
                        in_chunks,
                        trace,
                    )
                    .instrument(span),
                );
                Ok(Response::new(Box::pin(stream)))
            }
        }
    }
}

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    type ExecuteStream = EventStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let metadata = request.metadata();
        let header = |name| metadata.get(name).and_then(|v| v.to_str().ok());
        let parent = telemetry::extract(header("traceparent"), header("tracestate"));
        let req = request.into_inner();
        let mut trace = Some(Span::start(Kind::Server, &parent, || {
            (
                "mcpfier.agent.v1.Agent/Execute".into(),
                vec![
                    Attribute::new("rpc.system", "grpc"),
                    Attribute::new("rpc.service", "mcpfier.agent.v1.Agent"),
                    Attribute::new("rpc.method", "Execute"),
                    Attribute::new("gen_ai.tool.name", req.tool.clone()),
                    Attribute::new("mcpfier.call_id", req.call_id.clone()),
                    Attribute::new("mcpfier.agent.id", self.config.id.clone()),
                ],
            )
        }));
        let result = self.start_call(req, &mut trace);
        if let (Err(status), Some(span)) = (&result, &trace) {
            span.set(Attribute::new("rpc.grpc.status_code", status.code() as i64));
            let kind = wire::refusal_kind(status).map_or("refused".to_owned(), |k| k.to_string());
            span.fail(&kind, status.message().to_owned());
        }
        result
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let id = request.into_inner().call_id;
        let found = match self.calls.get(&id) {
            Some(call) if !call.is_finished() => {
                info!(call_id = %id, "cancel requested");
                call.cancel.cancel();
                true
            }
            Some(_) => false,
            None => {
                let accepted = v1::Accepted {
                    agent_id: self.config.id.clone(),
                    attached: false,
                };
                let finished = wire::finished_error(
                    ErrorKind::Cancelled,
                    "cancelled by the coordinator before the call arrived",
                );
                if self.calls.cancel_unknown(&id, accepted, finished) {
                    info!(call_id = %id, "cancel for a call not seen yet: it will not run");
                }
                false
            }
        };
        Ok(Response::new(CancelResponse { found }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<AgentInfo>, Status> {
        Ok(Response::new(AgentInfo {
            id: self.config.id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
            labels: self.config.labels.clone().into_iter().collect(),
            capacity: self.config.capacity,
            features: features(self.docker),
            allow_tools: self.config.policy.allow_tools.patterns().to_vec(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            running: self.calls.running() as u32,
            capacity: self.config.capacity,
            draining: self.admission.draining() || self.admission.fenced(),
            fenced: self.admission.fenced(),
        }))
    }
}

/// Runs one call and records its events.
#[allow(clippy::too_many_arguments)]
async fn run(
    calls: Arc<Calls>,
    call: Arc<Call>,
    exec: Execution,
    executor: Executor,
    call_id: String,
    tool: String,
    in_chunks: bool,
    trace: Span,
) {
    info!("call accepted");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = {
        let call = call.clone();
        async move {
            while let Some(event) = rx.recv().await {
                for e in wire::events(event) {
                    call.push(e);
                }
            }
        }
    };
    let work = executor.run(
        &exec,
        &call_id,
        &tool,
        Some(tx),
        call.cancel.clone(),
        trace.context(),
    );
    let result = tokio::join!(work, forward).0;
    let outcome = match &result {
        Ok(o) if o.timed_out => "timed_out".to_owned(),
        Ok(o) if o.cancelled => "cancelled".to_owned(),
        Ok(_) => "ran".to_owned(),
        Err(e) => e.kind().to_string(),
    };
    metrics::counter!(mcpfier_common::metrics::AGENT_CALLS, "outcome" => outcome).increment(1);
    let finished = match result {
        Ok(outcome) => {
            info!(
                exit_code = outcome.exit_code,
                timed_out = outcome.timed_out,
                cancelled = outcome.cancelled,
                duration_ms = outcome.duration.as_millis() as u64,
                "call finished"
            );
            wire::finished(&outcome, in_chunks)
        }
        Err(e) => {
            warn!(error = %e, kind = %e.kind(), "call could not start");
            trace.fail(&e.kind().to_string(), e.to_string());
            wire::finished_error(e.kind(), e.to_string())
        }
    };
    calls.finish(&call, finished);
}
