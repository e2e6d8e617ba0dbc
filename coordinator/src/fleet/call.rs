//! The call protocol: send `Execute` to the chosen agent, wait for it to accept, follow its
//! events to the result. Before acceptance a failure moves the call to another agent; after
//! it, the call is never run twice (an idempotent tool is retried once, with a new call id).

use std::time::{Duration, Instant};

use futures::StreamExt;
use mcpfier_exec::{ErrorKind, Event, Execution, wire};
use mcpfier_proto::v1::{self, execute_event};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::agent::Inflight;
use super::channel::status_text;
use super::{Error, Fleet, LOST_AFTER, RPC_TIMEOUT, Ran};
use crate::catalog::Tool;

impl Fleet {
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
            let mut collected = wire::Collected::new(exec.max_output);
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
                        collected.push(&chunk);
                        if let Some(tx) = &events {
                            let _ = tx.send(wire::output(chunk));
                        }
                    }
                    Some(execute_event::Event::Finished(f)) => {
                        return match wire::finished_result(f, collected) {
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
