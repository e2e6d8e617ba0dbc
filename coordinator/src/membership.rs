//! The coordinator's view of etcd membership: list the agents, then watch from that revision
//! so no event is missed; list again after a compaction or a lost connection. While etcd is
//! unreachable, routing goes on with the last known membership.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcpfier_common::membership::{self, Change, Etcd};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::EtcdSection;
use crate::fleet::Fleet;

/// Pause between attempts while etcd is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Starts following etcd; the returned receiver fires after the first listing was applied.
pub fn follow(
    fleet: Arc<Fleet>,
    etcd: EtcdSection,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    tasks.spawn(run(fleet, etcd, shutdown, tx));
    rx
}

async fn run(
    fleet: Arc<Fleet>,
    settings: EtcdSection,
    shutdown: CancellationToken,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut was_down = false;
    loop {
        let result = tokio::select! {
            r = follow_once(&fleet, &settings, &mut first, &mut was_down) => r,
            () = shutdown.cancelled() => return,
        };
        if let Err(why) = result {
            if !was_down {
                warn!(error = %why, "etcd unreachable; routing on the last known membership");
            }
            was_down = true;
            fleet.set_etcd(false, Some(why));
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One list-then-watch cycle; returns why it ended.
async fn follow_once(
    fleet: &Fleet,
    settings: &EtcdSection,
    first: &mut Option<oneshot::Sender<()>>,
    was_down: &mut bool,
) -> Result<(), String> {
    let etcd = Etcd::connect(&settings.endpoints)
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
    fleet.replace_etcd(&records);
    fleet.set_etcd(true, None);
    if *was_down {
        info!(
            agents = records.len(),
            "etcd reachable again; membership re-listed"
        );
        *was_down = false;
    }
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    while let Some(message) = stream.next().await {
        let response = message.map_err(|e| format!("watch failed: {e}"))?;
        for change in membership::changes(&settings.prefix, &response)? {
            match change {
                Change::Put(id, record) => fleet.upsert_from_etcd(&id, &record),
                Change::Delete(id) => fleet.remove_from_etcd(&id),
            }
        }
    }
    Err("the watch stream ended".into())
}
