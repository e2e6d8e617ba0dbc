//! The fleet: agents reached over mutual-TLS gRPC, their health, and dispatching calls to
//! them.
//!
//! Routing: among healthy agents whose labels include the tool's placement labels, the one
//! with the fewest running calls relative to its capacity (ties rotate). One HTTP/2
//! connection per agent, reused by every call.
//!
//! Semantics: a call moves to another agent only when nothing can have run on the first (a
//! typed refusal, or a connection that could not be made). Once the request was written, any
//! loss ends the call with an error naming the agent and saying the outcome is unknown —
//! unless the tool is `idempotent: true`, which is retried once on another agent within its
//! timeout. docs/fleet.md has the table.

mod agent;
mod call;
mod channel;
mod health;
mod routing;
mod table;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mcpfier_common::tls;
use mcpfier_exec::{ErrorKind, HasKind, Outcome};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use agent::Agent;
pub use agent::{AgentView, Source};
pub use channel::channel;
pub use health::Health;
pub use table::EtcdView;

use crate::catalog::FleetSettings;

/// Extra time past a call's timeout before a silent agent counts as lost.
pub(crate) const LOST_AFTER: Duration = Duration::from_secs(5);
/// How long an RPC for health or cancellation may take.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call could not be run on the fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Before any attempt: no agent is healthy, not draining, has the placement labels, allows
    /// the tool and (for a container tool) has Docker. Holds what was wanted and each agent's
    /// state.
    #[error("no healthy agent can run this tool: {0}")]
    NoAgent(String),
    /// Every fitting agent was tried and each refused or failed before accepting; holds each
    /// agent's reason, `; `-separated.
    #[error("no agent took the call: {0}")]
    NotAccepted(String),
    #[error(
        "agent `{agent}` was lost after it accepted call {call_id} ({why}); the outcome is unknown: the command may or may not have run"
    )]
    /// An agent accepted the call, then its stream failed, ended or went silent past the
    /// call's timeout plus grace, and no idempotent retry was possible.
    AgentLost {
        /// The agent's id.
        agent: String,
        /// The call id it accepted (so its logs can be searched).
        call_id: String,
        /// How it was lost, e.g. `the stream ended without a result`.
        why: String,
    },
    /// The agent accepted the call but could not start the command (e.g. no Docker daemon,
    /// spawn failed).
    #[error("agent `{agent}` could not start the command: {message}")]
    Start {
        /// The agent's id.
        agent: String,
        /// The error kind the agent reported.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
    /// The call was cancelled (an agent that accepted it is sent `Cancel`).
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

/// The fleet: cheap to share behind an `Arc`.
pub struct Fleet {
    agents: RwLock<Vec<Arc<Agent>>>,
    /// Cancel RPCs that outlive the call they cancel.
    tasks: TaskTracker,
    rotate: AtomicUsize,
    material: tls::Material,
    connect_timeout: Duration,
    accept_timeout: Duration,
    certified_keys: Arc<[String]>,
    changes: Arc<watch::Sender<u64>>,
    etcd: RwLock<EtcdView>,
    /// etcd agents whose record went away, as last seen, for the views (not routing).
    departed: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, AgentView)>>,
}

/// A finished remote call.
pub struct Ran {
    /// What the command did.
    pub outcome: Outcome,
    /// The id of the agent that ran it.
    pub agent: String,
    /// The call id it ran under (an idempotent retry has its own).
    pub call_id: String,
}

impl Fleet {
    /// The fleet of `settings`: connects (lazily) to every static agent and checks each once.
    /// Returns the fleet (a cheap handle behind an `Arc`) and its health loop, for the owner
    /// to run; cancel RPCs that outlive their call run in `tasks`.
    pub async fn build(
        settings: &FleetSettings,
        tasks: &TaskTracker,
    ) -> anyhow::Result<(Arc<Fleet>, Health)> {
        let material = tls::load(&settings.tls)?;
        let fleet = Arc::new(Fleet {
            agents: RwLock::new(Vec::new()),
            tasks: tasks.clone(),
            rotate: AtomicUsize::new(0),
            material,
            connect_timeout: settings.connect_timeout,
            accept_timeout: settings.accept_timeout,
            certified_keys: settings.certified_labels.clone().into(),
            changes: Arc::new(watch::channel(0).0),
            departed: Default::default(),
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
        let health = Health {
            fleet: fleet.clone(),
            every: settings.health_interval,
        };
        Ok((fleet, health))
    }
}

/// A fleet-mode catalog with real certificates (the loader checks them) and these `tools:`
/// entries; the directory holds the files.
#[cfg(test)]
fn test_catalog(tools: &str) -> (tempfile::TempDir, crate::catalog::Catalog) {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::init(dir.path(), 1, false).unwrap();
    crate::certs::issue(&crate::certs::Request {
        dir: dir.path(),
        role: tls::Role::Coordinator,
        name: "coord",
        sans: &[],
        labels: &[],
        days: 1,
        force: false,
    })
    .unwrap();
    let yaml = format!(
        "fleet:\n  tls: {{ca: ca.pem, cert: coord.pem, key: coord.key}}\n  agents: []\n  health_interval: 100ms\ntools:\n{tools}"
    );
    let path = dir.path().join("t.yaml");
    let catalog = crate::catalog::parse(&yaml, &path, &std::collections::HashMap::new()).unwrap();
    (dir, catalog)
}
