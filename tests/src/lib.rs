//! The harness for mcpfier's integration tests: builds and starts the real binaries, drives
//! them with the official MCP Python SDK (`tests/py/mcp_driver.py`), and cleans up after
//! itself (SIGTERM, then SIGKILL, on drop).
//!
//! Each test gets its own temp dir, its own port (the coordinator binds port 0 and the harness
//! reads the bound address from its log), and a log file per process.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The Python package the tests drive mcpfier with.
pub const MCP_PYPI_PIN: &str = "mcp==2.3.0";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn build_binaries() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let args = [
            "build",
            "--quiet",
            "-p",
            "mcpfier-coordinator",
            "-p",
            "mcpfier-agent",
            "--bins",
        ];
        let status = Command::new(cargo)
            .args(args)
            .current_dir(workspace())
            .status()
            .expect("run cargo build for the mcpfier binaries");
        assert!(
            status.success(),
            "cargo build of the mcpfier binaries failed"
        );
        target_dir().join("debug")
    })
}

/// The `mcpfier` binary, built (once per test run) from this checkout.
pub fn mcpfier() -> PathBuf {
    build_binaries().join("mcpfier")
}

/// The `mcpfier-agent` binary, built with `mcpfier`.
pub fn mcpfier_agent() -> PathBuf {
    build_binaries().join("mcpfier-agent")
}

/// The Python interpreter of the venv that has the official MCP SDK.
pub fn python() -> PathBuf {
    let python = std::env::var_os("MCPFIER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("mcp-venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with the MCP SDK at {}: run `cargo xtask test`, which creates it \
         (or: python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install {MCP_PYPI_PIN})",
        python.display()
    );
    python
}

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
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("mcpfier-test-")
                .tempdir()
                .expect("create a temp dir"),
        }
    }

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
fn run_with_deadline(
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

fn driver_results(code: i32, out: &str, err: &str) -> Vec<Value> {
    assert_eq!(
        code, 0,
        "the MCP driver failed:\nstdout: {out}\nstderr: {err}"
    );
    match serde_json::from_str(out.trim()) {
        Ok(Value::Array(items)) => items,
        other => panic!("driver printed no result array: {other:?}\nstdout: {out}\nstderr: {err}"),
    }
}

/// What a stdio session printed to stderr (mcpfier's logs), with the results.
pub struct StdioRun {
    pub results: Vec<Value>,
    pub stderr: String,
}

/// Starts `mcpfier --config CONFIG stdio` from the Python SDK's stdio client, runs `ops`
/// (see `tests/py/mcp_driver.py`) and returns one result per op. `env` is what mcpfier's
/// own environment gets on top of the SDK's default one.
pub fn drive_stdio(
    config: &Path,
    env: &[(&str, &str)],
    extra_args: &[&str],
    ops: Value,
) -> StdioRun {
    let env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/py/mcp_driver.py"))
        .args(["stdio", "--"])
        .arg(mcpfier())
        .arg("--config")
        .arg(config)
        .args(extra_args)
        .arg("stdio")
        .env("MCP_DRIVER_SERVER_ENV", Value::Object(env).to_string());
    let (code, out, err) = run_with_deadline(cmd, &ops.to_string(), Duration::from_secs(90))
        .expect("run the MCP driver");
    StdioRun {
        results: driver_results(code, &out, &err),
        stderr: err,
    }
}

/// Runs `ops` against a Streamable HTTP endpoint with the Python SDK.
pub fn drive_http(url: &str, ops: Value) -> Vec<Value> {
    let (code, out, err) = drive_http_raw(url, ops);
    driver_results(code, &out, &err)
}

/// Like [`drive_http`], returning the driver's exit code, stdout and stderr as they are (for
/// tests where the server goes away mid-call).
pub fn drive_http_raw(url: &str, ops: Value) -> (i32, String, String) {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/py/mcp_driver.py"))
        .args(["http", url]);
    run_with_deadline(cmd, &ops.to_string(), Duration::from_secs(90)).expect("run the MCP driver")
}

/// The text blocks of a driver's call result, joined by newlines.
pub fn result_text(result: &Value) -> String {
    result["text"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

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

/// A running `mcpfier serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Coordinator {
    pub process: Process,
    pub addr: String,
    pub log: PathBuf,
}

impl Coordinator {
    /// Starts `mcpfier serve` on a free loopback port and waits until `/healthz` answers.
    pub fn start(config: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> Coordinator {
        let mut cmd = Command::new(mcpfier());
        cmd.arg("--config")
            .arg(config)
            .args(extra_args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Process::start(cmd, config, "coordinator");
        let rest = process.wait_for_log("serving MCP at http://", Duration::from_secs(30));
        let addr = rest[..rest.find("/mcp").expect("the log line names /mcp")].to_owned();
        let healthy = wait_for(Duration::from_secs(10), || {
            (http_request(&addr, "GET", "/healthz", &[], "").ok()?.0 == 200).then_some(())
        });
        assert!(healthy.is_some(), "mcpfier serve did not answer /healthz");
        let log = process.log.clone();
        Coordinator { process, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.process.stop()
    }
}

/// A certificate directory made with `mcpfier certs`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Creates a CA in `dir`.
    pub fn init(dir: &Path) -> Certs {
        let (code, out, err) = mcpfier_cli(&["certs", "init", "--dir", dir.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "certs init failed: {out}{err}");
        Certs {
            dir: dir.to_owned(),
        }
    }

    /// Issues `name.pem`/`name.key` for `role` (`agent` or `coordinator`).
    pub fn issue(&self, role: &str, name: &str) {
        let dir = self.dir.to_str().unwrap();
        let args = [
            "certs",
            "issue",
            "--dir",
            dir,
            "--role",
            role,
            "--name",
            name,
            "--san",
            "127.0.0.1",
        ];
        let (code, out, err) = mcpfier_cli(&args, &[]);
        assert_eq!(code, 0, "certs issue failed: {out}{err}");
    }

    /// The YAML `tls:` value for `name`'s files.
    pub fn tls_yaml(&self, name: &str) -> String {
        let d = self.dir.display();
        format!("{{ca: {d}/ca.pem, cert: {d}/{name}.pem, key: {d}/{name}.key}}")
    }
}

/// A running `mcpfier-agent`, stopped on drop.
pub struct Agent {
    pub id: String,
    pub process: Process,
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

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A real etcd (Debian's etcd-server) on free loopback ports with its own data dir.
pub struct EtcdServer {
    pub process: Option<Process>,
    pub endpoint: String,
    args: Vec<String>,
    dir: PathBuf,
}

impl EtcdServer {
    /// Starts etcd with its data in `dir`/etcd and waits until it answers `/health`.
    pub fn start(dir: &Path) -> EtcdServer {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "no etcd at /usr/bin/etcd: run `cargo xtask test` (it installs Debian's etcd-server)"
        );
        let client = free_port();
        let peer = free_port();
        let data = dir.join("etcd");
        let args = vec![
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("test=http://127.0.0.1:{peer}"),
        ];
        let mut server = EtcdServer {
            process: None,
            endpoint: format!("http://127.0.0.1:{client}"),
            args,
            dir: dir.to_owned(),
        };
        server.restart();
        server
    }

    /// Starts (again) with the same ports and data.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args(&self.args);
        self.process = Some(Process::start(cmd, &self.dir.join("etcd.cfg"), "etcd"));
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let healthy = wait_for(Duration::from_secs(30), || {
            let (status, body) = http_request(&addr, "GET", "/health", &[], "").ok()?;
            (status == 200 && body.contains("true")).then_some(())
        });
        assert!(
            healthy.is_some(),
            "etcd did not become healthy:\n{}",
            self.process
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default()
        );
    }

    /// Stops it (SIGTERM); data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The YAML `etcd:` value for `prefix`.
    pub fn yaml(&self, prefix: &str) -> String {
        format!("{{endpoints: [\"{}\"], prefix: {prefix}}}", self.endpoint)
    }
}

/// GETs `path` and parses the JSON body.
pub fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http_request(addr, "GET", path, &[], "").expect("GET");
    assert_eq!(status, 200, "{path}: {body}");
    // The body may be chunked; take the JSON object in it.
    let start = body.find('{').expect("a JSON body");
    let end = body.rfind('}').expect("a JSON body");
    serde_json::from_str(&body[start..=end]).expect("JSON")
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

/// A plain HTTP/1.1 request: (status, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("read the status line {status_line:?}"))?;
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    Ok((status, rest))
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads the whitespace-separated pids a test command wrote to `path`.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
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

/// The image container tests run: a root filesystem with Debian's static busybox, imported
/// through the Docker Engine API (no registry is needed). Built once per test run.
pub const TEST_IMAGE: &str = "localhost/mcpfier-test:busybox";

/// Builds [`TEST_IMAGE`] if it is not there yet; returns its name.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "no /bin/busybox: run `cargo xtask test` (it installs Debian's busybox-static)"
        );
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        rt.block_on(async {
            let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
                .expect("a Docker socket (the tests need the Docker Engine)")
                .negotiate_version()
                .await
                .expect("the Docker daemon answers");
            if docker.inspect_image(TEST_IMAGE).await.is_ok() {
                return;
            }
            let mut tar = tar::Builder::new(Vec::new());
            let mut dir = |path: &str| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(if path == "tmp" { 0o1777 } else { 0o755 });
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty())
                    .expect("tar a directory");
            };
            for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "work"] {
                dir(d);
            }
            let data = std::fs::read(busybox).expect("read busybox");
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, "bin/busybox", data.as_slice())
                .expect("tar busybox");
            let list = Command::new(busybox)
                .arg("--list")
                .output()
                .expect("busybox --list");
            for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
                if applet == "busybox" {
                    continue;
                }
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                    .expect("tar a link");
            }
            let passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(passwd.len() as u64);
            tar.append_data(&mut h, "etc/passwd", &passwd[..])
                .expect("tar passwd");
            let bytes = tar.into_inner().expect("finish the tar");
            let (repo, tag) = TEST_IMAGE.rsplit_once(':').expect("repo:tag");
            let options = mcpfier_exec::bollard::query_parameters::CreateImageOptionsBuilder::new()
                .from_src("-")
                .repo(repo)
                .tag(tag)
                .build();
            use futures::StreamExt;
            let mut import = docker.create_image(
                Some(options),
                Some(mcpfier_exec::bollard::body_full(bytes.into())),
                None,
            );
            while let Some(step) = import.next().await {
                step.expect("import the test image");
            }
        });
    });
    TEST_IMAGE
}

/// Containers carrying `label` (e.g. `mcpfier.tool=x`), running or not.
pub fn containers_with_label(label: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let docker = mcpfier_exec::bollard::Docker::connect_with_local_defaults()
            .expect("a Docker socket")
            .negotiate_version()
            .await
            .expect("the Docker daemon answers");
        let filters =
            std::collections::HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let options = mcpfier_exec::bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(options))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    })
}
