//! mcpfier's benchmark. Run it with `cargo xtask bench` (release build, installs wrk).
//!
//! In one run it measures:
//! - the floor: spawning `/bin/echo` directly, sequentially and from 8 threads;
//! - `tools/call` of an echo tool on `mcpfier serve` (Streamable HTTP), with 1 and 8
//!   concurrent clients (wrk, one connection and one MCP session per client, each waiting for
//!   the whole response);
//! - the same tool served by the official Python SDK's `MCPServer`, driven the same way;
//!
//! and prints p50, p99 and calls/s for each, with the ratios the targets are stated in.

#![forbid(unsafe_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod auth;
mod containers;
mod front_door;
mod membership;
mod observability;
mod sessions;
mod signing;

pub(crate) struct Figures {
    name: String,
    p50_us: f64,
    p99_us: f64,
    rate: f64,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench sits in the workspace")
        .to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn spawn_echo() -> anyhow::Result<()> {
    let out = Command::new("/bin/echo")
        .arg("hello")
        .stdin(Stdio::null())
        .output()?;
    if out.stdout != b"hello\n" {
        bail!("echo printed {:?}", out.stdout);
    }
    Ok(())
}

/// The floor: `/bin/echo` spawned directly, `threads` at a time, for `duration`.
fn direct_spawn(threads: usize, duration: Duration) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut samples = Vec::new();
                while start.elapsed() < duration {
                    let t = Instant::now();
                    spawn_echo()?;
                    samples.push(t.elapsed());
                }
                Ok(samples)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a spawn thread panicked"))??,
        );
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok(Figures {
        name: format!("direct spawn of /bin/echo, {threads} thread(s)"),
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        rate: all.len() as f64 / elapsed.as_secs_f64(),
    })
}

/// An HTTP response: status, headers (names lowercased), body.
type Response = (u16, Vec<(String, String)>, String);

/// The one HTTP client of the benchmark. It is shared so that its connection pool carries
/// over from call to call: a measured call pays for the request, not for a new agent and a
/// new TCP connection. Every status is a value (the caller judges it); no proxy from the
/// environment (the servers are ours, on loopback).
pub(crate) fn http() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_per_read(Some(Duration::from_secs(10)))
            .build()
            .into()
    })
}

/// A POST of a JSON-RPC message to `/mcp`, its response read to the end (an SSE stream ends
/// when the server closes it).
pub(crate) fn post(addr: &str, headers: &[(&str, &str)], body: &str) -> anyhow::Result<Response> {
    let url = format!("http://{addr}/mcp");
    let mut request = http()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body).with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let hdrs = response
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_owned(), v)
        })
        .collect();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read the response to POST {url}"))?;
    Ok((status, hdrs, text))
}

/// Sends `tools/call` of `tool` (no arguments) as request `id` on session `sid`; returns the
/// status and body.
pub(crate) fn call_tool(
    addr: &str,
    sid: &str,
    id: usize,
    tool: &str,
) -> anyhow::Result<(u16, String)> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    );
    let (status, _, text) = post(
        addr,
        &[
            ("Mcp-Session-Id", sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &body,
    )?;
    Ok((status, text))
}

/// Opens an MCP session (initialize + initialized) and returns its id.
pub(crate) fn open_session(addr: &str) -> anyhow::Result<String> {
    open_session_as(addr, None)
}

/// [`open_session`] with `Authorization: Bearer <bearer>` on both requests.
pub(crate) fn open_session_as(addr: &str, bearer: Option<&str>) -> anyhow::Result<String> {
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let auth_header: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, headers, body) = post(addr, &auth_header, init)?;
    if status != 200 {
        bail!("initialize got {status}: {body}");
    }
    let sid = headers
        .iter()
        .find(|(k, _)| k == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .context("no Mcp-Session-Id in the initialize response")?;
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let mut note_headers = vec![
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    note_headers.extend(auth_header.iter().copied());
    let (status, _, body) = post(addr, &note_headers, note)?;
    if status != 202 && status != 200 {
        bail!("notifications/initialized got {status}: {body}");
    }
    Ok(sid)
}

/// Drives `tools/call echo` with wrk: `clients` connections, each its own session.
fn wrk(name: &str, addr: &str, clients: usize, duration: Duration) -> anyhow::Result<Figures> {
    wrk_as(name, addr, clients, duration, None)
}

/// [`wrk`] with `Authorization: Bearer <bearer>` on every request.
pub(crate) fn wrk_as(
    name: &str,
    addr: &str,
    clients: usize,
    duration: Duration,
    bearer: Option<&str>,
) -> anyhow::Result<Figures> {
    let sessions = (0..clients)
        .map(|_| open_session_as(addr, bearer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let script = workspace().join("bench/wrk_mcp.lua");
    let out = Command::new("wrk")
        .env("MCPFIER_BENCH_BEARER", bearer.unwrap_or(""))
        .arg(format!("-t{clients}"))
        .arg(format!("-c{clients}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/mcp"))
        .arg("--")
        .args(&sessions)
        .output()
        .context("run wrk (cargo xtask bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| {
            format!(
                "wrk printed no result:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    let failures = v["failures"].as_u64().unwrap_or(0) + v["errors"].as_u64().unwrap_or(0);
    if failures > 0 || requests == 0.0 {
        bail!("{name}: {failures} failed responses of {requests}");
    }
    Ok(Figures {
        name: format!("{name}, {clients} client(s)"),
        p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
        rate: requests / (v["duration_us"].as_f64().unwrap_or(1.0) / 1e6),
    })
}

/// A server process, killed (SIGKILL) on drop.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for_port(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr}")
}

/// Starts `cmd` with stderr to `log` and waits for a log line with `marker`; returns the
/// process and the rest of that line.
pub(crate) fn start_logged(
    mut cmd: Command,
    log: &Path,
    marker: &str,
) -> anyhow::Result<(Server, String)> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find(marker) {
            let rest = &text[i + marker.len()..];
            let line = rest[..rest.find('\n').unwrap_or(rest.len())].to_owned();
            return Ok((server, line));
        }
        if Instant::now() > deadline {
            bail!("{cmd:?} did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn release(bin: &str) -> PathBuf {
    workspace().join("target/release").join(bin)
}

pub(crate) const ECHO_TOOL: &str = "tools:\n  - name: echo\n    description: Echo a message\n    command: [/bin/echo, '{{msg}}']\n    params: {msg: {type: string}}\n";

/// Starts `mcpfier serve` with the echo tool, `fleet_yaml` (may be empty) and `more_tools`
/// (YAML list items appended to `tools:`).
pub(crate) fn start_mcpfier(
    dir: &Path,
    name: &str,
    fleet_yaml: &str,
    more_tools: &str,
) -> anyhow::Result<(Server, String)> {
    start_mcpfier_with(
        dir,
        name,
        &format!("server: {{max_concurrency: 64}}\n{fleet_yaml}{ECHO_TOOL}{more_tools}"),
    )
}

/// Starts `mcpfier serve` with the config `yaml` as written.
pub(crate) fn start_mcpfier_with(
    dir: &Path,
    name: &str,
    yaml: &str,
) -> anyhow::Result<(Server, String)> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    let mut cmd = Command::new(release("mcpfier"));
    cmd.arg("--config").arg(&config).args([
        "--log",
        "warn,mcpfier_coordinator::http=info",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (server, rest) = start_logged(
        cmd,
        &dir.join(format!("{name}.log")),
        "serving MCP at http://",
    )?;
    let addr = rest[..rest.find("/mcp").context("the log line names /mcp")?].to_owned();
    Ok((server, addr))
}

/// Makes a CA and certificates for a coordinator and `agents`, with `mcpfier certs`.
pub(crate) fn make_certs(dir: &Path, agents: &[&str]) -> anyhow::Result<()> {
    let d = dir.to_str().context("a UTF-8 temp path")?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(release("mcpfier")).args(args).output()?;
        if !out.status.success() {
            bail!("mcpfier {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&["certs", "init", "--dir", d])?;
    run(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--role",
        "coordinator",
        "--name",
        "coord",
    ])?;
    for a in agents {
        run(&["certs", "issue", "--dir", d, "--role", "agent", "--name", a])?;
    }
    Ok(())
}

pub(crate) fn start_agent(dir: &Path, certs: &Path, id: &str) -> anyhow::Result<(Server, String)> {
    start_agent_with(dir, certs, id, "")
}

/// Starts an agent with `extra` YAML appended to its config.
pub(crate) fn start_agent_with(
    dir: &Path,
    certs: &Path,
    id: &str,
    extra: &str,
) -> anyhow::Result<(Server, String)> {
    let c = certs.display();
    let config = dir.join(format!("{id}.yaml"));
    std::fs::write(
        &config,
        format!(
            "id: {id}\nlisten: 127.0.0.1:0\ncapacity: 64\ntls: {{ca: {c}/ca.pem, cert: {c}/{id}.pem, key: {c}/{id}.key}}\n{extra}"
        ),
    )?;
    let mut cmd = Command::new(release("mcpfier-agent"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--log", "warn,mcpfier_agent=info"]);
    let (server, rest) = start_logged(cmd, &dir.join(format!("{id}.log")), "agent listening on ")?;
    let addr = rest
        .split_whitespace()
        .next()
        .context("an address")?
        .to_owned();
    Ok((server, addr))
}

/// `--fleet-only`: the spawn floor and a coordinator with one agent, for working on the
/// fleet path (the agent's pid is printed, to profile it during the 8-client run).
fn fleet_only(dir: &Path, duration: Duration) -> anyhow::Result<()> {
    let floor1 = direct_spawn(1, duration)?;
    let floor8 = direct_spawn(8, duration)?;
    let certs = dir.join("certs");
    make_certs(&certs, &["b1"])?;
    let (agent, addr) = start_agent(dir, &certs, "b1")?;
    let (fleet, faddr) = start_mcpfier(dir, "fleet1", &fleet_yaml(&certs, &[("b1", &addr)]), "")?;
    println!(
        "agent pid {}, coordinator pid {}",
        agent.0.id(),
        fleet.0.id()
    );
    let name = "coordinator -> 1 agent (mTLS), tools/call echo";
    let seq = wrk(name, &faddr, 1, duration)?;
    let conc = wrk(name, &faddr, 8, duration)?;
    drop((fleet, agent));
    println!("\nresults");
    for f in [&floor1, &floor8, &seq, &conc] {
        print(f);
    }
    fleet_ratios("1 agent", &seq, &conc, &floor1, &floor8);
    Ok(())
}

pub(crate) fn fleet_yaml(certs: &Path, agents: &[(&str, &str)]) -> String {
    let c = certs.display();
    let mut y = format!(
        "fleet:\n  tls: {{ca: {c}/ca.pem, cert: {c}/coord.pem, key: {c}/coord.key}}\n  agents:\n"
    );
    for (id, addr) in agents {
        y.push_str(&format!("    - {{id: {id}, address: \"{addr}\"}}\n"));
    }
    y
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_python(mode: &str) -> anyhow::Result<(Server, String)> {
    let python = std::env::var("MCPFIER_BENCH_PYTHON")
        .context("MCPFIER_BENCH_PYTHON is not set: run `cargo xtask bench`")?;
    let port = free_port()?;
    let child = Command::new(python)
        .arg(workspace().join("bench/py_echo_server.py"))
        .arg(port.to_string())
        .arg(mode)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the Python MCP server")?;
    let server = Server(child);
    let addr = format!("127.0.0.1:{port}");
    wait_for_port(&addr)?;
    Ok((server, addr))
}

pub(crate) fn print(f: &Figures) {
    println!(
        "  {:<58} p50 {:>8.2} ms   p99 {:>8.2} ms   {:>7.0} calls/s",
        f.name,
        f.p50_us / 1000.0,
        f.p99_us / 1000.0,
        f.rate
    );
}

/// The idle-session memory figures against their target.
fn print_sessions(parked: f64, live: f64) {
    println!(
        "  memory per idle MCP session, parked              {:>6.1} KB   (<= 16 KB; {:.1} KB never parked, {:.0}%)",
        parked / 1000.0,
        live / 1000.0,
        100.0 * parked / live
    );
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("--seconds takes a whole number")?
        .unwrap_or(10);
    let duration = Duration::from_secs(secs);
    let only_membership = std::env::args().any(|a| a == "--membership-only");
    let dir = tempfile::tempdir()?;
    println!(
        "mcpfier benchmark: {secs} s per measurement, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if std::env::args().any(|a| a == "--auth-only") {
        auth::run(dir.path())?;
        return Ok(());
    }
    if std::env::args().any(|a| a == "--front-door-only") {
        let f = front_door::run(dir.path(), duration)?;
        println!("\nratios (target)");
        front_door::print_ratios(&f);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--observability-only") {
        let o = observability::run(dir.path(), duration)?;
        println!("\nratios (target)");
        observability::print_ratios(&o);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--sessions-only") {
        let (parked, live) = sessions::run(dir.path())?;
        println!("\nratios (target)");
        print_sessions(parked, live);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--signing-only") {
        signing::run(dir.path())?;
        return Ok(());
    }
    if std::env::args().any(|a| a == "--containers-only") {
        return containers::run(dir.path());
    }
    if only_membership {
        let certs = dir.path().join("certs");
        make_certs(&certs, &["b1", "b2"])?;
        return membership::run(dir.path(), &certs, duration);
    }
    if std::env::args().any(|a| a == "--fleet-only") {
        return fleet_only(dir.path(), duration);
    }
    let floor1 = direct_spawn(1, duration)?;
    let floor8 = direct_spawn(8, duration)?;
    let (mcpfier, addr) = start_mcpfier(dir.path(), "embedded", "", "")?;
    let m1 = wrk("mcpfier serve, tools/call echo", &addr, 1, duration)?;
    let m8 = wrk("mcpfier serve, tools/call echo", &addr, 8, duration)?;
    drop(mcpfier);

    let certs = dir.path().join("certs");
    make_certs(&certs, &["b1", "b2"])?;
    let (agent1, addr1) = start_agent(dir.path(), &certs, "b1")?;
    let (agent2, addr2) = start_agent(dir.path(), &certs, "b2")?;
    let (fleet1, faddr1) = start_mcpfier(
        dir.path(),
        "fleet1",
        &fleet_yaml(&certs, &[("b1", &addr1)]),
        "",
    )?;
    let f1_1 = wrk(
        "coordinator -> 1 agent (mTLS), tools/call echo",
        &faddr1,
        1,
        duration,
    )?;
    let f1_8 = wrk(
        "coordinator -> 1 agent (mTLS), tools/call echo",
        &faddr1,
        8,
        duration,
    )?;
    drop(fleet1);
    let (fleet2, faddr2) = start_mcpfier(
        dir.path(),
        "fleet2",
        &fleet_yaml(&certs, &[("b1", &addr1), ("b2", &addr2)]),
        "",
    )?;
    let f2_1 = wrk(
        "coordinator -> 2 agents (mTLS), tools/call echo",
        &faddr2,
        1,
        duration,
    )?;
    let f2_8 = wrk(
        "coordinator -> 2 agents (mTLS), tools/call echo",
        &faddr2,
        8,
        duration,
    )?;
    drop(fleet2);
    drop(agent1);
    drop(agent2);
    membership::run(dir.path(), &certs, duration)?;
    containers::run(dir.path())?;
    let (signing_extra, signing_first) = signing::run(dir.path())?;
    let jwt_extra = auth::run(dir.path())?;
    let door = front_door::run(dir.path(), duration)?;
    let (parked, live) = sessions::run(dir.path())?;
    let watched = observability::run(dir.path(), duration)?;

    let (python, paddr) = start_python("async")?;
    let p1 = wrk("Python SDK MCPServer (asyncio spawn)", &paddr, 1, duration)?;
    let p8 = wrk("Python SDK MCPServer (asyncio spawn)", &paddr, 8, duration)?;
    drop(python);
    let (python, paddr) = start_python("sync")?;
    let s1 = wrk("Python SDK MCPServer (subprocess.run)", &paddr, 1, duration)?;
    let s8 = wrk("Python SDK MCPServer (subprocess.run)", &paddr, 8, duration)?;
    drop(python);

    println!("\nresults");
    for f in [
        &floor1, &floor8, &m1, &m8, &f1_1, &f1_8, &f2_1, &f2_8, &p1, &p8, &s1, &s8,
    ] {
        print(f);
    }
    println!("\nratios (target)");
    println!(
        "  mcpfier sequential p50 / direct spawn p50        {:>6.2}x   (<= 1.5x)",
        m1.p50_us / floor1.p50_us
    );
    println!(
        "  mcpfier 8 clients calls/s / direct spawn 8 threads {:>4.0}%    (>= 80%)",
        100.0 * m8.rate / floor8.rate
    );
    println!(
        "  mcpfier 8 clients calls/s / Python asyncio 8 clients {:>6.2}x   (>= 6x)",
        m8.rate / p8.rate
    );
    println!(
        "  mcpfier 8 clients calls/s / Python subprocess.run 8 clients {:>6.2}x",
        m8.rate / s8.rate
    );
    println!(
        "  direct spawn 8 threads / Python asyncio 8 clients {:>6.2}x   (the most any server can reach)",
        floor8.rate / p8.rate
    );
    println!(
        "  mcpfier sequential p50 / Python asyncio p50      {:>6.2}x",
        m1.p50_us / p1.p50_us
    );
    println!(
        "  signed tools: admission cost per call, agent with signers - without {:>6.1} us  (<= 50 us)",
        signing_extra.as_secs_f64() * 1e6
    );
    println!(
        "  signed tools: first call of a definition (Ed25519 verify, parse, compile) {:>6.1} us",
        signing_first.as_secs_f64() * 1e6
    );
    println!(
        "  JWT per request of a session (token verified on its first), slower of EdDSA and ES256 - no auth {:>6.1} us  (<= 50 us)",
        jwt_extra.as_secs_f64() * 1e6
    );
    for (name, seq, conc) in [("1 agent", &f1_1, &f1_8), ("2 agents", &f2_1, &f2_8)] {
        fleet_ratios(name, seq, conc, &floor1, &floor8);
    }
    front_door::print_ratios(&door);
    print_sessions(parked, live);
    observability::print_ratios(&watched);
    Ok(())
}

fn fleet_ratios(name: &str, seq: &Figures, conc: &Figures, floor1: &Figures, floor8: &Figures) {
    println!(
        "  fleet, {name}: sequential p50 - direct spawn p50   {:>+6.2} ms  (<= +1 ms)",
        (seq.p50_us - floor1.p50_us) / 1000.0
    );
    println!(
        "  fleet, {name}: 8 clients calls/s / direct spawn 8 threads {:>4.0}%  (>= 80%)",
        100.0 * conc.rate / floor8.rate
    );
}
