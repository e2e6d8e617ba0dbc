//! A running `mcpfier-agent` with its config and certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::build::mcpfier_agent;
use crate::certs::Certs;
use crate::process::Process;

/// A running `mcpfier-agent`, stopped on drop.
pub struct Agent {
    /// The agent's id (its certificate's name).
    pub id: String,
    /// The running process and its log.
    pub process: Process,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
}

impl Agent {
    /// Writes `<id>.yaml` in `dir` (listening on a free loopback port) with `extra` YAML lines
    /// appended, starts the agent and waits until it listens.
    pub fn start(dir: &Path, certs: &Certs, id: &str, extra: &str) -> Agent {
        Self::start_with_env(dir, certs, id, extra, &[])
    }

    /// Like [`Agent::start`], with extra environment variables for the agent.
    pub fn start_with_env(
        dir: &Path,
        certs: &Certs,
        id: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let config = dir.join(format!("{id}.yaml"));
        let yaml = format!(
            "id: {id}\nlisten: 127.0.0.1:0\ntls: {}\n{extra}\n",
            certs.tls_yaml(id)
        );
        std::fs::write(&config, yaml).expect("write the agent config");
        let mut cmd = Command::new(mcpfier_agent());
        cmd.arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().copied());
        let process = Process::start(cmd, &config, id);
        let rest = process.wait_for_log("agent listening on ", Duration::from_secs(30));
        let addr = rest
            .split_whitespace()
            .next()
            .expect("an address")
            .to_owned();
        Agent {
            id: id.to_owned(),
            process,
            addr,
        }
    }
}
