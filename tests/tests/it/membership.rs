//! Membership in etcd: a real etcd, real agents registering with leases, coordinators that
//! follow it, the official Python MCP client at the front.

use std::time::{Duration, Instant};

use mcpfier_tests::{
    Agent, Certs, Coordinator, EtcdServer, Scratch, drive_http, get_json, mcpfier_cli, read_pids,
    result_stdout, wait_for,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const PREFIX: &str = "/mcpfier/test";

const TOOLS: &str = r#"
tools:
  - name: echo
    command: [/bin/echo, "{{m}}"]
    params: {m: {type: string}}
    annotations: {idempotent: true}
  - name: only-b
    command: [/bin/echo, b]
    placement: {labels: {pool: b}}
  - name: slow
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; sleep 2; echo finished", "sh", "@DIR@/{{tag}}.pid"]
    params: {tag: {type: string, pattern: "^[a-z0-9]+$"}}
    timeout: 30s
  - name: slow-idempotent
    command: ["/bin/sh", "-c", "sleep 0.5; echo ok"]
    annotations: {idempotent: true}
    timeout: 20s
"#;

struct Fleet {
    scratch: Scratch,
    certs: Certs,
    etcd: EtcdServer,
    agents: Vec<Agent>,
}

impl Fleet {
    /// etcd, certificates, and agents `a` (pool a) and `b` (pool b).
    fn start() -> Fleet {
        let scratch = Scratch::new();
        let certs = Certs::init(&scratch.path().join("certs"));
        for (role, name) in [
            ("coordinator", "coord"),
            ("coordinator", "coord2"),
            ("agent", "a"),
            ("agent", "b"),
        ] {
            certs.issue(role, name);
        }
        let etcd = EtcdServer::start(scratch.path());
        let mut fleet = Fleet {
            scratch,
            certs,
            etcd,
            agents: Vec::new(),
        };
        fleet.add_agent("a", "pool: a");
        fleet.add_agent("b", "pool: b");
        fleet
    }

    fn agent_extra(&self, labels: &str) -> String {
        format!(
            "labels: {{{labels}}}\netcd: {{endpoints: [\"{}\"], prefix: {PREFIX}, lease_ttl: 3s}}\ndrain_grace: 20s",
            self.etcd.endpoint
        )
    }

    fn add_agent(&mut self, id: &str, labels: &str) {
        let extra = self.agent_extra(labels);
        let agent = Agent::start(self.scratch.path(), &self.certs, id, &extra);
        agent
            .process
            .wait_for_log("registered in etcd", Duration::from_secs(15));
        self.agents.push(agent);
    }

    fn agent(&mut self, id: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.id == id)
            .expect("a known agent")
    }

    fn coordinator_config(&self, name: &str, cert: &str) -> std::path::PathBuf {
        let yaml = format!(
            "fleet:\n  tls: {}\n  etcd: {}\n{TOOLS}",
            self.certs.tls_yaml(cert),
            self.etcd.yaml(PREFIX)
        );
        let yaml = yaml.replace("@DIR@", &self.scratch.path().display().to_string());
        self.scratch.write(name, &yaml)
    }

    fn coordinator(&self) -> Coordinator {
        Coordinator::start(
            &self.coordinator_config("coordinator.yaml", "coord"),
            &[],
            &[],
        )
    }
}

fn routed_ids(c: &Coordinator) -> Vec<String> {
    let fleet = get_json(&c.addr, "/fleet");
    let mut ids: Vec<_> = fleet["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["healthy"] == true && a["draining"] == false)
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn wait_routed(c: &Coordinator, want: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    let ok = wait_for(limit, || (routed_ids(c) == want).then_some(()));
    assert!(
        ok.is_some(),
        "routing never became {want:?}; /fleet: {}",
        get_json(&c.addr, "/fleet")
    );
    started.elapsed()
}

fn call(c: &Coordinator, name: &str, args: Value) -> Value {
    drive_http(
        &c.url(),
        json!([{"op": "call", "name": name, "arguments": args}]),
    )
    .remove(0)
}

fn agent_of(r: &Value) -> String {
    r["structured_content"]["agent"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn registrations_show_in_etcd_routing_and_mcpfier_agents() {
    let f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    let config = f.coordinator_config("cli.yaml", "coord");
    let (code, out, err) = mcpfier_cli(
        &["--config", config.to_str().unwrap(), "agents", "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(listed[0]["labels"], json!({"pool": "a"}));
    assert_eq!(listed[0]["address"], f.agents[0].addr.as_str());
    assert_eq!(listed[0]["health"], "registered");
    let (code, out, _) = mcpfier_cli(&["--config", config.to_str().unwrap(), "agents"], &[]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("a "), "{out}");
    // What etcd holds is called a registration, not health: `status` shows routing's view.
    assert!(out.lines().nth(1).unwrap().contains("registered"), "{out}");
    let r = call(&c, "only-b", json!({}));
    assert_eq!(agent_of(&r), "b", "{r}");
}

#[test]
fn a_killed_agent_leaves_routing_and_etcd_and_gets_no_more_calls() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    // A call in flight on the agent we kill fails clearly; after that stream failure no call
    // goes there, even before its lease expires.
    let url = c.url();
    let pidfile = f.scratch.path().join("k.pid");
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([{"op": "call", "name": "slow", "arguments": {"tag": "k"}}]),
        )
        .remove(0)
    });
    wait_for(Duration::from_secs(15), || pidfile.exists().then_some(())).expect("started");
    let victim = if f.agent("a").process.log_text().contains("tool=slow}") {
        "a"
    } else {
        "b"
    };
    let survivor = if victim == "a" { "b" } else { "a" };
    f.agent(victim).process.kill9();
    let r = driver.join().unwrap();
    assert_eq!(
        r["structured_content"]["error"]["kind"], "agent_lost",
        "{r}"
    );
    for i in 0..4 {
        let r = call(&c, "echo", json!({"m": format!("x{i}")}));
        assert_eq!(agent_of(&r), survivor, "{r}");
    }
    wait_routed(&c, &[survivor], Duration::from_secs(10));
    // Out of etcd once its lease expires. How soon that is (TTL plus etcd's own expiry
    // slack) is a figure for the benchmark (`cargo xtask bench`, membership part); here the
    // deadline only bounds a loaded machine's wait.
    let config = f.coordinator_config("cli.yaml", "coord");
    wait_for(Duration::from_secs(30), || {
        let (_, out, _) = mcpfier_cli(
            &["--config", config.to_str().unwrap(), "agents", "--json"],
            &[],
        );
        (!out.contains(&format!("\"id\": \"{victim}\""))).then_some(())
    })
    .unwrap_or_else(|| panic!("{victim} still in etcd 30s after it was killed"));
    // Out of routing, but not out of sight: the views keep it as gone, with why.
    let gone = wait_for(Duration::from_secs(10), || {
        let fleet = get_json(&c.addr, "/fleet");
        fleet["departed"]
            .as_array()?
            .iter()
            .find(|a| a["id"] == victim)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "{victim} not among the departed: {}",
            get_json(&c.addr, "/fleet")
        )
    });
    assert_eq!(gone["state"], "gone", "{gone}");
    let why = gone["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("its etcd record is gone"), "{why}");
    assert!(
        get_json(&c.addr, "/fleet")["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != victim),
        "a departed agent still in routing"
    );
    let (code, text, _) = mcpfier_cli(&["status", "--url", &format!("http://{}", c.addr)], &[]);
    assert_eq!(code, 0);
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{victim} ")))
        .unwrap_or_else(|| panic!("{victim} not in status:\n{text}"));
    assert!(row.contains("gone"), "{text}");
    for pid in read_pids(&f.scratch.path().join("k.pid")) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[test]
fn a_stopped_agent_is_detected_and_routed_around() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    f.agent("b").process.signal(Signal::SIGSTOP);
    let took = wait_routed(&c, &["a"], Duration::from_secs(10));
    // Lease TTL 3 s, plus up to about 2 s before etcd expires it.
    assert!(
        took <= Duration::from_secs(6),
        "a frozen agent stayed in routing for {took:?}"
    );
    for _ in 0..3 {
        assert_eq!(agent_of(&call(&c, "echo", json!({"m": "x"}))), "a");
    }
    // Thawed, it registers again and is routed to.
    f.agent("b").process.signal(Signal::SIGCONT);
    wait_routed(&c, &["a", "b"], Duration::from_secs(15));
    assert_eq!(agent_of(&call(&c, "only-b", json!({}))), "b");
}

#[test]
fn idempotent_calls_during_a_failover_all_succeed() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    let url = c.url();
    let ops: Vec<_> = (0..12)
        .map(|_| json!({"op": "call", "name": "slow-idempotent", "arguments": {}}))
        .collect();
    let driver = std::thread::spawn(move || drive_http(&url, Value::Array(ops)));
    // Kill one agent while the calls are flowing.
    wait_for(Duration::from_secs(15), || {
        f.agents
            .iter()
            .any(|a| a.process.log_text().contains("tool=slow-idempotent}"))
            .then_some(())
    })
    .expect("calls started");
    f.agent("a").process.kill9();
    let results = driver.join().unwrap();
    for r in &results {
        assert_eq!(r["is_error"], false, "{r}");
        assert_eq!(result_stdout(r), "ok\n");
    }
}

#[test]
fn etcd_going_away_and_back_loses_no_registration() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    f.etcd.stop();
    // The coordinator keeps the last known membership and says etcd is gone.
    let down = wait_for(Duration::from_secs(10), || {
        let fleet = get_json(&c.addr, "/fleet");
        (fleet["etcd"]["connected"] == false && fleet["agents"].as_array().unwrap().len() == 2)
            .then_some(())
    });
    assert!(
        down.is_some(),
        "/fleet never said etcd was down: {}",
        get_json(&c.addr, "/fleet")
    );
    let (status, body) = mcpfier_tests::http_request(&c.addr, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("etcd unreachable"), "{body}");
    // The agents cannot renew their leases; past the TTL they fence themselves.
    let fenced = wait_for(Duration::from_secs(15), || {
        let r = call(&c, "echo", json!({"m": "x"}));
        let text = r["text"][0].as_str().unwrap_or_default().to_owned();
        text.contains("lost its etcd lease").then_some(text)
    });
    assert!(
        fenced.is_some(),
        "the agents kept taking calls without a lease"
    );
    f.etcd.restart();
    let up = wait_for(Duration::from_secs(20), || {
        (get_json(&c.addr, "/fleet")["etcd"]["connected"] == true).then_some(())
    });
    assert!(up.is_some(), "the coordinator never reconnected to etcd");
    wait_routed(&c, &["a", "b"], Duration::from_secs(20));
    let config = f.coordinator_config("cli.yaml", "coord");
    let listed = wait_for(Duration::from_secs(20), || {
        let (code, out, _) = mcpfier_cli(
            &["--config", config.to_str().unwrap(), "agents", "--json"],
            &[],
        );
        (code == 0 && out.contains("\"id\": \"a\"") && out.contains("\"id\": \"b\"")).then_some(())
    });
    assert!(listed.is_some(), "registrations were lost");
    let mut seen: Vec<_> = (0..6)
        .map(|i| {
            let r = call(&c, "echo", json!({"m": format!("{i}")}));
            assert_eq!(r["is_error"], false, "{r}");
            agent_of(&r)
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a", "b"]);
    for id in ["a", "b"] {
        assert!(
            f.agent(id)
                .process
                .log_text()
                .contains("taking calls again"),
            "agent {id} never unfenced"
        );
    }
}

#[test]
fn drain_finishes_running_calls_and_takes_no_new_ones() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    let url = c.url();
    let pidfile = f.scratch.path().join("d.pid");
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([{"op": "call", "name": "slow", "arguments": {"tag": "d"}}]),
        )
        .remove(0)
    });
    wait_for(Duration::from_secs(15), || pidfile.exists().then_some(())).expect("started");
    let busy = if f.agent("a").process.log_text().contains("tool=slow}") {
        "a"
    } else {
        "b"
    };
    let other = if busy == "a" { "b" } else { "a" };
    f.agent(busy).process.signal(Signal::SIGTERM);
    // Marked draining: no new calls go there.
    wait_routed(&c, &[other], Duration::from_secs(5));
    for _ in 0..3 {
        assert_eq!(agent_of(&call(&c, "echo", json!({"m": "x"}))), other);
    }
    let r = driver.join().unwrap();
    assert_eq!(r["is_error"], false, "{r}");
    assert_eq!(result_stdout(&r), "finished\n");
    assert_eq!(agent_of(&r), busy);
    let agent = f.agent(busy);
    let code =
        wait_for(Duration::from_secs(15), || agent.process.exited()).expect("the agent exited");
    assert_eq!(code, 0);
}

#[test]
fn a_second_agent_with_the_same_id_is_refused() {
    let f = Fleet::start();
    let config = f.scratch.write(
        "dup.yaml",
        &format!(
            "id: a\nlisten: 127.0.0.1:0\ntls: {}\n{}\n",
            f.certs.tls_yaml("a"),
            f.agent_extra("pool: a")
        ),
    );
    let mut cmd = std::process::Command::new(mcpfier_tests::mcpfier_agent());
    cmd.arg("--config").arg(&config);
    let mut dup = mcpfier_tests::Process::start(cmd, &config, "dup");
    let code = wait_for(Duration::from_secs(20), || dup.exited()).expect("the duplicate exited");
    assert_eq!(code, 1);
    let log = dup.log_text();
    assert!(
        log.contains("agent id `a` is already registered by a live agent"),
        "{log}"
    );
}

#[test]
fn two_coordinators_route_over_the_same_fleet() {
    let f = Fleet::start();
    let c1 = f.coordinator();
    let c2 = Coordinator::start(
        &f.coordinator_config("coordinator2.yaml", "coord2"),
        &[],
        &[],
    );
    for c in [&c1, &c2] {
        wait_routed(c, &["a", "b"], Duration::from_secs(10));
        let mut seen: Vec<_> = (0..6)
            .map(|i| agent_of(&call(c, "echo", json!({"m": format!("{i}")}))))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["a", "b"]);
    }
}

#[test]
fn list_changed_reaches_the_client_when_the_last_agent_for_a_tool_leaves() {
    let mut f = Fleet::start();
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    let marker = f.scratch.path().join("listed");
    let url = c.url();
    let m = marker.clone();
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([
                {"op": "list_tools"},
                {"op": "touch", "path": m},
                {"op": "wait_list_changed", "timeout": 20},
                {"op": "list_tools"},
            ]),
        )
    });
    wait_for(Duration::from_secs(20), || marker.exists().then_some(()))
        .expect("the client listed the tools");
    f.agent("b").process.signal(Signal::SIGTERM);
    let results = driver.join().unwrap();
    let names = |r: &Value| -> Vec<String> {
        r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(names(&results[0]).contains(&"only-b".to_owned()));
    assert_eq!(results[2], json!({"changed": true}));
    assert!(
        !names(&results[3]).contains(&"only-b".to_owned()),
        "{:?}",
        names(&results[3])
    );
    assert!(names(&results[3]).contains(&"echo".to_owned()));
}

#[test]
fn a_registration_whose_certificate_names_another_agent_is_not_used() {
    let f = Fleet::start();
    // A record claiming id `ghost` at agent a's address: a's certificate says `a`.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let etcd =
            mcpfier_common::membership::Etcd::connect(std::slice::from_ref(&f.etcd.endpoint))
                .await
                .unwrap();
        let lease = etcd.grant(Duration::from_secs(30)).await.unwrap();
        let record = forged_record(&f.agents[0].addr, "ghost");
        etcd.register(PREFIX, "ghost", &record, lease)
            .await
            .unwrap();
    });
    let config = f.scratch.write(
        "ghost.yaml",
        &format!(
            "fleet:\n  tls: {}\n  etcd: {}\ntools:\n  - {{name: g, command: [/bin/true], placement: {{labels: {{pool: ghost}}}}}}\n",
            f.certs.tls_yaml("coord"),
            f.etcd.yaml(PREFIX)
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    let r = call(&c, "g", json!({}));
    assert_eq!(r["is_error"], true);
    let msg = r["text"][0].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("server is agent `a`, expected agent `ghost`"),
        "{msg}"
    );
}

/// A record no agent wrote: at `address`, in pool `pool`.
fn forged_record(address: &str, pool: &str) -> mcpfier_common::membership::AgentRecord {
    mcpfier_common::membership::AgentRecord {
        address: address.to_owned(),
        labels: [("pool".to_owned(), pool.to_owned())].into(),
        capacity: 100,
        running: 0,
        version: "forged".into(),
        protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
        started_at: 1,
        updated_at: mcpfier_common::membership::now_ms(),
        draining: false,
        capabilities: vec![],
        allow_tools: vec![],
    }
}

/// Agent `id`'s key in etcd: its lease and record, or `None` when there is no key.
fn key_of(
    rt: &tokio::runtime::Runtime,
    etcd: &mcpfier_common::membership::Etcd,
    id: &str,
) -> Option<(i64, Value)> {
    let key = mcpfier_common::membership::agent_key(PREFIX, id);
    let r = rt.block_on(etcd.client.clone().get(key, None)).unwrap();
    r.kvs()
        .first()
        .map(|kv| (kv.lease(), serde_json::from_slice(kv.value()).unwrap()))
}

#[test]
fn an_agent_whose_key_is_deleted_or_overwritten_registers_again_at_once() {
    let f = Fleet::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(mcpfier_common::membership::Etcd::connect(
            std::slice::from_ref(&f.etcd.endpoint),
        ))
        .unwrap();
    let key = mcpfier_common::membership::agent_key(PREFIX, "a");
    let (lease, _) = key_of(&rt, &etcd, "a").expect("a is registered");

    rt.block_on(etcd.client.clone().delete(key.clone(), None))
        .unwrap();
    let started = Instant::now();
    let back = wait_for(Duration::from_secs(5), || {
        key_of(&rt, &etcd, "a").filter(|(l, _)| *l == lease)
    });
    assert!(
        back.is_some(),
        "a did not register again after its key was deleted"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    f.agents[0]
        .process
        .wait_for_log("our etcd key was deleted", Duration::from_secs(5));

    // A plain put (no lease) that moves a into pool `secrets`.
    let mut forged = key_of(&rt, &etcd, "a").unwrap().1;
    forged["labels"] = json!({"pool": "secrets"});
    rt.block_on(
        etcd.client
            .clone()
            .put(key.clone(), forged.to_string(), None),
    )
    .unwrap();
    let started = Instant::now();
    let back = wait_for(Duration::from_secs(5), || {
        key_of(&rt, &etcd, "a").filter(|(l, r)| *l == lease && r["labels"]["pool"] == "a")
    });
    assert!(
        back.is_some(),
        "a's record was not restored: {:?}",
        key_of(&rt, &etcd, "a")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    f.agents[0]
        .process
        .wait_for_log("our etcd key was overwritten", Duration::from_secs(5));
}

/// Sends one `/bin/true` call straight to `agent`: whether it was accepted, or the refusal's
/// kind.
fn try_call(
    rt: &tokio::runtime::Runtime,
    client: &mcpfier_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    n: usize,
) -> Result<(), Option<mcpfier_exec::ErrorKind>> {
    let exec = mcpfier_exec::Execution::new(["/bin/true"]);
    let request = mcpfier_exec::wire::request(&exec, &format!("fence-{n}"), "r", "t");
    let mut client = client.clone();
    rt.block_on(async move {
        match tokio::time::timeout(Duration::from_secs(5), client.execute(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(mcpfier_exec::wire::refusal_kind(&status)),
            Err(_) => Err(None),
        }
    })
}

#[test]
fn no_call_is_accepted_once_the_lease_ttl_passed_without_a_renewal() {
    let mut f = Fleet::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = f.agents[0].raw_client(&rt, &f.certs);
    assert_eq!(try_call(&rt, &client, 0), Ok(()));
    let ttl = Duration::from_secs(3);

    // etcd hangs (SIGSTOP: connections stay open, nothing answers). Renewal stops at once, so
    // past the TTL from now every call is refused, whatever the agent's loop is blocked in.
    let etcd_process = f.etcd.process.as_ref().unwrap();
    etcd_process.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    let mut n = 1;
    let mut accepted_late = Vec::new();
    let mut fenced = false;
    while t0.elapsed() < ttl + Duration::from_secs(2) {
        let sent = t0.elapsed();
        match try_call(&rt, &client, n) {
            Ok(()) if sent >= ttl => accepted_late.push(sent),
            Ok(()) => {}
            Err(Some(mcpfier_exec::ErrorKind::Fenced)) => fenced = true,
            Err(other) => panic!("call {n} at {sent:?}: {other:?}"),
        }
        n += 1;
    }
    assert!(
        accepted_late.is_empty(),
        "accepted past the TTL at {accepted_late:?}"
    );
    assert!(fenced, "never fenced");
    etcd_process.signal(Signal::SIGCONT);
    let back = wait_for(Duration::from_secs(15), || {
        try_call(&rt, &client, 1000).ok()
    });
    assert!(back.is_some(), "not taking calls after etcd came back");

    // The agent itself stopped past its TTL: etcd lets the lease go. Woken while etcd hangs,
    // it refuses its first call, before any loop of its own has run.
    let etcd = rt
        .block_on(mcpfier_common::membership::Etcd::connect(
            std::slice::from_ref(&f.etcd.endpoint),
        ))
        .unwrap();
    f.agents[0].process.signal(Signal::SIGSTOP);
    let expired = wait_for(Duration::from_secs(15), || {
        key_of(&rt, &etcd, "a").is_none().then_some(())
    });
    assert!(expired.is_some(), "a's key outlived its lease");
    let etcd_process = f.etcd.process.as_ref().unwrap();
    etcd_process.signal(Signal::SIGSTOP);
    f.agents[0].process.signal(Signal::SIGCONT);
    assert_eq!(
        try_call(&rt, &client, 2000),
        Err(Some(mcpfier_exec::ErrorKind::Fenced))
    );
    etcd_process.signal(Signal::SIGCONT);
    let back = wait_for(Duration::from_secs(15), || {
        try_call(&rt, &client, 3000).ok()
    });
    assert!(back.is_some(), "not taking calls after etcd came back");

    // Each outage is logged when it starts and when it ends, not on every retry.
    let log = f.agents[0].process.log_text();
    let starts = log.matches("logged once per outage").count();
    assert!(
        (1..=3).contains(&starts),
        "{starts} outage warnings:\n{log}"
    );
    assert!(log.contains("etcd answers again"), "{log}");
    f.etcd.stop();
}

#[test]
fn an_agent_announcing_a_label_its_certificate_does_not_vouch_for_gets_no_such_work() {
    let mut f = Fleet::start();
    // `vault` is issued pool=secrets; `rogue` (a compromised agent) only claims it.
    f.certs
        .issue_with("agent", "vault", &["--label", "pool=secrets"]);
    f.certs.issue("agent", "rogue");
    f.add_agent("vault", "pool: secrets");
    f.add_agent("rogue", "pool: secrets");
    let tools = format!(
        "{TOOLS}  - name: secret\n    command: [/bin/sh, -c, \"echo \\\"$TOKEN\\\" > /dev/null; echo ran\"]\n    env: {{TOKEN: \"${{env:VAULT_TOKEN}}\"}}\n    placement: {{labels: {{pool: secrets}}}}\n"
    );
    let config = f.scratch.write(
        "certified.yaml",
        &format!(
            "fleet:\n  tls: {}\n  etcd: {}\n  certified_labels: [pool]\n{tools}",
            f.certs.tls_yaml("coord"),
            f.etcd.yaml(PREFIX)
        ),
    );
    let c = Coordinator::start(&config, &[("VAULT_TOKEN", "t0ken")], &[]);
    wait_routed(&c, &["a", "b", "rogue", "vault"], Duration::from_secs(10));
    for i in 0..6 {
        let r = call(&c, "secret", json!({}));
        assert_eq!(r["is_error"], false, "call {i}: {r}");
        assert_eq!(agent_of(&r), "vault", "call {i}: {r}");
    }
    assert!(
        c.log_text()
            .contains("the agent announces a label its certificate does not vouch for"),
        "{}",
        c.log_text()
    );
    // With the vouched-for agent gone, the work fails rather than going to the rogue.
    f.agent("vault").process.kill9();
    wait_routed(&c, &["a", "b", "rogue"], Duration::from_secs(15));
    let r = call(&c, "secret", json!({}));
    assert_eq!(r["structured_content"]["error"]["kind"], "no_agent", "{r}");
    assert_ne!(agent_of(&r), "rogue", "{r}");
}

#[test]
fn a_record_pointing_at_a_tarpit_is_never_routable_and_costs_calls_nothing() {
    let f = Fleet::start();
    // Accepts TCP and never says a word.
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let etcd =
            mcpfier_common::membership::Etcd::connect(std::slice::from_ref(&f.etcd.endpoint))
                .await
                .unwrap();
        let lease = etcd.grant(Duration::from_secs(60)).await.unwrap();
        for id in ["pit1", "pit2", "pit3"] {
            let record = forged_record(&tarpit.local_addr().unwrap().to_string(), "a");
            etcd.register(PREFIX, id, &record, lease).await.unwrap();
        }
    });
    let c = f.coordinator();
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    for i in 0..6 {
        let started = Instant::now();
        let r = call(&c, "echo", json!({"m": format!("{i}")}));
        assert_eq!(r["is_error"], false, "{r}");
        assert!(["a", "b"].contains(&agent_of(&r).as_str()), "{r}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    let fleet = get_json(&c.addr, "/fleet");
    for agent in fleet["agents"].as_array().unwrap() {
        if agent["id"].as_str().unwrap().starts_with("pit") {
            assert_eq!(agent["healthy"], false, "{agent}");
        }
    }
    drop(tarpit);
}

#[test]
fn a_record_nobody_answers_at_is_dialled_less_and_less_and_again_at_once_when_it_restarts() {
    let f = Fleet::start();
    // Accepts each connection and closes it: every check of the record fails at once.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closer.local_addr().unwrap().to_string();
    let dials = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    {
        let dials = dials.clone();
        std::thread::spawn(move || {
            for conn in closer.incoming() {
                dials.lock().unwrap().push(Instant::now());
                drop(conn);
            }
        });
    }
    let config = f.scratch.write(
        "fast-health.yaml",
        &format!(
            "fleet:\n  tls: {}\n  etcd: {}\n  health_interval: 100ms\n{TOOLS}",
            f.certs.tls_yaml("coord"),
            f.etcd.yaml(PREFIX)
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    wait_routed(&c, &["a", "b"], Duration::from_secs(10));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(mcpfier_common::membership::Etcd::connect(
            std::slice::from_ref(&f.etcd.endpoint),
        ))
        .unwrap();
    let lease = rt.block_on(etcd.grant(Duration::from_secs(60))).unwrap();
    let put = |started_at: u64| {
        let mut record = forged_record(&address, "a");
        record.started_at = started_at;
        rt.block_on(etcd.register(PREFIX, "mute", &record, lease))
            .unwrap();
    };
    put(1);
    let first = wait_for(Duration::from_secs(10), || {
        dials.lock().unwrap().first().copied()
    })
    .expect("the coordinator dials the record's address");
    // Measure over a window: checking every 100 ms would dial about 50 times in 5 s; backing
    // off (100 ms doubling) dials about 7 times.
    let window = Duration::from_secs(5);
    wait_for(window + Duration::from_secs(5), || {
        (first.elapsed() >= window).then_some(())
    })
    .expect("the window ends");
    let in_window = dials
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.duration_since(first) < window)
        .count();
    assert!(
        (3..=12).contains(&in_window),
        "{in_window} dials in {window:?} at a 100 ms health interval"
    );
    // A new run of the agent (a new started_at) is checked at once, not at the end of the
    // backoff (the next check would come about 1.4 s from now).
    let before = dials.lock().unwrap().len();
    let restarted = Instant::now();
    put(2);
    wait_for(Duration::from_secs(10), || {
        (dials.lock().unwrap().len() > before).then_some(())
    })
    .expect("the restarted record is dialled");
    assert!(
        restarted.elapsed() < Duration::from_millis(700),
        "the restarted record was dialled {:?} after its put",
        restarted.elapsed()
    );
    assert!(routed_ids(&c) == ["a", "b"], "{:?}", routed_ids(&c));
}
