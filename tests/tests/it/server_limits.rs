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
    post_on(addr, key, None, INIT)
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
    let gone = post_on(
        &c.addr,
        a,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
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

/// A POST to `/mcp` with `key`'s credential, on `session` when given.
fn post_on(addr: &str, key: &str, session: Option<&str>, body: &str) -> mcpfier_tests::Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Authorization", auth.as_str()),
    ];
    if let Some(id) = session {
        headers.extend([
            ("Mcp-Session-Id", id),
            ("Mcp-Protocol-Version", "2025-06-18"),
        ]);
    }
    http_exchange(addr, "POST", "/mcp", &headers, body).unwrap()
}

/// How many times the server has logged parking `session`.
fn times_parked(c: &Coordinator, session: &str) -> usize {
    c.log_text()
        .lines()
        .filter(|l| l.contains("parked an idle MCP session") && l.contains(session))
        .count()
}

#[test]
fn an_idle_session_is_parked_and_woken_by_its_next_request_with_its_owner_and_calls_kept() {
    let scratch = Scratch::new();
    let ledger = scratch.path().join("ledger");
    let (a, a_line) = mcpfier_tests::new_key("a", "r");
    let (b, b_line) = mcpfier_tests::new_key("b", "r");
    let config = scratch.write(
        "park.yaml",
        &format!(
            "server:\n  limits: {{session_park: 1s}}\n  auth:\n    api_keys:\n      {a_line}\n      {b_line}\nroles:\n  r: {{tools: [hello, mark]}}\ntools:\n  - {{name: hello, command: [/bin/echo, hello]}}\n  - {{name: mark, command: [/bin/sh, -c, \"sleep 5; echo ran >> {}\"], timeout: 30s}}\n",
            ledger.display()
        ),
    );
    let c = Coordinator::start(
        &config,
        &[("MCPFIER_LOG", "info,mcpfier_coordinator::http=debug")],
        &[],
    );
    let opened = initialize(&c.addr, &a);
    assert_eq!(opened.status, 200, "{}", opened.body);
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let initialized = post_on(
        &c.addr,
        &a,
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(initialized.status, 202, "{}", initialized.body);
    let parked = wait_for(Duration::from_secs(10), || {
        (times_parked(&c, &session) >= 1).then_some(())
    });
    assert!(parked.is_some(), "never parked:\n{}", c.log_text());

    // Parked, the session still belongs to `a`: `b` is refused and does not wake it.
    let stolen = post_on(
        &c.addr,
        &b,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert_eq!(stolen.status, 403, "{}", stolen.body);
    // Its owner's next request wakes it, unseen: the call is answered on the same session.
    let hello = post_on(
        &c.addr,
        &a,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"hello","arguments":{}}}"#,
    );
    assert_eq!(hello.status, 200, "{}", hello.body);
    assert!(
        hello.body.contains(r#""id":3"#) && hello.body.contains("hello"),
        "{}",
        hello.body
    );

    // A call whose client drops its stream keeps the session busy to its end: not parked
    // under it, so the client can resume the stream (Last-Event-ID) while the call runs and
    // get the answer; the command runs once.
    let before = times_parked(&c, &session);
    let call =
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"mark","arguments":{}}}"#;
    let mut s = TcpStream::connect(&c.addr).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nAuthorization: Bearer {a}\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{call}",
        c.addr,
        call.len()
    )
    .unwrap();
    let primed = read_until(&mut s, "retry:");
    let event = primed
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no event id in {primed}"))
        .to_owned();
    drop(s);
    // Two parking periods pass with the call running and its stream gone: still not parked.
    let parked_under_call = wait_for(Duration::from_millis(2500), || {
        (times_parked(&c, &session) > before).then_some(())
    });
    assert!(
        parked_under_call.is_none() && !ledger.exists(),
        "parked while its call ran:\n{}",
        c.log_text()
    );
    let mut s = TcpStream::connect(&c.addr).unwrap();
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {a}\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\nLast-Event-ID: {event}\r\n\r\n",
        c.addr
    )
    .unwrap();
    let resumed = read_until(&mut s, r#""id":4"#);
    assert!(
        resumed.contains(r#""id":4,"result""#),
        "the answer was lost: {resumed}\n{}",
        c.log_text()
    );
    drop(s);
    let ran = wait_for(Duration::from_secs(5), || ledger.exists().then_some(()));
    assert!(ran.is_some(), "the call never ended:\n{}", c.log_text());
    assert_eq!(mcpfier_tests::read_lines(&ledger), ["ran"]);

    // Parked again once the call is over; a DELETE then closes it for good.
    let again = wait_for(Duration::from_secs(10), || {
        (times_parked(&c, &session) > before).then_some(())
    });
    assert!(
        again.is_some(),
        "not parked after the call:\n{}",
        c.log_text()
    );
    let auth = format!("Bearer {a}");
    let deleted = http_exchange(
        &c.addr,
        "DELETE",
        "/mcp",
        &[
            ("Authorization", &auth),
            ("Mcp-Session-Id", &session),
            ("Mcp-Protocol-Version", "2025-06-18"),
        ],
        "",
    )
    .unwrap();
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let gone = post_on(
        &c.addr,
        &a,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
    );
    assert_eq!(
        gone.status, 404,
        "a deleted parked session answers: {}",
        gone.body
    );
}

/// Reads from `s` until `needle` has arrived (10 s at most); what was read.
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
