//! The agent's own limits: what a coordinator may make it run, whatever the coordinator's
//! config says (defence in depth). Every field of an execution is checked here before
//! anything runs: the tool, the program, the environment, the working directory, the
//! timeout and kill grace, the output cap, and for containers the image, limits, mounts,
//! network, user and root filesystem.
//!
//! Invariant: [`Policy::admit`] is the only way from a request to an [`Execution`] the agent
//! runs, and it binds what it checked: the program path it allowed, and the canonical working
//! directory and mount sources, so a symlink or a `PATH` entry changed afterwards can't swap
//! them.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcpfier_common::glob::Globs;
use mcpfier_common::tool::signed::{EnvValue, Unverified, Verifier};
use mcpfier_common::{ByteSize, HumanDuration};
use mcpfier_exec::{ContainerSpec, DEFAULT_PATH, ErrorKind, Execution};
use schemars::JsonSchema;
use serde::Deserialize;

/// Environment variables refused by default: the dynamic loader's (`LD_*` on Linux, `DYLD_*`
/// on macOS) and the other variables glibc drops for set-uid programs because they make a
/// program load or read files it did not choose.
pub const DEFAULT_DENY_ENV: &[&str] = &[
    "LD_*",
    "DYLD_*",
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_*",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
];

/// The `policy` section of `agent.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tool names this agent runs: globs with `*` (any run of characters) and `?` (one).
    #[serde(default = "Globs::any")]
    pub allow_tools: Globs,
    /// Whether local processes may run (default true).
    #[serde(default = "yes")]
    pub allow_local: bool,
    /// Programs local processes may run: globs on the program's path after it is looked up
    /// on the child's `PATH`, e.g. `["/usr/bin/*", "/opt/tools/bin/*"]` (default `["*"]`).
    /// Symlinks are not resolved, so list only directories calls can't write to.
    #[serde(default = "Globs::any")]
    pub allow_programs: Globs,
    /// Environment variable names a call may not set: globs (default: the loader variables
    /// in [`DEFAULT_DENY_ENV`]). Setting this replaces the default list.
    #[serde(default = "default_deny_env")]
    pub deny_env: Globs,
    /// Directories local processes may run in: a call's working directory must be one of
    /// these or below one, after symlinks are resolved (default `["/"]`). A call without a
    /// working directory runs in the agent's own.
    #[serde(default = "default_allow_workdirs")]
    pub allow_workdirs: Vec<PathBuf>,
    /// Longest timeout a call may ask for (default 10m).
    #[serde(default = "default_max_timeout")]
    pub max_timeout: HumanDuration,
    /// Longest time between SIGTERM and SIGKILL a call may ask for (default 10s), so that
    /// `max_timeout` plus this bounds the whole run.
    #[serde(default = "default_max_kill_grace")]
    pub max_kill_grace: HumanDuration,
    /// Largest output cap a call may ask for, per stream (default 16MiB).
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
    /// Whether container calls may run (default true; needs a Docker daemon).
    #[serde(default = "yes")]
    pub allow_containers: bool,
    /// Images container calls may use: globs (default `["*"]`).
    #[serde(default = "Globs::any")]
    pub allow_images: Globs,
    /// Most memory a container call may ask for (default 4GiB).
    #[serde(default = "default_max_memory")]
    pub max_memory: ByteSize,
    /// Most CPUs a container call may ask for (default 4).
    #[serde(default = "default_max_cpus")]
    pub max_cpus: f64,
    /// Most processes a container call may ask for (default 4096).
    #[serde(default = "default_max_pids")]
    pub max_pids: i64,
    /// Host directories container calls may bind-mount: a mount's source must be one of
    /// these or below one, after symlinks are resolved (default none).
    #[serde(default)]
    pub allow_mounts: Vec<MountRule>,
    /// Docker networks container calls may use (default `["none"]`: no network at all).
    /// `host` gives the container the host's network; allow it only on purpose.
    #[serde(default = "default_allow_networks")]
    pub allow_networks: Vec<String>,
    /// Whether a container may run as root, uid or gid 0 (default false). Without it the
    /// user must be a numeric `uid:gid`, since a name could map to root inside the image.
    #[serde(default)]
    pub allow_root: bool,
    /// Whether a container may have a writable root filesystem (default false).
    #[serde(default)]
    pub allow_writable_root: bool,
    /// Public keys (PEM, as `mcpfier catalog keygen` writes the `.pub`) whose tool signatures
    /// this agent trusts; relative paths are read from the config file's directory. When any
    /// is listed, the agent runs only signed tools: it verifies the definition each call
    /// carries, checks the arguments against the signed rules, renders the argv itself, and
    /// refuses a call that differs from the definition in anything else (environment names
    /// and literal values, working directory, timeout, output cap, container). Default: none
    /// (signatures are not checked).
    #[serde(default)]
    pub tool_signers: Vec<PathBuf>,
    /// The keys of `tool_signers`, loaded with the config, and the definitions verified so far.
    #[serde(skip)]
    #[schemars(skip)]
    pub signers: Arc<Verifier>,
}

/// One entry of `allow_mounts`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountRule {
    /// An absolute host directory; mounts of it or of anything below it are allowed.
    pub source: PathBuf,
    /// Whether such mounts may be writable (default false: read-only only).
    #[serde(default)]
    pub rw: bool,
}

fn default_deny_env() -> Globs {
    Globs::new(DEFAULT_DENY_ENV).expect("the default deny_env globs are valid")
}
fn default_allow_workdirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/")]
}
fn default_allow_networks() -> Vec<String> {
    vec!["none".into()]
}
fn default_max_memory() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_max_cpus() -> f64 {
    4.0
}
fn default_max_pids() -> i64 {
    4096
}
fn yes() -> bool {
    true
}
fn default_max_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_max_kill_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_output() -> ByteSize {
    ByteSize(16 << 20)
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_tools: Globs::any(),
            allow_local: true,
            allow_programs: Globs::any(),
            deny_env: default_deny_env(),
            allow_workdirs: default_allow_workdirs(),
            max_timeout: default_max_timeout(),
            max_kill_grace: default_max_kill_grace(),
            max_output: default_max_output(),
            allow_containers: true,
            allow_images: Globs::any(),
            max_memory: default_max_memory(),
            max_cpus: default_max_cpus(),
            max_pids: default_max_pids(),
            allow_mounts: vec![],
            allow_networks: default_allow_networks(),
            allow_root: false,
            allow_writable_root: false,
            tool_signers: vec![],
            signers: Arc::default(),
        }
    }
}

/// Why the policy refused a call. Nothing has run when a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The tool's name matches none of `allow_tools`.
    #[error("tool `{tool}` is not in this agent's allow_tools ({allowed})")]
    Tool {
        /// The tool the call is for.
        tool: String,
        /// The `allow_tools` globs, as written.
        allowed: String,
    },
    /// A local-process call, and `allow_local` is false.
    #[error("this agent does not run local processes (allow_local: false)")]
    Local,
    /// `argv[0]` is a relative path with a `/`, or has `..` in it.
    #[error(
        "program `{0}` must be an absolute path without `..`, or a bare name looked up on PATH"
    )]
    ProgramPath(String),
    /// `argv[0]` is a bare name found in no absolute directory of the child's `PATH`.
    #[error("program `{program}` is not on the child's PATH ({path})")]
    ProgramNotFound {
        /// `argv[0]` as given.
        program: String,
        /// The `PATH` searched, or a placeholder when it is a secret.
        path: String,
    },
    /// The program's path matches none of `allow_programs`.
    #[error("program {resolved} is not in this agent's allow_programs ({allowed})")]
    Program {
        /// The path the program was found at.
        resolved: String,
        /// The `allow_programs` globs, as written.
        allowed: String,
    },
    /// An environment variable's name matches `deny_env`.
    #[error("environment variable {name} is refused by this agent's deny_env ({denied})")]
    Env {
        /// The variable's name (never its value).
        name: String,
        /// The `deny_env` globs, as written.
        denied: String,
    },
    /// The working directory is not absolute, or is not below any of `allow_workdirs`.
    #[error("working directory {dir} is not in this agent's allow_workdirs ({allowed})")]
    Workdir {
        /// The directory as asked for, and where its symlinks lead when that differs.
        dir: String,
        /// The `allow_workdirs` entries.
        allowed: String,
    },
    /// The working directory does not exist.
    #[error("working directory {0} does not exist or is not a directory")]
    WorkdirMissing(String),
    /// The call's timeout is longer than `max_timeout`.
    #[error("the call asks for a {asked} timeout; this agent allows at most {max} (max_timeout)")]
    Timeout {
        /// The call's timeout, e.g. `20m`.
        asked: String,
        /// `max_timeout`, e.g. `10m`.
        max: String,
    },
    /// The call's kill grace is longer than `max_kill_grace`.
    #[error(
        "the call asks for a {asked} kill grace; this agent allows at most {max} (max_kill_grace)"
    )]
    KillGrace {
        /// The call's grace, e.g. `1h`.
        asked: String,
        /// `max_kill_grace`, e.g. `10s`.
        max: String,
    },
    /// The call's output cap is larger than `max_output`.
    #[error(
        "the call asks to keep {asked} of output; this agent allows at most {max} (max_output)"
    )]
    Output {
        /// The call's cap per stream, e.g. `32MiB`.
        asked: String,
        /// `max_output`, e.g. `16MiB`.
        max: String,
    },
    /// A container call, and `allow_containers` is false.
    #[error("this agent does not run containers (allow_containers: false)")]
    Containers,
    /// The container's image matches none of `allow_images`.
    #[error("image `{image}` is not in this agent's allow_images ({allowed})")]
    Image {
        /// The image the call asks for.
        image: String,
        /// The `allow_images` globs, as written.
        allowed: String,
    },
    /// The container asks for more memory, CPUs or processes than `max_memory`, `max_cpus` or
    /// `max_pids` allow.
    #[error("the container asks for {what} {asked}; this agent allows at most {max}")]
    Limit {
        /// The limit exceeded: `memory`, `cpus` or `pids`.
        what: &'static str,
        /// What the call asks for, e.g. `8GiB`.
        asked: String,
        /// The agent's maximum and the setting that sets it, e.g. `4GiB (max_memory)`.
        max: String,
    },
    /// A bind mount whose source is not below any of `allow_mounts` (or is writable where
    /// only read-only mounts are allowed).
    #[error("{what} of {path} is not allowed by this agent's allow_mounts ({allowed})")]
    Mount {
        /// `bind mount` or `writable bind mount`.
        what: &'static str,
        /// The host path as asked for, and where its symlinks lead when that differs.
        path: String,
        /// The `allow_mounts` entries, or `none`.
        allowed: String,
    },
    /// A bind mount's source does not exist on this host.
    #[error("bind mount source {0} does not exist on this agent")]
    MountMissing(String),
    /// The container's network is not in `allow_networks`.
    #[error("network `{network}` is not in this agent's allow_networks ({allowed})")]
    Network {
        /// The network the call asks for.
        network: String,
        /// The `allow_networks` entries.
        allowed: String,
    },
    /// The container would run as root, or as a user that can't be checked.
    #[error("container user `{user}`: {why}")]
    User {
        /// The user as asked for.
        user: String,
        /// What is wrong and what to do.
        why: &'static str,
    },
    /// A writable root filesystem, and `allow_writable_root` is false.
    #[error(
        "the container asks for a writable root filesystem; this agent allows only read-only ones (allow_writable_root: false)"
    )]
    WritableRoot,
    /// Signed tools are required, and the call carries no signature.
    #[error(
        "tool `{0}` comes without a signature, and this agent runs only signed tools (policy.tool_signers): sign the catalog with `mcpfier catalog sign` and restart the coordinator"
    )]
    Unsigned(String),
    /// The signature or the signed definition does not check out.
    #[error("{0}")]
    Unverified(#[from] Unverified),
    /// The arguments break the signed rules.
    #[error("the arguments of tool `{tool}` break its signed rules: {problems}")]
    SignedArgs {
        /// The tool the call is for.
        tool: String,
        /// Each broken rule.
        problems: String,
    },
    /// A field of the call differs from the signed definition.
    #[error("the call of tool `{tool}` differs from its signed definition in {field}")]
    NotAsSigned {
        /// The tool the call is for.
        tool: String,
        /// Which field, e.g. `argv` or `env.TOKEN` (never a value).
        field: String,
    },
}

impl Refusal {
    /// The metrics label for it: which rule refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Tool { .. } => "tool",
            Refusal::Local => "local",
            Refusal::ProgramPath(_) => "program_path",
            Refusal::ProgramNotFound { .. } => "program_not_found",
            Refusal::Program { .. } => "program",
            Refusal::Env { .. } => "env",
            Refusal::Workdir { .. } => "workdir",
            Refusal::WorkdirMissing(_) => "workdir_missing",
            Refusal::Timeout { .. } => "timeout",
            Refusal::KillGrace { .. } => "kill_grace",
            Refusal::Output { .. } => "output",
            Refusal::Containers => "containers",
            Refusal::Image { .. } => "image",
            Refusal::Limit { .. } => "limit",
            Refusal::Mount { .. } => "mount",
            Refusal::MountMissing(_) => "mount_missing",
            Refusal::Network { .. } => "network",
            Refusal::User { .. } => "user",
            Refusal::WritableRoot => "writable_root",
            Refusal::Unsigned(_) => "unsigned",
            Refusal::Unverified(_) => "unverified",
            Refusal::SignedArgs { .. } => "signed_args",
            Refusal::NotAsSigned { .. } => "not_as_signed",
        }
    }

    /// The error table's kind: a missing program or directory is a start failure (the call
    /// can't run here), everything else is `policy`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::ProgramNotFound { .. }
            | Refusal::WorkdirMissing(_)
            | Refusal::MountMissing(_) => ErrorKind::StartFailed,
            Refusal::ProgramPath(_) => ErrorKind::Invalid,
            _ => ErrorKind::Policy,
        }
    }
}

impl Policy {
    /// Problems with the policy itself, each as `policy.FIELD: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_timeout.get().is_zero() {
            problems.push("policy.max_timeout: must be more than zero".into());
        }
        for (i, dir) in self.allow_workdirs.iter().enumerate() {
            if !clean_absolute(dir) {
                problems.push(format!(
                    "policy.allow_workdirs[{i}]: `{}` must be an absolute path without `..`",
                    dir.display()
                ));
            }
        }
        for (i, m) in self.allow_mounts.iter().enumerate() {
            if !clean_absolute(&m.source) {
                problems.push(format!(
                    "policy.allow_mounts[{i}].source: `{}` must be an absolute path without `..`",
                    m.source.display()
                ));
            }
        }
        problems
    }

    /// Checks every field of `exec`, a call for `tool`, and returns it bound to what was
    /// checked: the program path found on `PATH`, the working directory and mount sources
    /// with their symlinks resolved.
    pub fn admit(&self, tool: &str, mut exec: Execution) -> Result<Execution, Refusal> {
        if !self.allow_tools.is_match(tool) {
            return Err(Refusal::Tool {
                tool: tool.to_owned(),
                allowed: self.allow_tools.to_string(),
            });
        }
        if self.signers.required() {
            self.admit_signed(tool, &exec)?;
        }
        if let Some(var) = exec.env.iter().find(|v| self.deny_env.is_match(&v.name)) {
            return Err(Refusal::Env {
                name: var.name.clone(),
                denied: self.deny_env.to_string(),
            });
        }
        if exec.timeout > self.max_timeout.get() {
            return Err(Refusal::Timeout {
                asked: humantime::format_duration(exec.timeout).to_string(),
                max: self.max_timeout.to_string(),
            });
        }
        if exec.kill_grace > self.max_kill_grace.get() {
            return Err(Refusal::KillGrace {
                asked: humantime::format_duration(exec.kill_grace).to_string(),
                max: self.max_kill_grace.to_string(),
            });
        }
        if exec.max_output > self.max_output.bytes() {
            return Err(Refusal::Output {
                asked: ByteSize(exec.max_output).to_string(),
                max: self.max_output.to_string(),
            });
        }
        match exec.container.take() {
            Some(spec) => exec.container = Some(self.admit_container(spec)?),
            None => {
                if !self.allow_local {
                    return Err(Refusal::Local);
                }
                exec.program = Some(self.admit_program(&exec)?);
                if let Some(dir) = exec.workdir.take() {
                    exec.workdir = Some(self.admit_workdir(&dir)?);
                }
            }
        }
        Ok(exec)
    }

    fn admit_program(&self, exec: &Execution) -> Result<PathBuf, Refusal> {
        let program = &exec.argv[0];
        let resolved = if program.contains('/') {
            let path = PathBuf::from(program);
            if !clean_absolute(&path) {
                return Err(Refusal::ProgramPath(program.clone()));
            }
            path
        } else {
            let path_var = exec.env.iter().find(|v| v.name == "PATH");
            let path = path_var.map_or(DEFAULT_PATH, |v| v.value.as_str());
            lookup(program, path).ok_or_else(|| Refusal::ProgramNotFound {
                program: program.clone(),
                path: match path_var {
                    Some(v) if v.secret => "the tool's PATH, a secret".into(),
                    _ => path.to_owned(),
                },
            })?
        };
        let shown = normalized(&resolved);
        if !self.allow_programs.is_match(&shown) {
            return Err(Refusal::Program {
                resolved: shown,
                allowed: self.allow_programs.to_string(),
            });
        }
        Ok(resolved)
    }

    fn admit_workdir(&self, dir: &Path) -> Result<PathBuf, Refusal> {
        let allowed = || {
            self.allow_workdirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !dir.is_absolute() {
            return Err(Refusal::Workdir {
                dir: dir.display().to_string(),
                allowed: allowed(),
            });
        }
        let real = std::fs::canonicalize(dir)
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| Refusal::WorkdirMissing(dir.display().to_string()))?;
        if !self.allow_workdirs.iter().any(|d| real.starts_with(d)) {
            return Err(Refusal::Workdir {
                dir: shown_with_target(dir, &real),
                allowed: allowed(),
            });
        }
        Ok(real)
    }

    /// Checks `exec` against the signed definition it carries: the signature, the arguments
    /// against the signed rules, the argv as rendered here, and every other field the
    /// definition fixes. Secret values are taken as sent, for the names declared secret.
    fn admit_signed(&self, tool: &str, exec: &Execution) -> Result<(), Refusal> {
        let Some(signed) = &exec.signed else {
            return Err(Refusal::Unsigned(tool.to_owned()));
        };
        let compiled = self
            .signers
            .verify(tool, &signed.definition, &signed.signature)?;
        let broken = |problems: String| Refusal::SignedArgs {
            tool: tool.to_owned(),
            problems,
        };
        let args: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&signed.arguments)
                .map_err(|e| broken(format!("the arguments are not a JSON object ({e})")))?;
        let (argv, paths) = compiled.render(Some(&args)).map_err(|errors| {
            let list: Vec<_> = errors.iter().map(ToString::to_string).collect();
            broken(list.join("; "))
        })?;
        let differs = |field: String| {
            Err(Refusal::NotAsSigned {
                tool: tool.to_owned(),
                field,
            })
        };
        let d = &compiled.definition;
        if argv != exec.argv {
            return differs("argv".into());
        }
        if paths != exec.paths {
            return differs("paths".into());
        }
        for var in &exec.env {
            match d.env.get(&var.name) {
                Some(EnvValue::Secret(_)) => {}
                Some(EnvValue::Literal(value)) if *value == var.value && !var.secret => {}
                _ => return differs(format!("env.{}", var.name)),
            }
        }
        if let Some(name) = d
            .env
            .keys()
            .find(|n| !exec.env.iter().any(|v| &v.name == *n))
        {
            return differs(format!("env.{name} (missing)"));
        }
        if d.workdir.as_deref().map(Path::new) != exec.workdir.as_deref() {
            return differs("workdir".into());
        }
        if u128::from(d.timeout_ms) != exec.timeout.as_millis() {
            return differs("timeout".into());
        }
        if d.max_output != exec.max_output {
            return differs("max_output".into());
        }
        if d.container.as_ref().map(ContainerSpec::from) != exec.container {
            return differs("container".into());
        }
        Ok(())
    }

    fn admit_container(&self, mut spec: ContainerSpec) -> Result<ContainerSpec, Refusal> {
        if !self.allow_containers {
            return Err(Refusal::Containers);
        }
        if !self.allow_images.is_match(&spec.image) {
            return Err(Refusal::Image {
                image: spec.image.clone(),
                allowed: self.allow_images.to_string(),
            });
        }
        if spec.memory > self.max_memory.bytes() {
            return Err(Refusal::Limit {
                what: "memory",
                asked: ByteSize(spec.memory).to_string(),
                max: format!("{} (max_memory)", self.max_memory),
            });
        }
        if spec.cpus > self.max_cpus {
            return Err(Refusal::Limit {
                what: "cpus",
                asked: spec.cpus.to_string(),
                max: format!("{} (max_cpus)", self.max_cpus),
            });
        }
        if spec.pids > self.max_pids {
            return Err(Refusal::Limit {
                what: "pids",
                asked: spec.pids.to_string(),
                max: format!("{} (max_pids)", self.max_pids),
            });
        }
        if !self.allow_networks.contains(&spec.network) {
            return Err(Refusal::Network {
                network: spec.network.clone(),
                allowed: self.allow_networks.join(", "),
            });
        }
        if !self.allow_root {
            check_user(&spec.user)?;
        }
        if !spec.read_only && !self.allow_writable_root {
            return Err(Refusal::WritableRoot);
        }
        for m in &mut spec.mounts {
            m.source = self.admit_mount(&m.source, m.rw)?;
        }
        Ok(spec)
    }

    fn admit_mount(&self, source: &str, rw: bool) -> Result<String, Refusal> {
        let what = if rw {
            "writable bind mount"
        } else {
            "bind mount"
        };
        let allowed = || {
            if self.allow_mounts.is_empty() {
                return "none".to_owned();
            }
            self.allow_mounts
                .iter()
                .map(|m| format!("{}{}", m.source.display(), if m.rw { " rw" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = Path::new(source);
        if !path.is_absolute() {
            return Err(Refusal::Mount {
                what,
                path: source.to_owned(),
                allowed: allowed(),
            });
        }
        let real =
            std::fs::canonicalize(path).map_err(|_| Refusal::MountMissing(source.to_owned()))?;
        let fits = self
            .allow_mounts
            .iter()
            .any(|m| real.starts_with(&m.source) && (m.rw || !rw));
        if !fits {
            return Err(Refusal::Mount {
                what,
                path: shown_with_target(path, &real),
                allowed: allowed(),
            });
        }
        Ok(real.display().to_string())
    }
}

/// Checks a container user when root is not allowed: numeric `uid[:gid]`, neither 0.
fn check_user(user: &str) -> Result<(), Refusal> {
    let refuse = |why| {
        Err(Refusal::User {
            user: user.to_owned(),
            why,
        })
    };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    match (numeric(uid), gid.map(numeric)) {
        (None, _) | (_, Some(None)) => refuse(
            "write it as a numeric uid:gid such as 65534:65534; a name could be root inside the image (allow_root: false)",
        ),
        (Some(0), _) | (_, Some(Some(0))) => {
            refuse("root (uid or gid 0) is not allowed on this agent (allow_root: false)")
        }
        _ => Ok(()),
    }
}

/// Whether `p` is absolute and has no `..` (`.` and doubled slashes are harmless).
fn clean_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

/// `p` with `.` and doubled slashes removed, as the globs see it.
fn normalized(p: &Path) -> String {
    p.components().collect::<PathBuf>().display().to_string()
}

fn shown_with_target(asked: &Path, real: &Path) -> String {
    if normalized(asked) == real.display().to_string() {
        real.display().to_string()
    } else {
        format!("{} (-> {})", asked.display(), real.display())
    }
}

/// The first executable file named `name` in an absolute directory of `path`, as `execvp`
/// would find it (relative entries are skipped: they would depend on the working directory).
fn lookup(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|dir| {
            dir.starts_with('/')
                && !Path::new(dir)
                    .components()
                    .any(|c| c == Component::ParentDir)
        })
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests;
