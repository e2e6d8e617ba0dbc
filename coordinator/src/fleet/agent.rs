//! One agent as the coordinator sees it: its channel, what it last said about itself
//! (health, labels, capacity, policy, features), the calls in flight on it, and its checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use mcpfier_common::glob::Globs;
use mcpfier_exec::{ErrorKind, wire};
use mcpfier_proto::v1::{self, agent_client::AgentClient};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};

use mcpfier_common::tls;

use super::RPC_TIMEOUT;
use super::channel::status_text;
use crate::catalog::Tool;

/// An agent's announced `allow_tools`: `None` (assume all) when it announced none.
fn peer_globs(patterns: &[String]) -> Option<Arc<Globs>> {
    (!patterns.is_empty()).then(|| Arc::new(Globs::lenient(patterns)))
}

/// What an agent last told us.
#[derive(Clone, Debug, Default)]
pub(super) struct Status {
    pub(super) healthy: bool,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) capacity: u32,
    pub(super) running: u32,
    pub(super) draining: bool,
    /// It said it is fenced (`draining` is set too).
    pub(super) fenced: bool,
    pub(super) last_error: Option<String>,
    pub(super) info_known: bool,
    /// `policy.allow_tools` globs (`None`: not known yet, assume all).
    pub(super) allow_tools: Option<Arc<Globs>>,
    /// Unix ms of the last record from etcd (etcd agents).
    pub(super) updated_at: Option<u64>,
    /// Unix ms of the last health check it answered.
    pub(super) checked_at: Option<u64>,
    /// Announced features (`docker`, ...).
    pub(super) features: Vec<String>,
    /// `started_at` of the etcd record the agent joined with: a new one means a new run of
    /// the agent, whose `Info` is read again.
    pub(super) record_started_at: Option<u64>,
    /// Checks in a row that failed (reset by one that succeeds).
    pub(super) failed_checks: u32,
    /// When the health loop checks this (unhealthy, etcd) agent again; `None`: at its next
    /// tick.
    pub(super) next_check: Option<std::time::Instant>,
}

impl Status {
    /// Takes in the `allow_tools` an agent announced. They are compiled only when they
    /// changed: records arrive on every load update, and compiling globs each time cost the
    /// coordinator a tenth of a core at 1,000 agents.
    pub(super) fn set_allow_tools(&mut self, patterns: &[String]) {
        let same = match &self.allow_tools {
            Some(g) => g.patterns() == patterns,
            None => patterns.is_empty(),
        };
        if !same {
            self.allow_tools = peer_globs(patterns);
        }
    }

    /// Whether an agent in this state may run `tool`: healthy, not draining, its labels
    /// include the tool's placement, its policy allows the tool, and it has Docker when the
    /// tool runs in a container.
    pub(super) fn fits(&self, tool: &Tool) -> bool {
        self.healthy
            && !self.draining
            && tool
                .placement
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
            && self
                .allow_tools
                .as_ref()
                .is_none_or(|g| g.is_match(&tool.name))
            && (tool.container.is_none() || self.features.iter().any(|f| f == "docker"))
            && (!tool.takes_paths() || self.features.iter().any(|f| f == "path-args"))
    }

    /// Its load: the busier count (calls this coordinator has in flight on it, or the
    /// running calls it reported) over its capacity.
    pub(super) fn load(&self, inflight: u32) -> f64 {
        inflight.max(self.running) as f64 / self.capacity.max(1) as f64
    }
}

/// Where the coordinator learned of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Listed under `fleet.agents` in the config; checked every `health_interval`.
    Static,
    /// Registered in etcd; joins and leaves with its record.
    Etcd,
}

/// One agent: its connection and state.
pub struct Agent {
    /// The agent's id; its certificate must carry it.
    pub id: String,
    /// `host:port` dialled for gRPC.
    pub address: String,
    /// Where the coordinator learned of it.
    pub source: Source,
    pub(super) client: AgentClient<Channel>,
    pub(super) status: RwLock<Status>,
    /// Calls this coordinator has in flight on it.
    pub(super) inflight: AtomicU32,
    /// Bumped whenever routing may have changed.
    pub(super) changes: Arc<watch::Sender<u64>>,
    /// The labels its certificate vouched for at the last handshake (`None`: none yet).
    pub(super) certified: tls::LabelSlot,
    /// `fleet.certified_labels`: keys routed on only when the certificate vouches for them.
    pub(super) certified_keys: Arc<[String]>,
}

/// One agent as `/fleet` and logs show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentView {
    /// The agent's id.
    pub id: String,
    /// `host:port` dialled for gRPC.
    pub address: String,
    /// `static` (from the config) or `etcd`.
    pub source: &'static str,
    /// Usable for routing: nothing failed on it since its last good check (an etcd agent
    /// starts healthy when it joins).
    pub healthy: bool,
    /// It said it is draining or fenced: it takes no new calls.
    pub draining: bool,
    /// Its labels, as it last announced them.
    pub labels: BTreeMap<String, String>,
    /// Calls running on it, as it last reported (from any coordinator).
    pub running: u32,
    /// Calls it runs at once, as it last reported.
    pub capacity: u32,
    /// Calls this coordinator has in flight on it now.
    pub inflight: u32,
    /// Why it last left routing; `None` when nothing failed since its last good health check.
    pub last_error: Option<String>,
    /// Unix time in milliseconds of its last etcd record; `None` for a static agent.
    pub updated_at_ms: Option<u64>,
    /// `healthy`, `draining` (it said it is draining), `fenced` (it said it lost its etcd
    /// lease) or `unhealthy` (out of routing, `last_error` says why).
    pub state: &'static str,
    /// Unix time in milliseconds it was last heard from: its last answered health check or
    /// etcd record; `None` if never.
    pub last_seen_ms: Option<u64>,
}

impl Agent {
    pub(super) fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the status in place, without copying it.
    pub(super) fn with_status<T>(&self, f: impl FnOnce(&Status) -> T) -> T {
        f(&self.status.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the status; tells routing watchers when it matters to them.
    pub(super) fn update(&self, f: impl FnOnce(&mut Status)) {
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

    pub(super) fn view(&self) -> AgentView {
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
            state: match (s.healthy, s.draining, s.fenced) {
                (true, false, _) => "healthy",
                (true, true, false) => "draining",
                (true, true, true) => "fenced",
                (false, _, _) => "unhealthy",
            },
            last_seen_ms: s.updated_at.max(s.checked_at),
            last_error: s.last_error,
            updated_at_ms: s.updated_at,
        }
    }

    /// Whether this agent may run `tool` now.
    pub(super) fn can_run(&self, tool: &Tool) -> bool {
        self.fits(&self.status(), tool)
    }

    /// Whether this agent, in state `s`, fits `tool`: [`Status::fits`], and each placement
    /// label whose key is in `fleet.certified_labels` is vouched for by its certificate.
    pub(super) fn fits(&self, s: &Status, tool: &Tool) -> bool {
        s.fits(tool) && self.vouched_for(tool)
    }

    fn vouched_for(&self, tool: &Tool) -> bool {
        if self.certified_keys.is_empty() {
            return true;
        }
        let certified = self.certified.read().unwrap_or_else(|p| p.into_inner());
        tool.placement
            .iter()
            .filter(|(k, _)| self.certified_keys.contains(*k))
            .all(|(k, v)| certified.as_ref().and_then(|c| c.get(k)) == Some(v))
    }

    /// Warns about labels the agent announces for certified keys that its certificate does
    /// not vouch for: routing ignores them.
    fn warn_unvouched(&self, announced: &BTreeMap<String, String>) {
        let certified = self.certified.read().unwrap_or_else(|p| p.into_inner());
        for key in self.certified_keys.iter() {
            let Some(claimed) = announced.get(key) else {
                continue;
            };
            let vouched = certified.as_ref().and_then(|c| c.get(key));
            if vouched != Some(claimed) {
                warn!(
                    agent = %self.id,
                    label = %format!("{key}={claimed}"),
                    certificate = %vouched.map_or("nothing".to_owned(), |v| format!("{key}={v}")),
                    "the agent announces a label its certificate does not vouch for; routing ignores it (fleet.certified_labels)"
                );
            }
        }
    }

    /// Takes in an agent's refusal before it accepted a call: a refusal of kind `kind`, or
    /// (`None`) a failure to talk to it at all.
    pub(super) fn refused(&self, kind: Option<ErrorKind>, why: &str) {
        match kind {
            // It says so itself, and its next record or health check says when it is back.
            Some(ErrorKind::Draining) => self.update(|s| s.draining = true),
            Some(ErrorKind::Fenced) => self.update(|s| {
                s.draining = true;
                s.fenced = true;
            }),
            Some(kind) if !kind.marks_agent_failed() => {}
            _ => self.mark_failed(why),
        }
    }

    /// Takes the agent out of routing until a health check succeeds again.
    pub(super) fn mark_failed(&self, why: &str) {
        let was = self.status().healthy;
        self.update(|s| {
            s.healthy = false;
            s.failed_checks = s.failed_checks.saturating_add(1);
            s.last_error = Some(why.to_owned());
            // Whoever answers next at this address says again who it is and what it offers.
            s.info_known = false;
        });
        if was {
            warn!(agent = %self.id, error = %why, "agent out of routing");
        }
    }

    pub(super) fn describe(&self) -> String {
        let s = self.status();
        let labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if s.healthy && s.fenced {
            "fenced: it lost its etcd lease and takes no new calls".to_owned()
        } else if s.healthy && s.draining {
            "draining: takes no new calls".to_owned()
        } else if s.healthy {
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
        let unvouched = if self.certified_keys.is_empty() {
            String::new()
        } else {
            let certified = self.certified.read().unwrap_or_else(|p| p.into_inner());
            let vouched: Vec<_> = certified
                .iter()
                .flatten()
                .filter(|(k, _)| self.certified_keys.contains(*k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(" certified [{}]", vouched.join(", "))
        };
        format!(
            "{} [{}]{unvouched}{policy}{docker} ({state})",
            self.id,
            labels.join(", ")
        )
    }

    pub(super) async fn probe(&self) {
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
                let labels: BTreeMap<String, String> = info.labels.into_iter().collect();
                self.warn_unvouched(&labels);
                self.update(|s| {
                    s.labels = labels;
                    s.capacity = info.capacity.max(1);
                    s.set_allow_tools(&info.allow_tools);
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
                    s.draining = h.draining || h.fenced;
                    s.fenced = h.fenced;
                    s.last_error = None;
                    s.failed_checks = 0;
                    s.next_check = None;
                    s.checked_at = Some(unix_ms());
                });
                if !was {
                    info!(agent = %self.id, address = %self.address, "agent healthy");
                }
            }
            Err(e) => self.mark_failed(&e),
        }
    }
}

/// Now, as Unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counts a call in flight on an agent while alive.
pub(super) struct Inflight(Arc<Agent>);

impl Inflight {
    pub(super) fn new(agent: Arc<Agent>) -> Self {
        agent.inflight.fetch_add(1, Ordering::SeqCst);
        Self(agent)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
