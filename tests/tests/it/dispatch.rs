//! Dispatch semantics under network faults: a call goes to a second agent only when nothing
//! can have run on the first. Every command appends its tag to a ledger, which is compared
//! with what the caller was told.

use std::time::{Duration, Instant};

use mcpfier_tests::{
    Agent, Certs, Coordinator, Direction, Proxy, Scratch, drive_http, result_text as text, wait_for,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const TOOLS: &str = r#"
tools:
  - name: once
    description: Not idempotent; appends its tag to the ledger
    command: ["/bin/sh", "-c", "echo \"$1\" >> @DIR@/ledger; echo ran", "sh", "{{tag}}"]
    params: {tag: {type: string, pattern: "^[a-z0-9]+$"}}
    timeout: 20s
"#;

/// a1 behind a relay the test controls, a2 dialed directly; health checks rare enough that
/// only calls find out what the relay does.
struct Fleet {
    scratch: Scratch,
    proxy: Proxy,
    a1: Agent,
    _a2: Agent,
    coordinator: Coordinator,
}

impl Fleet {
    fn start() -> Fleet {
        let scratch = Scratch::new();
        let certs = Certs::init(&scratch.path().join("certs"));
        for (role, name) in [("coordinator", "coord"), ("agent", "a1"), ("agent", "a2")] {
            certs.issue(role, name);
        }
        let a1 = Agent::start(scratch.path(), &certs, "a1", "");
        let a2 = Agent::start(scratch.path(), &certs, "a2", "");
        let proxy = Proxy::start(&a1.addr);
        let config = scratch.config(&format!(
            "fleet:\n  tls: {}\n  health_interval: 1h\n  agents:\n    - {{id: a1, address: \"{}\"}}\n    - {{id: a2, address: \"{}\"}}\n{TOOLS}",
            certs.tls_yaml("coord"),
            proxy.addr,
            a2.addr
        ));
        std::fs::write(scratch.path().join("ledger"), "").unwrap();
        let coordinator = Coordinator::start(&config, &[], &[]);
        Fleet {
            scratch,
            proxy,
            a1,
            _a2: a2,
            coordinator,
        }
    }

    fn call(&self, tag: &str) -> (Value, Duration) {
        let started = Instant::now();
        let r = drive_http(
            &self.coordinator.url(),
            json!([{"op": "call", "name": "once", "arguments": {"tag": tag}}]),
        )
        .remove(0);
        (r, started.elapsed())
    }

    /// How often the command ran with `tag`.
    fn runs(&self, tag: &str) -> usize {
        std::fs::read_to_string(self.scratch.path().join("ledger"))
            .unwrap()
            .lines()
            .filter(|l| *l == tag)
            .count()
    }
}

fn agent_of(r: &Value) -> &str {
    r["structured_content"]["agent"]
        .as_str()
        .unwrap_or_default()
}

/// Calls until one lands on a1 with `fault` in force (ties between idle agents rotate, so
/// that takes a few calls at most); calls that a2 ran must have run there once. Returns the
/// tag, result and time of the call that met a1.
fn call_until_a1(f: &Fleet, fault: impl Fn(), heal: impl Fn()) -> (String, Value, Duration) {
    for i in 0..6 {
        let tag = format!("c{i}");
        fault();
        let (r, took) = f.call(&tag);
        heal();
        if agent_of(&r) == "a2" && r["is_error"] == false {
            assert_eq!(f.runs(&tag), 1, "{tag} ran on a2: {r}");
            continue;
        }
        return (tag, r, took);
    }
    panic!("six calls and none went to a1")
}

#[test]
fn a_call_whose_acceptance_never_comes_back_runs_once_and_is_reported_unknown() {
    let f = Fleet::start();
    // The agent gets the call, but nothing it says reaches the coordinator.
    let (tag, r, took) = call_until_a1(&f, || f.proxy.hold(Direction::Down), || f.proxy.release());
    let err = &r["structured_content"]["error"];
    assert_eq!(err["kind"], "agent_lost", "{r}");
    assert_eq!(err["outcome"], "unknown", "{r}");
    assert_eq!(agent_of(&r), "a1", "{r}");
    assert!(text(&r).contains("fleet.accept_timeout"), "{}", text(&r));
    // The accept timeout (2 s), not the keep-alive (seconds more).
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // It did run on a1 (the caller was told it may have), and never on a2.
    let ran = wait_for(Duration::from_secs(10), || (f.runs(&tag) > 0).then_some(()));
    assert!(ran.is_some(), "the call never reached a1");
    assert_eq!(f.runs(&tag), 1, "{tag} ran twice");
}

#[test]
fn a_call_sent_to_a_frozen_agent_waits_only_the_accept_timeout() {
    let f = Fleet::start();
    let (tag, r, took) = call_until_a1(
        &f,
        || f.a1.process.signal(Signal::SIGSTOP),
        || f.a1.process.signal(Signal::SIGCONT),
    );
    assert_eq!(
        r["structured_content"]["error"]["kind"], "agent_lost",
        "{r}"
    );
    assert_eq!(
        r["structured_content"]["error"]["outcome"], "unknown",
        "{r}"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // Woken, a1 may run it once (the outcome was unknown) or hear the cancel first; a2
    // never ran it.
    let _ = wait_for(Duration::from_secs(10), || {
        let log = f.a1.process.log_text();
        ["call accepted", "will not run", "cancel requested"]
            .iter()
            .any(|m| log.contains(m))
            .then_some(())
    });
    assert!(f.runs(&tag) <= 1, "{tag} ran twice");
}

#[test]
fn a_call_that_could_not_connect_moves_to_another_agent_and_runs_once() {
    let f = Fleet::start();
    // a1 is in routing, but its address now refuses every connection.
    let (r, _) = f.call("warm");
    assert_eq!(r["is_error"], false, "{r}");
    f.proxy.refuse();
    for i in 0..4 {
        let tag = format!("m{i}");
        let (r, _) = f.call(&tag);
        assert_eq!(r["is_error"], false, "{tag}: {r}");
        assert_eq!(agent_of(&r), "a2", "{r}");
        assert_eq!(f.runs(&tag), 1, "{tag}");
    }
    assert!(
        f.coordinator
            .process
            .log_text()
            .contains("agent out of routing"),
        "a1's connect failure was never seen: {}",
        f.coordinator.process.log_text()
    );
}
