//! Plain HTTP against our own servers on loopback (ureq, no TLS): free ports, raw requests,
//! and GETs of the JSON views (`/fleet`, `/healthz`).

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// GETs `path` and parses the JSON body.
pub fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http_request(addr, "GET", path, &[], "").expect("GET");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// An HTTP/1.1 request to `http://{addr}{path}`: (status, body). Every status, 4xx and 5xx
/// included, comes back as a value; the body is read to its end (an SSE stream ends when the
/// server closes it).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    http_exchange(addr, method, path, headers, body).map(|r| (r.status, r.body))
}

/// What [`http_exchange`] got back.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: String,
}

impl Reply {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Like [`http_request`], with the response headers.
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    // A fresh agent per request, so no connection outlives a test's server. No proxy from
    // the environment and no redirects: the tests talk to our servers and see what they say.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_per_read(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut request = ureq::http::Request::builder().method(method).uri(&url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(body)
        .with_context(|| format!("build {method} {url}"))?;
    let mut response = agent
        .run(request)
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let reply_headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read the body of {method} {url}"))?;
    Ok(Reply {
        status,
        headers: reply_headers,
        body: text,
    })
}
