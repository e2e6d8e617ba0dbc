//! The health loop: checks static agents, and etcd agents out of routing, every
//! `health_interval` until shutdown (etcd agents in routing are vouched for by their records,
//! except while etcd is unreachable: then no record says anything, and every agent is checked,
//! so that one fenced by its lapsed lease shows as fenced).
//! An etcd agent that keeps failing is checked less often, down to once per
//! [`MAX_BACKOFF`]: a thousand records of agents that don't answer must not cost a thousand
//! dials a second. A new run of the agent (a record with a new `started_at`) is checked at
//! once whatever the backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
                    let now = Instant::now();
                    let records_vouch = self.fleet.view_etcd().connected;
                    let due: Vec<_> = self
                        .fleet
                        .snapshot()
                        .into_iter()
                        .filter(|a| {
                            a.source == Source::Static
                                || (!records_vouch && a.with_status(|s| s.healthy))
                                || a.with_status(|s| {
                                    !s.healthy && s.next_check.is_none_or(|t| t <= now)
                                })
                        })
                        .collect();
                    futures::future::join_all(due.iter().map(|a| async {
                        a.probe().await;
                        if a.source == Source::Etcd {
                            let wait = backoff(self.every, a.with_status(|s| s.failed_checks));
                            a.update(|s| {
                                if !s.healthy {
                                    s.next_check = Some(Instant::now() + wait);
                                }
                            });
                        }
                    }))
                    .await;
                }
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// The longest an etcd agent that doesn't answer waits between two checks.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait before checking again an etcd agent whose last `failed` checks in a row
/// failed: `every` for the first failure, doubling up to [`MAX_BACKOFF`].
fn backoff(every: Duration, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    every
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF.max(every))
}

#[cfg(test)]
mod tests {
    use tokio_util::task::TaskTracker;

    use super::*;

    #[test]
    fn checks_of_a_failing_agent_back_off_to_a_ceiling() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (0..=8).map(|n| backoff(s(1), n)).collect();
        assert_eq!(
            waits,
            [s(1), s(1), s(2), s(4), s(8), s(16), s(30), s(30), s(30)]
        );
        assert_eq!(backoff(s(1), u32::MAX), s(30));
        // An interval longer than the ceiling is kept as it is.
        assert_eq!(backoff(s(60), 5), s(60));
    }

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
