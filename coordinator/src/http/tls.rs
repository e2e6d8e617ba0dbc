//! `server.tls`: the HTTPS certificate, replaced while serving on SIGHUP and when its files
//! change. A pair that does not load (a half-written file, a key that does not fit) is logged
//! and the current one kept, so a bad deploy never takes the server down.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::ServerTls;

/// How often the certificate files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// The certificate every handshake gets; [`CertStore::watch`] replaces it.
#[derive(Debug)]
pub struct CertStore {
    files: ServerTls,
    current: RwLock<Arc<CertifiedKey>>,
}

/// What identifies a version of a file: modified time, length and inode (a renamed-in file,
/// as Kubernetes secret volumes do it, has a new inode).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl CertStore {
    /// Serves the pair loaded with the config, until [`CertStore::watch`] replaces it.
    pub fn new(files: &ServerTls) -> CertStore {
        CertStore {
            files: files.clone(),
            current: RwLock::new(files.loaded.clone()),
        }
    }

    fn stamps(&self) -> (Stamp, Stamp) {
        (stamp(&self.files.cert), stamp(&self.files.key))
    }

    /// Loads the files again; on failure keeps the current pair and logs why.
    pub fn reload(&self, why: &str) {
        match mcpfier_common::tls::load_server_key(&self.files.cert, &self.files.key) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
                info!(cert = %self.files.cert.display(), reason = why, "HTTPS certificate reloaded");
            }
            Err(e) => warn!(
                reason = why,
                error = %e,
                "kept the current HTTPS certificate: the new files do not load"
            ),
        }
    }

    /// Reloads on SIGHUP and when either file changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler: the certificate reloads only when its files change");
                None
            }
        };
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.stamps();
                    if now != seen {
                        seen = now;
                        self.reload("the files changed");
                    }
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    seen = self.stamps();
                    self.reload("SIGHUP");
                }
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
