//! The checked, ready-to-call form of a config: every tool with its command template parsed,
//! its parameter rules compiled, its secrets resolved and its concurrency limit in place.
//!
//! Building a catalog is the config's `validate()`: it reports every problem, each with its
//! path and line, and a catalog exists only when there are none. [`load`] and [`parse`] go
//! from a file or text to a catalog: parse (`config`), build, then line numbers.

mod container;
pub mod signing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use mcpfier_common::tls::{Role, TlsFiles};
use mcpfier_exec::{DEFAULT_KILL_GRACE, EnvVar, Execution, SignedCall};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::config::{AgentEntry, Annotations, Config, ParamType, Problem, ServerSection};
use mcpfier_common::tool::params::{self, ArgError, CompiledParam};
use mcpfier_common::tool::paths;
use mcpfier_common::tool::template::{self, Element};

/// Reads, parses and checks the config file at `path`; `env` is mcpfier's environment, for
/// `${env:NAME}` references.
pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Catalog, crate::config::Error> {
    parse(&crate::config::read(path)?, path, env)
}

/// Parses and checks config text; `path` names it in errors and is the base for relative
/// paths in it.
pub fn parse(
    text: &str,
    path: &Path,
    env: &HashMap<String, String>,
) -> Result<Catalog, crate::config::Error> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(crate::config::Error {
            file: path.to_owned(),
            problems: vec![Problem::new(
                "",
                "the file is empty: it needs at least a `tools:` list. `mcpfier init` writes a commented starter config; examples/mcpfier.yaml has more",
            )],
        });
    }
    let crate::config::Parsed { config, lines } = crate::config::parse(text, path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let with_lines = |mut problems: Vec<Problem>| {
        for p in &mut problems {
            p.line = lines.line(&p.path);
        }
        crate::config::Error {
            file: path.to_owned(),
            problems,
        }
    };
    let mut catalog = Catalog::build(config, base, env).map_err(with_lines)?;
    for w in &mut catalog.warnings {
        w.line = lines.line(&w.path);
    }
    let tools: Vec<(&str, &[u8])> = catalog
        .tools
        .values()
        .map(|t| (t.name.as_str(), &*t.definition))
        .collect();
    if let Some(found) = signing::signatures(path, &tools).map_err(with_lines)? {
        for (tool, signature) in catalog.tools.values_mut().zip(found) {
            Arc::get_mut(tool)
                .expect("a catalog being built is not shared yet")
                .signature = Some(signature.into());
        }
    }
    Ok(catalog)
}

/// Every tool of a config, checked.
#[derive(Debug)]
pub struct Catalog {
    /// The `server` section as written.
    pub server: ServerSection,
    /// `server.listen`, parsed.
    pub listen: SocketAddr,
    /// `server.metrics_listen`, parsed and checked.
    pub metrics_listen: Option<SocketAddr>,
    /// `server.tls` with paths resolved against the config file's directory.
    pub tls: Option<ServerTls>,
    /// `server.auth` and `roles`, checked.
    pub access: Arc<crate::access::Access>,
    /// `server.audit`, its path resolved against the config file's directory.
    pub audit: Option<crate::audit::Settings>,
    /// What is allowed but probably not meant (`validate` prints them; lines are filled in
    /// by [`parse`]).
    pub warnings: Vec<Problem>,
    /// The fleet to run calls on; `None` runs them in this process.
    pub fleet: Option<FleetSettings>,
    /// The tools by name, in the file's order.
    pub tools: IndexMap<String, Arc<Tool>>,
    /// Bounds calls running at once across all tools (`server.max_concurrency`).
    pub global_slots: Arc<Semaphore>,
    /// The `telemetry` section, checked.
    pub telemetry: Option<mcpfier_common::telemetry::TelemetryConfig>,
}

/// The HTTPS certificate and key files, and the pair as loaded when the config was checked.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The pair read from them.
    pub loaded: Arc<rustls::sign::CertifiedKey>,
}

/// A checked `fleet` section.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// TLS files with paths resolved against the config file's directory.
    pub tls: TlsFiles,
    /// Agents listed by hand.
    pub agents: Vec<AgentEntry>,
    /// Where agents register themselves, when set.
    pub etcd: Option<EtcdSettings>,
    /// How often static agents (and etcd agents out of routing) are checked.
    pub health_interval: Duration,
    /// How long dialing an agent may take.
    pub connect_timeout: Duration,
    /// How long a sent call may wait for the agent to accept it.
    pub accept_timeout: Duration,
    /// Label keys routed on only when an agent's certificate vouches for the value.
    pub certified_labels: Vec<String>,
}

/// Where the coordinator follows agent registrations, with how to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The key prefix shared with the agents.
    pub prefix: String,
    /// TLS and credentials, resolved.
    pub access: mcpfier_common::membership::Access,
}

/// One tool, ready to turn arguments into an [`Execution`].
#[derive(Debug)]
pub struct Tool {
    /// Its MCP name, unique in the catalog.
    pub name: String,
    /// A human-readable title for clients.
    pub title: Option<String>,
    /// What it does, for the model choosing tools.
    pub description: Option<String>,
    /// MCP hints (read-only, destructive, idempotent, open-world).
    pub annotations: Annotations,
    /// The argv template, checked against the parameters.
    pub command: Vec<Element>,
    /// The parameters with their rules compiled (regexes built).
    pub params: Vec<CompiledParam>,
    /// The child's environment besides `PATH`, secrets resolved.
    pub env: Vec<EnvVar>,
    /// The child's working directory (absolute), when set.
    pub workdir: Option<PathBuf>,
    /// How long a call may run before its process group is killed.
    pub timeout: Duration,
    /// Bytes kept of stdout, and separately of stderr.
    pub max_output: u64,
    /// Exit codes that count as success.
    pub ok_exit_codes: Vec<i32>,
    /// Most calls of this tool running at once, when limited.
    pub concurrency: Option<usize>,
    /// Bounds this tool's calls running at once (`concurrency`), when set.
    pub slots: Option<Arc<Semaphore>>,
    /// The `inputSchema` clients see (`additionalProperties: false`).
    pub input_schema: Arc<Map<String, Value>>,
    /// Labels an agent needs to run this tool (fleet mode).
    pub placement: BTreeMap<String, String>,
    /// OAuth scopes a token needs to call it (`scopes:`).
    pub scopes: Vec<String>,
    /// Run in a container (`container:` section).
    pub container: Option<mcpfier_exec::ContainerSpec>,
    /// The tool's canonical definition ([`signing::definition`]), the bytes a signature
    /// covers.
    pub definition: Arc<[u8]>,
    /// The operator's signature over `definition`, from the config's `.sig` file; sent with
    /// every call so that agents requiring signed tools can check it.
    pub signature: Option<Arc<[u8]>>,
}

impl Tool {
    /// Whether a retry after an agent was lost is allowed (`annotations.idempotent`).
    pub fn idempotent(&self) -> bool {
        self.annotations.idempotent == Some(true)
    }
}

impl Tool {
    /// Checks `args` and resolves the command. Nothing runs.
    pub fn prepare(&self, args: Option<&Map<String, Value>>) -> Result<Execution, Vec<ArgError>> {
        let mut values = params::check_args(&self.params, args)?;
        let paths = paths::extract(&self.params, &mut values);
        let mut exec = self.execution(&values);
        exec.paths = paths;
        exec.signed = self.signature.as_ref().map(|signature| SignedCall {
            definition: self.definition.clone(),
            signature: signature.clone(),
            arguments: match args {
                Some(args) => serde_json::to_string(args).expect("JSON values serialize"),
                None => "{}".into(),
            },
        });
        Ok(exec)
    }

    fn execution(&self, values: &BTreeMap<String, Value>) -> Execution {
        Execution {
            argv: template::render(&self.command, values),
            paths: vec![],
            program: None,
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            timeout: self.timeout,
            max_output: self.max_output,
            kill_grace: DEFAULT_KILL_GRACE,
            container: self.container.clone(),
            signed: None,
        }
    }

    /// Whether the tool takes a `path` parameter (resolved where the call runs).
    pub fn takes_paths(&self) -> bool {
        self.params.iter().any(|p| p.spec.kind == ParamType::Path)
    }

    /// Whether `code` counts as success.
    pub fn ok_exit(&self, code: Option<i32>) -> bool {
        code.is_some_and(|c| self.ok_exit_codes.contains(&c))
    }
}

fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Catalog {
    /// Checks `config` and builds the catalog, or returns every problem found.
    pub fn build(
        config: Config,
        base: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let fleet = config
            .fleet
            .as_ref()
            .map(|f| build_fleet(f, base, env, &mut problems));
        let listen = match config.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(Problem::new(
                    "server.listen",
                    format!(
                        "`{}` is not an address; write IP:PORT, e.g. 127.0.0.1:8080",
                        config.server.listen
                    ),
                ));
                None
            }
        };
        if config.server.max_concurrency == 0 {
            problems.push(Problem::new("server.max_concurrency", "must be at least 1"));
        }
        for (field, why) in config.telemetry.iter().flat_map(|t| t.problems()) {
            problems.push(Problem::new(format!("telemetry.{field}"), why));
        }
        let limits = &config.server.limits;
        for (field, value) in [
            ("connections", limits.connections),
            ("sessions", limits.sessions),
            ("sessions_per_principal", limits.sessions_per_principal),
        ] {
            if value == 0 {
                problems.push(Problem::new(
                    format!("server.limits.{field}"),
                    "must be at least 1",
                ));
            }
        }
        for (field, value) in [
            ("header_timeout", limits.header_timeout.0),
            ("idle_timeout", limits.idle_timeout.0),
            ("session_idle", limits.session_idle.0),
            ("session_park", limits.session_park.0),
        ] {
            if value < std::time::Duration::from_millis(100) {
                problems.push(Problem::new(
                    format!("server.limits.{field}"),
                    "must be at least 100ms",
                ));
            }
        }
        if let Some(audit) = &config.server.audit {
            if let Some(d) = audit.sync_interval
                && !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&d.get())
            {
                problems.push(Problem::new(
                    "server.audit.sync_interval",
                    "must be from 1ms to 10s (leave it out to sync every line before its answer)",
                ));
            }
            if audit.rotate_size.is_some_and(|b| b.bytes() < 1024) {
                problems.push(Problem::new(
                    "server.audit.rotate_size",
                    "must be at least 1KiB",
                ));
            }
        }
        let mut access = crate::access::Access::build(&config, base, &mut problems);
        let tls = config.server.tls.as_ref().and_then(|t| {
            let (cert, key) = (base.join(&t.cert), base.join(&t.key));
            match mcpfier_common::tls::load_server_key(&cert, &key) {
                Ok(loaded) => Some(ServerTls { cert, key, loaded }),
                Err(e) => {
                    problems.push(Problem::new("server.tls", e.to_string()));
                    None
                }
            }
        });
        let metrics_listen = match config
            .server
            .metrics_listen
            .as_deref()
            .map(str::parse::<SocketAddr>)
        {
            None => None,
            Some(Ok(addr)) if !addr.ip().is_loopback() && !config.server.metrics_public => {
                problems.push(Problem::new(
                    "server.metrics_listen",
                    format!("{addr} is not a loopback address, and metrics there have no credential; use 127.0.0.1:PORT, or set server.metrics_public: true to let anyone who reaches it read them"),
                ));
                None
            }
            Some(Ok(_)) if !config.server.metrics => {
                problems.push(Problem::new(
                    "server.metrics_listen",
                    "serves metrics, but server.metrics is false: drop one of the two",
                ));
                None
            }
            Some(Ok(addr)) => Some(addr),
            Some(Err(_)) => {
                problems.push(Problem::new(
                    "server.metrics_listen",
                    format!(
                        "`{}` is not an address; write IP:PORT, e.g. 127.0.0.1:9465",
                        config.server.metrics_listen.as_deref().unwrap_or_default()
                    ),
                ));
                None
            }
        };
        if let Some(listen) = listen
            && let Err(why) = crate::http::listen_rule(
                listen,
                access.enabled(),
                config.server.tls.is_some(),
                &config.server,
            )
        {
            problems.push(Problem::new("server.listen", why));
        }
        for (i, origin) in config.server.allowed_origins.iter().enumerate() {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                problems.push(Problem::new(
                    format!("server.allowed_origins[{i}]"),
                    format!("`{origin}` is not an origin; write scheme://host[:port], e.g. https://app.example.com"),
                ));
            }
        }

        let mut tools = IndexMap::new();
        let mut warnings = Vec::new();
        if config.tools.is_empty() {
            warnings.push(Problem::new(
                "tools",
                "no tools are defined: clients will see an empty list",
            ));
        }
        let mut seen = HashSet::new();
        let runs_here = config.fleet.is_none();
        for (i, section) in config.tools.into_iter().enumerate() {
            let at = format!("tools[{i}]");
            if !valid_tool_name(&section.name) {
                problems.push(Problem::new(
                    format!("{at}.name"),
                    format!(
                        "`{}` is not a valid tool name: use 1-128 characters of A-Z a-z 0-9 _ . -",
                        section.name
                    ),
                ));
            } else if !seen.insert(section.name.clone()) {
                problems.push(Problem::new(
                    format!("{at}.name"),
                    format!("a tool named `{}` is already defined", section.name),
                ));
            }
            if section.placement.is_some() && config.fleet.is_none() {
                problems.push(Problem::new(
                    format!("{at}.placement"),
                    "placement needs a `fleet` section: without one, every call runs in this process",
                ));
            }
            if let Some(tool) =
                build_tool(section, &at, env, runs_here, &mut problems, &mut warnings)
            {
                tools.insert(tool.name.clone(), Arc::new(tool));
            }
        }
        access.compile_args(&config.roles, &tools, &mut problems);
        let audit = config.server.audit.as_ref().map(|a| {
            let path = base.join(&a.path);
            crate::audit::Settings {
                chain: a
                    .chain
                    .clone()
                    .unwrap_or_else(|| crate::audit::default_chain(&path)),
                path,
                rotate_size: a.rotate_size.map(|b| b.bytes()),
                sync_interval: a.sync_interval.map(|d| d.get()),
            }
        });
        match listen {
            Some(listen) if problems.is_empty() => Ok(Catalog {
                audit,
                global_slots: Arc::new(Semaphore::new(config.server.max_concurrency)),
                server: config.server,
                listen,
                metrics_listen,
                tls,
                access: Arc::new(access),
                warnings,
                fleet,
                tools,
                telemetry: config.telemetry,
            }),
            _ => Err(problems),
        }
    }

    /// The tool named `name`.
    pub fn tool(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.get(name)
    }
}

fn build_fleet(
    section: &crate::config::FleetSection,
    base: &Path,
    env: &HashMap<String, String>,
    problems: &mut Vec<Problem>,
) -> FleetSettings {
    let tls = section.tls.relative_to(base);
    match mcpfier_common::tls::load(&tls) {
        Ok(material) if material.identity.role != Role::Coordinator => problems.push(Problem::new(
            "fleet.tls.cert",
            format!(
                "the certificate is for {}; the coordinator needs a coordinator-role certificate (`mcpfier certs issue --role coordinator ...`)",
                material.identity
            ),
        )),
        Ok(_) => {}
        Err(e) => problems.push(Problem::new("fleet.tls", e.to_string())),
    }
    let mut ids = HashSet::new();
    for (i, agent) in section.agents.iter().enumerate() {
        let at = format!("fleet.agents[{i}]");
        if !mcpfier_common::tls::valid_name(&agent.id) {
            problems.push(Problem::new(
                format!("{at}.id"),
                format!(
                    "`{}` is not a valid agent id: use 1-128 characters of A-Z a-z 0-9 - _ .",
                    agent.id
                ),
            ));
        } else if !ids.insert(agent.id.clone()) {
            problems.push(Problem::new(
                format!("{at}.id"),
                format!("agent `{}` is listed twice", agent.id),
            ));
        }
        let port_ok = agent.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            problems.push(Problem::new(
                format!("{at}.address"),
                format!("`{}` is not host:port, e.g. 10.0.0.5:7443", agent.address),
            ));
        }
    }
    if let Some(etcd) = &section.etcd {
        if etcd.endpoints.is_empty() {
            problems.push(Problem::new(
                "fleet.etcd.endpoints",
                "list at least one, e.g. http://127.0.0.1:2379",
            ));
        }
        if !mcpfier_common::membership::valid_prefix(&etcd.prefix) {
            problems.push(Problem::new(
                "fleet.etcd.prefix",
                format!(
                    "`{}` must be an absolute key prefix such as /mcpfier/prod",
                    etcd.prefix
                ),
            ));
        }
    }
    let etcd = section.etcd.as_ref().map(|etcd| {
        let access = mcpfier_common::membership::Access::from_config(
            etcd.tls.as_ref(),
            etcd.username.as_deref(),
            etcd.password.as_deref(),
            base,
            env,
            Some(&tls.ca),
        )
        .unwrap_or_else(|found| {
            for p in found {
                let (field, message) = p.split_once(": ").unwrap_or(("", &p));
                problems.push(Problem::new(
                    format!("fleet.etcd.{field}"),
                    message.to_owned(),
                ));
            }
            Default::default()
        });
        EtcdSettings {
            endpoints: etcd.endpoints.clone(),
            prefix: etcd.prefix.clone(),
            access,
        }
    });
    if section.health_interval.get().is_zero() {
        problems.push(Problem::new(
            "fleet.health_interval",
            "must be more than zero",
        ));
    }
    if section.connect_timeout.get().is_zero() {
        problems.push(Problem::new(
            "fleet.connect_timeout",
            "must be more than zero",
        ));
    }
    for (i, key) in section.certified_labels.iter().enumerate() {
        if !mcpfier_common::tls::valid_label_part(key) {
            problems.push(Problem::new(
                format!("fleet.certified_labels[{i}]"),
                format!("`{key}` is not a label key: 1-63 characters of A-Z a-z 0-9 - _ ."),
            ));
        }
    }
    if section.accept_timeout.get().is_zero() {
        problems.push(Problem::new(
            "fleet.accept_timeout",
            "must be more than zero",
        ));
    }
    FleetSettings {
        tls,
        agents: section.agents.clone(),
        etcd,
        health_interval: section.health_interval.get(),
        connect_timeout: section.connect_timeout.get(),
        accept_timeout: section.accept_timeout.get(),
        certified_labels: section.certified_labels.clone(),
    }
}

/// The longest `timeout` a tool may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Checks that `program`, a process tool's `command[0]`, is something a call could run: a
/// relative path is an error (it would depend on the directory mcpfier was started from),
/// and, when the tool runs on this host, a program that is not there is a warning (it may
/// be installed later). `path` is the tool's own `PATH` and whether it is a secret.
fn check_program(
    program: &str,
    section: &crate::config::ToolSection,
    path: Option<(&str, bool)>,
    at: &str,
    runs_here: bool,
    problem: &mut dyn FnMut(String, String),
    warnings: &mut Vec<Problem>,
) {
    let at = format!("{at}.command[0]");
    if program.contains('/') && !program.starts_with('/') && section.workdir.is_none() {
        problem(
            at,
            format!(
                "`{program}` is a relative path: it would be found only when mcpfier starts in the right directory; write an absolute path (or set `workdir`, which it is then relative to)"
            ),
        );
        return;
    }
    // On an agent, the program is the agent's business (and its `validate`'s).
    let (path, secret) = path.unwrap_or((mcpfier_exec::DEFAULT_PATH, false));
    if !runs_here || secret {
        return;
    }
    let workdir = section.workdir.as_deref().filter(|d| d.is_dir());
    if mcpfier_exec::process::find_program(program, path, workdir).is_none() {
        warnings.push(Problem::new(
            at,
            if program.contains('/') {
                format!("`{program}` is not an executable file on this host: calls will fail until it is")
            } else {
                format!(
                    "`{program}` is not on the tool's PATH on this host ({path}): calls will fail until it is installed there; an absolute path says which program is meant"
                )
            },
        ));
    }
}

fn build_tool(
    section: crate::config::ToolSection,
    at: &str,
    env: &HashMap<String, String>,
    runs_here: bool,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<Tool> {
    let before = problems.len();
    let signable = signing::definition(&section);
    let definition: Arc<[u8]> = signable.canonical().into();
    let mut problem = |path: String, message: String| problems.push(Problem::new(path, message));

    let mut params: Vec<CompiledParam> = section
        .params
        .iter()
        .map(|(name, spec)| {
            params::compile(name, spec, &format!("{at}.params.{name}"), &mut problem)
        })
        .collect();

    let command = template::compile(&section.command, &section.params, at, &mut problem);
    template::mark_option_positions(&command, &mut params);
    for p in &params {
        if p.option_position && !p.spec.allow_options {
            warnings.push(Problem::new(
                format!("{at}.command"),
                format!(
                    "`{{{{{}}}}}` begins an argument with no `--` before it: values starting with `-` are refused. Put `--` before it if the program takes one, or set params.{}.allow_options: true if options are meant",
                    p.name, p.name
                ),
            ));
        }
    }

    // Environment and secrets.
    let mut env_vars = Vec::new();
    for (name, value) in &section.env {
        let path = format!("{at}.env.{name}");
        if !valid_env_name(name) {
            problem(
                path.clone(),
                "is not a valid variable name (letters, digits and `_`, not starting with a digit)"
                    .into(),
            );
        }
        match mcpfier_common::secret::resolve(value, env) {
            Ok((value, secret)) => env_vars.push(EnvVar {
                name: name.clone(),
                value,
                secret,
            }),
            Err(e) => problem(path, e),
        }
    }

    if let Some(dir) = &section.workdir
        && !dir.is_absolute()
    {
        problem(
            format!("{at}.workdir"),
            format!("`{}` is not an absolute path", dir.display()),
        );
    }
    if section.timeout.get().is_zero() {
        problem(format!("{at}.timeout"), "must be more than zero".into());
    } else if section.timeout.get() > MAX_TIMEOUT {
        problem(
            format!("{at}.timeout"),
            format!(
                "{}h is longer than a call may run (at most {}h); a longer job belongs to a scheduler, with a tool that starts it",
                section.timeout.get().as_secs() / 3600,
                MAX_TIMEOUT.as_secs() / 3600
            ),
        );
    }
    if section.container.is_none()
        && let Some(mcpfier_common::tool::CommandElement::Arg(program)) = section.command.first()
    {
        let path = env_vars
            .iter()
            .rfind(|v| v.name == "PATH")
            .map(|v| (v.value.as_str(), v.secret));
        check_program(
            program,
            &section,
            path,
            at,
            runs_here,
            &mut problem,
            warnings,
        );
    }
    if section.max_output.bytes() == 0 {
        problem(format!("{at}.max_output"), "must be more than zero".into());
    }
    if section.ok_exit_codes.is_empty() {
        problem(
            format!("{at}.ok_exit_codes"),
            "lists no exit code; leave it out for the default [0]".into(),
        );
    }
    for (j, code) in section.ok_exit_codes.iter().enumerate() {
        if !(0..=255).contains(code) {
            problem(
                format!("{at}.ok_exit_codes[{j}]"),
                format!("{code} is not an exit code (0-255)"),
            );
        }
    }
    if let Some(c) = &section.container {
        container::check(c, &format!("{at}.container"), &mut problem);
        for (name, _) in section
            .params
            .iter()
            .filter(|(_, p)| p.kind == ParamType::Path)
        {
            problem(
                format!("{at}.params.{name}.type"),
                "a container tool can't take a `path` parameter: it is resolved on the host, \
                 and the command sees the container's files (use a string with a `pattern`)"
                    .into(),
            );
        }
    }
    let container = signable
        .container
        .as_ref()
        .map(mcpfier_exec::ContainerSpec::from);
    if section.concurrency == Some(0) {
        problem(format!("{at}.concurrency"), "must be at least 1".into());
    }

    if problems.len() > before {
        return None;
    }
    let input_schema = Arc::new(params::input_schema(&params));
    Some(Tool {
        name: section.name,
        title: section.title,
        description: section.description,
        annotations: section.annotations,
        command,
        params,
        env: env_vars,
        workdir: section.workdir,
        timeout: section.timeout.get(),
        max_output: section.max_output.bytes(),
        ok_exit_codes: section.ok_exit_codes,
        slots: section.concurrency.map(|n| Arc::new(Semaphore::new(n))),
        concurrency: section.concurrency,
        input_schema,
        placement: section.placement.map(|p| p.labels).unwrap_or_default(),
        scopes: section.scopes,
        container,
        definition,
        signature: None,
    })
}

#[cfg(test)]
mod tests;
