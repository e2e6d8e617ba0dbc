//! A one-request HTTP/1.1 client (hyper over tokio-rustls) for what the coordinator reads
//! from other servers: the JWKS of `jwks_url`, and a running coordinator's `/fleet` for
//! `mcpfier status`. Plain HTTP or HTTPS with the roots of a PEM file; no proxy, no redirect.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite};

/// The system's CA bundle (Debian's `ca-certificates`), for https without a CA file.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where to GET from, checked.
pub struct Target {
    /// The URL, as given.
    pub url: String,
    host: String,
    port: u16,
    path: String,
    /// `Some` for https.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// Checks `url` (http or https) and, for https, reads the roots in `ca` (PEM).
    pub fn new(url: &str, ca: &Path) -> Result<Target, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` is neither http:// nor https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let tls = if https {
            Some(Arc::new(client_config(ca)?))
        } else {
            None
        };
        Ok(Target {
            url: url.to_owned(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            path,
            tls,
        })
    }

    /// Whether it is an https URL.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// GETs the URL with `headers`: the status and at most `limit` bytes of UTF-8 body.
    pub async fn get(
        &self,
        headers: &[(&str, &str)],
        limit: usize,
    ) -> Result<(u16, String), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        match &self.tls {
            None => self.exchange(tcp, headers, limit).await,
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("`{}` is not a server name: {e}", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.host))?;
                self.exchange(tls, headers, limit).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        io: S,
        headers: &[(&str, &str)],
        limit: usize,
    ) -> Result<(u16, String), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {}: {e}", self.host))?;
        let mut request = hyper::Request::get(self.path.as_str())
            .header(http::header::HOST, self.host.as_str())
            .header(http::header::CONNECTION, "close");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| format!("GET {}: {e}", self.url))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("read the answer of {}: {e}", self.url))?
                .to_bytes();
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| format!("the answer of {} is not UTF-8", self.url))?;
            Ok((status, text))
        };
        // The connection is driven beside the exchange; it ends once the response is read
        // (`Connection: close`), and an error of its own also fails the exchange.
        let (answer, _) = tokio::join!(exchange, conn);
        answer
    }
}

/// A TLS client config trusting the certificates in `ca` (PEM).
fn client_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("read the CA certificates {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no CA certificate", ca.display()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
