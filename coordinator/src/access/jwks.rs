//! `jwks_url`: the issuer's JWKS fetched over HTTPS (rustls, the roots of `jwks_ca`), at
//! start, every `jwks_refresh`, and when a token names a key id the set lacks (at most once
//! per [`super::oauth::REFRESH_FLOOR`]). Fetching happens on a task of its own; a request
//! whose key is missing waits for the fetch it asked for (at most [`WAIT_FOR_FETCH`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest a fetch may take, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS accepted.
const MAX_JWKS: usize = 1 << 20;
/// Longest a request whose key id is unknown waits for the fetch it started.
pub const WAIT_FOR_FETCH: Duration = Duration::from_secs(5);
/// Time between tries while no fetch has succeeded yet.
const RETRY_EMPTY: Duration = Duration::from_secs(5);

/// Where the JWKS comes from and how to reach it, checked.
pub struct Remote {
    /// The URL, as configured.
    pub url: String,
    target: crate::http::client::Target,
    /// How often the set is fetched again regardless.
    pub refresh_every: Duration,
    /// Wakes the fetcher for an unknown key id.
    wake: Notify,
    /// Counts finished fetches (whatever their result), so a request can wait for the next.
    fetches: watch::Sender<u64>,
}

impl Remote {
    /// Checks `url` (https only) and reads the roots in `ca` (PEM).
    pub fn new(url: &str, ca: &std::path::Path, refresh_every: Duration) -> Result<Remote, String> {
        if !url.starts_with("https://") {
            return Err(format!(
                "`{url}` is not https: the keys that decide who may call must come over TLS"
            ));
        }
        let target = crate::http::client::Target::new(url, ca)?;
        Ok(Remote {
            url: url.to_owned(),
            target,
            refresh_every,
            wake: Notify::new(),
            fetches: watch::channel(0).0,
        })
    }

    /// How many fetches have finished.
    pub fn fetches(&self) -> u64 {
        *self.fetches.borrow()
    }

    /// Asks the fetcher for a fetch now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until more than `after` fetches have finished, at most [`WAIT_FOR_FETCH`].
    pub async fn fetched_after(&self, after: u64) {
        let mut seen = self.fetches.subscribe();
        let _ = tokio::time::timeout(WAIT_FOR_FETCH, seen.wait_for(|n| *n > after)).await;
    }

    /// Fetches the JWKS once: its text, or why not.
    pub async fn fetch(&self) -> Result<String, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
    }

    async fn get(&self) -> Result<String, String> {
        let (status, body) = self
            .target
            .get(&[("accept", "application/json")], MAX_JWKS)
            .await?;
        if status != 200 {
            return Err(format!("GET {} answered {status}", self.url));
        }
        Ok(body)
    }
}

/// Keeps `oauth`'s keys fetched from its URL until `shutdown`: now, then every
/// `refresh_every` and whenever a request wakes it. A failed fetch keeps the keys it had.
pub async fn keep_fresh(access: Arc<super::Access>, shutdown: CancellationToken) {
    let Some(oauth) = access.oauth() else { return };
    let Some(remote) = oauth.remote() else { return };
    let mut have_keys = false;
    loop {
        match remote.fetch().await {
            Ok(text) => match oauth.replace_keys(&text, &remote.url) {
                Ok(n) => {
                    have_keys = true;
                    info!(keys = n, url = %remote.url, "JWKS fetched");
                }
                Err(why) => warn!(why, url = %remote.url, "kept the current JWKS"),
            },
            Err(why) => warn!(why, url = %remote.url, "JWKS fetch failed; kept the current keys"),
        }
        remote.fetches.send_modify(|n| *n += 1);
        let wait = if have_keys {
            remote.refresh_every
        } else {
            RETRY_EMPTY
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = remote.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
