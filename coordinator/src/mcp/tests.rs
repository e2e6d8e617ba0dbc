//! The MCP front door in-process: results built from outcomes, live output forwarded as
//! progress notifications, and whole round trips between an rmcp client and the real server
//! over `tokio::io::duplex`.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use mcpfier_exec::{Chunk, Stream};
use rmcp::model::NumberOrString;
use rmcp::service::RunningService;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::time::Instant;

use super::*;
use crate::catalog::Catalog;

/// The one place these tests go through the config file.
fn catalog(yaml: &str) -> Catalog {
    crate::catalog::parse(yaml, Path::new("t.yaml"), &HashMap::new()).expect("a valid config")
}

fn first_tool(yaml: &str) -> Arc<Tool> {
    let catalog = catalog(yaml);
    catalog.tools.values().next().expect("one tool").clone()
}

/// A tool with two good exit codes, a 30 s timeout and a 1 KiB output cap.
fn strict_tool() -> Arc<Tool> {
    first_tool(
        "tools:\n  - {name: t, command: [/bin/true], ok_exit_codes: [0, 1], timeout: 30s, max_output: 1KiB}\n",
    )
}

fn text(result: &CallToolResult) -> &str {
    assert_eq!(result.content.len(), 1, "{result:?}");
    &result.content[0].as_text().expect("text content").text
}

fn exited(code: i32, stdout: &str) -> Outcome {
    Outcome {
        exit_code: Some(code),
        stdout: stdout.as_bytes().to_vec(),
        duration: Duration::from_millis(12),
        ..Outcome::default()
    }
}

// --- tool_result and structured ---

#[test]
fn a_zero_exit_is_a_success_carrying_stdout() {
    let r = tool_result(&strict_tool(), &exited(0, "hello\n"), None, None);
    assert_eq!(r.is_error, Some(false));
    assert_eq!(text(&r), "hello\n");
    assert_eq!(
        r.structured_content,
        Some(json!({
            "exit_code": 0,
            "signal": null,
            "stdout_bytes": 6,
            "stderr_bytes": 0,
            "truncated": false,
            "cut_to_fit": false,
            "timed_out": false,
            "oom_killed": false,
            "duration_ms": 12
        }))
    );
}

#[test]
fn an_exit_code_in_ok_exit_codes_is_a_success_without_a_note() {
    let r = tool_result(&strict_tool(), &exited(1, "no match\n"), None, None);
    assert_eq!(r.is_error, Some(false));
    assert_eq!(text(&r), "no match\n");
}

#[test]
fn an_exit_code_outside_ok_exit_codes_is_an_error_that_names_the_code() {
    let r = tool_result(&strict_tool(), &exited(2, "out\n"), None, None);
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).starts_with("out\n"), "{}", text(&r));
    assert!(
        text(&r).ends_with("\n[mcpfier] exit code 2"),
        "{}",
        text(&r)
    );
    assert_eq!(r.structured_content.unwrap()["exit_code"], json!(2));

    let default_codes = first_tool("tools:\n  - {name: t, command: [/bin/true]}\n");
    let r = tool_result(&default_codes, &exited(1, ""), None, None);
    assert_eq!(r.is_error, Some(true), "only 0 is good by default");
    assert_eq!(text(&r), "\n[mcpfier] exit code 1");
}

#[test]
fn death_by_signal_is_an_error_that_names_the_signal() {
    let outcome = Outcome {
        signal: Some(9),
        ..Outcome::default()
    };
    let r = tool_result(&strict_tool(), &outcome, None, None);
    assert_eq!(r.is_error, Some(true));
    assert_eq!(text(&r), "\n[mcpfier] killed by signal 9");
    let s = r.structured_content.unwrap();
    assert_eq!(s["exit_code"], json!(null));
    assert_eq!(s["signal"], json!(9));
}

#[test]
fn a_timeout_is_an_error_even_when_the_exit_code_is_good() {
    let outcome = Outcome {
        timed_out: true,
        ..exited(0, "partial\n")
    };
    let r = tool_result(&strict_tool(), &outcome, None, None);
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        text(&r),
        "partial\n\n[mcpfier] timed out after 30s; the command and everything it started were killed"
    );
    assert_eq!(r.structured_content.unwrap()["timed_out"], json!(true));
}

#[test]
fn an_oom_kill_is_an_error_and_is_named_over_the_timeout_it_caused() {
    let outcome = Outcome {
        oom_killed: true,
        timed_out: true,
        signal: Some(9),
        ..Outcome::default()
    };
    let r = tool_result(&strict_tool(), &outcome, None, None);
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        text(&r),
        "\n[mcpfier] killed: out of memory (the container's memory limit)"
    );
    assert_eq!(r.structured_content.unwrap()["oom_killed"], json!(true));

    let oom_with_good_code = Outcome {
        oom_killed: true,
        ..exited(0, "")
    };
    let r = tool_result(&strict_tool(), &oom_with_good_code, None, None);
    assert_eq!(r.is_error, Some(true));
}

#[test]
fn cut_output_is_noted_but_does_not_fail_the_call() {
    for outcome in [
        Outcome {
            stdout_truncated: true,
            ..exited(0, "aaaa")
        },
        Outcome {
            stderr_truncated: true,
            ..exited(0, "aaaa")
        },
    ] {
        let r = tool_result(&strict_tool(), &outcome, None, None);
        assert_eq!(r.is_error, Some(false));
        assert!(
            text(&r).ends_with("\n[mcpfier] output was cut at 1KiB per stream (max_output)"),
            "{}",
            text(&r)
        );
        assert_eq!(r.structured_content.unwrap()["truncated"], json!(true));
    }

    let cut_and_failed = Outcome {
        stdout_truncated: true,
        ..exited(3, "aaaa")
    };
    let r = tool_result(&strict_tool(), &cut_and_failed, None, None);
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        text(&r),
        "aaaa\n[mcpfier] exit code 3\n[mcpfier] output was cut at 1KiB per stream (max_output)"
    );
}

#[test]
fn stderr_follows_stdout_under_its_own_heading() {
    let with = |stdout: &str| Outcome {
        stderr: b"warning: x\n".to_vec(),
        ..exited(0, stdout)
    };
    let t = strict_tool();
    assert_eq!(
        text(&tool_result(&t, &with("partial"), None, None)),
        "partial\n--- stderr ---\nwarning: x\n",
        "a stdout without a final newline gets one before the heading"
    );
    assert_eq!(
        text(&tool_result(&t, &with("line\n"), None, None)),
        "line\n--- stderr ---\nwarning: x\n"
    );
    assert_eq!(
        text(&tool_result(&t, &with(""), None, None)),
        "--- stderr ---\nwarning: x\n"
    );
    let r = tool_result(&t, &with("line\n"), None, None);
    assert_eq!(r.is_error, Some(false), "stderr alone is not a failure");
    assert_eq!(r.structured_content.unwrap()["stderr_bytes"], json!(11));
}

#[test]
fn a_budget_cuts_the_output_so_its_json_encoding_fits_and_says_so() {
    let budget = 10_000;
    let encoded = |r: &CallToolResult| serde_json::to_string(text(r)).unwrap().len();
    // Quotes and newlines take two bytes encoded, control characters six, `é` two.
    for stdout in [
        "x".repeat(50_000),
        "\"\n".repeat(20_000),
        "\u{1}é".repeat(9_000),
    ] {
        let outcome = Outcome {
            stderr: "e".repeat(20_000).into_bytes(),
            ..exited(0, &stdout)
        };
        let r = tool_result(&strict_tool(), &outcome, None, Some(budget));
        assert!(encoded(&r) <= budget, "{} > {budget}", encoded(&r));
        let t = text(&r);
        assert!(
            t.contains("[mcpfier] output cut to fit one HTTP response"),
            "{t}"
        );
        let (out, rest) = t.split_once("--- stderr ---\n").unwrap();
        assert!(
            stdout.starts_with(out.trim_end_matches('\n')),
            "stdout is a prefix"
        );
        let err = rest.split("\n[mcpfier]").next().unwrap();
        let err_json = serde_json::to_string(err).unwrap().len() - 2;
        assert!(
            (budget / 5..=budget / 4).contains(&err_json),
            "stderr keeps a quarter of what the notes leave: {err_json}"
        );
        let s = r.structured_content.unwrap();
        assert_eq!(s["cut_to_fit"], json!(true));
        assert_eq!(s["stdout_bytes"], json!(stdout.len()), "what was captured");
    }
    // Small stdout: stderr may use the rest of the budget.
    let outcome = Outcome {
        stderr: "e".repeat(6_000).into_bytes(),
        ..exited(0, "short\n")
    };
    let r = tool_result(&strict_tool(), &outcome, None, Some(budget));
    assert_eq!(r.structured_content.unwrap()["cut_to_fit"], json!(false));
    // Within the budget nothing changes; without one nothing is cut.
    let big = exited(0, &"y".repeat(50_000));
    assert_eq!(
        text(&tool_result(&strict_tool(), &big, None, None)).len(),
        50_000
    );
}

#[test]
fn structured_content_names_the_agent_only_when_an_agent_ran_the_call() {
    let outcome = exited(0, "x");
    assert!(structured(&outcome, None).get("agent").is_none());
    assert_eq!(
        structured(&outcome, Some("agent-1"))["agent"],
        json!("agent-1")
    );
}

#[test]
fn structured_content_counts_the_output_bytes_and_has_every_required_field() {
    let outcome = Outcome {
        stdout: b"ok \xff\xfe end".to_vec(),
        stderr: b"\xc3".to_vec(),
        ..exited(0, "")
    };
    let s = structured(&outcome, None);
    assert_eq!(
        s["stdout_bytes"],
        json!(9),
        "the bytes captured, not their text"
    );
    assert_eq!(s["stderr_bytes"], json!(1));
    assert!(
        s.get("stdout").is_none(),
        "the output is carried once, as text"
    );
    let r = tool_result(&strict_tool(), &outcome, None, None);
    assert_eq!(
        text(&r),
        "ok \u{fffd}\u{fffd} end\n--- stderr ---\n\u{fffd}"
    );
    let schema = output_schema();
    for field in schema["required"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        assert!(
            s.get(field).is_some(),
            "structured content lacks `{field}`: {s}"
        );
    }
    for key in s.as_object().unwrap().keys() {
        assert!(
            schema["properties"].get(key).is_some(),
            "`{key}` is not in the output schema"
        );
    }
}

// --- an rmcp client talking to the real server ---

/// A progress notification as the client got it, and when (tokio's clock).
#[derive(Debug)]
struct Got {
    at: Instant,
    token: ProgressToken,
    progress: f64,
    message: Option<String>,
}

/// The client side: hands every progress notification to the test.
struct Client {
    progress: mpsc::UnboundedSender<Got>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // The test may have stopped listening; then nobody needs this one.
        let _ = self.progress.send(Got {
            at: Instant::now(),
            token: params.progress_token,
            progress: params.progress,
            message: params.message,
        });
    }
}

/// One MCP session: the real server over an in-memory pipe to an rmcp client.
struct Session {
    client: RunningService<RoleClient, Client>,
    server: RunningService<RoleServer, Server>,
    progress: mpsc::UnboundedReceiver<Got>,
}

impl Session {
    async fn start(yaml: &str) -> Session {
        let dispatcher = Dispatcher::local(Arc::new(catalog(yaml)));
        let server = Server::new(dispatcher, &TaskTracker::new(), CancellationToken::new());
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (tx, progress) = mpsc::unbounded_channel();
        let (server, client) = tokio::join!(
            server.serve(server_io),
            Client { progress: tx }.serve(client_io)
        );
        Session {
            client: client.expect("the client initializes"),
            server: server.expect("the server initializes"),
            progress,
        }
    }

    /// The next progress notification, within `within` on tokio's clock.
    async fn next_progress(&mut self, within: Duration) -> Option<Got> {
        tokio::time::timeout(within, self.progress.recv())
            .await
            .ok()
            .map(|got| got.expect("the client is running"))
    }

    async fn close(self) {
        self.client.cancel().await.expect("the client stops");
        self.server.cancel().await.expect("the server stops");
    }
}

/// Runs `test` on a current-thread runtime with tokio's clock paused, so progress timing is
/// exact and instant. A task that never yields the runtime stops paused time from moving, and
/// the test would hang: the real-time deadline turns that into a failure.
fn with_paused_clock<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test panicked (its message is above)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not finish within 30 s: something keeps the runtime busy")
        }
    }
}

fn out(data: &[u8]) -> Event {
    Event::Output(Chunk {
        stream: Stream::Stdout,
        data: data.to_vec(),
    })
}

const TRIVIAL: &str = "tools:\n  - {name: t, command: [/bin/true]}\n";

/// Starts `forward_progress` on the server side of `session` and returns the sender the run
/// would hold, and the forwarder's task.
fn forward(session: &Session) -> (mpsc::UnboundedSender<Event>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let token = ProgressToken(NumberOrString::String("run-1".into()));
    let peer = session.server.peer().clone();
    (tx, tokio::spawn(forward_progress(rx, peer, token)))
}

#[test]
fn progress_carries_whole_lines_and_a_partial_line_waits_for_its_end() {
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        let (tx, forwarder) = forward(&s);
        let start = Instant::now();
        tx.send(out(b"one\ntw")).unwrap();
        let first = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.message.as_deref(), Some("one"));
        assert_eq!(first.at, start, "the first line goes out at once");
        assert_eq!(first.progress, 1.0);
        assert_eq!(
            first.token,
            ProgressToken(NumberOrString::String("run-1".into()))
        );

        assert!(
            s.next_progress(Duration::from_secs(5)).await.is_none(),
            "`tw` is not a line yet"
        );
        tx.send(out(b"o\n")).unwrap();
        let second = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(second.message.as_deref(), Some("two"));
        assert_eq!(second.progress, 2.0);

        drop(tx);
        forwarder.await.expect("the forwarder ends cleanly");
        assert!(s.progress.try_recv().is_err(), "nothing was left to send");
        s.close().await;
    });
}

#[test]
fn progress_sends_at_most_one_notification_per_interval() {
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        let (tx, forwarder) = forward(&s);
        let start = Instant::now();
        tx.send(out(b"a\n")).unwrap();
        // Each notification is awaited before the clock moves on, so `at` is when it was sent.
        let mut got = vec![s.next_progress(Duration::from_secs(5)).await.unwrap()];
        tokio::time::advance(Duration::from_millis(10)).await;
        tx.send(out(b"b\n")).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        tx.send(out(b"c\n")).unwrap();
        got.push(s.next_progress(Duration::from_secs(5)).await.unwrap());
        tx.send(out(b"d\n")).unwrap();
        got.push(s.next_progress(Duration::from_secs(5)).await.unwrap());
        drop(tx);
        forwarder.await.expect("the forwarder ends cleanly");

        let seen: Vec<_> = got
            .iter()
            .map(|g| (g.at - start, g.message.as_deref().unwrap(), g.progress))
            .collect();
        assert_eq!(
            seen,
            [
                (Duration::ZERO, "a", 1.0),
                (PROGRESS_INTERVAL, "b\nc", 3.0),
                (PROGRESS_INTERVAL * 2, "d", 4.0),
            ]
        );
        s.close().await;
    });
}

#[test]
fn the_last_partial_line_is_sent_as_soon_as_the_run_ends() {
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        let (tx, forwarder) = forward(&s);
        let start = Instant::now();
        tx.send(out(b"a\n")).unwrap();
        tx.send(out(b"b")).unwrap();
        let first = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.message.as_deref(), Some("a"));
        drop(tx);
        let last = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(last.message.as_deref(), Some("b"));
        assert_eq!(last.at, start, "the end does not wait for the interval");
        assert_eq!(last.progress, 2.0, "a partial line counts as a line");
        forwarder.await.expect("the forwarder ends cleanly");
        s.close().await;
    });
}

#[test]
fn a_partial_line_held_past_the_interval_leaves_the_runtime_idle() {
    // The forwarder used to arm its flush timer for a partial line too: past the interval the
    // timer fired on every turn and nothing was sent, a busy loop until the line ended. On a
    // paused clock that loop stops time, and this test would hang (see `with_paused_clock`).
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        let (tx, forwarder) = forward(&s);
        tx.send(out(b"first\n")).unwrap();
        assert!(s.next_progress(Duration::from_secs(5)).await.is_some());
        tx.send(out(b"Password: ")).unwrap();
        assert!(
            s.next_progress(PROGRESS_INTERVAL * 50).await.is_none(),
            "a prompt without a newline is not sent while the run goes on"
        );
        tx.send(out(b"\n")).unwrap();
        let got = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.message.as_deref(), Some("Password: "));
        drop(tx);
        forwarder.await.expect("the forwarder ends cleanly");
        s.close().await;
    });
}

#[test]
fn a_character_split_across_chunks_arrives_whole() {
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        let (tx, forwarder) = forward(&s);
        tx.send(out(b"caf\xc3")).unwrap();
        tx.send(out(b"\xa9 \xff\n")).unwrap();
        let got = s.next_progress(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.message.as_deref(), Some("café \u{fffd}"));
        drop(tx);
        forwarder.await.expect("the forwarder ends cleanly");
        s.close().await;
    });
}

#[test]
fn a_long_batch_is_cut_to_its_tail_on_a_character_boundary() {
    with_paused_clock(|| async {
        let mut s = Session::start(TRIVIAL).await;
        // Every multi-byte width, each shifted by every offset, so that the first kept byte
        // falls on each byte of a character in turn.
        for wide in ["é", "€", "😀"] {
            for shift in 0..4 {
                let line = format!("{}{}", "x".repeat(shift), wide.repeat(3000));
                let (tx, forwarder) = forward(&s);
                tx.send(out(format!("{line}\n").as_bytes())).unwrap();
                drop(tx);
                let got = s.next_progress(Duration::from_secs(5)).await.unwrap();
                forwarder.await.expect("cutting the message does not panic");
                let message = got.message.unwrap();
                let kept = message
                    .strip_prefix('…')
                    .unwrap_or_else(|| panic!("a cut message starts with `…`: {message:.40}"));
                assert!(
                    line.ends_with(kept),
                    "the tail is kept ({wide}, shift {shift})"
                );
                // The budget counts the newline, so at most MAX - 1 bytes of the line are
                // kept, and fewer only by what reaching a character boundary takes.
                assert!(
                    kept.len() < PROGRESS_MAX_MESSAGE
                        && kept.len() + wide.len() >= PROGRESS_MAX_MESSAGE,
                    "kept {} bytes ({wide}, shift {shift})",
                    kept.len()
                );
            }
        }
        let (tx, forwarder) = forward(&s);
        let exact = "y".repeat(PROGRESS_MAX_MESSAGE - 1);
        tx.send(out(format!("{exact}\n").as_bytes())).unwrap();
        drop(tx);
        let got = s.next_progress(Duration::from_secs(5)).await.unwrap();
        forwarder.await.expect("the forwarder ends cleanly");
        assert_eq!(
            got.message.as_deref(),
            Some(exact.as_str()),
            "at the limit: not cut"
        );
        s.close().await;
    });
}

// --- whole round trips, with real processes ---

/// Waits on the real clock, under a deadline, for what a real process does.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 30 s"))
}

fn call(name: &'static str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else {
        panic!("arguments are an object")
    };
    CallToolRequestParams::new(name).with_arguments(arguments)
}

const ECHO: &str = r#"
tools:
  - name: echo
    description: Say a word
    command: [/bin/echo, "{{word}}"]
    params:
      word: {type: string, pattern: "^[a-z]+$"}
"#;

#[tokio::test]
async fn a_client_initializes_lists_closed_schemas_and_calls_echo() {
    let s = within("starting a session", Session::start(ECHO)).await;
    let info = s.client.peer_info().expect("the server introduced itself");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("mcpfier")
    );
    assert!(info.capabilities.tools.is_some());

    let tools = within("tools/list", s.client.list_all_tools())
        .await
        .unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "echo");
    let schema = Value::Object((*tools[0].input_schema).clone());
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(schema["required"], json!(["word"]));
    assert_eq!(schema["properties"]["word"]["pattern"], json!("^[a-z]+$"));
    assert!(tools[0].output_schema.is_some());

    let r = within(
        "tools/call",
        s.client.call_tool(call("echo", json!({"word": "hi"}))),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(text(&r), "hi\n");
    let structured = r.structured_content.unwrap();
    assert_eq!(structured["stdout_bytes"], json!(3));
    assert_eq!(structured["exit_code"], json!(0));
    s.close().await;
}

#[tokio::test]
async fn invalid_arguments_are_refused_with_is_error_and_nothing_runs() {
    // The tool touches `<dir>/<name>`: the file shows whether the command ran.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "tools:\n  - name: touch\n    command: [/usr/bin/touch, '{}/{{{{name}}}}']\n    params:\n      name: {{type: string, pattern: '^[a-z]+$'}}\n",
        dir.path().display()
    );
    let marker = dir.path().join("ok");
    let s = within("starting a session", Session::start(&yaml)).await;
    let r = within(
        "tools/call",
        s.client
            .call_tool(call("touch", json!({"name": "ok", "extra": true}))),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert_eq!(
        text(&r),
        "invalid arguments, nothing was run: parameter `extra`: unknown parameter (known: name)"
    );
    assert!(r.structured_content.is_none());
    assert!(!marker.exists(), "the command ran");

    let r = within(
        "tools/call",
        s.client.call_tool(call("touch", json!({"name": "../x"}))),
    )
    .await
    .unwrap();
    assert_eq!(
        text(&r),
        "invalid arguments, nothing was run: parameter `name`: must match the pattern `^[a-z]+$`"
    );

    // The same tool does run with good arguments: the file shows it would have.
    let r = within(
        "tools/call",
        s.client.call_tool(call("touch", json!({"name": "ok"}))),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert!(marker.exists(), "the command did not run");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    s.close().await;
}

#[tokio::test]
async fn an_unknown_tool_is_a_protocol_error_that_lists_the_tools() {
    let s = within("starting a session", Session::start(ECHO)).await;
    let err = within("tools/call", s.client.call_tool(call("ehco", json!({}))))
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("unknown tool `ehco`; tools are: echo"),
        "{shown}"
    );
    s.close().await;
}

#[tokio::test]
async fn live_output_reaches_the_client_as_progress_notifications() {
    // The rmcp client puts a progress token on every request; the last line has no newline
    // and comes with the end of the run.
    let yaml = r#"
tools:
  - name: lines
    command: [/bin/sh, -c, "printf 'one\\ntwo\\nthree'"]
"#;
    let mut s = within("starting a session", Session::start(yaml)).await;
    let r = within("tools/call", s.client.call_tool(call("lines", json!({}))))
        .await
        .unwrap();
    assert_eq!(text(&r), "one\ntwo\nthree");
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    while lines.len() < 3 {
        let got = within("progress", s.progress.recv())
            .await
            .expect("the client is running");
        lines.extend(got.message.unwrap().lines().map(str::to_owned));
        tokens.push(got.token);
    }
    assert_eq!(lines, ["one", "two", "three"]);
    assert!(
        tokens.windows(2).all(|t| t[0] == t[1]),
        "one call, one token"
    );
    s.close().await;
}
