//! `agent.yaml`: who the agent is, where it listens, its TLS files and its policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mcpfier_common::HumanDuration;
use mcpfier_common::membership::valid_prefix;
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
    /// What coordinators dial (`host:port`); defaults to `listen` when that is a routable
    /// address. Needed with `etcd` when listening on 0.0.0.0 or [::].
    pub advertise: Option<String>,
    /// Register in etcd so coordinators find this agent.
    pub etcd: Option<EtcdSection>,
    /// When the etcd lease can't be renewed for longer than its TTL, the agent stops taking
    /// calls; `finish` lets running ones end, `kill` kills them (default finish).
    #[serde(default)]
    pub on_lease_loss: OnLeaseLoss,
    /// On SIGTERM: how long running calls may take to finish before they are killed
    /// (default 30s).
    #[serde(default = "default_drain_grace")]
    pub drain_grace: HumanDuration,
    /// Serve Prometheus metrics at `http://ADDRESS/metrics` (plain HTTP, no credential).
    /// Loopback only, unless `metrics_public: true`.
    pub metrics_listen: Option<String>,
    /// Let `metrics_listen` be a non-loopback address: anyone who reaches it reads the
    /// agent's metrics (tool call counts, refusals, load), never arguments or output.
    #[serde(default)]
    pub metrics_public: bool,
    /// OpenTelemetry traces, exported over OTLP (docs/observability.md).
    #[serde(default)]
    pub telemetry: Option<mcpfier_common::telemetry::TelemetryConfig>,
}

/// The agent's `etcd` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix shared with the coordinators, e.g. `/mcpfier/prod`.
    pub prefix: String,
    /// Lease TTL (whole seconds; default 3s). The agent leaves routing about this long after it
    /// stops renewing.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// TLS to etcd: its CA and this agent's client certificate and key (etcd maps the
    /// certificate's CN to a user). Must not be the fleet's CA.
    pub tls: Option<TlsFiles>,
    /// The etcd user, when the cluster has auth enabled.
    pub username: Option<String>,
    /// Its password: write `${env:NAME}` or `${file:PATH}`, not the value.
    pub password: Option<String>,
}

/// What happens to running calls when the lease is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnLeaseLoss {
    /// Take no new calls, but let running ones run to their end (the default).
    #[default]
    Finish,
    /// Take no new calls, and cancel the running ones (their processes are killed).
    Kill,
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3))
}

fn default_drain_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_capacity() -> u32 {
    8
}

/// A checked config.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file's values, as written.
    pub config: AgentConfig,
    /// `config.listen`, parsed.
    pub listen: SocketAddr,
    /// `config.metrics_listen`, parsed.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS files with paths resolved.
    pub tls: TlsFiles,
    /// How to reach etcd (TLS, credentials), resolved; default without an `etcd` section.
    pub etcd_access: mcpfier_common::membership::Access,
}

/// Reads and checks `path`; every problem is reported with its path in the file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no agent config at {}: pass --config FILE (examples/fleet/ has one to start from)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("read the agent config {}", path.display()));
        }
    };
    let mut config: AgentConfig = serde_path_to_error::deserialize(
        yaml_serde::Deserializer::from_str(&text),
    )
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
    if let Some(etcd) = &config.etcd {
        if etcd.endpoints.is_empty() {
            problems.push("etcd.endpoints: list at least one, e.g. http://127.0.0.1:2379".into());
        }
        if !valid_prefix(&etcd.prefix) {
            problems.push(format!(
                "etcd.prefix: `{}` must be an absolute key prefix such as /mcpfier/prod",
                etcd.prefix
            ));
        }
        let ttl = etcd.lease_ttl.get();
        if ttl.as_secs() < 2 || ttl.subsec_nanos() != 0 {
            problems.push("etcd.lease_ttl: must be whole seconds, at least 2s".into());
        }
        if config.advertise.is_none()
            && let Ok(addr) = &listen
            && addr.ip().is_unspecified()
        {
            problems.push(format!(
                "advertise: listening on {addr} says nothing coordinators can dial; set advertise: HOST:PORT"
            ));
        }
    }
    if let Some(a) = &config.advertise
        && !a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        problems.push(format!("advertise: `{a}` is not host:port"));
    }
    problems.extend(config.policy.problems());
    for (field, why) in config.telemetry.iter().flat_map(|t| t.problems()) {
        problems.push(format!("telemetry.{field}: {why}"));
    }
    let mut signers = Vec::new();
    for (i, file) in config.policy.tool_signers.iter().enumerate() {
        match mcpfier_common::tool::signed::PublicKey::load(&base.join(file)) {
            Ok(key) => signers.push(key),
            Err(e) => problems.push(format!("policy.tool_signers[{i}]: {e}")),
        }
    }
    config.policy.signers =
        std::sync::Arc::new(mcpfier_common::tool::signed::Verifier::new(signers));
    let tls = config.tls.relative_to(&base);
    let mut etcd_access = mcpfier_common::membership::Access::default();
    if let Some(etcd) = &config.etcd {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        match mcpfier_common::membership::Access::from_config(
            etcd.tls.as_ref(),
            etcd.username.as_deref(),
            etcd.password.as_deref(),
            &base,
            &env,
            Some(&tls.ca),
        ) {
            Ok(access) => etcd_access = access,
            Err(found) => problems.extend(found.into_iter().map(|p| format!("etcd.{p}"))),
        }
    }
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
    let metrics_listen = match config
        .metrics_listen
        .as_deref()
        .map(str::parse::<SocketAddr>)
    {
        None => None,
        Some(Ok(addr)) if !addr.ip().is_loopback() && !config.metrics_public => {
            problems.push(format!(
                "metrics_listen: {addr} is not a loopback address, and metrics have no credential; use 127.0.0.1:PORT, or set metrics_public: true to let anyone who reaches it read them"
            ));
            None
        }
        Some(Ok(addr)) => Some(addr),
        Some(Err(_)) => {
            problems.push(format!(
                "metrics_listen: `{}` is not an address; write IP:PORT, e.g. 127.0.0.1:9464",
                config.metrics_listen.as_deref().unwrap_or_default()
            ));
            None
        }
    };
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
        metrics_listen,
        tls,
        etcd_access,
        config,
    })
}
