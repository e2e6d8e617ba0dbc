//! The call protocol: send `Execute` to the chosen agent, wait (within the accept timeout) for
//! it to accept, follow its events to the result.
//!
//! Invariant: a call goes to a second agent only when nothing can have run on the first: the
//! first refused it with a typed refusal before starting, or the request never left (the
//! connection could not be made). Any other failure once the request was written leaves the
//! outcome unknown and ends the call as `agent_lost`, except for an idempotent tool, which
//! gets one retry with a new call id. The table in docs/fleet.md says the same.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mcpfier_common::telemetry::{self, Attribute, Kind, Span};
use mcpfier_exec::{ErrorKind, Event, Execution, HasKind, wire};
use mcpfier_proto::v1::{self, execute_event};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::agent::{Agent, Inflight};
use super::channel::{never_sent, status_text};
use super::{Error, Fleet, LOST_AFTER, RPC_TIMEOUT, Ran};
use crate::catalog::Tool;

/// How one attempt on one agent ended.
enum Attempt {
    /// The agent said, with a typed refusal, that it did not start the call.
    Refused { kind: ErrorKind, why: String },
    /// The request never left: the connection could not be made.
    NotSent(String),
    /// The request was written and then the agent was lost: it may have run.
    Lost(String),
    /// The call ended: its result, or the agent's report that it could not start, or a cancel.
    Done(Result<Ran, Error>),
}

/// Ends an attempt's span with how it went: refusals, losses and failures are errors.
fn end_dispatch_span(span: &Span, attempt: &Attempt) {
    match attempt {
        Attempt::Done(Ok(_)) => span.set(Attribute::new("rpc.grpc.status_code", 0_i64)),
        Attempt::Done(Err(e)) => span.fail(&e.kind().to_string(), e.to_string()),
        Attempt::Refused { kind, why } => span.fail(&format!("refused_{kind}"), why.clone()),
        Attempt::NotSent(why) => span.fail("not_sent", why.clone()),
        Attempt::Lost(why) => span.fail("lost", why.clone()),
    }
}

/// Counts an attempt in `mcpfier_dispatch_total` by agent and result: `accepted` (the agent
/// ran it, whatever the command did), `refused_<kind>`, `not_sent` or `lost`.
fn count_dispatch(agent: &str, attempt: &Attempt) {
    let result = match attempt {
        Attempt::Done(Ok(_)) => "accepted".to_owned(),
        Attempt::Done(Err(e)) => format!("failed_{}", e.kind()),
        Attempt::Refused { kind, .. } => format!("refused_{kind}"),
        Attempt::NotSent(_) => "not_sent".to_owned(),
        Attempt::Lost(_) => "lost".to_owned(),
    };
    metrics::counter!(mcpfier_common::metrics::DISPATCH, "agent" => agent.to_owned(), "result" => result)
        .increment(1);
}

impl Fleet {
    /// Runs `exec` for `tool` on an agent. Output goes to `events` as it arrives.
    pub async fn run(
        &self,
        tool: &Tool,
        exec: &Execution,
        request_id: &str,
        events: Option<UnboundedSender<Event>>,
        cancel: CancellationToken,
        trace: &telemetry::Context,
    ) -> Result<Ran, Error> {
        let started = Instant::now();
        // Trying agents that refuse ends within the tool's timeout.
        let give_up = started + exec.timeout;
        let mut tried: Vec<String> = Vec::new();
        let mut refusals: Vec<String> = Vec::new();
        let mut lost: Option<(String, String, String)> = None;
        let mut call_id = uuid::Uuid::new_v4().to_string();
        loop {
            let Some(agent) = self.pick(tool, &tried) else {
                return Err(match lost {
                    Some((agent, call_id, why)) => Error::AgentLost {
                        agent,
                        call_id,
                        why: format!("{why}; no other agent could take the idempotent retry"),
                    },
                    None if tried.is_empty() => self.no_agent(&tool.placement),
                    None => Error::NotAccepted(refusals.join("; ")),
                });
            };
            if Instant::now() >= give_up {
                refusals.push(format!(
                    "gave up after {} (the tool's timeout) with agents left to try",
                    humantime::format_duration(exec.timeout)
                ));
                return Err(Error::NotAccepted(refusals.join("; ")));
            }
            tried.push(agent.id.clone());
            let span = self.dispatch_span(&agent, tool, &call_id, tried.len(), trace);
            let attempt = self
                .attempt(
                    &agent,
                    tool,
                    exec,
                    &call_id,
                    request_id,
                    started,
                    &events,
                    &cancel,
                    span.context(),
                )
                .instrument(tracing::info_span!(
                    "dispatch",
                    agent = %agent.id,
                    call_id = %call_id,
                    attempt = tried.len()
                ))
                .await;
            count_dispatch(&agent.id, &attempt);
            end_dispatch_span(&span, &attempt);
            drop(span);
            match attempt {
                Attempt::Done(result) => return result,
                Attempt::Refused { kind, why } => {
                    agent.refused(Some(kind), &why);
                    debug!(agent = %agent.id, %kind, "refused");
                    refusals.push(format!("agent `{}`: {why}", agent.id));
                    if !kind.try_elsewhere() {
                        return Err(Error::Start {
                            agent: agent.id.clone(),
                            kind,
                            message: why,
                        });
                    }
                }
                Attempt::NotSent(why) => {
                    agent.mark_failed(&why);
                    refusals.push(format!("agent `{}`: {why}", agent.id));
                }
                Attempt::Lost(why) => {
                    agent.mark_failed(&why);
                    // The agent may still start it (a stalled connection delivers it later):
                    // ask it not to, in case it is there to hear.
                    self.cancel_remote(&agent, &call_id);
                    let time_left = started.elapsed() + Duration::from_millis(500) < exec.timeout;
                    if tool.idempotent() && lost.is_none() && time_left {
                        warn!(agent = %agent.id, call_id = %call_id, why = %why, "agent lost; retrying the idempotent call on another agent");
                        metrics::counter!(mcpfier_common::metrics::DISPATCH, "agent" => agent.id.clone(), "result" => "retried").increment(1);
                        lost = Some((agent.id.clone(), call_id, why));
                        call_id = uuid::Uuid::new_v4().to_string();
                        continue;
                    }
                    return Err(Error::AgentLost {
                        agent: agent.id.clone(),
                        call_id,
                        why,
                    });
                }
            }
        }
    }

    /// Sends `Cancel` for `call_id` to `agent`, in the background.
    fn cancel_remote(&self, agent: &Agent, call_id: &str) {
        let mut client = agent.client.clone();
        let id = call_id.to_owned();
        self.tasks.spawn(async move {
            let _ = tokio::time::timeout(
                RPC_TIMEOUT,
                client.cancel(v1::CancelRequest { call_id: id }),
            )
            .await;
        });
    }

    /// The client span of one attempt on `agent` (the `n`th agent tried), per the RPC
    /// conventions: `mcpfier.agent.v1.Agent/Execute`.
    fn dispatch_span(
        &self,
        agent: &Agent,
        tool: &Tool,
        call_id: &str,
        n: usize,
        trace: &telemetry::Context,
    ) -> Span {
        Span::start(Kind::Client, trace, || {
            let mut attributes = vec![
                Attribute::new("rpc.system", "grpc"),
                Attribute::new("rpc.service", "mcpfier.agent.v1.Agent"),
                Attribute::new("rpc.method", "Execute"),
                Attribute::new("mcpfier.agent.id", agent.id.clone()),
                Attribute::new("mcpfier.attempt", n as i64),
                Attribute::new("mcpfier.call_id", call_id.to_owned()),
                Attribute::new("gen_ai.tool.name", tool.name.clone()),
            ];
            if let Some((host, port)) = agent.address.rsplit_once(':') {
                attributes.push(Attribute::new("server.address", host.to_owned()));
                if let Ok(port) = port.parse::<i64>() {
                    attributes.push(Attribute::new("server.port", port));
                }
            }
            ("mcpfier.agent.v1.Agent/Execute".into(), attributes)
        })
    }

    /// One attempt of the call on `agent`; `trace` (the attempt's span) goes to the agent
    /// as W3C trace context in the request's metadata.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        agent: &std::sync::Arc<Agent>,
        tool: &Tool,
        exec: &Execution,
        call_id: &str,
        request_id: &str,
        started: Instant,
        events: &Option<UnboundedSender<Event>>,
        cancel: &CancellationToken,
        trace: &telemetry::Context,
    ) -> Attempt {
        let _inflight = Inflight::new(agent.clone());
        let mut request = tonic::Request::new(wire::request(exec, call_id, request_id, &tool.name));
        telemetry::inject(trace, |key, value| {
            if let Ok(value) = value.parse() {
                request.metadata_mut().insert(key, value);
            }
        });
        let mut client = agent.client.clone();
        let accept_by = tokio::time::Instant::now() + self.accept_timeout;
        let not_accepted = || {
            format!(
                "sent, but not accepted within {} (fleet.accept_timeout)",
                humantime::format_duration(self.accept_timeout)
            )
        };
        let response = tokio::select! {
            r = tokio::time::timeout_at(accept_by, client.execute(request)) => r,
            () = cancel.cancelled() => {
                self.cancel_remote(agent, call_id);
                return Attempt::Done(Err(Error::Cancelled));
            }
        };
        let mut stream = match response {
            Err(_) => return Attempt::Lost(not_accepted()),
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let why = status_text(&status);
                return match wire::refusal_kind(&status) {
                    Some(kind) => Attempt::Refused { kind, why },
                    None if never_sent(&status) => Attempt::NotSent(why),
                    None => Attempt::Lost(why),
                };
            }
        };
        let first = tokio::select! {
            r = tokio::time::timeout_at(accept_by, stream.next()) => r,
            () = cancel.cancelled() => {
                self.cancel_remote(agent, call_id);
                return Attempt::Done(Err(Error::Cancelled));
            }
        };
        match first {
            Ok(Some(Ok(v1::ExecuteEvent {
                event: Some(execute_event::Event::Accepted(_)),
            }))) => {}
            Ok(Some(Err(status))) => {
                let why = status_text(&status);
                return match wire::refusal_kind(&status) {
                    Some(kind) => Attempt::Refused { kind, why },
                    None => Attempt::Lost(why),
                };
            }
            Ok(Some(Ok(_))) => {
                return Attempt::Lost("the agent sent events before accepting the call".into());
            }
            Ok(None) => {
                return Attempt::Lost("the stream ended before the call was accepted".into());
            }
            Err(_) => return Attempt::Lost(not_accepted()),
        }
        debug!(agent = %agent.id, call_id = %call_id, "accepted");
        let budget = exec.timeout + exec.kill_grace + LOST_AFTER;
        let deadline = tokio::time::Instant::from_std(started + budget);
        let mut collected = wire::Collected::new(exec.max_output);
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, stream.next()) => n,
                () = cancel.cancelled() => {
                    self.cancel_remote(agent, call_id);
                    return Attempt::Done(Err(Error::Cancelled));
                }
            };
            let event = match next {
                Err(_) => return Attempt::Lost("no result within the call's timeout".into()),
                Ok(None) => return Attempt::Lost("the stream ended without a result".into()),
                Ok(Some(Err(status))) => {
                    return Attempt::Lost(format!("stream failed: {}", status_text(&status)));
                }
                Ok(Some(Ok(event))) => event,
            };
            match event.event {
                Some(execute_event::Event::Started(s)) => {
                    if let Some(tx) = events {
                        let _ = tx.send(wire::started(&s));
                    }
                }
                Some(execute_event::Event::Output(chunk)) => {
                    collected.push(&chunk);
                    if let Some(tx) = events {
                        let _ = tx.send(wire::output(chunk));
                    }
                }
                Some(execute_event::Event::Finished(f)) => {
                    return Attempt::Done(match wire::finished_result(f, collected) {
                        Ok(outcome) => Ok(Ran {
                            outcome,
                            agent: agent.id.clone(),
                            call_id: call_id.to_owned(),
                        }),
                        Err((kind, message)) => Err(Error::Start {
                            agent: agent.id.clone(),
                            kind,
                            message,
                        }),
                    });
                }
                Some(execute_event::Event::Accepted(_)) | None => {}
            }
        }
    }
}
