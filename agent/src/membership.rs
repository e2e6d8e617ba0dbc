//! The agent's side of etcd membership: register (never taking over a live agent's id), keep
//! the lease alive, publish load and drain state, fence itself when the lease can't be
//! renewed, and register again when etcd comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpfier_common::membership::{AgentRecord, Error, Etcd, now_ms};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::calls::Calls;
use crate::config::{EtcdSection, OnLeaseLoss};
use crate::service::Admission;

/// Shortest time between two load updates.
const MIN_UPDATE_GAP: Duration = Duration::from_millis(300);
/// Pause between attempts while etcd is unreachable.
const RETRY: Duration = Duration::from_millis(250);

/// What the registration loop is set up with.
pub struct Options {
    /// The agent's id (its etcd key's last part).
    pub id: String,
    /// Where etcd is, the key prefix and the lease TTL.
    pub etcd: EtcdSection,
    /// The record to publish; running count, drain state and time are filled in on each write.
    pub record: AgentRecord,
    /// What happens to running calls when the lease is lost.
    pub on_lease_loss: OnLeaseLoss,
}

/// The registration loop: a component run by the agent's `main` until shutdown.
pub struct Membership {
    id: String,
    etcd: EtcdSection,
    record: AgentRecord,
    on_lease_loss: OnLeaseLoss,
    calls: Arc<Calls>,
    admission: Arc<Admission>,
    first: Option<oneshot::Sender<Result<(), Error>>>,
}

/// Resolves with the outcome of the first registration (a duplicate id is fatal).
pub type FirstRegistration = oneshot::Receiver<Result<(), Error>>;

impl Membership {
    /// The loop for `options`, reading the running count from `calls` and setting the fence
    /// in `admission`; and the receiver of its first registration's outcome.
    pub fn build(
        options: Options,
        calls: Arc<Calls>,
        admission: Arc<Admission>,
    ) -> (Membership, FirstRegistration) {
        let (tx, rx) = oneshot::channel();
        let membership = Membership {
            id: options.id,
            etcd: options.etcd,
            record: options.record,
            on_lease_loss: options.on_lease_loss,
            calls,
            admission,
            first: Some(tx),
        };
        (membership, rx)
    }
}

/// The record an agent starts with.
pub fn initial_record(
    address: String,
    config: &crate::config::AgentConfig,
    docker: bool,
) -> AgentRecord {
    let now = now_ms();
    AgentRecord {
        address,
        labels: config.labels.clone(),
        capacity: config.capacity,
        running: 0,
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
        started_at: now,
        updated_at: now,
        draining: false,
        capabilities: crate::service::features(docker),
        allow_tools: config.policy.allow_tools.patterns().to_vec(),
    }
}

impl Membership {
    fn current(&self) -> AgentRecord {
        let mut r = self.record.clone();
        r.running = self.calls.running() as u32;
        r.draining = self.admission.draining();
        r.updated_at = now_ms();
        r
    }

    fn check_fence(&self, last_renewed: Instant, ttl: Duration) {
        if last_renewed.elapsed() > ttl && !self.admission.fenced() {
            error!(
                after = ?last_renewed.elapsed(),
                on_lease_loss = ?self.on_lease_loss,
                "etcd lease not renewed within its TTL; taking no calls until it is"
            );
            self.admission.set_fenced(true);
            if self.on_lease_loss == OnLeaseLoss::Kill {
                self.calls.cancel_all();
            }
        }
    }

    /// Runs until `shutdown`, then revokes the lease. The first registration's outcome goes
    /// to the [`FirstRegistration`] receiver: a duplicate id is fatal and ends the loop.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let ttl = self.etcd.lease_ttl.get();
        let mut first = self.first.take();
        let started = Instant::now();
        let mut last_renewed = Instant::now();
        let mut lease: Option<i64> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            self.check_fence(last_renewed, ttl);
            let etcd = match Etcd::connect(&self.etcd.endpoints).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "etcd unreachable; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
            // An old lease that is still alive keeps our key; otherwise start afresh.
            let reuse = match lease {
                Some(id) => matches!(etcd.keep_alive_once(id).await, Ok(ttl) if ttl > 0),
                None => false,
            };
            let id = match (reuse, lease) {
                (true, Some(id)) => id,
                _ => match etcd.grant(ttl).await {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(error = %e, "lease grant failed; will retry");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            match etcd
                .register(&self.etcd.prefix, &self.id, &self.current(), id)
                .await
            {
                Ok(()) => {}
                Err(Error::Duplicate { .. })
                    if first.is_some() && started.elapsed() < ttl + Duration::from_secs(2) =>
                {
                    // Perhaps our own previous run, whose lease has not expired yet.
                    let _ = etcd.revoke(id).await;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(e @ Error::Duplicate { .. }) => {
                    let _ = etcd.revoke(id).await;
                    error!(error = %e, "registration refused");
                    match first.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(e));
                        }
                        None => {
                            // Someone took our id while we were away: stop taking calls.
                            self.admission.set_fenced(true);
                            shutdown.cancel();
                        }
                    }
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "registration failed; will retry");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            lease = Some(id);
            last_renewed = Instant::now();
            if self.admission.fenced() {
                info!("etcd lease renewed; taking calls again");
                self.admission.set_fenced(false);
            }
            info!(lease = format!("{id:x}"), key = %mcpfier_common::membership::agent_key(&self.etcd.prefix, &self.id), "registered in etcd");
            if let Some(tx) = first.take() {
                let _ = tx.send(Ok(()));
            }
            match self
                .keep(&etcd, id, ttl, &mut last_renewed, &shutdown)
                .await
            {
                Ok(()) => {
                    // Shutdown: leave at once rather than after the TTL.
                    let _ = etcd
                        .update(&self.etcd.prefix, &self.id, &self.current(), id)
                        .await;
                    if let Err(e) = etcd.revoke(id).await {
                        warn!(error = %e, "could not revoke the lease; it expires by itself");
                    }
                    return;
                }
                Err(why) => warn!(%why, "lost etcd; registering again"),
            }
        }
    }

    /// Keeps the lease alive and the record current until shutdown (`Ok`) or a failure.
    async fn keep(
        &self,
        etcd: &Etcd,
        lease: i64,
        ttl: Duration,
        last_renewed: &mut Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let (mut keeper, mut stream) = etcd
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        let mut renew = tokio::time::interval(ttl / 3);
        let mut heartbeat = tokio::time::interval(ttl);
        let mut fence_check = tokio::time::interval(Duration::from_millis(200));
        let mut last_update = Instant::now();
        let mut dirty = false;
        let mut running = self.calls.watch_running();
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    tokio::time::timeout(ttl / 3, keeper.keep_alive())
                        .await
                        .map_err(|_| "keepalive timed out".to_owned())?
                        .map_err(|e| e.to_string())?;
                }
                message = stream.message() => match message {
                    Ok(Some(r)) if r.ttl() > 0 => *last_renewed = Instant::now(),
                    Ok(Some(_)) => return Err("the lease expired".into()),
                    Ok(None) => return Err("the keepalive stream ended".into()),
                    Err(e) => return Err(e.to_string()),
                },
                Ok(()) = running.changed() => dirty = true,
                () = self.admission.changed.notified() => dirty = true,
                _ = heartbeat.tick() => dirty = true,
                _ = fence_check.tick() => self.check_fence(*last_renewed, ttl),
                () = shutdown.cancelled() => return Ok(()),
            }
            if dirty && last_update.elapsed() >= MIN_UPDATE_GAP {
                tokio::time::timeout(
                    ttl / 3,
                    etcd.update(&self.etcd.prefix, &self.id, &self.current(), lease),
                )
                .await
                .map_err(|_| "record update timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                dirty = false;
                last_update = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mcpfier_common::HumanDuration;
    use tokio_util::task::TaskTracker;

    use super::*;

    #[tokio::test]
    async fn an_unreachable_etcd_fences_the_agent_and_the_loop_stops_on_shutdown() {
        // A port nothing listens on: every connect fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = Options {
            id: "a".into(),
            etcd: EtcdSection {
                endpoints: vec![format!("http://127.0.0.1:{port}")],
                prefix: "/mcpfier".into(),
                lease_ttl: HumanDuration(Duration::from_secs(1)),
            },
            record: AgentRecord {
                address: "127.0.0.1:1".into(),
                labels: Default::default(),
                capacity: 1,
                running: 0,
                version: "0".into(),
                protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
                started_at: 0,
                updated_at: 0,
                draining: false,
                capabilities: vec![],
                allow_tools: vec![],
            },
            on_lease_loss: OnLeaseLoss::default(),
        };
        let admission = Arc::new(Admission::default());
        let (membership, _first) =
            Membership::build(options, Arc::new(Calls::default()), admission.clone());
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(membership.run(shutdown.clone()));
        // Never registered: past the TTL it takes no calls.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !admission.fenced() {
            assert!(Instant::now() < deadline, "not fenced past the TTL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the membership loop ends after shutdown");
    }
}
