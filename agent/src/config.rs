//! `agent.yaml`: who the agent is, where it listens, its TLS files and its policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mcpfier_common::tls::{self, Role, TlsFiles, valid_name};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::policy::Policy;

/// The whole `agent.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id; its certificate must be issued for this name (role agent).
    pub id: String,
    /// Address for the gRPC listener (mutual TLS only).
    pub listen: String,
    /// Labels that tools' placement selects on, e.g. `{region: eu-west, pool: build}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Calls running at once (default 8); more are refused so the coordinator picks another.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// CA, certificate and key; relative paths are read from the config file's directory.
    pub tls: TlsFiles,
    /// What this agent runs at most.
    #[serde(default)]
    pub policy: Policy,
}

fn default_capacity() -> u32 {
    8
}

/// A checked config.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub listen: SocketAddr,
    /// TLS files with paths resolved.
    pub tls: TlsFiles,
}

/// Reads and checks `path`; every problem is reported with its path in the file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the agent config {}", path.display()))?;
    let config: AgentConfig = serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(
        &text,
    ))
    .map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| format!(":{}", l.line()))
            .unwrap_or_default();
        anyhow::anyhow!("{}{line}: {at}: {inner}", path.display())
    })?;
    let base = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut problems = Vec::new();
    if !valid_name(&config.id) {
        problems.push(format!(
            "id: `{}` is not a valid id: use 1-128 characters of A-Z a-z 0-9 - _ .",
            config.id
        ));
    }
    let listen = config.listen.parse::<SocketAddr>();
    if listen.is_err() {
        problems.push(format!(
            "listen: `{}` is not an address; write IP:PORT, e.g. 0.0.0.0:7443",
            config.listen
        ));
    }
    if config.capacity == 0 {
        problems.push("capacity: must be at least 1".into());
    }
    if config.policy.max_timeout.get().is_zero() {
        problems.push("policy.max_timeout: must be more than zero".into());
    }
    let tls = config.tls.relative_to(&base);
    match tls::load(&tls) {
        Ok(material) => {
            let expected = tls::Identity::new(Role::Agent, config.id.clone());
            if material.identity != expected {
                problems.push(format!(
                    "tls.cert: the certificate is for {}, but this agent is {expected}; issue one with `mcpfier certs issue --role agent --name {}`",
                    material.identity, config.id
                ));
            }
        }
        Err(e) => problems.push(format!("tls: {e}")),
    }
    if !problems.is_empty() {
        bail!(
            "{} has {} problem{}:\n  {}",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        );
    }
    Ok(Loaded {
        listen: listen.expect("checked above"),
        tls,
        config,
    })
}
