//! The engine's model: what to run ([`Execution`], [`ContainerSpec`]), what it reports while
//! running ([`Event`]) and what it produced ([`Outcome`]), and the output cap both engines use.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use mcpfier_common::tool::paths::PathArg;

/// The `PATH` a child gets unless the tool sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a process group gets between SIGTERM and SIGKILL after a timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// One environment variable for the child. Secret values never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name, e.g. `LANG`.
    pub name: String,
    /// Its value, already resolved (no `${env:..}` or `${file:..}` left).
    pub value: String,
    /// The value came from a secret reference; it is masked in `Debug` and in error messages.
    pub secret: bool,
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.secret { "***" } else { &self.value };
        write!(f, "{}={value:?}", self.name)
    }
}

/// A fully resolved command: no templates, no secret references, nothing left to decide.
#[derive(Clone, Debug)]
pub struct Execution {
    /// Program and arguments; `argv[0]` is an absolute path or a name looked up on the child's
    /// `PATH`.
    pub argv: Vec<String>,
    /// The values of `path` parameters, resolved by the host that runs the command, which
    /// puts them in `argv` in place of their markers ([`mcpfier_common::tool::paths`]).
    pub paths: Vec<PathArg>,
    /// The program to exec, already resolved and checked (an agent's policy looks `argv[0]` up
    /// and binds the path it allowed, so nothing can swap the program in between); the child
    /// still sees `argv[0]` as given. `None`: `argv[0]` is looked up on the child's `PATH`.
    pub program: Option<PathBuf>,
    /// The child's whole environment; a `PATH` here replaces [`DEFAULT_PATH`].
    pub env: Vec<EnvVar>,
    /// Working directory; `None`: the current directory of the process that runs it.
    pub workdir: Option<PathBuf>,
    /// Longest the command may run; then its process group gets SIGTERM, and SIGKILL after
    /// `kill_grace`.
    pub timeout: Duration,
    /// Bytes kept of stdout, and separately of stderr.
    pub max_output: u64,
    /// Time between SIGTERM and SIGKILL once `timeout` has passed.
    pub kill_grace: Duration,
    /// Run in this container instead of as a local process; `None`: a local process group.
    pub container: Option<ContainerSpec>,
    /// The signed definition this execution was rendered from, with the call's arguments,
    /// for agents that require signed tools; `None`: the tool is not signed. The engine
    /// ignores it.
    pub signed: Option<SignedCall>,
}

/// What lets an agent check an execution for itself: the tool's definition exactly as the
/// operator signed it, the signature, and the call's arguments.
#[derive(Clone, Debug)]
pub struct SignedCall {
    /// The canonical definition, the bytes that were signed.
    pub definition: std::sync::Arc<[u8]>,
    /// The Ed25519 signature over them.
    pub signature: std::sync::Arc<[u8]>,
    /// The call's arguments, a JSON object.
    pub arguments: String,
}

impl Execution {
    /// A local command with the default limits: 60 s timeout, 1 MiB of output per stream,
    /// [`DEFAULT_KILL_GRACE`], no environment beyond `PATH`, no working directory.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Execution {
        Execution {
            argv: argv.into_iter().map(Into::into).collect(),
            paths: vec![],
            program: None,
            env: vec![],
            workdir: None,
            timeout: Duration::from_secs(60),
            max_output: 1 << 20,
            kill_grace: DEFAULT_KILL_GRACE,
            container: None,
            signed: None,
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The child's standard output.
    Stdout,
    /// The child's standard error.
    Stderr,
}

/// A piece of output, sent live while the command runs. Only bytes within the cap are sent.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// The stream the bytes were read from.
    pub stream: Stream,
    /// The bytes as read; not split on lines or UTF-8 boundaries.
    pub data: Vec<u8>,
}

/// What a run reports while it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// The process group exists; `pid` is its leader (and the group id).
    Started {
        /// Host pid of the group leader; 0 for a container call (its pid is not looked up).
        pid: u32,
    },
    /// Output within the cap.
    Output(Chunk),
}

/// What a finished run produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The exit code, or `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Standard output, at most `max_output` bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most `max_output` bytes.
    pub stderr: Vec<u8>,
    /// Standard output went over `max_output` and the rest was dropped.
    pub stdout_truncated: bool,
    /// Standard error went over `max_output` and the rest was dropped.
    pub stderr_truncated: bool,
    /// The timeout ended the run (SIGTERM, then SIGKILL after the grace).
    pub timed_out: bool,
    /// The caller's cancellation ended the run (SIGKILL at once).
    pub cancelled: bool,
    /// Wall time from start until the process (or container) exited.
    pub duration: Duration,
    /// The container's memory limit killed it (container calls only).
    pub oom_killed: bool,
}

impl Outcome {
    /// Whether either stream lost bytes to the cap.
    pub fn truncated(&self) -> bool {
        self.stdout_truncated || self.stderr_truncated
    }
}

/// When the image is pulled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Never pull: a missing image fails the call with
    /// [`ImageMissing`](crate::container::Error::ImageMissing).
    Never,
    /// Pull only when the image is not present locally.
    Missing,
}

/// A host path mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted writable; otherwise read-only.
    pub rw: bool,
}

/// How a container call runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// The image reference, e.g. `localhost/tools:1.2`.
    pub image: String,
    /// Bytes; swap is set equal, so there is none beyond it.
    pub memory: u64,
    /// CPU limit in CPUs, fractions allowed (`0.5`).
    pub cpus: f64,
    /// Most processes the container may have at once.
    pub pids: i64,
    /// `none`, `bridge`, or a named network.
    pub network: String,
    /// Read-only root filesystem, with a writable 64 MiB tmpfs at `/tmp`.
    pub read_only: bool,
    /// `uid:gid` the command runs as inside the container.
    pub user: String,
    /// Host paths mounted into the container.
    pub mounts: Vec<BindMount>,
    /// When the image is pulled if it is not present.
    pub pull: Pull,
}

/// One output stream as kept: at most the cap, and whether anything was dropped.
#[derive(Default)]
pub struct Captured {
    /// The bytes kept, at most the cap.
    pub data: Vec<u8>,
    /// Some bytes were dropped because the cap was reached.
    pub truncated: bool,
}

impl Captured {
    /// Keeps what of `data` still fits under `max` and returns that part; the rest is
    /// dropped and marks the stream truncated.
    pub fn take<'a>(&mut self, data: &'a [u8], max: u64) -> &'a [u8] {
        let room = max.saturating_sub(self.data.len() as u64) as usize;
        let keep = data.len().min(room);
        if keep < data.len() {
            self.truncated = true;
        }
        self.data.extend_from_slice(&data[..keep]);
        &data[..keep]
    }
}

impl From<&mcpfier_common::tool::signed::ContainerDefinition> for ContainerSpec {
    /// The spec a signed container section asks for.
    fn from(c: &mcpfier_common::tool::signed::ContainerDefinition) -> Self {
        ContainerSpec {
            image: c.image.clone(),
            memory: c.memory,
            cpus: c.cpus,
            pids: c.pids,
            network: c.network.clone(),
            read_only: c.read_only,
            user: c.user.clone(),
            mounts: c
                .mounts
                .iter()
                .map(|m| BindMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    rw: m.rw,
                })
                .collect(),
            pull: if c.pull_never {
                Pull::Never
            } else {
                Pull::Missing
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_show_in_debug() {
        let v = EnvVar {
            name: "TOKEN".into(),
            value: "hunter2".into(),
            secret: true,
        };
        assert_eq!(format!("{v:?}"), "TOKEN=\"***\"");
    }
}
