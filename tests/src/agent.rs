//! A running `mcpfier-agent` with its config and certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mcpfier_common::tls::{self, Identity, Role, TlsFiles};
use mcpfier_proto::v1::agent_client::AgentClient;

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

impl Agent {
    /// A raw gRPC client for this agent holding the coordinator certificate `coord` from
    /// `certs`: what an attacker with a stolen coordinator key has. Its channel lives on `rt`.
    pub fn raw_client(
        &self,
        rt: &tokio::runtime::Runtime,
        certs: &Certs,
    ) -> AgentClient<tonic::transport::Channel> {
        let _guard = rt.enter();
        let m = tls::load(&TlsFiles {
            ca: certs.dir.join("ca.pem"),
            cert: certs.dir.join("coord.pem"),
            key: certs.dir.join("coord.key"),
        })
        .expect("load the coordinator certificate");
        let config = tls::client_config_from(
            m.roots,
            Some((m.chain, m.key)),
            Identity::new(Role::Agent, self.id.clone()),
        )
        .expect("a client TLS config");
        let channel =
            mcpfier_coordinator::fleet::channel(config, &self.addr, Duration::from_secs(2))
                .expect("a channel");
        AgentClient::new(channel)
    }
}
