//! The fleet's membership in etcd — the one module that reads and writes mcpfier's etcd keys.
//!
//! Key schema (see `docs/membership.md`): `<prefix>/agents/<id>` holds an [`AgentRecord`] as
//! JSON, attached to the agent's lease, so the key disappears when the agent stops renewing.
//! Agents register with a transaction that never takes over a key held by another live
//! lease; coordinators list the prefix and then watch it from the listed revision.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};

/// How to reach etcd beyond its endpoints: TLS with a client certificate (etcd maps its CN
/// to a user) and a user name with password. Built from a config's `etcd` section by
/// [`Access::from_config`].
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// CA, certificate and key, paths resolved.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The etcd user.
    pub username: Option<String>,
    /// Its password, resolved from `${env:..}` or `${file:..}`.
    pub password: Option<crate::secret::Secret>,
}

impl Access {
    /// Checks and resolves an `etcd` section's `tls`, `username` and `password` (relative
    /// paths against `base`, secret references from `env`). `fleet_ca` is the CA the fleet's
    /// certificates chain to: etcd must not trust it (a fleet certificate with CN `root`
    /// would be etcd's root user), so pointing both at one CA is refused. Problems come back
    /// as `field: message` (`tls.ca: ...`).
    pub fn from_config(
        tls: Option<&crate::tls::TlsFiles>,
        username: Option<&str>,
        password: Option<&str>,
        base: &std::path::Path,
        env: &std::collections::HashMap<String, String>,
        fleet_ca: Option<&std::path::Path>,
    ) -> Result<Access, Vec<String>> {
        let mut problems = Vec::new();
        let tls = tls.map(|t| t.relative_to(base));
        if let (Some(files), Some(fleet)) = (&tls, fleet_ca)
            && same_file(&files.ca, fleet)
        {
            problems.push(format!(
                "tls.ca: {} is also the CA of the fleet's certificates; etcd must trust a CA of its own (a fleet certificate with CN `root` would be etcd's root user)",
                files.ca.display()
            ));
        }
        if let Some(files) = &tls {
            for (field, path) in [
                ("ca", &files.ca),
                ("cert", &files.cert),
                ("key", &files.key),
            ] {
                if !path.is_file() {
                    problems.push(format!(
                        "tls.{field}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        let password = match (username, password) {
            (None, Some(_)) => {
                problems.push("password: set username too".into());
                None
            }
            (_, Some(p)) => match crate::secret::resolve(p, env) {
                Ok((value, _)) => Some(crate::secret::Secret::new(value)),
                Err(e) => {
                    problems.push(format!("password: {e}"));
                    None
                }
            },
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Access {
            tls,
            username: username.map(str::to_owned),
            password,
        })
    }
}

/// An etcd client error in words: a gRPC status as its code and message (its `Display` would
/// dump the metadata map too).
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

/// Whether two paths name one file, or two files with the same contents.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) if x == y => true,
        _ => matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y),
    }
}

/// What a watch event did to a key (etcd's type, for members that reach etcd only here).
pub use etcd_client::EventType;
/// A permission of an etcd role (for setting up auth, as docs/membership.md shows).
pub use etcd_client::Permission;

/// How long connecting to etcd, and one request to it, may take.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// What an agent publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// What coordinators dial (`host:port`).
    pub address: String,
    /// The agent's labels, which tools' `placement.labels` select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Calls the agent runs at once; it refuses more.
    pub capacity: u32,
    /// Calls running when the record was written.
    #[serde(default)]
    pub running: u32,
    /// The agent's mcpfier version (its crate version).
    pub version: String,
    /// The gRPC protocol version it speaks (`mcpfier_proto::PROTOCOL_VERSION`), e.g. `1.1`.
    pub protocol_version: String,
    /// Unix time in milliseconds.
    pub started_at: u64,
    /// Unix time in milliseconds of this write (the agent rewrites the record at least once
    /// per lease TTL, so this is its "last seen").
    pub updated_at: u64,
    /// The agent is shutting down: it finishes running calls but takes no new ones.
    #[serde(default)]
    pub draining: bool,
    /// Optional behaviour, e.g. `local-exec`, `docker`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The agent's `policy.allow_tools` globs.
    #[serde(default)]
    pub allow_tools: Vec<String>,
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `<prefix>/agents/`.
pub fn agents_prefix(prefix: &str) -> String {
    format!("{}/agents/", prefix.trim_end_matches('/'))
}

/// `<prefix>/agents/<id>`.
pub fn agent_key(prefix: &str, id: &str) -> String {
    format!("{}{id}", agents_prefix(prefix))
}

/// `<prefix>/audit/<chain>`: the head (last `seq` and hash) of a coordinator's audit chain.
pub fn audit_head_key(prefix: &str, chain: &str) -> String {
    format!("{}/audit/{chain}", prefix.trim_end_matches('/'))
}

/// Whether `prefix` can be a key prefix: absolute, no trailing slash needed.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.starts_with('/') && prefix.len() > 1 && !prefix.contains("//")
}

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to etcd, or a request to it, failed or timed out.
    #[error("etcd at {endpoints}: {}", describe(.source))]
    Etcd {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    #[error(
        "agent id `{id}` is already registered by a live agent (key {key}, lease {lease:x}); stop that agent or give this one another id"
    )]
    /// Registering found the agent's key held by another live lease: two agents share an id.
    Duplicate {
        /// The agent id asked for.
        id: String,
        /// The etcd key already taken.
        key: String,
        /// The lease that holds it.
        lease: i64,
    },
    /// The TLS files or credentials for etcd could not be used.
    #[error("etcd access: {0}")]
    Access(String),
    /// A value under the agents prefix is not an [`AgentRecord`]. Not returned today: `list`
    /// and `changes` log such values and skip them.
    #[error("the record at {key} is not an agent record: {why}")]
    BadRecord {
        /// The etcd key of the value.
        key: String,
        /// Why it did not parse.
        why: String,
    },
}

/// A connection to etcd, with the endpoints kept for messages.
#[derive(Clone)]
pub struct Etcd {
    /// The etcd client, for calls this module does not wrap; cheap to clone.
    pub client: Client,
    endpoints: String,
}

impl Etcd {
    /// Connects to the first reachable endpoint.
    pub async fn connect(endpoints: &[String]) -> Result<Etcd, Error> {
        Self::connect_with(endpoints, &Access::default()).await
    }

    /// Connects to `endpoints` with `access`: TLS with a client certificate, and a user name
    /// and password, as the cluster requires.
    pub async fn connect_with(endpoints: &[String], access: &Access) -> Result<Etcd, Error> {
        let joined = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(files) = &access.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| Error::Access(format!("read {}: {e}", p.display())))
            };
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&files.ca)?))
                .identity(etcd_client::Identity::from_pem(
                    read(&files.cert)?,
                    read(&files.key)?,
                ));
            options = options.with_tls(tls);
        }
        if let Some(user) = &access.username {
            let password = access.password.as_ref().map(|p| p.expose()).unwrap_or("");
            options = options.with_user(user.clone(), password);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| Error::Etcd {
                endpoints: joined.clone(),
                source,
            })?;
        Ok(Etcd {
            client,
            endpoints: joined,
        })
    }

    fn err(&self, source: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.id())
    }

    /// Writes `record` at `key` on `lease` unless another key holder exists; the
    /// registration transaction.
    pub async fn register(
        &self,
        prefix: &str,
        id: &str,
        record: &AgentRecord,
        lease: i64,
    ) -> Result<(), Error> {
        let key = agent_key(prefix, id);
        let value = serde_json::to_vec(record).expect("a record serializes");
        let txn = Txn::new()
            .when([
                // Free, or already ours (a re-registration on the same lease).
                Compare::version(key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.err(e))?;
        if r.succeeded() {
            return Ok(());
        }
        // Someone holds the key. If it is our own lease, just rewrite it. A key on no lease
        // (a plain `put`) is no live agent's: take it back, unless it changed meanwhile.
        let held = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(|e| self.err(e))?
            .kvs()
            .first()
            .map(|kv| (kv.lease(), kv.mod_revision()));
        let (holder, revision) = held.unwrap_or_default();
        if holder == lease {
            return self.update(prefix, id, record, lease).await;
        }
        if holder == 0 {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let r = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.err(e))?;
            if r.succeeded() {
                return Ok(());
            }
        }
        Err(Error::Duplicate {
            id: id.to_owned(),
            key,
            lease: holder,
        })
    }

    /// Rewrites an agent's record on its lease (load and drain updates, heartbeats).
    pub async fn update(
        &self,
        prefix: &str,
        id: &str,
        record: &AgentRecord,
        lease: i64,
    ) -> Result<(), Error> {
        let key = agent_key(prefix, id);
        // Only while the key is still on this lease: never resurrect or steal it.
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key,
                serde_json::to_vec(record).expect("a record serializes"),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Revokes a lease (its keys go at once).
    pub async fn revoke(&self, lease: i64) -> Result<(), Error> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Renews `lease` once; returns the remaining TTL in seconds (0: the lease is gone).
    pub async fn keep_alive_once(&self, lease: i64) -> Result<i64, Error> {
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.err(e))?;
        keeper.keep_alive().await.map_err(|e| self.err(e))?;
        match stream.message().await.map_err(|e| self.err(e))? {
            Some(r) => Ok(r.ttl()),
            None => Ok(0),
        }
    }

    /// Every agent record under `prefix`, and the revision they were read at.
    pub async fn list(&self, prefix: &str) -> Result<(BTreeMap<String, AgentRecord>, i64), Error> {
        let base = agents_prefix(prefix);
        let r = self
            .client
            .clone()
            .get(base.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        let revision = r.header().map(|h| h.revision()).unwrap_or_default();
        let mut agents = BTreeMap::new();
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let id = key[base.len()..].to_owned();
            match serde_json::from_slice::<AgentRecord>(kv.value()) {
                Ok(record) => {
                    agents.insert(id, record);
                }
                Err(e) => tracing::warn!(%key, error = %e, "skipping a malformed agent record"),
            }
        }
        Ok((agents, revision))
    }

    /// Watches the one key of agent `id`, from now on.
    pub async fn watch_agent(&self, prefix: &str, id: &str) -> Result<WatchStream, Error> {
        self.client
            .clone()
            .watch(agent_key(prefix, id), None)
            .await
            .map_err(|e| self.err(e))
    }

    /// Writes the head of audit chain `chain` (a JSON value), with no lease: it outlives the
    /// coordinator, so a file cut while it was down is still caught.
    pub async fn put_audit_head(&self, prefix: &str, chain: &str, head: &str) -> Result<(), Error> {
        self.client
            .clone()
            .put(audit_head_key(prefix, chain), head, None)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The head of audit chain `chain` as last written, if any.
    pub async fn audit_head(&self, prefix: &str, chain: &str) -> Result<Option<String>, Error> {
        let r = self
            .client
            .clone()
            .get(audit_head_key(prefix, chain), None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The lease agent `id`'s key is on (0: none), or `None` when there is no such key.
    pub async fn holder(&self, prefix: &str, id: &str) -> Result<Option<i64>, Error> {
        let r = self
            .client
            .clone()
            .get(agent_key(prefix, id), None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.kvs().first().map(|kv| kv.lease()))
    }

    /// Watches `prefix` from `revision` (exclusive of what `list` returned).
    pub async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream, Error> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after_revision + 1);
        self.client
            .clone()
            .watch(agents_prefix(prefix), Some(options))
            .await
            .map_err(|e| self.err(e))
    }
}

/// A change to the membership.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The agent with this id registered or rewrote its record.
    Put(String, AgentRecord),
    /// The agent with this id is gone: its lease expired or was revoked, or its key deleted.
    Delete(String),
}

/// The changes in one watch response, or why the watch must restart from a fresh list.
pub fn changes(prefix: &str, response: &etcd_client::WatchResponse) -> Result<Vec<Change>, String> {
    if response.canceled() || response.compact_revision() > 0 {
        return Err(format!(
            "watch cancelled (compacted at revision {}: {})",
            response.compact_revision(),
            response.cancel_reason()
        ));
    }
    let base = agents_prefix(prefix);
    let mut out = Vec::new();
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(id) = key.strip_prefix(&base) else {
            continue;
        };
        match event.event_type() {
            EventType::Put => match serde_json::from_slice::<AgentRecord>(kv.value()) {
                Ok(record) => out.push(Change::Put(id.to_owned(), record)),
                Err(e) => tracing::warn!(%key, error = %e, "skipping a malformed agent record"),
            },
            EventType::Delete => out.push(Change::Delete(id.to_owned())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_schema() {
        assert_eq!(agent_key("/mcpfier/prod", "a1"), "/mcpfier/prod/agents/a1");
        assert_eq!(agent_key("/mcpfier/prod/", "a1"), "/mcpfier/prod/agents/a1");
        assert!(valid_prefix("/mcpfier/prod"));
        assert!(!valid_prefix("mcpfier"));
        assert!(!valid_prefix("/"));
    }
}
