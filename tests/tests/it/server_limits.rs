//! `server.limits` under abuse: slow headers, idle connections and a connection flood against
//! the real binary over raw TCP; the session caps and idle expiry over raw HTTP; and a call
//! that outlives `session_idle` with the official Python client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mcpfier_tests::{
    Coordinator, Scratch, drive_http_ok_as, http_exchange, http_request, wait_for,
};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// Whether the server has closed `s` (a read sees the end, or the connection was reset).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn healthz_ok(addr: &str) -> bool {
    http_request(addr, "GET", "/healthz", &[], "").is_ok_and(|(status, _)| status == 200)
}

#[test]
fn slow_headers_and_idle_connections_are_closed_on_time_and_a_flood_cannot_starve_healthz() {
    let scratch = Scratch::new();
    // Slow headers: 1 s to send them.
    let config = scratch.write(
        "slow.yaml",
        "server:\n  limits: {header_timeout: 1s, idle_timeout: 1h}\ntools:\n  - {name: t, command: [/bin/true]}\n",
    );
    let c = Coordinator::start(&config, &[], &[]);
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&c.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    assert!(
        healthz_ok(&c.addr),
        "a client with whole headers is served beside them"
    );
    let all_closed = wait_for(Duration::from_secs(10), || {
        slow.retain_mut(|s| !closed(s));
        slow.is_empty().then_some(())
    });
    assert!(
        all_closed.is_some(),
        "{} slow-header connections still open after 10 s",
        slow.len()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the header timeout: {took:?}"
    );
    drop(c);

    // Idle connections: 1 s with nothing in flight, and at most 50 open.
    let config = scratch.write(
        "idle.yaml",
        "server:\n  limits: {connections: 50, header_timeout: 1h, idle_timeout: 1s}\ntools:\n  - {name: t, command: [/bin/true]}\n",
    );
    let c = Coordinator::start(&config, &[], &[]);
    // One keep-alive request answered, then nothing: closed about a second later.
    let mut kept = TcpStream::connect(&c.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 15];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || closed(&mut kept).then_some(())).is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed before the idle timeout: {:?}",
        t0.elapsed()
    );
    // A flood of 500 connections that send nothing, four times the cap: /healthz still
    // answers while they are held, because the idlest ones make room.
    let flood: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(&c.addr).unwrap())
        .collect();
    for _ in 0..5 {
        assert!(
            healthz_ok(&c.addr),
            "/healthz did not answer during the flood"
        );
    }
    let mut flood = flood;
    let drained = wait_for(Duration::from_secs(10), || {
        flood.retain_mut(|s| !closed(s));
        flood.is_empty().then_some(())
    });
    assert!(
        drained.is_some(),
        "{} idle flood connections still open",
        flood.len()
    );
    assert!(c.log_text().contains("connections=50"), "{}", c.log_text());
}

fn initialize(addr: &str, key: &str) -> mcpfier_tests::Reply {
    let auth = format!("Bearer {key}");
    http_exchange(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", &auth),
        ],
        INIT,
    )
    .unwrap()
}

#[test]
fn sessions_are_capped_overall_and_per_principal_and_idle_ones_expire() {
    let scratch = Scratch::new();
    let keys: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .map(|id| mcpfier_tests::new_key(id, "r"))
        .collect();
    let lines: String = keys.iter().map(|(_, l)| format!("      {l}\n")).collect();
    let config = scratch.write(
        "sessions.yaml",
        &format!(
            "server:\n  limits: {{sessions: 5, sessions_per_principal: 2, session_idle: 2s}}\n  auth:\n    api_keys:\n{lines}roles:\n  r: {{tools: [slow]}}\ntools:\n  - {{name: slow, command: [/bin/sleep, \"4\"], timeout: 30s}}\n"
        ),
    );
    let c = Coordinator::start(&config, &[], &[]);
    let (a, b, k3) = (&keys[0].0, &keys[1].0, &keys[2].0);
    let first = initialize(&c.addr, a);
    assert_eq!(first.status, 200, "{}", first.body);
    let session = first.header("mcp-session-id").unwrap().to_owned();
    assert_eq!(initialize(&c.addr, a).status, 200);
    let third = initialize(&c.addr, a);
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.header("retry-after"), Some("60"));
    assert!(
        third.body.contains("`a` has 2 MCP sessions open")
            && third.body.contains("sessions_per_principal"),
        "{}",
        third.body
    );
    // Another principal is not held back by the first one's sessions...
    assert_eq!(initialize(&c.addr, b).status, 200);
    assert_eq!(initialize(&c.addr, b).status, 200);
    assert_eq!(initialize(&c.addr, k3).status, 200);
    // ...until the server's own cap.
    let full = initialize(&c.addr, k3);
    assert_eq!(full.status, 503, "{}", full.body);
    assert!(
        full.body.contains("server.limits.sessions"),
        "{}",
        full.body
    );
    // Idle sessions expire (2 s without a request), and then there is room again. The
    // refused requests touch no session, so they don't keep any alive.
    let t0 = Instant::now();
    let room = wait_for(Duration::from_secs(15), || {
        (initialize(&c.addr, k3).status == 200).then_some(())
    });
    assert!(room.is_some(), "idle sessions never expired");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "expired early: {:?}",
        t0.elapsed()
    );
    let auth = format!("Bearer {a}");
    let gone = http_exchange(
        &c.addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", &auth),
            ("Mcp-Session-Id", &session),
            ("Mcp-Protocol-Version", "2025-06-18"),
        ],
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .unwrap();
    assert_eq!(
        gone.status, 404,
        "an expired session still answers: {}",
        gone.body
    );
}

#[test]
fn a_call_longer_than_session_idle_runs_to_its_end() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "long.yaml",
        "server:\n  limits: {session_idle: 1s, idle_timeout: 1s}\ntools:\n  - {name: slow, command: [/bin/sh, -c, \"sleep 4; echo done\"], timeout: 30s}\n",
    );
    let c = Coordinator::start(&config, &[], &[]);
    let results = drive_http_ok_as(
        &c.url(),
        None,
        None,
        serde_json::json!([{"op": "call", "name": "slow", "arguments": {}}]),
    );
    assert_eq!(results[0]["is_error"], false, "{}", results[0]);
    assert!(
        mcpfier_tests::result_text(&results[0]).contains("done"),
        "{}",
        results[0]
    );
}
