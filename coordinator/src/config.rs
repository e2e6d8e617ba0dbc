//! The `mcpfier.yaml` file: its types (the JSON Schema of the file is generated from them),
//! where it is looked for, and parsing it into values that remember their lines. Checking the
//! values and building tools from them is `catalog`'s job; this module knows nothing of it.

mod locate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
pub use mcpfier_common::tool::{CommandElement, Group, Param, ParamType, StringRules};
use mcpfier_common::{ByteSize, HumanDuration};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// The whole `mcpfier.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mcpfier.yaml")]
pub struct Config {
    /// How the coordinator serves MCP.
    #[serde(default)]
    pub server: ServerSection,
    /// Remote agents to run calls on. Without it, calls run in this process.
    pub fleet: Option<FleetSection>,
    /// The tools it offers.
    #[serde(default)]
    pub tools: Vec<ToolSection>,
    /// What each role may do, by role name (`server.auth` gives principals their roles).
    #[serde(default)]
    pub roles: IndexMap<String, RoleSection>,
    /// OpenTelemetry traces, exported over OTLP (docs/observability.md).
    #[serde(default)]
    pub telemetry: Option<mcpfier_common::telemetry::TelemetryConfig>,
}

/// The `server` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address for Streamable HTTP (`mcpfier serve`), served at `/mcp`. An address other
    /// machines can reach needs `auth`, and `tls` unless `behind_tls_proxy` is set.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Serve HTTPS with this certificate and key (PEM). Both files are read again on SIGHUP
    /// and when either changes; a pair that fails to load is logged and the old one kept.
    #[serde(default)]
    pub tls: Option<ServerTlsSection>,
    /// A TLS-terminating proxy is in front of this server, so a non-loopback `listen` may be
    /// plain HTTP. Only the proxy must be able to reach that address.
    #[serde(default)]
    pub behind_tls_proxy: bool,
    /// Who may call. Without it every caller is trusted, so `listen` must be loopback.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// An audit file: one JSON line per call and per refused authentication or
    /// authorization, hash-chained (`mcpfier audit verify FILE` checks it).
    #[serde(default)]
    pub audit: Option<AuditSection>,
    /// Calls running at once across all tools.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Browser origins allowed besides loopback ones (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*`), e.g. `https://app.example.com`. A request with
    /// any other `Origin` header gets 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Host names (or `host:port`) clients may use besides loopback ones (`localhost`,
    /// `127.0.0.1`, `::1`), e.g. `mcp.example.com`: a request with another `Host` header
    /// gets 403, against DNS rebinding. A server other machines reach needs its own names here.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bounds on connections and MCP sessions, against floods and idle clients.
    #[serde(default)]
    pub limits: ServerLimits,
    /// Record Prometheus metrics and serve them at `/metrics` (default true). With false,
    /// nothing is recorded and `/metrics` answers 404.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Also serve `/metrics`, `/healthz` and `/readyz` on this address, plain HTTP with no
    /// credential (for a scraper that has none). Loopback only, unless `metrics_public`.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Let `metrics_listen` be a non-loopback address: anyone who reaches it reads the
    /// metrics (call counts by tool, refusals, agents by state), never arguments or output.
    #[serde(default)]
    pub metrics_public: bool,
}

fn yes() -> bool {
    true
}

/// `server.limits`: what one client, or many, may hold open. Every bound has a default.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// Open TCP connections. At the cap, the connection idle the longest is closed to make
    /// room; when none is idle, the new one is (default 4096, and never more than the file
    /// descriptors allow).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// How long a client may take to send a request's headers (default 10s).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// How long a connection with no request in flight stays open (default 60s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Open MCP sessions, all principals together (default 4096).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Open MCP sessions of one principal (default 64).
    #[serde(default = "default_sessions_per_principal")]
    pub sessions_per_principal: usize,
    /// A session with no request for this long, and no call in flight, is closed (default
    /// 30m). A call runs to its own timeout, whatever this says.
    #[serde(default = "default_session_idle")]
    pub session_idle: HumanDuration,
    /// A session idle this long is parked: its MCP machinery is freed and only what it
    /// was opened with is kept (under 1 KB); its next request wakes it, unseen by the client
    /// (default 30s).
    #[serde(default = "default_session_park")]
    pub session_park: HumanDuration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            connections: default_connections(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            sessions: default_sessions(),
            sessions_per_principal: default_sessions_per_principal(),
            session_idle: default_session_idle(),
            session_park: default_session_park(),
        }
    }
}

fn default_connections() -> usize {
    4096
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_sessions() -> usize {
    4096
}
fn default_sessions_per_principal() -> usize {
    64
}
fn default_session_idle() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}
fn default_session_park() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_concurrency: default_max_concurrency(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            tls: None,
            behind_tls_proxy: false,
            auth: None,
            audit: None,
            limits: ServerLimits::default(),
            metrics: true,
            metrics_listen: None,
            metrics_public: false,
        }
    }
}

/// `server.tls`: the HTTPS certificate chain and its key, PEM files (relative paths are
/// against the config file's directory).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSection {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
}

/// `server.audit`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The file (JSON lines; relative to the config file's directory), created mode 0600.
    /// Each line is on disk (fdatasync) before the call's answer is sent.
    pub path: PathBuf,
    /// Rotate the file once it holds this much (e.g. `100MiB`): it is renamed
    /// `<path>.<first seq, 12 digits>` and the chain goes on in a new file. Default: never.
    #[serde(default)]
    pub rotate_size: Option<ByteSize>,
    /// With `fleet.etcd`, the chain's head (last seq and hash) is kept at
    /// `<prefix>/audit/<chain>`, so cutting the newest lines is caught by `mcpfier audit
    /// verify --etcd`. Default: this host's name and the file's absolute path.
    #[serde(default)]
    pub chain: Option<String>,
    /// Unset (the default): each line is on disk (`fdatasync`) before its call is answered.
    /// Set (e.g. `100ms`): lines are written before the answer, so a crash of mcpfier loses
    /// nothing, and synced at most this long later, so a crash of the host may lose that
    /// much; it saves one disk sync per call.
    #[serde(default)]
    pub sync_interval: Option<HumanDuration>,
}

/// `server.auth`: how callers prove who they are. Every request to the HTTP server, `/mcp`
/// and `/fleet` alike, then needs `Authorization: Bearer <credential>`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// API keys, each stored as its SHA-256 (`mcpfier keys new` makes one).
    #[serde(default)]
    pub api_keys: Vec<ApiKeySection>,
    /// OAuth 2.1 access tokens (JWTs) from an authorization server.
    #[serde(default)]
    pub oauth: Option<OAuthSection>,
}

/// `server.auth.oauth`: accept access tokens (JWTs) that this authorization server issued
/// for this server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    /// The issuer, exactly as tokens' `iss` says it, e.g. `https://auth.example.com`.
    pub issuer: String,
    /// This server's MCP URL, e.g. `https://mcp.example.com/mcp`: tokens' `aud` must contain
    /// it (RFC 8707), and the protected-resource metadata is served for it (RFC 9728).
    pub audience: String,
    /// The issuer's signing keys (a JWKS, JSON), read again when a token names an unknown key.
    /// Give this or `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Where the issuer serves its JWKS (https only): fetched at start, every `jwks_refresh`,
    /// and when a token names an unknown key (at most every 30 s).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The CA certificates (PEM) `jwks_url`'s server is checked against (default: the
    /// system's, /etc/ssl/certs/ca-certificates.crt).
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// How often `jwks_url` is fetched again regardless (default 10m; at least 30s).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    /// The claim that lists a principal's roles (default `roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Scopes every token must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf` (default 60s).
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
}

fn default_roles_claim() -> String {
    "roles".into()
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}
fn default_leeway() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

/// One API key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    /// The principal the key authenticates, e.g. `ci-bot` (shown in logs and audit).
    pub id: String,
    /// `sha256:` and the lowercase hex SHA-256 of the whole key.
    pub hash: String,
    /// Roles (names under `roles`) the principal has.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// What a role may do.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// Tools it may list and call, as globs (`deploy-*`). A principal gets the union of its
    /// roles' tools.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Tools it may not call even where `tools` matches, as globs.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Whether it may read `/fleet` (agents, their health and labels).
    #[serde(default)]
    pub fleet: FleetAccess,
    /// How much its principals may call. A principal with several roles gets the most
    /// generous figure any of them sets; a figure no role sets is not limited.
    #[serde(default)]
    pub limits: RoleLimits,
    /// Narrower parameter rules for this role, by tool and parameter:
    /// `deploy-app: {env: {enum: [staging]}}`. A value must meet the tool's rules and these.
    #[serde(default)]
    pub args: IndexMap<String, IndexMap<String, ArgRule>>,
}

/// A role's `limits`, per principal.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleLimits {
    /// Tool calls a principal may start per minute (bursts up to this many, then one every
    /// 60/N seconds).
    pub calls_per_minute: Option<u32>,
    /// Tool calls of a principal running at once.
    pub concurrent: Option<u32>,
}

/// A narrower rule for one parameter of one tool, for one role.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArgRule {
    /// string or integer: the values this role may give (a subset of the tool's own enum).
    #[serde(rename = "enum")]
    pub choices: Option<Vec<Value>>,
    /// string: a regular expression the value must also match.
    pub pattern: Option<String>,
    /// string: most characters.
    pub max_length: Option<u64>,
    /// integer or number: smallest value.
    pub minimum: Option<f64>,
    /// integer or number: largest value.
    pub maximum: Option<f64>,
    /// array: most items.
    pub max_items: Option<u64>,
}

/// A role's access to the fleet's views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FleetAccess {
    /// None (the default).
    #[default]
    None,
    /// May read `/fleet` and `/fleet/agents/{id}`.
    Read,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_concurrency() -> usize {
    32
}
fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_max_output() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_ok_exit_codes() -> Vec<i32> {
    vec![0]
}

/// The `fleet` section: agents reached over mutual-TLS gRPC.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// The coordinator's CA, certificate (role coordinator) and key; relative paths are read
    /// from the config file's directory.
    pub tls: mcpfier_common::tls::TlsFiles,
    /// Agents listed by hand, each with the id its certificate was issued for.
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// Follow the agents registered in etcd under this prefix.
    pub etcd: Option<EtcdSection>,
    /// How often each agent's health is checked (default 1s).
    #[serde(default = "default_health_interval")]
    pub health_interval: HumanDuration,
    /// How long connecting to an agent may take (default 2s).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long an agent may take to accept a call once it was sent (default 2s). Past it the
    /// call's outcome is unknown (the agent may still start it): it ends as `agent_lost`,
    /// unless the tool is idempotent.
    #[serde(default = "default_accept_timeout")]
    pub accept_timeout: HumanDuration,
    /// Label keys (e.g. `[pool, region]`) routed on only when the agent's certificate vouches
    /// for the value (`mcpfier certs issue --label pool=secrets`): an agent can't attract
    /// work by announcing a label it was not issued. Default none.
    #[serde(default)]
    pub certified_labels: Vec<String>,
}

fn default_health_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}
fn default_accept_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}

/// Where the coordinator finds registered agents.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379` (`https://` with `tls`).
    pub endpoints: Vec<String>,
    /// Key prefix shared with the agents, e.g. `/mcpfier/prod`.
    pub prefix: String,
    /// TLS to etcd: its CA and this coordinator's client certificate and key (etcd maps the
    /// certificate's CN to a user). Must not be the fleet's CA.
    pub tls: Option<mcpfier_common::tls::TlsFiles>,
    /// The etcd user, when the cluster has auth enabled.
    pub username: Option<String>,
    /// Its password: write `${env:NAME}` or `${file:PATH}`, not the value.
    pub password: Option<String>,
}

/// One agent of a static fleet.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent's id: its certificate must say `spiffe://mcpfier/agent/<id>`.
    pub id: String,
    /// `host:port` of its gRPC listener.
    pub address: String,
}

/// Where a tool may run.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Only agents that have all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One tool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSection {
    /// The MCP tool name: 1-128 of `A-Z a-z 0-9 _ . -`, unique.
    pub name: String,
    /// A human-readable title.
    pub title: Option<String>,
    /// What the tool does, for the model.
    pub description: Option<String>,
    /// The argv: a list of strings (with `{{param}}` placeholders) and conditional groups
    /// `{if: param, args: [...]}`. `command[0]` is the program and takes no placeholder.
    /// Nothing is ever passed to a shell.
    pub command: Vec<CommandElement>,
    /// The parameters, in the order clients show them.
    #[serde(default)]
    pub params: IndexMap<String, Param>,
    /// Environment for the command, on top of a safe default `PATH`; nothing is inherited.
    /// Values may embed `${env:NAME}` (from mcpfier's environment) or `${file:PATH}` (a
    /// file's contents, less a trailing newline); those are read at load time and treated as
    /// secrets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute). Defaults to mcpfier's own.
    pub workdir: Option<PathBuf>,
    /// OAuth scopes a token must carry to call this tool, e.g. `[deploy:write]`; a token
    /// without them gets 403 `insufficient_scope` naming them, so the client can ask for
    /// more. (API keys are authorized by their roles alone.)
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Longest a call may run (default 60s); then its process group gets SIGTERM and, after a
    /// short grace, SIGKILL.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Bytes kept of stdout and of stderr, each (default 1MiB); the rest is dropped and the
    /// result says `truncated`.
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
    /// Exit codes that count as success (default `[0]`).
    #[serde(default = "default_ok_exit_codes")]
    pub ok_exit_codes: Vec<i32>,
    /// Hints for clients.
    #[serde(default)]
    pub annotations: Annotations,
    /// Calls of this tool running at once (default: no limit but `server.max_concurrency`).
    pub concurrency: Option<usize>,
    /// Which agents may run it (needs a `fleet` section).
    pub placement: Option<Placement>,
    /// Run the command in a hardened container instead of as a local process.
    pub container: Option<ContainerSection>,
}

/// A tool's `container` section. Always, whatever it says: all capabilities dropped,
/// no-new-privileges, an init process, mcpfier labels, environment through the API, and the
/// container removed after the call.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// The image, e.g. `localhost/tools:1.2`.
    pub image: String,
    /// Memory limit (default 512MiB); swap is limited to the same.
    #[serde(default = "default_container_memory")]
    pub memory: ByteSize,
    /// CPUs (default 1).
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Processes at once (default 256).
    #[serde(default = "default_pids")]
    pub pids: i64,
    /// `none` (default), `bridge`, or a named network.
    #[serde(default = "default_network")]
    pub network: String,
    /// Read-only root filesystem with a small tmpfs at /tmp (default true).
    #[serde(default = "default_true")]
    pub read_only: bool,
    /// `uid:gid` (default nobody, 65534:65534).
    #[serde(default = "default_user")]
    pub user: String,
    /// Host paths to mount; read-only unless `rw: true`.
    #[serde(default)]
    pub mounts: Vec<MountSection>,
    /// `never` or `missing` (default).
    #[serde(default)]
    pub pull: PullPolicy,
}

/// A bind mount.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    /// Absolute path on the host (on the agent, in fleet mode).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount writable (default false: read-only).
    #[serde(default)]
    pub rw: bool,
}

/// When to pull a container image.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Never pull; a call fails when the image is not on the host.
    Never,
    /// Pull the image when it is not on the host (the default).
    #[default]
    Missing,
}

fn default_container_memory() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_cpus() -> f64 {
    1.0
}
fn default_pids() -> i64 {
    256
}
fn default_network() -> String {
    "none".into()
}
fn default_true() -> bool {
    true
}
fn default_user() -> String {
    "65534:65534".into()
}

/// MCP tool annotations: hints for clients, not guarantees.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    /// The tool changes nothing (MCP `readOnlyHint`). Unset: not sent.
    pub read_only: Option<bool>,
    /// The tool may delete or overwrite things (MCP `destructiveHint`). Unset: not sent.
    pub destructive: Option<bool>,
    /// Calling it again with the same arguments has no further effect (MCP
    /// `idempotentHint`). When true, a call whose agent is lost after accepting it is retried
    /// once on another agent.
    pub idempotent: Option<bool>,
    /// The tool reaches things outside this host, e.g. the network (MCP `openWorldHint`).
    /// Unset: not sent.
    pub open_world: Option<bool>,
}

/// The JSON Schema of `mcpfier.yaml`.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("a schema serializes")
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file, e.g. `tools[2].params.pattern.pattern`; empty for the whole file.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
    /// The 1-based line in the file; `None` when not known.
    pub line: Option<usize>,
}

impl Problem {
    /// A problem at `path` with no line yet.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// A config file that could not be loaded, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The config file, as named to the loader.
    pub file: PathBuf,
    /// Every problem found; at least one.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            let at = match p.line {
                Some(line) => format!("{}:{line}: ", self.file.display()),
                None => format!("{}: ", self.file.display()),
            };
            if p.path.is_empty() {
                writeln!(f, "  {at}{}", p.message)?;
            } else {
                writeln!(f, "  {at}{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Where the config file was looked for, in order, when none was found.
#[derive(Debug, thiserror::Error)]
#[error(
    "no config file found; looked at: {}. Pass --config FILE, or set MCPFIER_CONFIG; `mcpfier init` writes a starter mcpfier.yaml here, and examples/ in the source tree has more",
    .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct NotFound(pub Vec<PathBuf>);

/// Finds the config file: `explicit` (from `--config`), else `$MCPFIER_CONFIG`, else
/// `./mcpfier.yaml`, else `~/.config/mcpfier/mcpfier.yaml`, else `/etc/mcpfier/mcpfier.yaml`.
/// An explicitly named file is returned even if missing, so that reading it says so.
pub fn find(explicit: Option<&Path>, env: &HashMap<String, String>) -> Result<PathBuf, NotFound> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = env.get("MCPFIER_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("mcpfier.yaml")];
    if let Some(home) = env.get("HOME").filter(|h| !h.is_empty()) {
        candidates.push(Path::new(home).join(".config/mcpfier/mcpfier.yaml"));
    }
    candidates.push(PathBuf::from("/etc/mcpfier/mcpfier.yaml"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(NotFound(candidates))
}

/// A parsed config file: its values, and where each path sits in the text.
pub struct Parsed {
    /// The file's values.
    pub config: Config,
    /// Maps config paths to lines, for problems found after parsing.
    pub lines: Lines,
}

pub use locate::Lines;

/// Reads the config file at `path`.
pub fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error {
        file: path.to_owned(),
        problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
    })
}

/// Parses config text; `path` only names it in errors. Types and unknown keys are checked
/// here; everything else is `catalog`'s.
pub fn parse(text: &str, path: &Path) -> Result<Parsed, Error> {
    let lines = locate::Lines::of(text);
    match serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(text)) {
        Ok(config) => Ok(Parsed { config, lines }),
        Err(e) => Err(Error {
            file: path.to_owned(),
            problems: vec![yaml_problem(e, &lines)],
        }),
    }
}

fn yaml_problem(
    e: serde_path_to_error::Error<yaml_serde::Error>,
    lines: &locate::Lines,
) -> Problem {
    let path = e.path().to_string();
    // A parse error has no key yet at its position: the path ends in `?` there.
    let path = path
        .trim_end_matches('?')
        .trim_end_matches('.')
        .trim_start_matches('.')
        .to_owned();
    let inner = e.into_inner();
    let mut message = inner.to_string();
    // The deserializer's message may carry its own path prefix and position; keep only the
    // words, since the path and line are reported on their own.
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
        && (prefix.starts_with("tools") || prefix.starts_with("server"))
    {
        message = rest.to_owned();
    }
    let at_parser = inner.location().map(|l| l.line());
    // The parser knows where the text broke; for a wrong key or value, the key's own line.
    let line = if is_syntax(&message) || path.is_empty() {
        at_parser
    } else {
        lines.line(&path).or(at_parser)
    };
    Problem {
        line,
        message: in_words(&path, &message),
        path,
    }
}

/// Whether a YAML error is the parser's (the text is not YAML) rather than a wrong key or
/// value in good YAML.
fn is_syntax(message: &str) -> bool {
    [
        "while parsing",
        "while scanning",
        "mapping values are not allowed",
        "did not find expected",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The deserializer's `message` about `path`, said as what to change.
fn in_words(path: &str, message: &str) -> String {
    if is_syntax(message) {
        return format!(
            "this is not valid YAML here ({message}): check the indentation (keys of one mapping start in the same column, list items with `- ` under their key) and quote a value that holds `: ` or starts with one of {{ [ * & ! | > %"
        );
    }
    // "unknown field `timout`, expected one of `name`, `timeout`" (or "expected `a` or `b`")
    for (what, word) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if let Some(rest) = message.strip_prefix(what)
            && let Some((given, expected)) = rest.split_once('`')
        {
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let list = known.join(", ");
            return match mcpfier_common::suggest::nearest(given, known.iter().copied()) {
                Some(near) => {
                    format!(
                        "unknown {word} `{given}`: did you mean `{near}`? ({word}s here: {list})"
                    )
                }
                None if known.is_empty() => format!("unknown {word} `{given}`"),
                None => format!("unknown {word} `{given}`; {word}s here: {list}"),
            };
        }
    }
    if (path == "command" || path.ends_with(".command"))
        && let Some(text) = message
            .strip_prefix("invalid type: string \"")
            .and_then(|m| m.strip_suffix("\", expected a sequence"))
    {
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| serde_json::to_string(w).unwrap_or_default())
            .collect();
        return format!(
            "`{text}` is one string: write the command as a list, one element per argument, e.g. command: [{}] (mcpfier never runs a shell, so a string is not split)",
            words.join(", ")
        );
    }
    message.to_owned()
}
