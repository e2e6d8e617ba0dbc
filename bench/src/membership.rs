//! The membership part of the benchmark: a real etcd, real agents, and 1,000 simulated
//! registrations.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcpfier_common::membership::{AgentRecord, Etcd, now_ms};

use crate::{
    call_tool, free_port, http, open_session, start_agent_with, start_logged, start_mcpfier,
    wait_for_port,
};

/// The status of a GET of `path`; the (small) body is read so the connection is reused.
fn get_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    let url = format!("http://{addr}{path}");
    let mut response = http()
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    response
        .body_mut()
        .read_to_vec()
        .with_context(|| format!("read the body of GET {url}"))?;
    Ok(response.status().as_u16())
}

/// Polls until `/fleet/agents/<id>` answers `want`; returns how long that took.
fn until_status(addr: &str, id: &str, want: u16, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if get_status(addr, &format!("/fleet/agents/{id}"))? == want {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("agent {id} never reached status {want}")
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit(')').next().context("stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}

fn cpu_share(pid: u32, over: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    std::thread::sleep(over);
    Ok((cpu_seconds(pid)? - before) / over.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn run(dir: &Path, certs: &Path, measure: Duration) -> anyhow::Result<()> {
    // etcd on free ports.
    let client = free_port()?;
    let peer = free_port()?;
    let mut cmd = Command::new("/usr/bin/etcd");
    cmd.args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{client}"))
        .arg("--advertise-client-urls")
        .arg(format!("http://127.0.0.1:{client}"))
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-cluster")
        .arg(format!("bench=http://127.0.0.1:{peer}"));
    let (_etcd, _) = start_logged(cmd, &dir.join("etcd.log"), "ready to serve client requests")?;
    wait_for_port(&format!("127.0.0.1:{client}"))?;
    let endpoint = format!("http://127.0.0.1:{client}");
    let prefix = "/mcpfier/bench";
    let etcd_yaml = format!("{{endpoints: [\"{endpoint}\"], prefix: {prefix}}}");
    let c = certs.display();
    let fleet = format!(
        "fleet:\n  tls: {{ca: {c}/ca.pem, cert: {c}/coord.pem, key: {c}/coord.key}}\n  etcd: {etcd_yaml}\n"
    );
    let (coordinator, addr) = start_mcpfier(
        dir,
        "membership",
        &fleet,
        "  - {name: on-new, command: [/bin/echo, new], placement: {labels: {pool: new}}}\n",
    )?;
    let agent_etcd =
        format!("etcd: {{endpoints: [\"{endpoint}\"], prefix: {prefix}, lease_ttl: 3s}}\n");

    // SIGKILL -> out of routing (lease expiry; no call in flight).
    let mut removal = Vec::new();
    for _ in 0..3 {
        let (mut agent, _) = start_agent_with(dir, certs, "b1", &agent_etcd)?;
        until_status(&addr, "b1", 200, Duration::from_secs(15))?;
        agent.0.kill().context("kill the agent")?;
        let killed = Instant::now();
        until_status(&addr, "b1", 404, Duration::from_secs(15))?;
        removal.push(killed.elapsed());
        let _ = agent.0.wait();
    }

    // New agent -> first routed call.
    let mut first_call = Vec::new();
    for _ in 0..3 {
        let sid = open_session(&addr)?;
        let started = Instant::now();
        let (agent, _) = start_agent_with(
            dir,
            certs,
            "b2",
            &format!("labels: {{pool: new}}\n{agent_etcd}"),
        )?;
        let mut n = 0;
        loop {
            n += 1;
            let (status, text) = call_tool(&addr, &sid, n, "on-new")?;
            if status == 200
                && text.contains("\"agent\":\"b2\"")
                && text.contains("\"isError\":false")
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("no call reached the new agent: {text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        first_call.push(started.elapsed());
        drop(agent); // SIGKILL; wait for its lease to go before the next round
        until_status(&addr, "b2", 404, Duration::from_secs(15))?;
    }

    // 1,000 simulated agents, each re-put once per 3 s as real agents do.
    let pid = coordinator.0.id();
    let idle = cpu_share(pid, measure)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (latencies, steady) = rt.block_on(async {
        let etcd = Etcd::connect(std::slice::from_ref(&endpoint)).await?;
        let lease = etcd.grant(Duration::from_secs(60)).await?;
        // One run of each simulated agent: its re-puts keep `started_at`, as a real agent's
        // do (a new `started_at` is a restart, which the coordinator checks at once).
        let started_at = now_ms();
        let record = move |i: usize| AgentRecord {
            address: "127.0.0.1:9".into(),
            labels: BTreeMap::from([("pool".into(), format!("sim-{}", i % 10))]),
            capacity: 8,
            running: 0,
            version: "sim".into(),
            protocol_version: "1.0".into(),
            started_at,
            updated_at: now_ms(),
            draining: false,
            capabilities: vec!["local-exec".into()],
            allow_tools: vec!["*".into()],
        };
        for i in 0..1000 {
            etcd.register(prefix, &format!("sim-{i:04}"), &record(i), lease)
                .await?;
        }
        let keeper = etcd.clone();
        let ka = tokio::spawn(async move {
            loop {
                let _ = keeper.keep_alive_once(lease).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
        let writer = etcd.clone();
        let hb = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            let mut i = 0usize;
            loop {
                tick.tick().await;
                let _ = writer
                    .update(
                        prefix,
                        &format!("sim-{:04}", i % 1000),
                        &record(i % 1000),
                        lease,
                    )
                    .await;
                i += 1;
            }
        });
        let addr2 = addr.clone();
        tokio::task::spawn_blocking(move || {
            until_status(&addr2, "sim-0999", 200, Duration::from_secs(30))
        })
        .await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let steady = tokio::task::spawn_blocking(move || cpu_share(pid, measure)).await??;
        let mut latencies = Vec::new();
        for i in 0..50 {
            let id = format!("sim-new-{i}");
            let started = Instant::now();
            etcd.register(prefix, &id, &record(i), lease).await?;
            let a = addr.clone();
            tokio::task::spawn_blocking(move || {
                until_status(&a, &id, 200, Duration::from_secs(10))
            })
            .await??;
            latencies.push(started.elapsed());
        }
        hb.abort();
        ka.abort();
        let _ = etcd.revoke(lease).await;
        anyhow::Ok((latencies, steady))
    })?;
    drop(coordinator);

    let mut sorted = latencies.clone();
    sorted.sort();
    println!("\nmembership (etcd 3.4, lease TTL 3 s)");
    println!(
        "  SIGKILL -> out of routing:            {} (median of {:?})   (<= TTL + 0.5 s = 3500 ms)",
        ms(median(removal.clone())),
        removal.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  agent start -> first routed call:     {} (median of {:?})   (< 1000 ms)",
        ms(median(first_call.clone())),
        first_call.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  coordinator CPU, no agents (baseline): {:.2}% of one core",
        idle * 100.0
    );
    println!(
        "  coordinator CPU, 1,000 agents re-put every 3 s (333 events/s): {:.2}% of one core   (< 5%)",
        steady * 100.0
    );
    println!(
        "  routing update after an etcd put:     p50 {:.1} ms, p99 {:.1} ms ({} samples, polled every 2 ms)",
        sorted[sorted.len() / 2].as_secs_f64() * 1000.0,
        sorted[sorted.len() * 99 / 100].as_secs_f64() * 1000.0,
        sorted.len()
    );
    Ok(())
}
