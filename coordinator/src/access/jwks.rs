//! `jwks_url`: the issuer's JWKS fetched over HTTPS (rustls, the roots of `jwks_ca`), at
//! start, every `jwks_refresh`, and when a token names a key id the set lacks (at most once
//! per [`super::oauth::REFRESH_FLOOR`]). Fetching happens on a task of its own; a request
//! whose key is missing waits for the fetch it asked for (at most [`WAIT_FOR_FETCH`]).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
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
    host: String,
    port: u16,
    path: String,
    tls: Arc<rustls::ClientConfig>,
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
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "`{url}` is not https: the keys that decide who may call must come over TLS"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("read the CA certificates {}: {e}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{} holds no CA certificate", ca.display()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Remote {
            url: url.to_owned(),
            port: uri.port_u16().unwrap_or(443),
            host,
            path,
            tls: Arc::new(tls),
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
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("`{}` is not a server name: {e}", self.host))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.host))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {}: {e}", self.host))?;
        let request = hyper::Request::get(self.path.as_str())
            .header(http::header::HOST, self.host.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| format!("GET {}: {e}", self.url))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("GET {} answered {}", self.url, response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS)
                .collect()
                .await
                .map_err(|e| format!("read the JWKS from {}: {e}", self.url))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "the JWKS is not UTF-8".to_owned())
        };
        // The connection is driven beside the exchange; it ends once the response is read
        // (`Connection: close`), and an error of its own also fails the exchange.
        let (answer, _) = tokio::join!(exchange, conn);
        answer
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
