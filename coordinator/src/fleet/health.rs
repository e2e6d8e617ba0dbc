//! The health loop: checks static agents, and etcd agents out of routing, every
//! `health_interval` until shutdown (etcd agents in routing are vouched for by their records).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Fleet;
use super::agent::Source;

/// The fleet's health checks, run by the fleet's owner.
pub struct Health {
    pub(super) fleet: Arc<Fleet>,
    pub(super) every: Duration,
}

impl Health {
    /// Checks every `every` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let due: Vec<_> = self
                        .fleet
                        .snapshot()
                        .into_iter()
                        .filter(|a| a.source == Source::Static || !a.status().healthy)
                        .collect();
                    futures::future::join_all(due.iter().map(|a| a.probe())).await;
                }
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::task::TaskTracker;

    use super::*;

    #[tokio::test]
    async fn the_health_loop_ends_on_shutdown_and_leaves_no_task() {
        let (_dir, catalog) = super::super::test_catalog("  - {name: t, command: [/bin/true]}\n");
        let tasks = TaskTracker::new();
        let (_fleet, health) = Fleet::build(catalog.fleet.as_ref().unwrap(), &tasks)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        tasks.spawn(health.run(shutdown.clone()));
        assert_eq!(tasks.len(), 1);
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the health loop ends after shutdown");
        assert!(tasks.is_empty());
    }
}
