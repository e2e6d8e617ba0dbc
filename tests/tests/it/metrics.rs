//! Prometheus metrics from the real binaries: a real Prometheus scrapes a coordinator and its
//! two agents, and a call made here shows up as its counters' increase; labels never carry
//! arguments; `/metrics` sits behind `fleet: read` like `/fleet`.

use std::time::Duration;

use mcpfier_tests::{
    Agent, Certs, Coordinator, Guarded, Prometheus, Scratch, drive_http, http_request,
};
use serde_json::json;

/// Where an agent serves its metrics, read from its log.
fn metrics_addr(agent: &Agent) -> String {
    let rest = agent
        .process
        .wait_for_log("serving metrics at http://", Duration::from_secs(10));
    rest[..rest.find("/metrics").expect("the log line names /metrics")].to_owned()
}

#[test]
fn prometheus_sees_a_call_on_the_coordinator_and_on_the_agent_that_ran_it() {
    let scratch = Scratch::new();
    let certs = Certs::init(&scratch.path().join("certs"));
    for (role, name) in [("coordinator", "coord"), ("agent", "a1"), ("agent", "a2")] {
        certs.issue(role, name);
    }
    let a1 = Agent::start(scratch.path(), &certs, "a1", "metrics_listen: 127.0.0.1:0");
    let a2 = Agent::start(
        scratch.path(),
        &certs,
        "a2",
        "metrics_listen: 127.0.0.1:0\ncapacity: 3",
    );
    let config = scratch.config(&format!(
        "fleet:\n  tls: {}\n  agents:\n    - {{id: a1, address: \"{}\"}}\n    - {{id: a2, address: \"{}\"}}\ntools:\n  - name: say\n    command: [/bin/echo, \"{{{{word}}}}\"]\n    params: {{word: {{type: string}}}}\n  - name: fail\n    command: [/bin/false]\n",
        certs.tls_yaml("coord"),
        a1.addr,
        a2.addr
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let prometheus = Prometheus::start(
        scratch.path(),
        &[
            ("coordinator", &c.addr),
            ("a1", &metrics_addr(&a1)),
            ("a2", &metrics_addr(&a2)),
        ],
    );
    assert_eq!(
        prometheus.wait_for_value("sum(up)", 3.0),
        Ok(()),
        "not every target is up"
    );
    // Before any call: no call counted, both agents healthy, their capacities known.
    assert_eq!(
        prometheus.value(r#"sum(mcpfier_tool_calls_total{tool="say"})"#),
        None
    );
    assert_eq!(
        prometheus.wait_for_value(r#"mcpfier_agents{state="healthy"}"#, 2.0),
        Ok(())
    );
    assert_eq!(
        prometheus.wait_for_value("sum(mcpfier_agent_capacity)", 11.0),
        Ok(())
    );

    let call = |name: &str, args| {
        drive_http(
            &c.url(),
            json!([{"op": "call", "name": name, "arguments": args}]),
        )
    };
    let first = call("say", json!({"word": "zebra-7741"}));
    assert_eq!(first[0]["is_error"], false, "{}", first[0]);
    assert_eq!(
        prometheus.wait_for_value(
            r#"sum(mcpfier_tool_calls_total{tool="say",outcome="ok"})"#,
            1.0
        ),
        Ok(())
    );
    call("say", json!({"word": "zebra-7741"}));
    let failed = call("fail", json!({}));
    assert_eq!(failed[0]["is_error"], true, "{}", failed[0]);
    for (query, want) in [
        (
            r#"sum(mcpfier_tool_calls_total{tool="say",outcome="ok"})"#,
            2.0,
        ),
        (
            r#"sum(mcpfier_tool_calls_total{tool="fail",outcome="failed"})"#,
            1.0,
        ),
        (r#"sum(mcpfier_dispatch_total{result="accepted"})"#, 3.0),
        (
            r#"sum(mcpfier_tool_call_duration_seconds_count{tool="say"})"#,
            2.0,
        ),
        // The agents count what they ran, whichever ran it.
        (r#"sum(mcpfier_agent_calls_total{outcome="ran"})"#, 3.0),
        ("sum(mcpfier_calls_in_flight)", 0.0),
    ] {
        assert_eq!(prometheus.wait_for_value(query, want), Ok(()), "{query}");
    }
    // An argument never becomes a label, on either side.
    let (status, page) = http_request(&c.addr, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("mcpfier_tool_call_duration_seconds_bucket"),
        "{page}"
    );
    assert!(!page.contains("zebra"), "{page}");
    for a in [&a1, &a2] {
        let (_, page) = http_request(&metrics_addr(a), "GET", "/metrics", &[], "").unwrap();
        assert!(!page.contains("zebra"), "{page}");
        assert!(page.contains("mcpfier_agent_fenced 0"), "{page}");
    }
}

#[test]
fn metrics_need_fleet_read_and_an_agent_refuses_a_public_metrics_address_unless_told() {
    let scratch = Scratch::new();
    let Guarded {
        coordinator: c,
        reader,
        caller,
    } = Guarded::start(&scratch);
    let get = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_request(&c.addr, "GET", "/metrics", &headers, "").unwrap()
    };
    assert_eq!(get(None).0, 401);
    let (status, body) = get(Some(&caller));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fleet: read"), "{body}");
    let (status, body) = get(Some(&reader));
    assert_eq!(status, 200, "{body}");
    // The refusals above are counted by reason.
    assert!(
        body.contains(r#"mcpfier_auth_refusals_total{reason="missing"} 1"#),
        "{body}"
    );

    let certs = Certs::init(&scratch.path().join("certs"));
    certs.issue("agent", "pub");
    let agent_yaml = scratch.write(
        "pub.yaml",
        &format!(
            "id: pub\nlisten: 127.0.0.1:0\nmetrics_listen: 0.0.0.0:0\ntls: {}\n",
            certs.tls_yaml("pub")
        ),
    );
    let out = std::process::Command::new(mcpfier_tests::mcpfier_agent())
        .arg("--config")
        .arg(&agent_yaml)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("metrics_listen: 0.0.0.0:0 is not a loopback address")
            && stderr.contains("metrics_public: true"),
        "{stderr}"
    );
}

#[test]
fn server_metrics_false_records_nothing_and_says_so_at_metrics() {
    let scratch = Scratch::new();
    let config = scratch
        .config("server: {metrics: false}\ntools:\n  - {name: hi, command: [/bin/echo, hi]}\n");
    let c = Coordinator::start(&config, &[], &[]);
    let r = drive_http(
        &c.url(),
        json!([{"op": "call", "name": "hi", "arguments": {}}]),
    );
    assert_eq!(r[0]["is_error"], false, "{}", r[0]);
    let (status, body) = http_request(&c.addr, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("server.metrics: false"), "{body}");
}

#[test]
fn server_metrics_listen_serves_metrics_and_probes_without_a_credential_and_nothing_else() {
    let scratch = Scratch::new();
    let (_, reader_line) = mcpfier_tests::new_key("reader", "watch");
    let config = scratch.config(&format!(
        "server:\n  metrics_listen: 127.0.0.1:0\n  auth:\n    api_keys:\n      {reader_line}\nroles:\n  watch: {{fleet: read}}\ntools:\n  - {{name: hi, command: [/bin/echo, hi]}}\n"
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let rest = c
        .process
        .wait_for_log("serving metrics at http://", Duration::from_secs(10));
    let metrics = rest[..rest.find("/metrics").unwrap()].to_owned();
    let (status, page) = http_request(&metrics, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("mcpfier_sessions"), "{page}");
    // Any Host: a scraper uses whatever address reaches the host.
    let (status, _) = http_request(
        &metrics,
        "GET",
        "/metrics",
        &[("host", "10.1.2.3:9465")],
        "",
    )
    .unwrap();
    assert_eq!(status, 200);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_request(&metrics, "GET", path, &[], "").unwrap().0, 200);
    }
    // Nothing else is served there, however the request is made.
    for (method, path) in [
        ("GET", "/fleet"),
        ("GET", "/ui/state"),
        ("POST", "/mcp"),
        ("POST", "/metrics"),
    ] {
        let (status, body) = http_request(&metrics, method, path, &[], "{}").unwrap();
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // The main listener still wants a credential.
    assert_eq!(
        http_request(&c.addr, "GET", "/metrics", &[], "").unwrap().0,
        401
    );
    // A public address needs to say so.
    let public = scratch.config(
        "server: {metrics_listen: \"0.0.0.0:9465\"}\ntools:\n  - {name: hi, command: [/bin/echo, hi]}\n",
    );
    let (code, _, err) =
        mcpfier_tests::mcpfier_cli(&["--config", public.to_str().unwrap(), "validate"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.metrics_listen") && err.contains("metrics_public"),
        "{err}"
    );
}
