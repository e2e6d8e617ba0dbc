//! The MCP front door, over stdio and over Streamable HTTP, with the official Python client.

use std::path::PathBuf;
use std::time::Duration;

use mcpfier_tests::{
    Coordinator, Scratch, assert_all_gone, drive_http, drive_stdio, http_request, read_pids,
    result_stderr, result_stdout, result_text as text,
};
use serde_json::{Value, json};

const CONFIG: &str = r#"
tools:
  - name: show-args
    description: Prints each argument it gets in brackets
    command: ["/bin/sh", "-c", "for a in \"$@\"; do printf '[%s]\n' \"$a\"; done", "sh", "{{value}}"]
    params:
      # It only prints its arguments, so values that look like options are meant.
      value: {type: string, description: "anything at all", allow_options: true}
  - name: touch
    description: Creates a marker file
    command: ["/bin/sh", "-c", "touch \"$1\"", "sh", "@DIR@/ran-{{name}}", "{{count}}"]
    params:
      name: {type: string, pattern: "^[a-z]+$", max_length: 5}
      count: {type: integer, minimum: 1, maximum: 3, default: 1}
    annotations: {read_only: false, destructive: false, idempotent: true}
  - name: forker
    description: Starts a grandchild, records both pids, and waits
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; sleep 300 & echo $! >> \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait", "sh", "@DIR@/{{tag}}.pids"]
    params:
      tag: {type: string, pattern: "^[a-z]+$"}
    timeout: 1s
  - name: hang
    description: Like forker, with a long timeout
    command: ["/bin/sh", "-c", "echo $$ > \"$1.tmp\"; sleep 300 & echo $! >> \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait", "sh", "@DIR@/{{tag}}.pids"]
    params:
      tag: {type: string, pattern: "^[a-z]+$"}
    timeout: 60s
  - name: big-output
    command: ["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]
    max_output: 1KiB
  - name: env-dump
    command: ["/usr/bin/env"]
    env: {FOO: bar, TOKEN: "${env:TEST_SECRET}"}
  - name: uses-secret
    command: ["/bin/sh", "-c", "test -n \"$TOKEN\" && echo token-present"]
    env: {TOKEN: "${env:TEST_SECRET}"}
  - name: lines
    command: ["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]
  - name: fails
    command: ["/bin/sh", "-c", "echo oops >&2; exit 3"]
  - name: plain-700k
    command: ["/bin/sh", "-c", "head -c 700000 /dev/zero | tr '\\0' x"]
  - name: quotes-at-cap
    description: A full max_output of quotes (two bytes each in JSON) and some stderr
    command: ["/bin/sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' '\"'; head -c 300000 /dev/zero | tr '\\0' e >&2"]
"#;

const SECRET: &str = "hunter2-not-for-logs";
const PARENT_ONLY: &str = "parent-only-value-xyz";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("TEST_SECRET", SECRET), ("PARENT_ONLY_VAR", PARENT_ONLY)]
}

/// Which transport a test runs over.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Stdio,
    Http,
}

struct Fixture {
    scratch: Scratch,
    config: PathBuf,
    transport: Transport,
    coordinator: Option<Coordinator>,
}

impl Fixture {
    fn new(transport: Transport) -> Self {
        let scratch = Scratch::new();
        let config = scratch.config(CONFIG);
        let coordinator = match transport {
            Transport::Http => Some(Coordinator::start(&config, &env(), &["--log", "debug"])),
            Transport::Stdio => None,
        };
        Self {
            scratch,
            config,
            transport,
            coordinator,
        }
    }

    fn run(&self, ops: Value) -> Vec<Value> {
        match self.transport {
            Transport::Stdio => drive_stdio(&self.config, &env(), &[], ops).results,
            Transport::Http => drive_http(&self.coordinator.as_ref().expect("http").url(), ops),
        }
    }

    fn call(&self, name: &str, arguments: Value) -> Value {
        self.run(json!([{"op": "call", "name": name, "arguments": arguments}]))
            .remove(0)
    }
}

fn lists_tools_with_their_schemas(t: Transport) {
    let f = Fixture::new(t);
    let results = f.run(json!([{"op": "init"}, {"op": "list_tools"}]));
    assert_eq!(results[0]["protocolVersion"], "2025-11-25");
    let tools = results[1]["tools"].as_array().unwrap();
    let names: Vec<_> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "show-args",
            "touch",
            "forker",
            "hang",
            "big-output",
            "env-dump",
            "uses-secret",
            "lines",
            "fails",
            "plain-700k",
            "quotes-at-cap"
        ]
    );
    let touch = &tools[1];
    assert_eq!(
        touch["inputSchema"],
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "count": {"type": "integer", "minimum": 1.0, "maximum": 3.0, "default": 1}
            },
            "required": ["name"],
            "additionalProperties": false
        })
    );
    assert_eq!(touch["annotations"]["idempotentHint"], true);
    assert_eq!(touch["annotations"]["readOnlyHint"], false);
    let output = &touch["outputSchema"];
    for field in [
        "exit_code",
        "stdout_bytes",
        "stderr_bytes",
        "truncated",
        "cut_to_fit",
        "timed_out",
        "duration_ms",
    ] {
        assert!(
            output["properties"].get(field).is_some(),
            "{field} missing: {output}"
        );
    }
}

fn a_valid_call_runs_and_returns_structured_content(t: Transport) {
    let f = Fixture::new(t);
    let r = f.call("touch", json!({"name": "ok"}));
    assert_eq!(r["is_error"], false, "{r}");
    assert!(f.scratch.path().join("ran-ok").exists());
    let s = &r["structured_content"];
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["timed_out"], false);
    assert_eq!(s["truncated"], false);
    assert!(s["duration_ms"].is_u64());

    let r = f.call("fails", json!({}));
    assert_eq!(r["is_error"], true, "{r}");
    assert_eq!(r["structured_content"]["exit_code"], 3);
    assert_eq!(result_stderr(&r), "oops\n");
    assert!(text(&r).contains("oops"), "{r}");
}

fn invalid_arguments_are_refused_and_nothing_runs(t: Transport) {
    let f = Fixture::new(t);
    let results = f.run(json!([
        {"op": "call", "name": "touch", "arguments": {"name": "toolong"}},
        {"op": "call", "name": "touch", "arguments": {"name": "Bad"}},
        {"op": "call", "name": "touch", "arguments": {"name": "ok", "count": 9}},
        {"op": "call", "name": "touch", "arguments": {"name": "ok", "extra": 1}},
        {"op": "call", "name": "touch", "arguments": {}},
    ]));
    let expected = [
        "parameter `name`: must be at most 5 characters long (got 7)",
        "parameter `name`: must match the pattern `^[a-z]+$`",
        "parameter `count`: must be at most 3 (got 9)",
        "parameter `extra`: unknown parameter (known: name, count)",
        "parameter `name`: is required",
    ];
    for (r, want) in results.iter().zip(expected) {
        assert_eq!(r["is_error"], true, "{r}");
        let msg = text(r);
        assert!(msg.contains("nothing was run"), "{msg}");
        assert!(msg.contains(want), "{msg} should contain {want}");
    }
    let ran: Vec<_> = std::fs::read_dir(f.scratch.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ran-"))
        .collect();
    assert!(ran.is_empty(), "a refused call ran: {ran:?}");
}

fn injection_attempts_stay_literal(t: Transport) {
    let f = Fixture::new(t);
    let attempts = [
        "$(id)",
        "a; touch @DIR@/pwned",
        "`id`",
        "x | cat /etc/passwd",
        "line1\nline2",
        "-rf",
        "--help",
        "' \" \\",
    ];
    let ops: Vec<_> = attempts
        .iter()
        .map(|a| {
            let a = a.replace("@DIR@", &f.scratch.path().display().to_string());
            json!({"op": "call", "name": "show-args", "arguments": {"value": a}})
        })
        .collect();
    let results = f.run(Value::Array(ops));
    for (attempt, r) in attempts.iter().zip(&results) {
        let attempt = attempt.replace("@DIR@", &f.scratch.path().display().to_string());
        assert_eq!(r["is_error"], false, "{r}");
        assert_eq!(
            result_stdout(r),
            format!("[{attempt}]\n"),
            "the value must arrive as exactly one argument"
        );
    }
    assert!(!f.scratch.path().join("pwned").exists());
}

fn a_timeout_kills_the_command_and_its_grandchildren(t: Transport) {
    let f = Fixture::new(t);
    let r = f.call("forker", json!({"tag": "slow"}));
    assert_eq!(r["is_error"], true, "{r}");
    assert_eq!(r["structured_content"]["timed_out"], true);
    assert!(text(&r).contains("timed out after 1s"), "{r}");
    let pids = read_pids(&f.scratch.path().join("slow.pids"));
    assert_eq!(
        pids.len(),
        2,
        "the command records itself and its grandchild"
    );
    assert_all_gone(&pids, Duration::from_secs(5));
}

fn cancellation_kills_the_process_group(t: Transport) {
    let f = Fixture::new(t);
    let pidfile = f.scratch.path().join("cancel.pids");
    let results = f.run(json!([
        {"op": "call", "name": "hang", "arguments": {"tag": "cancel"}, "cancel_when_file": pidfile},
        // The session still works after a cancelled call.
        {"op": "call", "name": "touch", "arguments": {"name": "after"}},
    ]));
    assert_eq!(results[0], json!({"cancelled": true, "file_seen": true}));
    assert_eq!(results[1]["is_error"], false);
    let pids = read_pids(&pidfile);
    assert_eq!(pids.len(), 2);
    // Well inside the tool's 60 s timeout: cancellation, not the timeout, killed them.
    assert_all_gone(&pids, Duration::from_secs(5));
}

fn output_past_the_cap_is_cut(t: Transport) {
    let f = Fixture::new(t);
    let r = f.call("big-output", json!({}));
    let s = &r["structured_content"];
    assert_eq!(s["truncated"], true, "{r}");
    assert_eq!(result_stdout(&r).len(), 1024);
    assert_eq!(s["exit_code"], 0);
    assert!(text(&r).contains("output was cut at 1KiB"), "{r}");
}

fn the_child_sees_only_its_own_environment(t: Transport) {
    let f = Fixture::new(t);
    let r = f.call("env-dump", json!({}));
    let stdout = result_stdout(&r);
    let mut vars: Vec<_> = stdout
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    vars.sort();
    assert_eq!(vars, ["FOO", "PATH", "TOKEN"], "{stdout}");
    assert!(!stdout.contains(PARENT_ONLY), "{stdout}");
    assert!(
        stdout.contains(&format!("TOKEN={SECRET}")),
        "the tool gets its secret"
    );
}

fn output_arrives_as_progress_notifications(t: Transport) {
    let f = Fixture::new(t);
    let r = f
        .run(json!([{"op": "call", "name": "lines", "arguments": {}, "progress": true}]))
        .remove(0);
    assert_eq!(r["is_error"], false);
    let progress = r["progress"].as_array().unwrap();
    let messages: Vec<_> = progress
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert_eq!(messages.join("\n"), "line1\nline2\nline3", "{progress:?}");
    // The lines came apart in time, so they came in more than one notification.
    assert!(progress.len() >= 2, "{progress:?}");
    let values: Vec<_> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress must increase: {values:?}"
    );
}

/// The official client takes one server-sent event of at most 1 MiB: over HTTP a result is
/// cut to fit it, with a note, and over stdio it carries all the output.
fn results_near_max_output_reach_the_client(t: Transport) {
    let f = Fixture::new(t);
    let results = f.run(json!([
        {"op": "call", "name": "plain-700k", "arguments": {}},
        {"op": "call", "name": "quotes-at-cap", "arguments": {}}
    ]));
    let plain = &results[0];
    assert_eq!(plain["is_error"], false, "{}", text(plain));
    assert_eq!(result_stdout(plain), "x".repeat(700_000), "once, whole");
    let quotes = &results[1];
    assert_eq!(quotes["is_error"], false, "{}", text(quotes));
    let s = &quotes["structured_content"];
    assert_eq!(s["stdout_bytes"], 1 << 20);
    assert_eq!(s["stderr_bytes"], 300_000);
    assert_eq!(s["truncated"], false);
    let body = quotes["text"][0].as_str().unwrap();
    match t {
        Transport::Stdio => {
            assert_eq!(s["cut_to_fit"], false);
            assert_eq!(result_stdout(quotes), "\"".repeat(1 << 20));
            assert_eq!(result_stderr(quotes), "e".repeat(300_000));
        }
        Transport::Http => {
            assert_eq!(s["cut_to_fit"], true);
            let encoded = serde_json::to_string(body).unwrap().len();
            assert!(encoded <= 1_000_000, "{encoded} bytes encoded");
            let (out, rest) = body.split_once("--- stderr ---\n").unwrap();
            let out = out.trim_end_matches('\n');
            assert!(
                out.len() > 300_000 && out.bytes().all(|b| b == b'"'),
                "{}",
                out.len()
            );
            let err = rest.split('\n').next().unwrap();
            assert!(err.len() > 200_000 && err.bytes().all(|b| b == b'e'));
            assert!(
                body.contains("[mcpfier] output cut to fit one HTTP response"),
                "{}",
                &body[body.len() - 300..]
            );
        }
    }
}

macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod stdio {
            $( #[test] fn $name() { super::$name(super::Transport::Stdio) } )*
        }
        mod http {
            $( #[test] fn $name() { super::$name(super::Transport::Http) } )*
        }
    };
}

both_transports!(
    lists_tools_with_their_schemas,
    a_valid_call_runs_and_returns_structured_content,
    invalid_arguments_are_refused_and_nothing_runs,
    injection_attempts_stay_literal,
    a_timeout_kills_the_command_and_its_grandchildren,
    cancellation_kills_the_process_group,
    output_past_the_cap_is_cut,
    the_child_sees_only_its_own_environment,
    output_arrives_as_progress_notifications,
    results_near_max_output_reach_the_client,
);

#[test]
fn a_foreign_origin_gets_403_and_a_local_one_passes() {
    let f = Fixture::new(Transport::Http);
    let addr = &f.coordinator.as_ref().unwrap().addr;
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let headers = |origin| {
        vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Origin", origin),
        ]
    };
    let (status, _) =
        http_request(addr, "POST", "/mcp", &headers("https://evil.example"), init).unwrap();
    assert_eq!(status, 403);
    let (status, _) = http_request(
        addr,
        "POST",
        "/mcp",
        &headers("http://localhost:5173"),
        init,
    )
    .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_client_on_protocol_2025_06_18_is_served() {
    let f = Fixture::new(Transport::Http);
    let addr = &f.coordinator.as_ref().unwrap().addr;
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, body) = http_request(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        init,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""protocolVersion":"2025-06-18""#), "{body}");
}

#[test]
fn secrets_never_reach_the_logs() {
    let f = Fixture::new(Transport::Http);
    let r = f.call("uses-secret", json!({}));
    assert_eq!(result_stdout(&r), "token-present\n", "{r}");
    let stdio = drive_stdio(
        &f.config,
        &env(),
        &["--log", "trace"],
        json!([{"op": "call", "name": "uses-secret", "arguments": {}}]),
    );
    assert_eq!(result_stdout(&stdio.results[0]), "token-present\n");
    let http_log = f.coordinator.as_ref().unwrap().log_text();
    assert!(
        http_log.contains("call finished"),
        "the log is being written: {http_log}"
    );
    assert!(!http_log.contains(SECRET), "secret in the serve log");
    assert!(!stdio.stderr.contains(SECRET), "secret in the stdio log");
}

#[test]
fn serve_refuses_a_non_loopback_address() {
    let scratch = Scratch::new();
    let config = scratch.config(CONFIG);
    let (code, _, err) = mcpfier_tests::mcpfier_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            "0.0.0.0:0",
        ],
        &env(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("refusing to serve: 0.0.0.0:0"), "{err}");
    assert!(
        err.contains("needs server.auth") && err.contains("server.tls"),
        "{err}"
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let scratch = Scratch::new();
    let config = scratch.config(CONFIG);
    let mut c = Coordinator::start(&config, &env(), &[]);
    assert_eq!(c.stop(), Some(0), "log:\n{}", c.log_text());
}
