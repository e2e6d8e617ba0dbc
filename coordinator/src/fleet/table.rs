//! The agent table: the agents routing may use, joined from the config and from etcd
//! membership updates, and its views for `/fleet`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};

use mcpfier_common::membership::AgentRecord;
use mcpfier_common::tls::{self, Identity, Role};
use mcpfier_proto::v1::agent_client::AgentClient;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Fleet;
use super::agent::{Agent, AgentView, Source, Status};
use super::channel::channel;
use crate::catalog::Tool;
use crate::membership::{Sink, Update};

/// How long an etcd agent that left stays in the views as `gone`.
pub const DEPARTED_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// At most this many of them are kept.
const DEPARTED_MAX: usize = 1000;

/// What the coordinator knows of etcd.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EtcdView {
    /// The config has a `fleet.etcd` section.
    pub configured: bool,
    /// The coordinator listed the agents and is watching them; false from the first failure
    /// (connect, list or watch) until the next listing.
    pub connected: bool,
    /// Why etcd last could not be reached; `None` once a listing succeeds.
    pub last_error: Option<String>,
    /// etcd answered at least once since the coordinator started: `/readyz` waits for it.
    pub reached: bool,
}

impl Fleet {
    pub(super) fn new_agent(
        &self,
        id: &str,
        address: &str,
        source: Source,
    ) -> anyhow::Result<Arc<Agent>> {
        let certified: tls::LabelSlot = Arc::default();
        let config = tls::client_config_recording(
            &self.material,
            Identity::new(Role::Agent, id),
            certified.clone(),
        )?;
        Ok(Arc::new(Agent {
            id: id.to_owned(),
            address: address.to_owned(),
            source,
            client: AgentClient::new(channel(config, address, self.connect_timeout)?)
                .max_decoding_message_size(mcpfier_proto::MAX_MESSAGE)
                .max_encoding_message_size(mcpfier_proto::MAX_MESSAGE),
            status: RwLock::new(Status::default()),
            inflight: AtomicU32::new(0),
            changes: self.changes.clone(),
            certified,
            certified_keys: self.certified_keys.clone(),
        }))
    }

    pub(super) fn write_agents(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Agent>>> {
        self.agents.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn snapshot(&self) -> Vec<Arc<Agent>> {
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
        (agents, self.view_etcd())
    }

    /// What the coordinator knows of etcd.
    pub fn view_etcd(&self) -> EtcdView {
        self.etcd.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records whether etcd answers.
    fn set_etcd(&self, connected: bool, error: Option<String>) {
        let mut e = self.etcd.write().unwrap_or_else(|p| p.into_inner());
        e.connected = connected;
        e.reached |= connected;
        if error.is_some() || connected {
            e.last_error = error;
        }
    }

    /// Applies an agent record from etcd: joins a new agent, or updates a known one.
    ///
    /// etcd says only who is alive, where, and (as hints) its load and drain state. What it
    /// offers — labels, capacity, allowed tools, features — comes from the agent itself over
    /// mutual TLS (`Info`), so an etcd write can't move work to an agent; a new record is
    /// routable only once its first `Info` succeeded.
    fn upsert_from_etcd(&self, id: &str, record: &AgentRecord) {
        if !tls::valid_name(id) {
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
        let (agent, probe) = match existing {
            Some(a) if a.address == record.address => {
                // A new run of the agent at the same address: read its Info again.
                let restarted = a.status().record_started_at != Some(record.started_at);
                if restarted {
                    a.update(|s| {
                        s.info_known = false;
                        s.record_started_at = Some(record.started_at);
                        s.failed_checks = 0;
                        s.next_check = None;
                    });
                }
                (a, restarted)
            }
            other => {
                let agent = match self.new_agent(id, &record.address, Source::Etcd) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(agent = %id, error = %e, "cannot use this agent");
                        return;
                    }
                };
                agent.update(|s| s.record_started_at = Some(record.started_at));
                let mut agents = self.write_agents();
                if let Some(old) = other {
                    agents.retain(|a| !Arc::ptr_eq(a, &old));
                }
                agents.push(agent.clone());
                drop(agents);
                info!(agent = %id, address = %record.address, "agent registered; checking who answers there");
                (agent, true)
            }
        };
        agent.update(|s| {
            s.running = record.running;
            s.draining = record.draining;
            // Only an agent holding its lease writes a record: it is not fenced.
            s.fenced = false;
            s.updated_at = Some(record.updated_at);
        });
        if probe {
            // Dialing is bounded (connect and RPC timeouts), and off the etcd watch's path.
            let agent = agent.clone();
            self.tasks.spawn(async move { agent.probe().await });
        }
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

    /// Removes an etcd agent whose key is gone (lease expired or revoked); the views keep it
    /// as `gone` for [`DEPARTED_FOR`].
    fn remove_from_etcd(&self, id: &str) {
        let mut agents = self.write_agents();
        let mut left = None;
        agents.retain(|a| {
            let leaving = a.id == id && a.source == Source::Etcd;
            if leaving {
                left = Some(a.view());
            }
            !leaving
        });
        drop(agents);
        if let Some(mut view) = left {
            info!(agent = %id, "agent left");
            view.state = "gone";
            view.healthy = false;
            view.last_error = Some(match view.last_error.take() {
                Some(why) => format!(
                    "its etcd record is gone (lease expired or revoked); before that: {why}"
                ),
                None => "its etcd record is gone (lease expired or revoked)".to_owned(),
            });
            let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
            departed.retain(|(_, v)| v.id != id);
            departed.push_back((std::time::Instant::now(), view));
            while departed.len() > DEPARTED_MAX {
                departed.pop_front();
            }
            drop(departed);
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// etcd agents that left in the last [`DEPARTED_FOR`] (state `gone`, newest last), unless
    /// they came back.
    pub fn departed(&self) -> Vec<AgentView> {
        let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        departed.retain(|(at, _)| at.elapsed() < DEPARTED_FOR);
        let present: Vec<String> = self.snapshot().iter().map(|a| a.id.clone()).collect();
        departed
            .iter()
            .filter(|(_, v)| !present.contains(&v.id))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Replaces the etcd agents with a fresh listing.
    fn replace_etcd(&self, records: &BTreeMap<String, AgentRecord>) {
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
}

impl Sink for Fleet {
    fn apply(&self, update: Update<'_>) {
        match update {
            Update::Listed(records) => {
                self.replace_etcd(records);
                self.set_etcd(true, None);
            }
            Update::Put(id, record) => self.upsert_from_etcd(id, record),
            Update::Deleted(id) => self.remove_from_etcd(id),
            Update::Unreachable(why) => self.set_etcd(false, Some(why)),
        }
    }
}
