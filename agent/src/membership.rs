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

/// Everything the registration loop needs.
pub struct Membership {
    pub id: String,
    pub etcd: EtcdSection,
    pub record: AgentRecord,
    pub on_lease_loss: OnLeaseLoss,
    pub calls: Arc<Calls>,
    pub admission: Arc<Admission>,
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

    /// Runs until `shutdown`, then revokes the lease. `first` gets the outcome of the first
    /// registration: a duplicate id is fatal and ends the loop.
    pub async fn run(self, shutdown: CancellationToken, first: oneshot::Sender<Result<(), Error>>) {
        let ttl = self.etcd.lease_ttl.get();
        let mut first = Some(first);
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
