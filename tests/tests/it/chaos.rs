//! The chaos suite: calls through the real coordinator to real agents (etcd membership,
//! mutual TLS through relays the test controls) while faults are injected, and a ledger the
//! tool commands append to, compared with what each caller was told.
//!
//! Faults: SIGKILL and SIGSTOP of agents mid-call, etcd killed and restarted, the coordinator
//! killed mid-call and restarted, coordinator <-> agent connections cut and stalled, an agent's
//! etcd record overwritten and deleted. Checks: no non-idempotent call ran twice, no call
//! reported ok that did not run to its end, none reported `not_run` that started, exactly one
//! answer per call, no process left behind.
//!
//! In `cargo test` it makes `MCPFIER_CHAOS_CALLS` calls (default 120: every fault once); `cargo xtask chaos` runs it with 1,200 and prints the table kept in docs/chaos.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpfier_common::membership::{Etcd, agent_key};
use mcpfier_tests::{
    Agent, Certs, Coordinator, Direction, EtcdServer, Proxy, Scratch, alive, python, wait_for,
    workspace,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const PREFIX: &str = "/mcpfier/chaos";
const AGENTS: [&str; 3] = ["c1", "c2", "c3"];

/// Every fault the suite injects, in the order the short run goes through them.
const FAULTS: [&str; 9] = [
    "kill agent",
    "stop agent",
    "cut connection",
    "stall connection",
    "restart etcd",
    "overwrite record",
    "delete record",
    "kill coordinator",
    "none",
];

struct Rig {
    scratch: Scratch,
    certs: Certs,
    etcd: EtcdServer,
    agents: Vec<Option<Agent>>,
    proxies: Vec<Proxy>,
    coordinator: Coordinator,
    config: PathBuf,
    url_file: PathBuf,
}

impl Rig {
    fn start() -> Rig {
        let scratch = Scratch::new();
        let certs = Certs::init(&scratch.path().join("certs"));
        certs.issue("coordinator", "coord");
        for id in AGENTS {
            certs.issue("agent", id);
        }
        std::fs::write(scratch.path().join("ledger"), "").unwrap();
        let etcd = EtcdServer::start(scratch.path());
        let proxies: Vec<Proxy> = AGENTS.iter().map(|_| Proxy::bind()).collect();
        let config = scratch.config(&format!(
            "fleet:\n  tls: {}\n  etcd: {}\n{TOOLS}",
            certs.tls_yaml("coord"),
            etcd.yaml(PREFIX)
        ));
        let coordinator = Coordinator::start(&config, &[], &[]);
        let url_file = scratch.path().join("url");
        std::fs::write(&url_file, coordinator.url()).unwrap();
        let mut rig = Rig {
            scratch,
            certs,
            etcd,
            agents: AGENTS.iter().map(|_| None).collect(),
            proxies,
            coordinator,
            config,
            url_file,
        };
        for i in 0..AGENTS.len() {
            rig.start_agent(i);
        }
        rig
    }

    fn start_agent(&mut self, i: usize) {
        let extra = format!(
            "advertise: \"{}\"\netcd: {{endpoints: [\"{}\"], prefix: {PREFIX}, lease_ttl: 2s}}",
            self.proxies[i].addr, self.etcd.endpoint
        );
        let agent = Agent::start(self.scratch.path(), &self.certs, AGENTS[i], &extra);
        self.proxies[i].set_target(&agent.addr);
        self.agents[i] = Some(agent);
    }

    fn restart_coordinator(&mut self) {
        self.coordinator.process.kill9();
        self.coordinator = Coordinator::start(&self.config, &[], &[]);
        std::fs::write(&self.url_file, self.coordinator.url()).unwrap();
    }

    fn etcd_client(&self, rt: &tokio::runtime::Runtime) -> Option<Etcd> {
        rt.block_on(Etcd::connect(std::slice::from_ref(&self.etcd.endpoint)))
            .ok()
    }
}

const TOOLS: &str = r#"
tools:
  - name: once
    description: Not idempotent; its ledger lines say how often it really ran
    command: ["/bin/sh", "-c", "echo \"$1 start $$\" >> @DIR@/ledger; sleep 1; echo \"$1 end\" >> @DIR@/ledger; echo ok", "sh", "{{tag}}"]
    params: {tag: {type: string, pattern: "^[a-z0-9-]+$"}}
    timeout: 20s
  - name: again
    description: Idempotent; may run twice, must be reported once
    command: ["/bin/sh", "-c", "echo \"$1 start $$\" >> @DIR@/ledger; sleep 1; echo \"$1 end\" >> @DIR@/ledger; echo ok", "sh", "{{tag}}"]
    params: {tag: {type: string, pattern: "^[a-z0-9-]+$"}}
    annotations: {idempotent: true}
    timeout: 20s
"#;

/// A small deterministic generator (xorshift), so a run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Injects one fault and heals it again; returns its name.
fn inject(rig: &mut Rig, rt: &tokio::runtime::Runtime, fault: &str, rng: &mut Rng) {
    let i = rng.below(AGENTS.len());
    // How long a fault lasts: the outage itself, not a wait for anything.
    let pause = || std::thread::sleep(Duration::from_millis(1500));
    match fault {
        "kill agent" => {
            if let Some(mut a) = rig.agents[i].take() {
                a.process.kill9();
            }
            pause();
            rig.start_agent(i);
        }
        "stop agent" => {
            if let Some(a) = &rig.agents[i] {
                a.process.signal(Signal::SIGSTOP);
                pause();
                a.process.signal(Signal::SIGCONT);
            }
        }
        "cut connection" => rig.proxies[i].cut(),
        "stall connection" => {
            rig.proxies[i].hold(Direction::Down);
            pause();
            rig.proxies[i].release();
        }
        "restart etcd" => {
            rig.etcd.stop();
            pause();
            rig.etcd.restart();
        }
        "overwrite record" | "delete record" => {
            if let Some(etcd) = rig.etcd_client(rt) {
                let key = agent_key(PREFIX, AGENTS[i]);
                let mut c = etcd.client.clone();
                let _ = rt.block_on(async {
                    if fault == "delete record" {
                        c.delete(key, None).await.map(|_| ())
                    } else {
                        let forged = json!({"address": "127.0.0.1:9", "labels": {"pool": "x"},
                            "capacity": 99, "version": "forged", "protocol_version": "1.2",
                            "started_at": 1, "updated_at": 1});
                        c.put(key, forged.to_string(), None).await.map(|_| ())
                    }
                });
            }
        }
        "kill coordinator" => rig.restart_coordinator(),
        _ => {}
    }
}

#[derive(Default)]
struct Ledger {
    starts: BTreeMap<String, usize>,
    ends: BTreeMap<String, usize>,
    pids: Vec<i32>,
}

fn read_ledger(path: &std::path::Path) -> Ledger {
    let mut l = Ledger::default();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let parts: Vec<_> = line.split_whitespace().collect();
        match parts.as_slice() {
            [tag, "start", pid] => {
                *l.starts.entry(tag.to_string()).or_default() += 1;
                if let Ok(p) = pid.parse() {
                    l.pids.push(p);
                }
            }
            [tag, "end"] => *l.ends.entry(tag.to_string()).or_default() += 1,
            _ => {}
        }
    }
    l
}

#[test]
fn under_faults_no_call_runs_twice_or_is_misreported_and_nothing_is_left() {
    let calls: usize = std::env::var("MCPFIER_CHAOS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("MCPFIER_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let mut rig = Rig::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = wait_for(Duration::from_secs(20), || {
        let fleet = mcpfier_tests::get_json(&rig.coordinator.addr, "/fleet");
        (fleet["agents"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|a| a["healthy"] == true).count() == 3))
        .then_some(())
    });
    assert!(ready.is_some(), "the fleet never came up");

    let list: Vec<Value> = (0..calls)
        .map(|n| {
            let tool = if n % 4 == 3 { "again" } else { "once" };
            json!({"tag": format!("t{n}"), "tool": tool})
        })
        .collect();
    let tools: BTreeMap<String, String> = list
        .iter()
        .map(|c| {
            (
                c["tag"].as_str().unwrap().to_owned(),
                c["tool"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut client = Command::new(python())
        .arg(workspace().join("tests/py/chaos_client.py"))
        .arg(&rig.url_file)
        .arg("8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the chaos client");
    {
        use std::io::Write;
        let mut stdin = client.stdin.take().unwrap();
        stdin
            .write_all(Value::Array(list).to_string().as_bytes())
            .unwrap();
    }
    let answers: Arc<Mutex<Vec<Value>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (answers, done) = (answers.clone(), done.clone());
        let stdout = client.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    answers.lock().unwrap().push(v);
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // Faults while the calls run: every kind once in order, then at random.
    let mut rng = Rng(seed);
    let mut injected: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    let mut k = 0;
    while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(1200) {
        let fault = if k < FAULTS.len() {
            FAULTS[k]
        } else {
            FAULTS[rng.below(FAULTS.len())]
        };
        inject(&mut rig, &rt, fault, &mut rng);
        *injected.entry(fault).or_default() += 1;
        k += 1;
        // Let calls run between faults.
        let until = answers.lock().unwrap().len() + 3;
        let _ = wait_for(Duration::from_secs(3), || {
            (done.load(Ordering::SeqCst) || answers.lock().unwrap().len() >= until).then_some(())
        });
    }
    reader.join().unwrap();
    let status = client.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "the chaos client failed: {stderr}");

    // Commands still running when the last answer came are given their timeout to end (or
    // be killed); then the ledger is final.
    let ledger_path = rig.scratch.path().join("ledger");
    let settled = wait_for(Duration::from_secs(30), || {
        let l = read_ledger(&ledger_path);
        l.pids.iter().all(|p| !alive(*p)).then_some(())
    });
    let ledger = read_ledger(&ledger_path);
    let left: Vec<_> = ledger.pids.iter().filter(|p| alive(**p)).collect();
    assert!(settled.is_some(), "processes left behind: {left:?}");

    let answers = answers.lock().unwrap().clone();
    let mut by_tag: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for a in &answers {
        by_tag
            .entry(a["tag"].as_str().unwrap().to_owned())
            .or_default()
            .push(a);
    }
    let mut told: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    for (tag, tool) in &tools {
        let got = by_tag.get(tag).map(Vec::as_slice).unwrap_or_default();
        if got.len() != 1 {
            violations.push(format!("{tag}: {} answers", got.len()));
            continue;
        }
        let a = got[0];
        let starts = ledger.starts.get(tag).copied().unwrap_or(0);
        let ends = ledger.ends.get(tag).copied().unwrap_or(0);
        let label = match a["told"].as_str().unwrap() {
            "ok" => "ok".to_owned(),
            "error" => format!(
                "error {} ({})",
                a["kind"].as_str().unwrap_or("?"),
                a["outcome"].as_str().unwrap_or("?")
            ),
            other => format!("no answer ({other})"),
        };
        *told.entry(format!("{tool}: {label}")).or_default() += 1;
        if tool == "once" && starts > 1 {
            violations.push(format!(
                "{tag}: not idempotent, ran {starts} times ({label})"
            ));
        }
        if a["told"] == "ok" && ends == 0 {
            violations.push(format!("{tag}: reported ok, never ran to its end"));
        }
        if a["outcome"] == "not_run" && starts > 0 {
            violations.push(format!(
                "{tag}: reported not_run ({label}), started {starts} times"
            ));
        }
    }
    let table: String = told
        .iter()
        .map(|(k, v)| format!("| {k} | {v} |\n"))
        .collect();
    let faults: String = injected
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "chaos: {calls} calls, seed {seed}, {:.0} s; faults: {faults}\n| what the caller was told | calls |\n|---|---|\n{table}violations: {}",
        started.elapsed().as_secs_f64(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
    // The faults are short, so calls get through (about 60% in the runs in docs/chaos.md;
    // agents fenced after an etcd restart refuse the rest); below a quarter, something is
    // wrong beyond the faults.
    let ok = answers.iter().filter(|a| a["told"] == "ok").count();
    assert!(
        ok * 4 > calls,
        "only {ok} of {calls} calls succeeded:\n{table}"
    );
}
