//! The coordinator's view of etcd membership: list the agents, then watch from that revision
//! so no event is missed; list again after a compaction or a lost connection. It emits what
//! it learns to a [`Sink`] (the fleet's agent table, wired by the owner of both), and knows
//! nothing of routing. While etcd is unreachable, routing goes on with the last membership.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcpfier_common::membership::{self, AgentRecord, Change, Etcd};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::EtcdSettings as EtcdSection;

/// Pause between attempts while etcd is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// What the follower learned.
#[derive(Debug)]
pub enum Update<'a> {
    /// A whole listing: these agents and no others (etcd is reachable).
    Listed(&'a BTreeMap<String, AgentRecord>),
    /// An agent's record was written.
    Put(&'a str, &'a AgentRecord),
    /// An agent's key is gone (lease expired or revoked).
    Deleted(&'a str),
    /// etcd did not answer, and why.
    Unreachable(String),
}

/// Where the follower sends what it learns.
pub trait Sink: Send + Sync {
    /// Takes in one update.
    fn apply(&self, update: Update<'_>);
}

/// Follows etcd into a [`Sink`] until shutdown.
pub struct Follower {
    settings: EtcdSection,
    sink: Arc<dyn Sink>,
    first: Option<oneshot::Sender<()>>,
}

impl Follower {
    /// A follower of `settings`, and a receiver that fires once the first listing reached
    /// `sink`.
    pub fn new(settings: EtcdSection, sink: Arc<dyn Sink>) -> (Follower, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let follower = Follower {
            settings,
            sink,
            first: Some(tx),
        };
        (follower, rx)
    }

    /// Lists and watches, again and again, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut was_down = false;
        loop {
            let result = tokio::select! {
                r = self.follow_once(&mut was_down) => r,
                () = shutdown.cancelled() => return,
            };
            if let Err(why) = result {
                if !was_down {
                    warn!(error = %why, "etcd unreachable; routing on the last known membership");
                }
                was_down = true;
                self.sink.apply(Update::Unreachable(why));
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One list-then-watch cycle; returns why it ended.
    async fn follow_once(&mut self, was_down: &mut bool) -> Result<(), String> {
        let settings = &self.settings;
        let etcd = Etcd::connect_with(&settings.endpoints, &settings.access)
            .await
            .map_err(|e| e.to_string())?;
        let (records, revision) = etcd
            .list(&settings.prefix)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = etcd
            .watch(&settings.prefix, revision)
            .await
            .map_err(|e| e.to_string())?;
        self.sink.apply(Update::Listed(&records));
        if *was_down {
            info!(
                agents = records.len(),
                "etcd reachable again; membership re-listed"
            );
            *was_down = false;
        }
        if let Some(tx) = self.first.take() {
            let _ = tx.send(());
        }
        while let Some(message) = stream.next().await {
            let response = message.map_err(|e| format!("watch failed: {e}"))?;
            for change in membership::changes(&settings.prefix, &response)? {
                match change {
                    Change::Put(id, record) => self.sink.apply(Update::Put(&id, &record)),
                    Change::Delete(id) => self.sink.apply(Update::Deleted(&id)),
                }
            }
        }
        Err("the watch stream ended".into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Sink for Seen {
        fn apply(&self, update: Update<'_>) {
            self.0.lock().unwrap().push(format!("{update:?}"));
        }
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_reported_and_the_follower_stops_on_shutdown() {
        // A port nothing listens on: connecting fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = EtcdSection {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            prefix: "/mcpfier".into(),
            access: Default::default(),
        };
        let seen = Arc::new(Seen::default());
        let (follower, _first) = Follower::new(settings, seen.clone());
        let shutdown = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(follower.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !seen
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|u| u.starts_with("Unreachable"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no Unreachable update"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the follower ends after shutdown");
    }
}
