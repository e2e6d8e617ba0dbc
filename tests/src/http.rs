//! Plain HTTP against our servers: free ports, GETs of JSON views, raw requests.

use std::time::Duration;

use anyhow::{Context, bail};
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
    // The body may be chunked; take the JSON object in it.
    let start = body.find('{').expect("a JSON body");
    let end = body.rfind('}').expect("a JSON body");
    serde_json::from_str(&body[start..=end]).expect("JSON")
}

/// An HTTP request (ureq, plain HTTP): (status, body). Any status comes back as a value,
/// not an error; the body is read to its end.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut response = match method {
        "GET" => {
            let mut request = agent.get(&url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            request.call()
        }
        "POST" => {
            let mut request = agent.post(&url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            request.send(body)
        }
        other => bail!("http_request: method {other} is not used by the tests"),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read the body of {method} {url}"))?;
    Ok((status, text))
}
