//! The agent's gRPC service: `Execute`, `Cancel`, `Info`, `Health`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use mcpfier_proto::v1::{
    self, AgentInfo, CancelRequest, CancelResponse, ExecuteEvent, ExecuteRequest, HealthRequest,
    HealthResponse, InfoRequest, agent_server, execute_event::Event,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, warn};

use crate::calls::{Call, Calls, Start};
use crate::config::AgentConfig;
use crate::container::Engine;
use crate::exec::{self, Execution};
use crate::wire;

/// Features this agent announces in `Info`.
pub const FEATURES: &[&str] = &["local-exec", "attach", "cancel"];

/// Metadata key naming the kind of a refusal, for the coordinator to branch on.
pub const ERROR_KIND: &str = "mcpfier-error-kind";

/// Whether the agent takes new calls.
#[derive(Default)]
pub struct Admission {
    /// Set on SIGTERM: running calls finish, new ones go elsewhere.
    pub draining: AtomicBool,
    /// Set while the etcd lease can't be renewed (self-fencing).
    pub fenced: AtomicBool,
    /// Woken when either flag changes.
    pub changed: tokio::sync::Notify,
}

impl Admission {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

/// The service: cheap to clone.
#[derive(Clone)]
pub struct AgentService {
    config: Arc<AgentConfig>,
    calls: Arc<Calls>,
    admission: Arc<Admission>,
    /// The Docker Engine, when this host has a reachable daemon.
    engine: Option<Engine>,
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
    pub fn new(
        config: Arc<AgentConfig>,
        calls: Arc<Calls>,
        admission: Arc<Admission>,
        engine: Option<Engine>,
    ) -> Self {
        Self {
            config,
            calls,
            admission,
            engine,
        }
    }
}

fn refused(code: tonic::Code, kind: &'static str, message: String) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_KIND,
        tonic::metadata::MetadataValue::from_static(kind),
    );
    status
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ExecuteEvent, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    type ExecuteStream = EventStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let req = request.into_inner();
        let agent = &self.config.id;
        if !wire::compatible(&req.protocol_version) {
            return Err(refused(
                tonic::Code::FailedPrecondition,
                "version",
                format!(
                    "agent `{agent}` speaks protocol {}, the coordinator {:?}: upgrade one so their major versions match",
                    mcpfier_proto::PROTOCOL_VERSION,
                    req.protocol_version
                ),
            ));
        }
        let exec = wire::execution(&req).map_err(|why| {
            refused(
                tonic::Code::InvalidArgument,
                "invalid",
                format!("invalid execution: {why}"),
            )
        })?;
        if let Err(refusal) = self.config.policy.check(
            &req.tool,
            exec.timeout,
            exec.max_output,
            exec.container.as_ref(),
        ) {
            warn!(call_id = %req.call_id, tool = %req.tool, %refusal, "refused by policy");
            return Err(refused(
                tonic::Code::PermissionDenied,
                "policy",
                format!("agent `{agent}` refuses: {refusal}"),
            ));
        }
        let accepted = v1::Accepted {
            agent_id: agent.clone(),
            attached: false,
        };
        let known = self.calls.get(&req.call_id).is_some();
        if !known && self.admission.draining() {
            return Err(refused(
                tonic::Code::Unavailable,
                "draining",
                format!("agent `{agent}` is draining and takes no new calls"),
            ));
        }
        if !known && self.admission.fenced() {
            return Err(refused(
                tonic::Code::Unavailable,
                "fenced",
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
            Start::Full { running } => Err(refused(
                tonic::Code::ResourceExhausted,
                "capacity",
                format!(
                    "agent `{agent}` is at capacity ({running} of {} calls running)",
                    self.config.capacity
                ),
            )),
            Start::New(call) => {
                let stream = call.follow(0);
                let span = tracing::info_span!(
                    "execute",
                    call_id = %req.call_id,
                    request_id = %req.request_id,
                    tool = %req.tool
                );
                let engine = self.engine.clone();
                let (call_id, tool) = (req.call_id.clone(), req.tool.clone());
                tokio::spawn(
                    run(self.calls.clone(), call, exec, engine, call_id, tool).instrument(span),
                );
                Ok(Response::new(Box::pin(stream)))
            }
        }
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
            _ => false,
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
            features: features(self.engine.is_some()),
            allow_tools: self.config.policy.allow_tools.clone(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            running: self.calls.running() as u32,
            capacity: self.config.capacity,
            draining: self.admission.draining() || self.admission.fenced(),
        }))
    }
}

/// Runs one call and records its events.
async fn run(
    calls: Arc<Calls>,
    call: Arc<Call>,
    exec: Execution,
    engine: Option<Engine>,
    call_id: String,
    tool: String,
) {
    info!("call accepted");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = {
        let call = call.clone();
        async move {
            while let Some(event) = rx.recv().await {
                call.push(match event {
                    exec::Event::Started { pid } => Event::Started(v1::Started { pid }),
                    exec::Event::Output(chunk) => Event::Output(v1::OutputChunk {
                        stream: match chunk.stream {
                            exec::Stream::Stdout => v1::OutputStream::Stdout as i32,
                            exec::Stream::Stderr => v1::OutputStream::Stderr as i32,
                        },
                        data: chunk.data,
                    }),
                });
            }
        }
    };
    let work = async {
        match (&exec.container, &engine) {
            (None, _) => exec::run(&exec, Some(tx), call.cancel.clone())
                .await
                .map_err(|e| e.to_string()),
            (Some(spec), Some(engine)) => engine
                .run(&exec, spec, &call_id, &tool, Some(tx), call.cancel.clone())
                .await
                .map_err(|e| e.to_string()),
            (Some(_), None) => {
                Err("this agent has no Docker daemon, so it runs no containers".into())
            }
        }
    };
    let result = tokio::join!(work, forward).0;
    let finished = match result {
        Ok(outcome) => {
            info!(
                exit_code = outcome.exit_code,
                timed_out = outcome.timed_out,
                cancelled = outcome.cancelled,
                duration_ms = outcome.duration.as_millis() as u64,
                "call finished"
            );
            wire::finished(&outcome)
        }
        Err(e) => {
            warn!(error = %e, "call could not start");
            v1::Finished {
                error: e.to_string(),
                ..Default::default()
            }
        }
    };
    calls.finish(&call, finished);
}
