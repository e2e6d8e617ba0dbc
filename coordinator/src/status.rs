//! `mcpfier status`: a running coordinator's routing view, read from its `/fleet`, for
//! static and etcd fleets alike. It shows what routing sees (health checks, refusals,
//! fencing), not what etcd holds: an agent killed a second ago is `unhealthy` here while
//! its etcd record still waits for its lease to run out.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::config::ServerSection;
use crate::http::client::Target;

/// The environment variable holding the credential `status` sends (an API key or a token
/// whose roles have `fleet: read`).
pub const TOKEN_ENV: &str = "MCPFIER_TOKEN";

/// Largest `/fleet` answer read: about 10,000 agents.
const MAX_VIEW: usize = 32 << 20;

/// The coordinator's base URL from its `server` section: its `listen` address, a wildcard
/// address read as loopback, `https` when it serves TLS.
pub fn default_url(server: &ServerSection) -> String {
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listen = match server.listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => server.listen.clone(),
    };
    format!("{scheme}://{listen}")
}

/// GETs `<base>/fleet` and returns the view. `ca` holds the roots for https.
pub async fn fetch(base: &str, ca: &Path, token: Option<&str>) -> Result<Value, String> {
    let base = base.trim_end_matches('/');
    let url = if base.ends_with("/fleet") {
        base.to_owned()
    } else {
        format!("{base}/fleet")
    };
    let target = Target::new(&url, ca)?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let (status, body) = target
        .get(&headers, MAX_VIEW)
        .await
        .map_err(|e| format!("{e} (is `mcpfier serve` running there? --url says where)"))?;
    match status {
        200 => serde_json::from_str(&body)
            .map_err(|e| format!("{url} did not answer with a fleet view: {e}")),
        401 if token.is_none() => Err(format!(
            "{url} wants a credential: set {TOKEN_ENV} to an API key or token whose roles have `fleet: read`"
        )),
        401 => Err(format!(
            "{url} refused the credential in {TOKEN_ENV}: {}",
            body.trim()
        )),
        403 => Err(format!("{url}: {}", body.trim())),
        404 => Err(format!(
            "{url} answered 404: is it an mcpfier coordinator? --url takes its base URL, e.g. http://127.0.0.1:8080"
        )),
        n => Err(format!("{url} answered {n}: {}", body.trim())),
    }
}

/// The view as a table: the coordinator and etcd first, then the agents by region and id,
/// then a count by state.
pub fn render(view: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let coordinator = &view["coordinator"];
    let uptime = coordinator["uptime_s"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |s| ago(s * 1000));
    let _ = writeln!(
        out,
        "coordinator {} up {uptime}, {}",
        coordinator["version"].as_str().unwrap_or("?"),
        match view["mode"].as_str() {
            Some("embedded") => "embedded: tools run on the coordinator itself, no agents",
            _ => "fleet",
        }
    );
    let etcd = &view["etcd"];
    if etcd["configured"] == true {
        let state = if etcd["connected"] == true {
            "connected".to_owned()
        } else {
            format!(
                "unreachable: {}; routing on the last known membership",
                etcd["last_error"].as_str().unwrap_or("not connected yet")
            )
        };
        let _ = writeln!(out, "etcd {state}");
    }
    let empty = Vec::new();
    // Agents that left etcd lately are shown too, as `gone`, after the ones in routing.
    let mut agents: Vec<&Value> = view["agents"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .chain(view["departed"].as_array().unwrap_or(&empty))
        .collect();
    if view["mode"] == "embedded" {
        return out;
    }
    if agents.is_empty() {
        let _ = writeln!(out, "no agents");
        return out;
    }
    agents.sort_by_key(|a| (region(a), a["id"].as_str().unwrap_or_default()));
    let rows: Vec<[String; 7]> = agents
        .iter()
        .map(|a| {
            let labels: Vec<String> = a["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "region")
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            [
                a["id"].as_str().unwrap_or("?").to_owned(),
                region(a).to_owned(),
                a["state"].as_str().unwrap_or("?").to_owned(),
                format!("{}/{}", a["running"], a["capacity"]),
                a["last_seen_ms"].as_u64().map_or_else(
                    || "never".to_owned(),
                    |t| format!("{} ago", ago(now_ms.saturating_sub(t))),
                ),
                if labels.is_empty() {
                    "-".to_owned()
                } else {
                    labels.join(",")
                },
                a["last_error"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let head = [
        "ID",
        "REGION",
        "STATE",
        "RUNNING",
        "LAST SEEN",
        "LABELS",
        "LAST ERROR",
    ];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&head);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for a in &agents {
        let state = a["state"].as_str().unwrap_or("?");
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some(c) => c.1 += 1,
            None => counts.push((state, 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "{} agents: {}", agents.len(), counts.join(", "));
    out
}

/// An agent's `region` label, `-` without one.
fn region(agent: &Value) -> &str {
    agent["labels"]["region"].as_str().unwrap_or("-")
}

/// A duration in milliseconds, short: `850ms`, `4.2s`, `3m12s`, `5h03m`, `2d04h`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_sorts_by_region_and_counts_states() {
        let view = json!({
            "mode": "fleet",
            "coordinator": {"version": "0.1.0", "uptime_s": 75},
            "etcd": {"configured": true, "connected": false, "last_error": "connection refused"},
            "agents": [
                {"id": "b", "labels": {"region": "us", "pool": "gpu"}, "state": "healthy",
                 "running": 1, "capacity": 4, "last_seen_ms": 9_000, "last_error": null},
                {"id": "a", "labels": {"region": "us"}, "state": "unhealthy",
                 "running": 0, "capacity": 4, "last_seen_ms": 2_000,
                 "last_error": "stream lost: connection reset"},
                {"id": "c", "labels": {"region": "eu"}, "state": "fenced",
                 "running": 0, "capacity": 2, "last_seen_ms": null, "last_error": null},
            ]
        });
        let text = render(&view, 10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "coordinator 0.1.0 up 1m15s, fleet");
        assert_eq!(
            lines[1],
            "etcd unreachable: connection refused; routing on the last known membership"
        );
        assert!(lines[2].starts_with("ID  REGION  STATE"), "{text}");
        assert!(lines[3].starts_with("c   eu      fenced"), "{text}");
        assert!(lines[3].contains("never"), "{text}");
        assert!(lines[4].starts_with("a   us      unhealthy"), "{text}");
        assert!(lines[4].contains("8.0s ago"), "{text}");
        assert!(
            lines[4].ends_with("stream lost: connection reset"),
            "{text}"
        );
        assert!(lines[5].contains("pool=gpu"), "{text}");
        assert!(lines[5].contains("1/4"), "{text}");
        assert_eq!(lines[6], "3 agents: 1 fenced, 1 unhealthy, 1 healthy");
    }

    #[test]
    fn embedded_mode_says_there_are_no_agents() {
        let view = json!({"mode": "embedded", "agents": [],
                          "coordinator": {"version": "0.1.0", "uptime_s": 4000}});
        assert_eq!(
            render(&view, 0),
            "coordinator 0.1.0 up 1h06m, embedded: tools run on the coordinator itself, no agents\n"
        );
    }

    #[test]
    fn the_default_url_reads_a_wildcard_listen_as_loopback() {
        let mut server: ServerSection = yaml_serde::from_str("listen: 0.0.0.0:9000").unwrap();
        assert_eq!(default_url(&server), "http://127.0.0.1:9000");
        server.listen = "10.0.0.5:8080".into();
        assert_eq!(default_url(&server), "http://10.0.0.5:8080");
    }
}
