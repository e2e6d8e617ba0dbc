//! OpenTelemetry traces from the real binaries to a real OTLP receiver: a fleet call made
//! with a W3C traceparent in `_meta` is one trace across the coordinator and the agent, with
//! every parent link in place; the HTTP header works too; names follow the conventions;
//! no argument value and no session id reaches a span; logs carry the trace id.

use std::collections::HashMap;
use std::time::Duration;

use mcpfier_tests::{
    Agent, Certs, Coordinator, OtlpReceiver, Scratch, drive_http, http_exchange, http_request,
};
use serde_json::{Value, json};

/// OTLP span kinds.
const INTERNAL: u64 = 1;
const SERVER: u64 = 2;
const CLIENT: u64 = 3;
/// OTLP status code Error.
const ERROR: u64 = 2;

/// A fresh trace id (32 hex digits) and a parent span id (16), as a client would make them.
fn new_trace() -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (
        format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0001),
        format!("{:016x}", (nanos as u64) | 1),
    )
}

/// The spans of `trace`, by name; a name seen twice keeps both, in the order received.
fn by_name(spans: &[Value], trace: &str) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for s in spans.iter().filter(|s| s["trace_id"] == trace) {
        out.entry(s["name"].as_str().unwrap().to_owned())
            .or_default()
            .push(s.clone());
    }
    out
}

fn one<'a>(spans: &'a HashMap<String, Vec<Value>>, name: &str) -> &'a Value {
    match spans.get(name).map(Vec::as_slice) {
        Some([span]) => span,
        other => panic!("want one `{name}` span, got {other:?}; all: {spans:?}"),
    }
}

#[test]
fn a_fleet_call_is_one_trace_from_the_client_through_the_coordinator_to_the_agent() {
    let scratch = Scratch::new();
    let receiver = OtlpReceiver::start(scratch.path());
    let certs = Certs::init(&scratch.path().join("certs"));
    for (role, name) in [("coordinator", "coord"), ("agent", "a1")] {
        certs.issue(role, name);
    }
    let telemetry = format!("telemetry: {{otlp_endpoint: \"{}\"}}", receiver.endpoint);
    let a1 = Agent::start(scratch.path(), &certs, "a1", &telemetry);
    let config = scratch.config(&format!(
        "{telemetry}\nfleet:\n  tls: {}\n  agents:\n    - {{id: a1, address: \"{}\"}}\ntools:\n  - name: say\n    command: [/bin/echo, \"{{{{word}}}}\"]\n    params: {{word: {{type: string}}}}\n",
        certs.tls_yaml("coord"),
        a1.addr
    ));
    let c = Coordinator::start(&config, &[], &[]);

    let (trace, client_span) = new_trace();
    let traceparent = format!("00-{trace}-{client_span}-01");
    let r = drive_http(
        &c.url(),
        json!([{"op": "call", "name": "say", "arguments": {"word": "zebra-5521"},
                "meta": {"traceparent": traceparent}}]),
    );
    assert_eq!(r[0]["is_error"], false, "{}", r[0]);

    let want = [
        "tools/call say",
        "check arguments",
        "queue",
        "mcpfier.agent.v1.Agent/Execute",
        "execute process",
    ];
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            let named = by_name(spans, &trace);
            want.iter().all(|n| named.contains_key(*n))
                && named["mcpfier.agent.v1.Agent/Execute"].len() == 2
        })
        .unwrap_or_else(|| {
            panic!(
                "the trace never had all its spans: {:?}",
                by_name(&receiver.spans(), &trace)
            )
        });
    let named = by_name(&spans, &trace);
    // Every span of the call is in the client's trace: nothing started a trace of its own.
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["attributes"]["gen_ai.tool.name"] == "say")
            .filter(|s| s["trace_id"] != trace.as_str())
            .count(),
        0,
        "{spans:?}"
    );

    let server = one(&named, "tools/call say");
    assert_eq!(server["service"], "mcpfier");
    assert_eq!(server["kind"], SERVER);
    assert_eq!(server["parent_span_id"], client_span.as_str(), "{server}");
    let attrs = &server["attributes"];
    assert_eq!(attrs["mcp.method.name"], "tools/call");
    assert_eq!(attrs["gen_ai.tool.name"], "say");
    assert_eq!(attrs["gen_ai.operation.name"], "execute_tool");
    assert_eq!(attrs["network.transport"], "tcp");
    assert!(attrs["jsonrpc.request.id"].is_string(), "{attrs}");
    assert!(attrs["mcp.protocol.version"].is_string(), "{attrs}");
    // A digest of the session id, never the id itself (which would let a reader use it).
    let session = attrs["mcp.session.id"].as_str().expect("mcp.session.id");
    assert_eq!(session.len(), 32, "{session}");
    assert!(!c.log_text().contains(session));

    for name in ["check arguments", "queue"] {
        let span = one(&named, name);
        assert_eq!(span["kind"], INTERNAL, "{name}");
        assert_eq!(span["parent_span_id"], server["span_id"], "{name}");
    }
    let (client, agent_server): (Vec<&Value>, Vec<&Value>) =
        named["mcpfier.agent.v1.Agent/Execute"]
            .iter()
            .partition(|s| s["kind"] == CLIENT);
    let (client, agent_server) = (client[0], agent_server[0]);
    assert_eq!(client["service"], "mcpfier");
    assert_eq!(client["parent_span_id"], server["span_id"]);
    assert_eq!(client["attributes"]["rpc.system"], "grpc");
    assert_eq!(
        client["attributes"]["rpc.service"],
        "mcpfier.agent.v1.Agent"
    );
    assert_eq!(client["attributes"]["rpc.method"], "Execute");
    assert_eq!(client["attributes"]["mcpfier.agent.id"], "a1");
    assert_eq!(client["attributes"]["mcpfier.attempt"], 1);
    assert_eq!(client["attributes"]["rpc.grpc.status_code"], 0);
    assert_eq!(agent_server["service"], "mcpfier-agent");
    assert_eq!(agent_server["kind"], SERVER);
    assert_eq!(
        agent_server["parent_span_id"], client["span_id"],
        "the gRPC hop lost its parent"
    );
    let call_id = client["attributes"]["mcpfier.call_id"].as_str().unwrap();
    assert_eq!(agent_server["attributes"]["mcpfier.call_id"], call_id);
    let execute = one(&named, "execute process");
    assert_eq!(execute["service"], "mcpfier-agent");
    assert_eq!(execute["parent_span_id"], agent_server["span_id"]);
    assert_eq!(execute["attributes"]["process.exit.code"], 0);
    // Each child lies within its parent.
    for (child, parent) in [(execute, agent_server), (client, server)] {
        assert!(child["start_ns"].as_u64() >= parent["start_ns"].as_u64());
        assert!(child["end_ns"].as_u64() <= parent["end_ns"].as_u64());
    }
    // No argument value reaches a span.
    let all = serde_json::to_string(&receiver.spans()).unwrap();
    assert!(!all.contains("zebra-5521"), "an argument in a span");

    // Both logs carry the trace id, the request id and the call id.
    let request_id = attrs["jsonrpc.request.id"].as_str().unwrap();
    let coordinator_line = c
        .log_text()
        .lines()
        .find(|l| l.contains("call finished"))
        .map(str::to_owned)
        .expect("a call finished line");
    let request_field = format!("request_id={request_id}");
    for part in [trace.as_str(), call_id, request_field.as_str()] {
        assert!(
            coordinator_line.contains(part),
            "{part} not in {coordinator_line}"
        );
    }
    let agent_line = a1
        .process
        .log_text()
        .lines()
        .find(|l| l.contains("call finished"))
        .map(str::to_owned)
        .expect("a call finished line on the agent");
    for part in [trace.as_str(), call_id, request_field.as_str()] {
        assert!(agent_line.contains(part), "{part} not in {agent_line}");
    }

    // mcp.server.operation.duration, beside mcpfier's own metrics.
    let (_, page) = http_request(&c.addr, "GET", "/metrics", &[], "").unwrap();
    let count = page
        .lines()
        .find(|l| {
            l.starts_with("mcp_server_operation_duration_seconds_count")
                && l.contains(r#"gen_ai_tool_name="say""#)
                && l.contains(r#"mcp_method_name="tools/call""#)
        })
        .unwrap_or_else(|| panic!("no mcp_server_operation_duration_seconds for say:\n{page}"));
    assert!(count.ends_with(" 1"), "{count}");
}

#[test]
fn an_http_traceparent_is_continued_and_failures_and_unknown_tools_are_marked() {
    let scratch = Scratch::new();
    let receiver = OtlpReceiver::start(scratch.path());
    let config = scratch.config(&format!(
        "telemetry: {{otlp_endpoint: \"{}\", service_name: edge-mcp}}\ntools:\n  - {{name: fail, command: [/bin/false]}}\n",
        receiver.endpoint
    ));
    let c = Coordinator::start(&config, &[], &[]);
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        all.extend_from_slice(headers);
        http_exchange(&c.addr, "POST", "/mcp", &all, body).expect("POST /mcp")
    };
    // Every MCP request has its span, not only tool calls: initialize and ping here.
    let (init_trace, init_parent) = new_trace();
    let init_traceparent = format!("00-{init_trace}-{init_parent}-01");
    let init = post(
        &[("traceparent", init_traceparent.as_str())],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    let session = init.header("mcp-session-id").expect("a session").to_owned();
    let in_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    post(
        &in_session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    let (trace, parent) = new_trace();
    let traceparent = format!("00-{trace}-{parent}-01");
    let mut with_trace = in_session.to_vec();
    with_trace.push(("traceparent", traceparent.as_str()));
    let failed = post(
        &with_trace,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fail","arguments":{}}}"#,
    );
    assert!(failed.body.contains(r#""isError":true"#), "{}", failed.body);
    // A made-up tool name is not a span name.
    let unknown = post(
        &with_trace,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"no-such-tool-8812","arguments":{}}}"#,
    );
    assert!(unknown.body.contains("unknown tool"), "{}", unknown.body);
    let ping = post(&with_trace, r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#);
    assert!(ping.body.contains(r#""result":{}"#), "{}", ping.body);

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            let named = by_name(spans, &trace);
            named.contains_key("tools/call fail")
                && named.contains_key("tools/call")
                && named.contains_key("execute process")
                && named.contains_key("ping")
                && by_name(spans, &init_trace).contains_key("initialize")
        })
        .unwrap_or_else(|| panic!("spans missing: {:?}", receiver.spans()));
    let named = by_name(&spans, &trace);
    let failed = one(&named, "tools/call fail");
    assert_eq!(failed["service"], "edge-mcp");
    assert_eq!(failed["parent_span_id"], parent.as_str());
    assert_eq!(failed["status"], ERROR);
    assert_eq!(failed["attributes"]["error.type"], "tool_error");
    // In-process, the execution is a child of the call's span.
    let execute = one(&named, "execute process");
    assert_eq!(execute["parent_span_id"], failed["span_id"]);
    assert_eq!(execute["attributes"]["process.exit.code"], 1);
    assert_eq!(execute["status"], ERROR);
    let unknown = one(&named, "tools/call");
    assert_eq!(unknown["status"], ERROR);
    assert_eq!(unknown["attributes"]["error.type"], "-32602");
    assert!(
        unknown["attributes"].get("gen_ai.tool.name").is_none(),
        "{unknown}"
    );
    let initialize = one(&by_name(&spans, &init_trace), "initialize").clone();
    assert_eq!(initialize["parent_span_id"], init_parent.as_str());
    assert_eq!(initialize["attributes"]["mcp.method.name"], "initialize");
    let ping = one(&named, "ping");
    assert_eq!(ping["parent_span_id"], parent.as_str());
    assert_eq!(
        ping["attributes"]["mcp.session.id"], failed["attributes"]["mcp.session.id"],
        "a session's requests share its digest"
    );
    let all = serde_json::to_string(&receiver.spans()).unwrap();
    assert!(
        !all.contains("no-such-tool-8812"),
        "a made-up tool name in a span"
    );
    assert!(!all.contains(&session), "the session id in a span");
}
