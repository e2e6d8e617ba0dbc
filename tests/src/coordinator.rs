//! A running `mcpfier serve` on port 0, its address read from its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::build::mcpfier;
use crate::http::http_request;
use crate::process::{Process, Scratch, new_key, wait_for};

/// A coordinator with `server.auth` and one `hi` tool, and two API keys for it: `reader`
/// (role `watch`: `fleet: read`) and `caller` (role `call`: every tool, not the fleet).
pub struct Guarded {
    /// The running coordinator.
    pub coordinator: Coordinator,
    /// The key of `reader`.
    pub reader: String,
    /// The key of `caller`.
    pub caller: String,
}

impl Guarded {
    /// Writes the config in `scratch` and starts the coordinator.
    pub fn start(scratch: &Scratch) -> Guarded {
        let (reader, reader_line) = new_key("reader", "watch");
        let (caller, caller_line) = new_key("caller", "call");
        let config = scratch.config(&format!(
            "server:\n  auth:\n    api_keys:\n      {reader_line}\n      {caller_line}\nroles:\n  watch: {{fleet: read}}\n  call: {{tools: [\"*\"]}}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n"
        ));
        Guarded {
            coordinator: Coordinator::start(&config, &[], &[]),
            reader,
            caller,
        }
    }
}

/// A running `mcpfier serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Coordinator {
    /// The running process.
    pub process: Process,
    /// The address it bound (`127.0.0.1:PORT`), read from its log.
    pub addr: String,
    /// Its log file.
    pub log: PathBuf,
    /// `http` or `https` (with `server.tls`).
    pub scheme: String,
}

impl Coordinator {
    /// Starts `mcpfier serve` on a free loopback port and waits until `/healthz` answers.
    pub fn start(config: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> Coordinator {
        let mut cmd = Command::new(mcpfier());
        cmd.arg("--config")
            .arg(config)
            .args(extra_args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Process::start(cmd, config, "coordinator");
        let rest = process.wait_for_log("serving MCP at ", Duration::from_secs(30));
        let (scheme, rest) = rest
            .split_once("://")
            .expect("the log line names the scheme");
        let addr = rest[..rest.find("/mcp").expect("the log line names /mcp")].to_owned();
        if scheme == "http" {
            let healthy = wait_for(Duration::from_secs(10), || {
                (http_request(&addr, "GET", "/healthz", &[], "").ok()?.0 == 200).then_some(())
            });
            assert!(healthy.is_some(), "mcpfier serve did not answer /healthz");
        }
        let log = process.log.clone();
        Coordinator {
            process,
            addr,
            log,
            scheme: scheme.to_owned(),
        }
    }

    /// The MCP endpoint, `http://ADDR/mcp` (`https://` with `server.tls`).
    pub fn url(&self) -> String {
        format!("{}://{}/mcp", self.scheme, self.addr)
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.process.stop()
    }
}
