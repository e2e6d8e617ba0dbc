//! Processes of ours: a temp dir per test, a process with its log file stopped on drop,
//! running the CLI to completion, polling under a deadline, and checking pids are gone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::build::mcpfier;

/// A temp dir for one test, with helpers to write files into it.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// A new temp dir, removed when this is dropped.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("mcpfier-test-")
                .tempdir()
                .expect("create a temp dir"),
        }
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` in the dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    /// Replaces `@DIR@` in a config with this dir, and writes it as `mcpfier.yaml`.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let yaml = yaml.replace("@DIR@", &self.path().display().to_string());
        self.write("mcpfier.yaml", &yaml)
    }
}

/// Runs `cmd` with `input` on stdin; fails after `limit`.
pub(crate) fn run_with_deadline(
    mut cmd: Command,
    input: &str,
    limit: Duration,
) -> anyhow::Result<(i32, String, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the process")?;
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .context("write stdin")?;
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            bail!("still running after {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status.code().unwrap_or(-1), out, err))
}

/// Runs the `mcpfier` CLI to completion: (exit code, stdout, stderr).
pub fn mcpfier_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(mcpfier());
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(cmd, "", Duration::from_secs(60)).expect("run mcpfier")
}

/// A process of ours with its log file, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Process {
    child: Child,
    /// Its log file (its stderr).
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stderr to a new log file next to `near`, named after `name`.
    pub fn start(mut cmd: Command, near: &Path, name: &str) -> Process {
        let log = near.with_file_name(format!(
            "{name}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let log_file = std::fs::File::create(&log).expect("create a process log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process { child, log }
    }

    /// Its pid (also its process group id when it leads one).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `marker` and returns what follows it on that line.
    pub fn wait_for_log(&self, marker: &str, limit: Duration) -> String {
        let found = wait_for(limit, || {
            let text = self.log_text();
            let at = text.find(marker)? + marker.len();
            let rest = &text[at..];
            Some(rest[..rest.find('\n').unwrap_or(rest.len())].to_owned())
        });
        found.unwrap_or_else(|| {
            panic!(
                "no `{marker}` in the log within {limit:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let exited = wait_for(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        match exited {
            Some(status) => status.code(),
            None => {
                self.kill9();
                None
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Polls `check` until it gives a value or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(mcpfier_exec::cgroup::process_alive)
}

/// Reads the whitespace-separated pids a test command wrote to `path`.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The lines of a ledger file that test commands append to.
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until every pid is gone; panics naming the survivors.
pub fn assert_all_gone(pids: &[i32], limit: Duration) {
    assert!(!pids.is_empty(), "no pids to check");
    let gone = wait_for(limit, || pids.iter().all(|p| !alive(*p)).then_some(()));
    if gone.is_none() {
        let survivors: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
        for p in &survivors {
            let _ = kill(Pid::from_raw(**p), Signal::SIGKILL);
        }
        panic!("processes survived: {survivors:?}");
    }
}

/// A new API key for `id` with `roles` (comma-separated), from `mcpfier keys new`, and the
/// `server.auth.api_keys` line it prints (which must not hold the key itself).
pub fn new_key(id: &str, roles: &str) -> (String, String) {
    let (code, key, line) = mcpfier_cli(&["keys", "new", "--id", id, "--roles", roles], &[]);
    assert_eq!(code, 0, "{line}");
    let key = key.trim().to_owned();
    let line = line
        .lines()
        .find(|l| l.trim_start().starts_with("- {"))
        .expect("keys new prints the config line")
        .trim()
        .to_owned();
    assert!(
        !line.contains(&key),
        "the config line holds the key itself: {line}"
    );
    (key, line)
}
