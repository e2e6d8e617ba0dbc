//! The agent's side of etcd membership: register (never taking over a live agent's id), keep
//! the lease alive, publish load and drain state, fence itself when the lease can't be
//! renewed, and register again when etcd comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use mcpfier_common::membership::{AgentRecord, ETCD_TIMEOUT, Error, Etcd, EventType, now_ms};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::calls::Calls;
use crate::config::{EtcdSection, OnLeaseLoss};
use crate::service::Admission;

/// Shortest time between two load updates.
const MIN_UPDATE_GAP: Duration = Duration::from_millis(300);
/// Pause between attempts while etcd is unreachable.
const RETRY: Duration = Duration::from_millis(250);
/// How often the lease clock is read to log a lapse (admission reads it on every call).
const FENCE_CHECK: Duration = Duration::from_millis(100);

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
    /// How to reach etcd: TLS and credentials.
    pub access: mcpfier_common::membership::Access,
}

/// The registration loop: a component run by the agent's `main` until shutdown.
pub struct Membership {
    id: String,
    etcd: EtcdSection,
    record: AgentRecord,
    on_lease_loss: OnLeaseLoss,
    access: mcpfier_common::membership::Access,
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
            access: options.access,
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

/// Logs an etcd outage once when it starts and once when it ends, not on every retry.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
}

impl Outage {
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(error = %error, "{what}; retrying until etcd answers (logged once per outage)");
        } else {
            debug!(error = %error, "{what}; retrying");
        }
    }

    fn ended(&mut self) {
        if let Some(since) = self.since.take() {
            info!(after = ?since.elapsed(), "etcd answers again");
        }
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

    /// Runs until `shutdown`, then revokes the lease. The first registration's outcome goes
    /// to the [`FirstRegistration`] receiver: a duplicate id is fatal and ends the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        let ttl = self.etcd.lease_ttl.get();
        self.admission.use_lease(ttl);
        let watch = watch_fence(
            self.admission.clone(),
            self.calls.clone(),
            self.on_lease_loss,
            shutdown.clone(),
        );
        tokio::join!(self.register_and_keep(ttl, shutdown), watch);
    }

    async fn register_and_keep(mut self, ttl: Duration, shutdown: CancellationToken) {
        // Every etcd request ends well within the TTL, so the loop never hangs past it.
        let deadline = (ttl / 3).min(ETCD_TIMEOUT);
        let mut first = self.first.take();
        let started = Instant::now();
        let mut lease: Option<i64> = None;
        let mut outage = Outage::default();
        let pause = |shutdown: &CancellationToken| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => false,
                    () = shutdown.cancelled() => true,
                }
            }
        };
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let etcd = match within(
                deadline,
                Etcd::connect_with(&self.etcd.endpoints, &self.access),
            )
            .await
            {
                Ok(e) => e,
                Err(e) => {
                    outage.failed("etcd unreachable", &e);
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            // An old lease that is still alive keeps our key; otherwise start afresh.
            let sent = Instant::now();
            let reuse = match lease {
                Some(id) => {
                    matches!(within(deadline, etcd.keep_alive_once(id)).await, Ok(ttl) if ttl > 0)
                }
                None => false,
            };
            let id = match (reuse, lease) {
                (true, Some(id)) => id,
                _ => match within(deadline, etcd.grant(ttl)).await {
                    Ok(id) => id,
                    Err(e) => {
                        outage.failed("lease grant failed", &e);
                        if pause(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let registered = tokio::time::timeout(
                deadline,
                etcd.register(&self.etcd.prefix, &self.id, &self.current(), id),
            )
            .await;
            let registered = match registered {
                Ok(r) => r,
                Err(_) => {
                    outage.failed("registration failed", &"etcd did not answer in time");
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            match registered {
                Ok(()) => {}
                Err(Error::Duplicate { .. })
                    if first.is_some() && started.elapsed() < ttl + Duration::from_secs(2) =>
                {
                    // Perhaps our own previous run, whose lease has not expired yet.
                    let _ = within(deadline, etcd.revoke(id)).await;
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(Error::Duplicate { lease: holder, .. }) if Some(holder) == lease => {
                    // Our own earlier lease, alive again (etcd restores leases when it
                    // restarts) after we had given up on it: let it go and register anew.
                    let _ = within(deadline, etcd.revoke(id)).await;
                    let _ = within(deadline, etcd.revoke(holder)).await;
                    lease = None;
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(e @ Error::Duplicate { .. }) => {
                    let _ = within(deadline, etcd.revoke(id)).await;
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
                    outage.failed("registration failed", &e);
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            outage.ended();
            lease = Some(id);
            self.admission.renewed(sent);
            self.admission
                .registered
                .store(true, std::sync::atomic::Ordering::SeqCst);
            info!(lease = format!("{id:x}"), key = %mcpfier_common::membership::agent_key(&self.etcd.prefix, &self.id), "registered in etcd");
            if let Some(tx) = first.take() {
                let _ = tx.send(Ok(()));
            }
            match self.keep(&etcd, id, ttl, deadline, &shutdown).await {
                Ok(()) => {
                    // Shutdown: leave at once rather than after the TTL.
                    let _ = within(
                        deadline,
                        etcd.update(&self.etcd.prefix, &self.id, &self.current(), id),
                    )
                    .await;
                    if let Err(e) = within(deadline, etcd.revoke(id)).await {
                        warn!(error = %e, "could not revoke the lease; it expires by itself");
                    }
                    return;
                }
                Err(Lost::Key(why)) => {
                    // Our record was changed under us: write it again at once.
                    warn!(%why, "registering again");
                }
                Err(Lost::Etcd(why)) => outage.failed("lost etcd", &why),
            }
        }
    }

    /// Keeps the lease alive and the record current until shutdown (`Ok`) or a failure.
    async fn keep(
        &self,
        etcd: &Etcd,
        lease: i64,
        ttl: Duration,
        deadline: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let etcd_lost = |e: &dyn std::fmt::Display| Lost::Etcd(e.to_string());
        let (mut keeper, mut stream) = within(deadline, async {
            etcd.client
                .clone()
                .lease_keep_alive(lease)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| etcd_lost(&e))?;
        let mut own = within(deadline, async {
            etcd.watch_agent(&self.etcd.prefix, &self.id)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| etcd_lost(&e))?;
        // Anything that happened to the key before the watch started.
        match within(deadline, etcd.holder(&self.etcd.prefix, &self.id)).await {
            Ok(Some(holder)) if holder == lease => {}
            Ok(Some(_)) => return Err(Lost::Key("our etcd key was overwritten".into())),
            Ok(None) => return Err(Lost::Key("our etcd key was deleted".into())),
            Err(e) => return Err(etcd_lost(&e)),
        }
        let mut renew = tokio::time::interval(ttl / 3);
        let mut heartbeat = tokio::time::interval(ttl);
        let mut last_update = Instant::now();
        let mut dirty = false;
        let mut running = self.calls.watch_running();
        // When each keepalive still unanswered was sent: the lease runs from there.
        let mut sent: VecDeque<Instant> = VecDeque::new();
        // The records we wrote last; a put of anything else is someone else's.
        let mut ours: VecDeque<Vec<u8>> = VecDeque::new();
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    sent.push_back(Instant::now());
                    within(deadline, async { keeper.keep_alive().await.map_err(|e| e.to_string()) })
                        .await
                        .map_err(|e| etcd_lost(&e))?;
                }
                message = stream.message() => match message {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        if let Some(at) = sent.pop_front() {
                            metrics::histogram!(mcpfier_common::metrics::AGENT_LEASE_RENEW)
                                .record(at.elapsed().as_secs_f64());
                            self.admission.renewed(at);
                        }
                    }
                    Ok(Some(_)) => return Err(Lost::Etcd("the lease expired".into())),
                    Ok(None) => return Err(Lost::Etcd("the keepalive stream ended".into())),
                    Err(e) => return Err(etcd_lost(&e)),
                },
                change = own.message() => match change {
                    Ok(Some(w)) => {
                        for event in w.events() {
                            let Some(kv) = event.kv() else { continue };
                            match event.event_type() {
                                EventType::Delete => {
                                    return Err(Lost::Key("our etcd key was deleted".into()));
                                }
                                EventType::Put if kv.lease() != lease || !ours.iter().any(|v| v == kv.value()) => {
                                    return Err(Lost::Key("our etcd key was overwritten".into()));
                                }
                                EventType::Put => {}
                            }
                        }
                    }
                    Ok(None) => return Err(Lost::Etcd("the watch on our key ended".into())),
                    Err(e) => return Err(etcd_lost(&e)),
                },
                Ok(()) = running.changed() => dirty = true,
                () = self.admission.changed.notified() => dirty = true,
                _ = heartbeat.tick() => dirty = true,
                () = shutdown.cancelled() => return Ok(()),
            }
            if dirty && last_update.elapsed() >= MIN_UPDATE_GAP {
                let record = self.current();
                ours.push_back(serde_json::to_vec(&record).expect("a record serializes"));
                if ours.len() > 4 {
                    ours.pop_front();
                }
                within(
                    deadline,
                    etcd.update(&self.etcd.prefix, &self.id, &record, lease),
                )
                .await
                .map_err(|e| etcd_lost(&e))?;
                dirty = false;
                last_update = Instant::now();
            }
        }
    }
}

/// Why [`Membership::keep`] stopped.
enum Lost {
    /// etcd failed or the lease is gone: register again when etcd answers.
    Etcd(String),
    /// Our key was deleted or overwritten by someone else: register again at once.
    Key(String),
}

/// Runs `request`, failing it after `deadline`.
async fn within<T, E: std::fmt::Display>(
    deadline: Duration,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "etcd did not answer within {}",
            humantime::format_duration(deadline)
        )),
    }
}

/// Logs when the lease lapses and when it is renewed again, and on a lapse kills running
/// calls when `on_lease_loss: kill`. Admission itself needs none of this: it reads the lease
/// clock when a call arrives.
async fn watch_fence(
    admission: Arc<Admission>,
    calls: Arc<Calls>,
    on_lease_loss: OnLeaseLoss,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(FENCE_CHECK);
    let mut was = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let lapsed = admission.lease_lapsed();
        if lapsed && !was {
            error!(
                after = ?admission.since_renewal(),
                on_lease_loss = ?on_lease_loss,
                "etcd lease not renewed within its TTL; taking no calls until it is"
            );
            if on_lease_loss == OnLeaseLoss::Kill {
                calls.cancel_all();
            }
            admission.changed.notify_waiters();
        } else if !lapsed && was {
            info!("etcd lease renewed; taking calls again");
            admission.changed.notify_waiters();
        }
        was = lapsed;
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
                tls: None,
                username: None,
                password: None,
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
            access: Default::default(),
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
