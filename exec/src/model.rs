//! The engine's model: what to run ([`Execution`], [`ContainerSpec`]), what it reports while
//! running ([`Event`]) and what it produced ([`Outcome`]), and the output cap both engines use.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The `PATH` a child gets unless the tool sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a process group gets between SIGTERM and SIGKILL after a timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// One environment variable for the child. Secret values never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
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
    pub env: Vec<EnvVar>,
    pub workdir: Option<PathBuf>,
    pub timeout: Duration,
    /// Bytes kept of stdout, and separately of stderr.
    pub max_output: u64,
    pub kill_grace: Duration,
    /// Run in this container instead of as a local process.
    pub container: Option<ContainerSpec>,
}

impl Execution {
    /// A local command with the default limits: 60 s timeout, 1 MiB of output per stream,
    /// [`DEFAULT_KILL_GRACE`], no environment beyond `PATH`, no working directory.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Execution {
        Execution {
            argv: argv.into_iter().map(Into::into).collect(),
            env: vec![],
            workdir: None,
            timeout: Duration::from_secs(60),
            max_output: 1 << 20,
            kill_grace: DEFAULT_KILL_GRACE,
            container: None,
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A piece of output, sent live while the command runs. Only bytes within the cap are sent.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// What a run reports while it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// The process group exists; `pid` is its leader (and the group id).
    Started { pid: u32 },
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
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
    pub cancelled: bool,
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
    Never,
    Missing,
}

/// A host path mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub rw: bool,
}

/// How a container call runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// Bytes; swap is set equal, so there is none beyond it.
    pub memory: u64,
    pub cpus: f64,
    pub pids: i64,
    /// `none`, `bridge`, or a named network.
    pub network: String,
    pub read_only: bool,
    pub user: String,
    pub mounts: Vec<BindMount>,
    pub pull: Pull,
}

/// One output stream as kept: at most the cap, and whether anything was dropped.
#[derive(Default)]
pub struct Captured {
    pub data: Vec<u8>,
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
