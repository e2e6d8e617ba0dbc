//! A real Prometheus server (Debian's `prometheus`) scraping the processes a test starts,
//! queried through its HTTP API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::http::{free_port, http_request};
use crate::process::{Process, wait_for};

/// Where Debian installs it.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus, stopped on drop.
pub struct Prometheus {
    /// The process and its log.
    pub process: Process,
    addr: String,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping each `(job, host:port)` target's `/metrics` every
    /// second, and waits until it is ready.
    pub fn start(dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
        let jobs: String = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs: [{{targets: [\"{addr}\"]}}]\n")
            })
            .collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}"
            ),
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        let process = Process::start(cmd, &config, "prometheus");
        let ready = wait_for(Duration::from_secs(30), || {
            (http_request(&addr, "GET", "/-/ready", &[], "").ok()?.0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus never got ready:\n{}",
            process.log_text()
        );
        Prometheus { process, addr }
    }

    /// The value of an instant query that yields one sample (`sum(...)`, say); `None` when
    /// it yields none.
    pub fn value(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let (status, body) = http_request(&self.addr, "GET", &path, &[], "").ok()?;
        assert_eq!(status, 200, "prometheus refused `{query}`: {body}");
        let v: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits up to 30 s for `query` to equal `want`; the last value seen otherwise.
    pub fn wait_for_value(&self, query: &str, want: f64) -> Result<(), Option<f64>> {
        let mut last = None;
        let seen = wait_for(Duration::from_secs(30), || {
            last = self.value(query);
            (last == Some(want)).then_some(())
        });
        seen.ok_or(last)
    }
}

/// Percent-encodes a query for a URL.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
