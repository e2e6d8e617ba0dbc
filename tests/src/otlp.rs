//! A real OTLP/gRPC trace receiver (`tests/py/otlp_receiver.py`, on the OpenTelemetry
//! protocol definitions) that the binaries export spans to, and the spans it received.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::build::{python, workspace};
use crate::process::{Process, wait_for};

/// A running receiver, stopped on drop.
pub struct OtlpReceiver {
    /// The process and its log.
    pub process: Process,
    /// What the binaries' `telemetry.otlp_endpoint` says: `http://127.0.0.1:PORT`.
    pub endpoint: String,
    spans: PathBuf,
}

impl OtlpReceiver {
    /// Starts a receiver writing to `dir/spans.jsonl`, and waits until it listens.
    pub fn start(dir: &Path) -> OtlpReceiver {
        let spans = dir.join("spans.jsonl");
        let mut cmd = Command::new(python());
        cmd.arg(workspace().join("tests/py/otlp_receiver.py"))
            .arg(&spans);
        let process = Process::start(cmd, &spans, "otlp-receiver");
        let port = process.wait_for_log("port ", Duration::from_secs(20));
        OtlpReceiver {
            process,
            endpoint: format!("http://127.0.0.1:{}", port.trim()),
            spans,
        }
    }

    /// Every span received so far, one JSON object each (see the receiver for the fields).
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the spans received satisfy `done`, and returns them; `None` after `limit`.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Option<Vec<Value>> {
        wait_for(limit, || {
            let spans = self.spans();
            done(&spans).then_some(spans)
        })
    }
}
