//! The fleet: a coordinator and two agents on loopback over mutual TLS, certificates made by
//! `mcpfier certs`, the official Python MCP client at the front.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mcpfier_common::tls::{self, Identity, Role, TlsFiles};
use mcpfier_proto::v1::{self, agent_client::AgentClient, execute_event::Event};
use mcpfier_tests::{
    Agent, Certs, Coordinator, Scratch, assert_all_gone, drive_http, drive_http_raw, drive_stdio,
    read_pids, result_stdout, result_text as text,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

struct Cluster {
    scratch: Scratch,
    certs: Certs,
    a1: Agent,
    a2: Agent,
    coordinator: Coordinator,
}

const TOOLS: &str = r#"
tools:
  - name: echo
    command: [/bin/echo, "{{m}}"]
    params: {m: {type: string}}
  - name: build
    command: [/bin/echo, built]
    placement: {labels: {pool: build}}
  - name: gpu
    command: [/bin/true]
    placement: {labels: {pool: gpu}}
  - name: web-only
    description: Placed on the agent whose policy refuses it
    command: [/bin/true]
    placement: {labels: {pool: web}}
  - name: hang
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; sleep 300 & echo $! >> \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait", "sh", "@DIR@/{{tag}}.pids"]
    params: {tag: {type: string, pattern: "^[a-z]+$"}}
    timeout: 60s
  - name: lines
    command: ["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]
  - name: slow-idempotent
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; sleep 2; echo done", "sh", "@DIR@/{{tag}}.pid"]
    params: {tag: {type: string, pattern: "^[a-z]+$"}}
    annotations: {idempotent: true}
    timeout: 30s
  - name: daemon
    description: Starts a setsid daemon that would outlive the call
    command: ["/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 300' sh \"$1\" & while [ ! -s \"$1\" ]; do :; done", "sh", "@DIR@/{{tag}}.daemon"]
    params: {tag: {type: string, pattern: "^[a-z]+$"}}
  - name: big
    description: 8 MiB of output, twice tonic's default message limit
    command: ["/bin/sh", "-c", "head -c 8388608 /dev/zero | tr '\\0' x"]
    max_output: 8MiB
"#;

impl Cluster {
    fn start() -> Cluster {
        let scratch = Scratch::new();
        let certs = Certs::init(&scratch.path().join("certs"));
        for (role, name) in [("coordinator", "coord"), ("agent", "a1"), ("agent", "a2")] {
            certs.issue(role, name);
        }
        let a1 = Agent::start(scratch.path(), &certs, "a1", "labels: {pool: build}");
        let a2 = Agent::start(
            scratch.path(),
            &certs,
            "a2",
            "labels: {pool: web}\npolicy: {allow_tools: [\"echo\", \"hang\", \"lines\", \"slow-*\"]}",
        );
        let config = scratch.config(&format!(
            "fleet:\n  tls: {}\n  agents:\n    - {{id: a1, address: \"{}\"}}\n    - {{id: a2, address: \"{}\"}}\n{TOOLS}",
            certs.tls_yaml("coord"),
            a1.addr,
            a2.addr
        ));
        let coordinator = Coordinator::start(
            &config,
            &[],
            &["--log", "debug,h2=info,hyper=info,tower=info,rustls=info"],
        );
        Cluster {
            scratch,
            certs,
            a1,
            a2,
            coordinator,
        }
    }

    /// The agent whose log shows it accepted a call of `tool`.
    fn runner_of(&mut self, tool: &str) -> &mut Agent {
        let marker = format!("tool={tool}}}: mcpfier_agent::service: call accepted");
        if self.a1.process.log_text().contains(&marker) {
            &mut self.a1
        } else if self.a2.process.log_text().contains(&marker) {
            &mut self.a2
        } else {
            panic!("no agent logged `{marker}`")
        }
    }

    fn call(&self, name: &str, args: Value) -> Value {
        drive_http(
            &self.coordinator.url(),
            json!([{"op": "call", "name": name, "arguments": args}]),
        )
        .remove(0)
    }
}

#[test]
fn calls_spread_over_both_agents_and_say_where_they_ran() {
    let c = Cluster::start();
    let ops: Vec<_> = (0..8)
        .map(|i| json!({"op": "call", "name": "echo", "arguments": {"m": format!("m{i}")}}))
        .collect();
    let results = drive_http(&c.coordinator.url(), Value::Array(ops));
    let mut agents: Vec<_> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["is_error"], false, "{r}");
            assert_eq!(result_stdout(r), format!("m{i}\n"));
            r["structured_content"]["agent"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    agents.sort();
    agents.dedup();
    assert_eq!(agents, ["a1", "a2"]);
}

#[test]
fn placement_labels_choose_the_agent() {
    let c = Cluster::start();
    for _ in 0..4 {
        let r = c.call("build", json!({}));
        assert_eq!(r["structured_content"]["agent"], "a1", "{r}");
    }
}

#[test]
fn a_tool_no_agent_can_serve_fails_at_once_and_says_which_labels() {
    let c = Cluster::start();
    let started = Instant::now();
    let r = c.call("gpu", json!({}));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r["is_error"], true);
    let msg = text(&r);
    assert!(msg.contains("labels pool=gpu"), "{msg}");
    assert!(msg.contains("a1 [pool=build] (healthy)"), "{msg}");
    assert_eq!(r["structured_content"]["error"]["kind"], "no_agent");
    assert_eq!(r["structured_content"]["error"]["outcome"], "not_run");
}

#[test]
fn agent_policy_refusals_are_clear() {
    let c = Cluster::start();
    // The coordinator knows a2's policy and does not route web-only there, nor list it.
    let results = drive_http(
        &c.coordinator.url(),
        json!([{"op": "list_tools"}, {"op": "call", "name": "web-only", "arguments": {}}]),
    );
    let names: Vec<_> = results[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"web-only".to_owned()), "{names:?}");
    assert!(!names.contains(&"gpu".to_owned()), "{names:?}");
    assert!(names.contains(&"echo".to_owned()), "{names:?}");
    let msg = text(&results[1]);
    assert_eq!(results[1]["is_error"], true);
    assert!(
        msg.contains("a2 [pool=web] allows echo, hang, lines, slow-*"),
        "{msg}"
    );
    // The agent refuses by itself too (defence in depth), with a typed status.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = grpc_client(&rt, &c.certs, Some((&c.certs, "coord")), &c.a2);
    let request = v1::ExecuteRequest {
        call_id: "p1".into(),
        tool: "web-only".into(),
        argv: vec!["/bin/true".into()],
        timeout_ms: 1000,
        max_output: 1024,
        protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
        ..Default::default()
    };
    let Err(status) = rt.block_on(client.execute(request)) else {
        panic!("the agent ran a tool its policy refuses")
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.metadata().get("mcpfier-error-kind").unwrap(),
        "policy"
    );
    assert!(
        status
            .message()
            .contains("agent `a2` refuses: tool `web-only` is not in this agent's allow_tools"),
        "{}",
        status.message()
    );
}

#[test]
fn an_agent_killed_mid_call_gives_a_clear_error_not_a_hang() {
    let mut c = Cluster::start();
    let url = c.coordinator.url();
    let pidfile = c.scratch.path().join("lost.pids");
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([{"op": "call", "name": "hang", "arguments": {"tag": "lost"}}]),
        )
        .remove(0)
    });
    let pids = mcpfier_tests::wait_for(Duration::from_secs(20), || {
        let p = read_pids(&pidfile);
        (p.len() == 2).then_some(p)
    })
    .expect("the command started");
    // Which agent runs it? Its log says so.
    let runner = c.runner_of("hang");
    let runner_id = runner.id.clone();
    runner.process.kill9();
    let started = Instant::now();
    let r = driver.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the client waited too long"
    );
    assert_eq!(r["is_error"], true);
    let msg = text(&r);
    assert!(
        msg.contains(&format!("agent `{runner_id}` was lost")),
        "{msg}"
    );
    assert!(msg.contains("outcome is unknown"), "{msg}");
    let err = &r["structured_content"]["error"];
    assert_eq!(err["kind"], "agent_lost");
    assert_eq!(err["outcome"], "unknown");
    assert_eq!(r["structured_content"]["agent"], runner_id.as_str());
    // SIGKILL gives the agent no chance to clean up: its cgroup supervisor does, at once.
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn a_setsid_daemon_started_by_a_call_is_gone_when_the_call_ends() {
    let c = Cluster::start();
    let r = c.call("daemon", json!({"tag": "d"}));
    assert_eq!(r["is_error"], false, "{r}");
    let pids = read_pids(&c.scratch.path().join("d.daemon"));
    assert_eq!(pids.len(), 1, "{r}");
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn a_restarted_agent_kills_what_its_killed_predecessor_left() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("coordinator", "coord");
    certs.issue("agent", "r1");
    let agent = Agent::start(scratch.path(), &certs, "r1", "");
    // Without its supervisor, a SIGKILLed agent leaves its command running...
    let supervisor: i32 = agent
        .process
        .wait_for_log("cgroup supervisor started pid=", Duration::from_secs(10))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), Signal::SIGKILL).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = agent.raw_client(&rt, &certs);
    let pidfile = scratch.path().join("left.pids");
    let exec = mcpfier_exec::Execution {
        timeout: Duration::from_secs(60),
        ..mcpfier_exec::Execution::new([
            "/bin/sh".to_owned(),
            "-c".into(),
            format!(
                "setsid sleep 300 & echo $! > {f}.tmp; mv {f}.tmp {f}; sleep 300",
                f = pidfile.display()
            ),
        ])
    };
    let request = mcpfier_exec::wire::request(&exec, "left", "r", "t");
    let _stream = rt.block_on(client.execute(request)).unwrap();
    let pids = mcpfier_tests::wait_for(Duration::from_secs(10), || {
        let p = read_pids(&pidfile);
        (!p.is_empty()).then_some(p)
    })
    .expect("the command started");
    let mut agent = agent;
    agent.process.kill9();
    assert!(mcpfier_tests::alive(pids[0]), "nothing was left to reap");
    // ...which the next agent with its id kills at start, and says so.
    let again = Agent::start(scratch.path(), &certs, "r1", "");
    again.process.wait_for_log(
        "killed processes an earlier run left",
        Duration::from_secs(10),
    );
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn an_idempotent_call_survives_losing_its_agent() {
    let mut c = Cluster::start();
    let url = c.coordinator.url();
    let pidfile = c.scratch.path().join("retry.pid");
    let driver = std::thread::spawn(move || {
        drive_http(
            &url,
            json!([{"op": "call", "name": "slow-idempotent", "arguments": {"tag": "retry"}}]),
        )
        .remove(0)
    });
    mcpfier_tests::wait_for(Duration::from_secs(20), || pidfile.exists().then_some(()))
        .expect("started");
    let runner = c.runner_of("slow-idempotent");
    let lost = runner.id.clone();
    runner.process.kill9();
    let r = driver.join().unwrap();
    assert_eq!(r["is_error"], false, "{r}");
    assert_eq!(result_stdout(&r), "done\n");
    assert_ne!(r["structured_content"]["agent"], lost.as_str());
}

#[test]
fn cancellation_from_the_mcp_client_kills_the_process_on_the_agent() {
    let c = Cluster::start();
    let pidfile = c.scratch.path().join("cancel.pids");
    let results = drive_http(
        &c.coordinator.url(),
        json!([{"op": "call", "name": "hang", "arguments": {"tag": "cancel"}, "cancel_when_file": pidfile}]),
    );
    assert_eq!(results[0], json!({"cancelled": true, "file_seen": true}));
    assert_all_gone(&read_pids(&pidfile), Duration::from_secs(5));
}

#[test]
fn a_dropped_coordinator_stream_leaves_nothing_running_on_the_agent() {
    let mut c = Cluster::start();
    let url = c.coordinator.url();
    let pidfile = c.scratch.path().join("drop.pids");
    let driver = std::thread::spawn(move || {
        drive_http_raw(
            &url,
            json!([{"op": "call", "name": "hang", "arguments": {"tag": "drop"}}]),
        )
    });
    let pids = mcpfier_tests::wait_for(Duration::from_secs(20), || {
        let p = read_pids(&pidfile);
        (p.len() == 2).then_some(p)
    })
    .expect("the command started");
    c.coordinator.process.kill9();
    assert_all_gone(&pids, Duration::from_secs(10));
    let _ = driver.join();
}

fn grpc_client(
    rt: &tokio::runtime::Runtime,
    roots_from: &Certs,
    cert: Option<(&Certs, &str)>,
    agent: &Agent,
) -> AgentClient<tonic::transport::Channel> {
    let _guard = rt.enter();
    let roots = tls::load(&TlsFiles {
        ca: roots_from.dir.join("ca.pem"),
        cert: roots_from.dir.join("coord.pem"),
        key: roots_from.dir.join("coord.key"),
    })
    .unwrap()
    .roots;
    let cert = cert.map(|(certs, name)| {
        let m = tls::load(&TlsFiles {
            ca: certs.dir.join("ca.pem"),
            cert: certs.dir.join(format!("{name}.pem")),
            key: certs.dir.join(format!("{name}.key")),
        })
        .unwrap();
        (m.chain, m.key)
    });
    let config =
        tls::client_config_from(roots, cert, Identity::new(Role::Agent, agent.id.clone())).unwrap();
    AgentClient::new(
        mcpfier_coordinator::fleet::channel(config, &agent.addr, Duration::from_secs(2)).unwrap(),
    )
}

/// Issues `name` signed by the CA in `certs`, valid only in the past.
fn issue_expired(certs: &Certs, name: &str) {
    let ca = std::fs::read_to_string(certs.dir.join("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.dir.join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        Identity::new(Role::Coordinator, name)
            .uri()
            .try_into()
            .unwrap(),
    )];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(certs.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(certs.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn the_agent_refuses_clients_without_the_coordinator_identity() {
    let c = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let foreign = Certs::init(&c.scratch.path().join("foreign"));
    foreign.issue("coordinator", "coord");
    issue_expired(&c.certs, "old-coord");

    let info = |client: &mut AgentClient<tonic::transport::Channel>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.info(v1::InfoRequest {})).await
        })
        .expect("an answer within 10 s")
    };
    // The right certificate works.
    let mut good = grpc_client(&rt, &c.certs, Some((&c.certs, "coord")), &c.a1);
    assert_eq!(info(&mut good).unwrap().into_inner().id, "a1");
    let cases = [
        ("no certificate", grpc_client(&rt, &c.certs, None, &c.a1)),
        (
            "a certificate from another CA",
            grpc_client(&rt, &c.certs, Some((&foreign, "coord")), &c.a1),
        ),
        (
            "an expired certificate",
            grpc_client(&rt, &c.certs, Some((&c.certs, "old-coord")), &c.a1),
        ),
        (
            "an agent-role certificate",
            grpc_client(&rt, &c.certs, Some((&c.certs, "a2")), &c.a1),
        ),
    ];
    for (what, mut client) in cases {
        assert!(
            info(&mut client).is_err(),
            "the agent accepted a client with {what}"
        );
    }
    // The client sees the refusal before the agent has necessarily logged it.
    let logged = mcpfier_tests::wait_for(Duration::from_secs(10), || {
        let log = c.a1.process.log_text();
        (log.contains("only the coordinator role may connect")
            && log.matches("TLS handshake refused").count() >= 4)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", c.a1.process.log_text());
}

#[test]
fn the_coordinator_refuses_an_agent_with_the_wrong_identity() {
    let c = Cluster::start();
    // a2's address listed as a1: the certificate says a2, so it must not be used.
    let config = c.scratch.write(
        "swapped.yaml",
        &format!(
            "fleet:\n  tls: {}\n  agents:\n    - {{id: a1, address: \"{}\"}}\ntools:\n  - {{name: t, command: [/bin/true]}}\n",
            c.certs.tls_yaml("coord"),
            c.a2.addr
        ),
    );
    let coordinator = Coordinator::start(&config, &[], &[]);
    let r = drive_http(
        &coordinator.url(),
        json!([{"op": "call", "name": "t", "arguments": {}}]),
    )
    .remove(0);
    assert_eq!(r["is_error"], true);
    let msg = text(&r);
    assert!(
        msg.contains("server is agent `a2`, expected agent `a1`"),
        "{msg}"
    );
}

#[test]
fn a_repeated_call_id_attaches_instead_of_running_twice() {
    let c = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = grpc_client(&rt, &c.certs, Some((&c.certs, "coord")), &c.a1);
    let file = c.scratch.path().join("appended");
    let request = v1::ExecuteRequest {
        call_id: "call-1".into(),
        request_id: "r".into(),
        tool: "append".into(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo ran >> \"$1\"; echo out".into(),
            "sh".into(),
            file.display().to_string(),
        ],
        timeout_ms: 10_000,
        max_output: 1024,
        kill_grace_ms: 500,
        protocol_version: mcpfier_proto::PROTOCOL_VERSION.into(),
        ..Default::default()
    };
    let collect = |client: &mut AgentClient<tonic::transport::Channel>| {
        rt.block_on(async {
            let stream = client.execute(request.clone()).await.unwrap().into_inner();
            stream
                .map(|e| e.unwrap().event.unwrap())
                .collect::<Vec<_>>()
                .await
        })
    };
    let first = collect(&mut client);
    let second = collect(&mut client);
    assert!(matches!(&first[0], Event::Accepted(a) if !a.attached));
    assert!(
        matches!(&second[0], Event::Accepted(a) if a.attached),
        "{second:?}"
    );
    for events in [&first, &second] {
        // Protocol 1.2: the output is the chunks' bytes, and Finished carries none.
        let out: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Event::Output(c) => Some(c.data.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(out, b"out\n");
        match events.last() {
            Some(Event::Finished(f)) => {
                assert_eq!(f.exit_code, Some(0));
                assert!(f.output_in_chunks && f.stdout.is_empty());
            }
            other => panic!("no final event: {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "ran\n",
        "the command ran twice"
    );

    // A call the coordinator never heard of is cancelled as not found.
    let found = rt
        .block_on(client.cancel(v1::CancelRequest {
            call_id: "nope".into(),
        }))
        .unwrap()
        .into_inner()
        .found;
    assert!(!found);
    let _ = Arc::new(());
}

#[test]
fn agent_output_reaches_the_client_live_as_progress() {
    let c = Cluster::start();
    let r = drive_http(
        &c.coordinator.url(),
        json!([{"op": "call", "name": "lines", "arguments": {}, "progress": true}]),
    )
    .remove(0);
    assert_eq!(r["is_error"], false, "{r}");
    let progress = r["progress"].as_array().unwrap();
    let messages: Vec<_> = progress
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert_eq!(messages.join("\n"), "line1\nline2\nline3", "{progress:?}");
    assert!(
        progress.len() >= 2,
        "output came in one piece: {progress:?}"
    );
}

#[test]
fn sighup_reloads_the_agent_certificates() {
    let c = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let info = |client: &mut AgentClient<tonic::transport::Channel>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.info(v1::InfoRequest {})).await
        })
        .expect("an answer within 10 s")
    };
    let mut before = grpc_client(&rt, &c.certs, Some((&c.certs, "coord")), &c.a1);
    assert!(info(&mut before).is_ok());
    // Swap the agent's trusted CA for a new one and reload: the old coordinator certificate no
    // longer chains, so fresh connections from it are refused.
    let ca = c.certs.dir.join("ca.pem");
    let original = std::fs::read(&ca).unwrap();
    let other = Certs::init(&c.scratch.path().join("other"));
    std::fs::copy(other.dir.join("ca.pem"), &ca).unwrap();
    c.a1.process.signal(Signal::SIGHUP);
    c.a1.process
        .wait_for_log("reloaded the TLS files", Duration::from_secs(10));
    let mut after = grpc_client(&rt, &c.certs, Some((&c.certs, "coord")), &c.a1);
    std::fs::write(&ca, &original).unwrap();
    assert!(
        info(&mut after).is_err(),
        "a certificate from the old CA was still accepted"
    );
}

#[test]
fn eight_mebibytes_of_output_cross_the_wire_and_the_agent_stays_routable() {
    let c = Cluster::start();
    // Over stdio: the Python SDK's HTTP client caps one SSE event at 1 MiB, a limit of that
    // client, not of the agent protocol under test.
    let config = c.scratch.path().join("mcpfier.yaml");
    let ops = json!([
        {"op": "call", "name": "big", "arguments": {}},
        {"op": "call", "name": "big", "arguments": {}}
    ]);
    for r in drive_stdio(&config, &[], &[], ops).results {
        let out = result_stdout(&r);
        assert_eq!(
            out.len(),
            8 << 20,
            "is_error {}: {}",
            r["is_error"],
            text(&r)
        );
        assert!(out.bytes().all(|b| b == b'x'));
        assert_eq!(r["structured_content"]["truncated"], false, "{}", text(&r));
        assert_eq!(r["structured_content"]["agent"], "a1");
    }
    // Both agents are still in routing: calls spread over them.
    let agents: std::collections::BTreeSet<String> = (0..6)
        .map(|i| {
            let r = c.call("echo", json!({"m": format!("m{i}")}));
            assert_eq!(r["is_error"], false, "{r}");
            r["structured_content"]["agent"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(agents.len(), 2, "{agents:?}");
}

#[test]
fn mcpfier_agent_validate_checks_a_config_without_starting() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("agent", "a1");
    let agent = |args: &[&str]| {
        let out = std::process::Command::new(mcpfier_tests::mcpfier_agent())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run mcpfier-agent");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = scratch.write(
        "good.yaml",
        &format!(
            "id: a1\nlisten: 127.0.0.1:7443\nlabels: {{region: eu-west}}\ntls: {}\n",
            certs.tls_yaml("a1")
        ),
    );
    let (code, out, err) = agent(&["validate", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok: agent `a1` listens on 127.0.0.1:7443"),
        "{out}"
    );
    assert!(
        out.contains("region=eu-west") && out.contains("static"),
        "{out}"
    );
    let bad = scratch.write(
        "bad.yaml",
        &format!(
            "id: a1\nlisten: 127.0.0.1:7443\ncapacity: 0\ntls: {}\n",
            certs.tls_yaml("a1")
        ),
    );
    let (code, _, err) = agent(&["--config", bad.to_str().unwrap(), "validate"]);
    assert_eq!(code, 1);
    assert!(err.contains("capacity: must be at least 1"), "{err}");
    let missing = scratch.path().join("nowhere.yaml");
    let (code, _, err) = agent(&["validate", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no agent config at") && err.contains("pass --config FILE"),
        "{err}"
    );
}
