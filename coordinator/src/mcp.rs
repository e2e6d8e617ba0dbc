//! The MCP front door (rmcp): `tools/list` from the catalog, `tools/call` through the
//! dispatcher, live output as progress notifications, cancellation that kills the command.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpfier_exec::{ErrorKind, Event, HasKind, Outcome};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig, Tool as McpTool,
    ToolAnnotations,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use mcpfier_common::telemetry::{Kind, Span};

use crate::catalog::Tool;
use crate::dispatch::{self, Dispatcher, Ran};
use crate::fleet;

/// How often at most a call sends a progress notification.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Most bytes of output one progress notification carries.
const PROGRESS_MAX_MESSAGE: usize = 4096;

/// The MCP server: cheap to clone, one per session.
#[derive(Clone)]
pub struct Server {
    dispatcher: Dispatcher,
    tools: Arc<Vec<McpTool>>,
    /// Connected clients, told when the set of tools changes (fleet mode).
    peers: Arc<Mutex<Vec<Peer<RoleServer>>>>,
    /// Most bytes of a result's text, JSON-encoded (HTTP: see [`RESULT_BUDGET`]).
    result_budget: Option<usize>,
}

impl Server {
    /// The server for every session. In fleet mode it also runs, in `tasks` until
    /// `shutdown`, the notifier that sends `notifications/tools/list_changed` when the tools
    /// some agent can run change.
    pub fn new(dispatcher: Dispatcher, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        let tools = dispatcher
            .catalog()
            .tools
            .values()
            .map(|t| describe(t))
            .collect();
        let server = Self {
            dispatcher,
            tools: Arc::new(tools),
            peers: Arc::new(Mutex::new(Vec::new())),
            result_budget: None,
        };
        if let Some(fleet) = server.dispatcher.fleet() {
            let notifier = ListChanged {
                server: server.clone(),
                changes: fleet.changes(),
            };
            tasks.spawn(notifier.run(shutdown));
        }
        server
    }

    /// Cuts each result's output to fit `budget` bytes of JSON-encoded text.
    pub fn with_result_budget(mut self, budget: usize) -> Self {
        self.result_budget = Some(budget);
        self
    }

    /// The tools a client can call now: all of them in this process; in fleet mode, those
    /// some healthy agent may run.
    pub fn visible_tools(&self) -> Vec<McpTool> {
        let catalog = self.dispatcher.catalog();
        match self.dispatcher.fleet() {
            None => (*self.tools).clone(),
            Some(fleet) => catalog
                .tools
                .values()
                .zip(self.tools.iter())
                .filter(|(tool, _)| fleet.can_run(tool))
                .map(|(_, described)| described.clone())
                .collect(),
        }
    }

    fn peers(&self) -> Vec<Peer<RoleServer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn visible_names(&self) -> Vec<String> {
        self.visible_tools()
            .into_iter()
            .map(|t| t.name.into_owned())
            .collect()
    }
}

/// Tells connected clients when the tools they may call change (fleet mode), and forgets
/// clients that are gone.
struct ListChanged {
    server: Server,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl ListChanged {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut last = self.server.visible_names();
        loop {
            tokio::select! {
                changed = self.changes.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            let now = self.server.visible_names();
            if now == last {
                continue;
            }
            info!(
                tools = now.len(),
                "the tools agents can run changed; telling clients"
            );
            last = now;
            let peers = self.server.peers();
            let mut alive = Vec::new();
            for peer in peers {
                if peer.notify_tool_list_changed().await.is_ok() {
                    alive.push(peer);
                }
            }
            *self.server.peers.lock().unwrap_or_else(|p| p.into_inner()) = alive;
        }
    }
}

/// The `outputSchema` of every tool: the shape of `structuredContent`.
pub fn output_schema() -> Map<String, Value> {
    let schema = json!({
        "type": "object",
        "properties": {
            "exit_code": {"type": ["integer", "null"], "description": "exit code; null when a signal ended the command"},
            "signal": {"type": ["integer", "null"], "description": "the signal that ended the command, if any"},
            "stdout_bytes": {"type": "integer", "description": "bytes of stdout captured (at most max_output); the text content carries them"},
            "stderr_bytes": {"type": "integer", "description": "bytes of stderr captured (at most max_output); the text content carries them after a `--- stderr ---` heading"},
            "truncated": {"type": "boolean", "description": "output went past max_output and was cut"},
            "cut_to_fit": {"type": "boolean", "description": "the text content holds less than was captured, to fit one HTTP response (a note in the text says how much)"},
            "timed_out": {"type": "boolean"},
            "oom_killed": {"type": "boolean", "description": "a container call's memory limit killed it"},
            "duration_ms": {"type": "integer"},
            "agent": {"type": "string", "description": "the agent that ran the call (fleet mode)"},
            "error": {
                "type": "object",
                "description": "set when the call failed before or while running, e.g. an agent was lost",
                "properties": {
                    "kind": {"type": "string"},
                    "message": {"type": "string"},
                    "call_id": {"type": "string"},
                    "outcome": {"type": "string", "enum": ["not_run", "unknown"]}
                },
                "required": ["kind", "message", "outcome"]
            }
        },
        "required": ["exit_code", "stdout_bytes", "stderr_bytes", "truncated", "cut_to_fit", "timed_out", "duration_ms"]
    });
    match schema {
        Value::Object(map) => map,
        _ => unreachable!("the schema literal is an object"),
    }
}

/// The MCP description of a tool.
pub fn describe(tool: &Tool) -> McpTool {
    let mut t = McpTool::new(
        tool.name.clone(),
        tool.description.clone().unwrap_or_default(),
        tool.input_schema.clone(),
    )
    .with_raw_output_schema(Arc::new(output_schema()));
    if let Some(title) = &tool.title {
        t = t.with_title(title.clone());
    }
    let a = &tool.annotations;
    if a.read_only.is_some()
        || a.destructive.is_some()
        || a.idempotent.is_some()
        || a.open_world.is_some()
    {
        let mut ann = ToolAnnotations::new();
        ann.title = tool.title.clone();
        ann.read_only_hint = a.read_only;
        ann.destructive_hint = a.destructive;
        ann.idempotent_hint = a.idempotent;
        ann.open_world_hint = a.open_world;
        t = t.with_annotations(ann);
    }
    t
}

/// `structuredContent` for an outcome: what happened, not the output itself, which the text
/// content carries (so a result holds it once).
pub fn structured(outcome: &Outcome, agent: Option<&str>) -> Value {
    let mut value = json!({
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "stdout_bytes": outcome.stdout.len(),
        "stderr_bytes": outcome.stderr.len(),
        "truncated": outcome.truncated(),
        "cut_to_fit": false,
        "timed_out": outcome.timed_out,
        "oom_killed": outcome.oom_killed,
        "duration_ms": outcome.duration.as_millis() as u64,
    });
    if let Some(agent) = agent {
        value["agent"] = json!(agent);
    }
    value
}

/// The MCP result of a finished run. Its one text block holds stdout, then stderr under a
/// `--- stderr ---` heading, then mcpfier's notes. With a `budget` (HTTP, where a client
/// takes one server-sent event of at most 1 MiB) the output is cut so that the text's JSON
/// encoding stays within it, and a note says so.
pub fn tool_result(
    tool: &Tool,
    outcome: &Outcome,
    agent: Option<&str>,
    budget: Option<usize>,
) -> CallToolResult {
    let ok = tool.ok_exit(outcome.exit_code) && !outcome.timed_out && !outcome.oom_killed;
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    let (out, err) = match budget {
        Some(budget) => fit(&stdout, &stderr, budget.saturating_sub(NOTES_ROOM)),
        None => (&*stdout, &*stderr),
    };
    let cut = out.len() < stdout.len() || err.len() < stderr.len();
    let mut text = out.to_owned();
    if !err.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("--- stderr ---\n");
        text.push_str(err);
    }
    if cut {
        text.push_str(&format!(
            "\n[mcpfier] output cut to fit one HTTP response: {} of {} of stdout and {} of {} \
             of stderr shown (over stdio a result carries all of it)",
            mcpfier_common::ByteSize(out.len() as u64),
            mcpfier_common::ByteSize(stdout.len() as u64),
            mcpfier_common::ByteSize(err.len() as u64),
            mcpfier_common::ByteSize(stderr.len() as u64),
        ));
    }
    if outcome.oom_killed {
        text.push_str("\n[mcpfier] killed: out of memory (the container's memory limit)");
    } else if outcome.timed_out {
        text.push_str(&format!(
            "\n[mcpfier] timed out after {}; the command and everything it started were killed",
            humantime::format_duration(tool.timeout)
        ));
    } else if !ok {
        match (outcome.exit_code, outcome.signal) {
            (Some(code), _) => text.push_str(&format!("\n[mcpfier] exit code {code}")),
            (None, Some(sig)) => text.push_str(&format!("\n[mcpfier] killed by signal {sig}")),
            _ => {}
        }
    }
    if outcome.truncated() {
        text.push_str(&format!(
            "\n[mcpfier] output was cut at {} per stream (max_output)",
            mcpfier_common::ByteSize(tool.max_output)
        ));
    }
    let content = vec![ContentBlock::text(text)];
    let mut result = if ok {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    };
    let mut value = structured(outcome, agent);
    value["cut_to_fit"] = json!(cut);
    result.structured_content = Some(value);
    result
}

/// Most bytes of a call result's text, JSON-encoded, over HTTP: the official Python client
/// refuses a server-sent event over 1 MiB, and the event also holds the JSON-RPC envelope
/// and `structuredContent`.
pub const RESULT_BUDGET: usize = 1_000_000;
/// Room kept in the budget for the stderr heading and mcpfier's notes.
const NOTES_ROOM: usize = 1024;

/// Bytes `s` takes JSON-encoded, quotes excluded.
fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `s` whose JSON encoding takes at most `budget` bytes.
fn prefix_within(s: &str, budget: usize) -> &str {
    let mut used = 0;
    for (at, c) in s.char_indices() {
        used += json_char_len(c);
        if used > budget {
            return &s[..at];
        }
    }
    s
}

/// Stdout and stderr cut so that together they take at most `budget` bytes JSON-encoded:
/// stderr keeps up to a quarter of the budget (more when stdout needs less), stdout the rest.
fn fit<'a>(stdout: &'a str, stderr: &'a str, budget: usize) -> (&'a str, &'a str) {
    let (out_len, err_len) = (json_len(stdout), json_len(stderr));
    if out_len + err_len <= budget {
        return (stdout, stderr);
    }
    let err_budget = err_len.min((budget / 4).max(budget.saturating_sub(out_len)));
    let err = prefix_within(stderr, err_budget);
    let out = prefix_within(stdout, budget - json_len(err));
    (out, err)
}

/// The answer to a call its principal's limits refuse: a tool error that says when to retry,
/// with `structuredContent.error {kind: rate_limited, limit, retry_after_s}`.
fn rate_limited(refused: &crate::access::Refusal) -> CallToolResult {
    let mut value = structured(&Outcome::default(), None);
    value["error"] = json!({
        "kind": "rate_limited",
        "limit": refused.kind(),
        "retry_after_s": refused.retry_after(),
        "message": refused.to_string(),
        "outcome": "not_run",
    });
    let mut result = error_result(refused.to_string());
    result.structured_content = Some(value);
    result
}

fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// An error result that also carries `structuredContent` (fleet failures), so that clients
/// reading the structure see what happened and whether the command may have run.
fn structured_error(
    kind: ErrorKind,
    message: String,
    agent: Option<&str>,
    call_id: Option<&str>,
    elapsed: Duration,
) -> CallToolResult {
    let mut value = structured(
        &Outcome {
            duration: elapsed,
            ..Outcome::default()
        },
        agent,
    );
    let mut error =
        json!({"kind": kind.as_str(), "message": message, "outcome": kind.ran().as_str()});
    if let Some(id) = call_id {
        error["call_id"] = json!(id);
    }
    value["error"] = error;
    let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
    result.structured_content = Some(value);
    result
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let capabilities = if self.dispatcher.fleet().is_some() {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build()
        } else {
            ServerCapabilities::builder().enable_tools().build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcpfier", env!("CARGO_PKG_VERSION")))
            .with_instructions("Each tool runs one fixed command with the arguments you give it.")
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        let trace = trace::Request::start(&context, "initialize", None);
        let result = self.negotiate_initialize(&request);
        trace.end(
            result
                .as_ref()
                .err()
                .map(|e| (e.code.0.to_string(), e.message.to_string())),
        );
        result
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        trace::Request::start(&context, "ping", None).end(None);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let trace = trace::Request::start(&context, "tools/list", None);
        let mut tools = self.visible_tools();
        tools.retain(|t| self.may_call(&context, &t.name));
        trace.end(None);
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if self.dispatcher.fleet().is_some() {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            // A closed or parked session's peer would keep its channel's memory.
            peers.retain(|p| !p.is_transport_closed());
            peers.push(context.peer);
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let client = context
            .peer
            .peer_info()
            .map(|info| info.client_info.name.clone())
            .unwrap_or_default();
        let principal = principal(&context).map(|p| p.id.clone());
        let visible = self.dispatcher.catalog().tool(&request.name).is_some()
            && self.may_call(&context, &request.name);
        let trace = trace::Request::start(
            &context,
            "tools/call",
            visible.then_some(request.name.as_ref()),
        );
        let span = tracing::info_span!(
            "call",
            request_id = %context.id,
            trace_id = %trace.span.trace_id(),
            tool = %request.name,
            client = %client,
            principal = principal.as_deref().unwrap_or("-")
        );
        // The session is busy until the call ends, even if the client stops reading: it is
        // neither parked nor expired under a running call.
        let _busy = http_request(&context)
            .and_then(|p| p.extensions.get::<crate::http::auth::SessionActivity>())
            .map(|a| a.0.hold());
        let result = self
            .call(request, context, &trace.span)
            .instrument(span)
            .await;
        trace.end(match &result {
            Ok(r) if r.is_error == Some(true) => {
                Some(("tool_error".to_owned(), "the tool call failed".to_owned()))
            }
            Ok(_) => None,
            // An unknown tool's error repeats the name the caller made up: not for the span.
            Err(e) if !visible => Some((e.code.0.to_string(), "unknown tool".to_owned())),
            Err(e) => Some((e.code.0.to_string(), e.message.to_string())),
        });
        result.map(Into::into)
    }
}

impl Server {
    /// Records how a call ended: in the metrics, on the dashboard's board, and as a `call`
    /// line in the audit file (when there is one): who, which session and
    /// request, the tool, its arguments (secret parameters' values as their SHA-256; every
    /// value of a tool the caller can't see), and `fields` (outcome, exit code, ...).
    async fn record(
        &self,
        context: &RequestContext<RoleServer>,
        request: &CallToolRequestParams,
        tool: Option<&Tool>,
        fields: Value,
    ) {
        let outcome = count_call(tool, &fields);
        let parts = http_request(context);
        let principal = principal(context);
        self.dispatcher.board().record(crate::board::CallRecord {
            at_ms: mcpfier_common::membership::now_ms(),
            tool: tool.map(|t| t.name.clone()),
            principal: principal.map(|p| p.id.clone()),
            agent: fields["agent"]
                .as_str()
                .filter(|a| *a != "local")
                .map(str::to_owned),
            outcome,
            duration_ms: fields["duration_ms"].as_u64(),
        });
        let Some(audit) = self.dispatcher.audit() else {
            return;
        };
        let session = parts
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok());
        let arguments: Map<String, Value> = request
            .arguments
            .iter()
            .flatten()
            .map(|(name, value)| {
                let secret =
                    tool.is_none_or(|t| t.params.iter().any(|p| p.name == *name && p.spec.secret));
                let shown = if secret {
                    json!(crate::audit::digest_of(value))
                } else {
                    value.clone()
                };
                (name.clone(), shown)
            })
            .collect();
        let mut event = Map::new();
        event.insert("event".into(), json!("call"));
        event.insert(
            "principal".into(),
            json!(
                principal
                    .map(|p| p.id.as_str())
                    .unwrap_or(if parts.is_some() { "-" } else { "local" })
            ),
        );
        event.insert("session".into(), json!(session));
        event.insert("request_id".into(), json!(context.id.to_string()));
        event.insert("tool".into(), json!(request.name));
        event.insert("arguments".into(), Value::Object(arguments));
        if let Value::Object(extra) = fields {
            event.extend(extra);
        }
        if let Err(e) = audit.record(event).await {
            tracing::error!(error = %e, "the audit file can't be written: no more calls run");
        }
    }

    /// Whether the caller of `context` may list and call `tool`. Over stdio (no HTTP request)
    /// the caller is whoever started mcpfier, and may; over HTTP the front door put the
    /// authenticated principal in the request, and its roles decide.
    fn may_call(&self, context: &RequestContext<RoleServer>, tool: &str) -> bool {
        http_request(context).is_none()
            || self
                .dispatcher
                .catalog()
                .access
                .may_call(principal(context), tool)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
        trace: &Span,
    ) -> Result<CallToolResult, McpError> {
        let catalog = self.dispatcher.catalog();
        // A tool the caller may not call gets the same answer as one that does not exist, so
        // a refusal does not tell what exists.
        let tool = catalog
            .tool(&request.name)
            .filter(|_| self.may_call(&context, &request.name));
        if let Some(audit) = self.dispatcher.audit()
            && audit.broken()
        {
            return Ok(error_result(
                "the audit file can't be written, so no call runs: see the server's log".into(),
            ));
        }
        let Some(tool) = tool else {
            let outcome = if catalog.tool(&request.name).is_some() {
                warn!(tool = %request.name, "call refused: the caller's roles do not allow this tool");
                "forbidden"
            } else {
                "unknown_tool"
            };
            self.record(&context, &request, None, json!({"outcome": outcome}))
                .await;
            let known: Vec<_> = catalog
                .tools
                .keys()
                .filter(|name| self.may_call(&context, name))
                .map(String::as_str)
                .collect();
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool `{}`; tools are: {}",
                    request.name,
                    known.join(", ")
                ),
                None,
            ));
        };
        if let Some(who) = principal(&context) {
            let missing = who.missing_scopes(&tool.scopes);
            if !missing.is_empty() {
                info!(missing = %missing.join(" "), "call refused: the token lacks a scope");
                self.record(
                    &context,
                    &request,
                    Some(tool),
                    json!({"outcome": "insufficient_scope", "reason": missing.join(" ")}),
                )
                .await;
                return Ok(error_result(format!(
                    "`{}` needs the OAuth scope {}; ask for a token with it. Nothing was run",
                    tool.name,
                    missing.join(" ")
                )));
            }
        }
        let checking = trace.child(Kind::Internal, || ("check arguments".into(), vec![]));
        let exec = match tool.prepare(request.arguments.as_ref()) {
            Ok(exec) => exec,
            Err(errors) => {
                let list: Vec<_> = errors.iter().map(ToString::to_string).collect();
                checking.fail("invalid_arguments", "invalid arguments");
                drop(checking);
                info!(problems = list.len(), "arguments refused");
                self.record(
                    &context,
                    &request,
                    Some(tool),
                    json!({"outcome": "invalid_arguments", "reason": list.join("; ")}),
                )
                .await;
                return Ok(error_result(format!(
                    "invalid arguments, nothing was run: {}",
                    list.join("; ")
                )));
            }
        };
        let access = &catalog.access;
        if let Err(why) =
            access.check_narrowed(principal(&context), tool, request.arguments.as_ref())
        {
            checking.fail(
                "forbidden_arguments",
                "arguments not allowed for the caller's roles",
            );
            drop(checking);
            info!(reason = %why, "arguments refused by the caller's roles");
            self.record(
                &context,
                &request,
                Some(tool),
                json!({"outcome": "forbidden_arguments", "reason": why}),
            )
            .await;
            return Ok(error_result(format!(
                "arguments not allowed for your roles, nothing was run: {why}"
            )));
        }
        drop(checking);
        let _permit = match principal(&context).map(|who| access.admit(who)) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(refused)) => {
                info!(reason = %refused, "call refused: rate limited");
                self.record(
                    &context,
                    &request,
                    Some(tool),
                    json!({"outcome": "rate_limited", "reason": refused.kind()}),
                )
                .await;
                return Ok(rate_limited(&refused));
            }
        };
        let started = Instant::now();
        let request_id = context.id.to_string();
        let run = |tx| {
            self.dispatcher.run(
                tool,
                &exec,
                &request_id,
                tx,
                context.ct.clone(),
                trace.context(),
            )
        };
        let result = match context.meta.get_progress_token() {
            // Progress is forwarded in this future, beside the run: it sends what is left
            // and ends when the run drops its sender.
            Some(token) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let forward = forward_progress(rx, context.peer.clone(), token);
                tokio::join!(run(Some(tx)), forward).0
            }
            None => run(None).await,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let fields = match &result {
            Ok(Ran { outcome, agent, .. }) => json!({
                "outcome": if outcome.timed_out { "timed_out" } else if outcome.cancelled { "cancelled" } else { "ran" },
                "agent": agent.as_deref().unwrap_or("local"),
                "exit_code": outcome.exit_code,
                "signal": outcome.signal,
                "duration_ms": duration_ms,
            }),
            Err(e) => json!({
                "outcome": e.kind().to_string(),
                "reason": e.to_string(),
                "duration_ms": duration_ms,
            }),
        };
        self.record(&context, &request, Some(tool), fields).await;
        match result {
            Ok(Ran {
                outcome,
                agent,
                call_id,
            }) => {
                info!(
                    agent = agent.as_deref().unwrap_or("local"),
                    call_id = %call_id,
                    exit_code = outcome.exit_code,
                    timed_out = outcome.timed_out,
                    cancelled = outcome.cancelled,
                    truncated = outcome.truncated(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "call finished"
                );
                Ok(tool_result(
                    tool,
                    &outcome,
                    agent.as_deref(),
                    self.result_budget,
                ))
            }
            Err(dispatch::Error::Fleet(fleet::Error::Cancelled)) => {
                Ok(error_result(fleet::Error::Cancelled.to_string()))
            }
            Err(dispatch::Error::Fleet(e)) => {
                warn!(error = %e, kind = %e.kind(), "fleet call failed");
                let (agent, call_id) = match &e {
                    fleet::Error::AgentLost { agent, call_id, .. } => {
                        (Some(agent.as_str()), Some(call_id.as_str()))
                    }
                    fleet::Error::Start { agent, .. } => (Some(agent.as_str()), None),
                    _ => (None, None),
                };
                Ok(structured_error(
                    e.kind(),
                    e.to_string(),
                    agent,
                    call_id,
                    started.elapsed(),
                ))
            }
            Err(dispatch::Error::Exec(e)) => {
                warn!(error = %e, kind = %e.kind(), "call could not start");
                Ok(error_result(e.to_string()))
            }
            Err(e) => {
                info!(error = %e, kind = %e.kind(), "call not started");
                Ok(error_result(e.to_string()))
            }
        }
    }
}

/// Counts a call in the metrics, by its audit outcome: a call that ran is `ok` or `failed`
/// by the tool's exit codes. A tool that does not exist is counted as `unknown`, so client
/// input never becomes a label.
/// Counts a call in the metrics and returns its outcome as they name it (`ok`, `failed`, or
/// the outcome in `fields`).
fn count_call(tool: Option<&Tool>, fields: &Value) -> String {
    use mcpfier_common::metrics as m;
    let name = tool.map_or("unknown", |t| t.name.as_str()).to_owned();
    let outcome = match fields["outcome"].as_str().unwrap_or("unknown") {
        "ran" => {
            let exit = fields["exit_code"].as_i64().map(|c| c as i32);
            if tool.is_some_and(|t| t.ok_exit(exit)) {
                "ok"
            } else {
                "failed"
            }
        }
        other => other,
    };
    let outcome = outcome.to_owned();
    match outcome.as_str() {
        "forbidden" | "forbidden_arguments" | "insufficient_scope" => {
            metrics::counter!(m::AUTHZ_REFUSALS, "reason" => outcome.clone()).increment(1)
        }
        "rate_limited" => {
            let reason = fields["reason"].as_str().unwrap_or("rate").to_owned();
            metrics::counter!(m::RATE_LIMITED, "reason" => reason).increment(1)
        }
        _ => {}
    }
    if let Some(ms) = fields["duration_ms"].as_u64() {
        metrics::histogram!(m::TOOL_CALL_DURATION, "tool" => name.clone())
            .record(ms as f64 / 1000.0);
    }
    metrics::counter!(m::TOOL_CALLS, "tool" => name, "outcome" => outcome.clone()).increment(1);
    outcome
}

/// The HTTP request a message came in (rmcp puts its parts in the context); `None` over
/// stdio.
fn http_request(context: &RequestContext<RoleServer>) -> Option<&axum::http::request::Parts> {
    context.extensions.get::<axum::http::request::Parts>()
}

/// The principal the front door authenticated for this message's HTTP request.
fn principal(context: &RequestContext<RoleServer>) -> Option<&crate::access::Principal> {
    http_request(context).and_then(|p| crate::http::auth::principal_of(&p.extensions))
}

/// Sends output as progress notifications, at most one per [`PROGRESS_INTERVAL`].
async fn forward_progress(
    mut rx: mpsc::UnboundedReceiver<Event>,
    peer: Peer<RoleServer>,
    token: ProgressToken,
) {
    let mut pending = Vec::<u8>::new();
    // Whether `pending` holds a whole line. Only then is the flush timer armed: a partial line
    // waits for its end, and a timer armed for it would fire at once on every turn (its
    // deadline is past and nothing is sent), spinning a core until the line ends.
    let mut whole_line = false;
    let mut lines = 0u64;
    let mut last_sent = tokio::time::Instant::now() - PROGRESS_INTERVAL;
    loop {
        let flush_at = last_sent + PROGRESS_INTERVAL;
        let closed = tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(Event::Output(c)) => {
                    whole_line |= c.data.contains(&b'\n');
                    pending.extend_from_slice(&c.data);
                    false
                }
                Some(Event::Started { .. }) => false,
                None => true,
            },
            () = tokio::time::sleep_until(flush_at), if whole_line => false,
        };
        let now = tokio::time::Instant::now();
        if !pending.is_empty() && (closed || now >= flush_at) {
            // Send whole lines; a partial line waits for its end unless the run is over.
            let cut = if closed {
                pending.len()
            } else {
                pending
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            if cut > 0 {
                let batch: Vec<u8> = pending.drain(..cut).collect();
                // What is left is after the last newline, or nothing.
                whole_line = false;
                lines += batch.iter().filter(|b| **b == b'\n').count().max(1) as u64;
                let mut message = String::from_utf8_lossy(&batch).into_owned();
                if message.len() > PROGRESS_MAX_MESSAGE {
                    let mut start = message.len() - PROGRESS_MAX_MESSAGE;
                    while !message.is_char_boundary(start) {
                        start += 1;
                    }
                    message = format!("…{}", &message[start..]);
                }
                let param = ProgressNotificationParam::new(token.clone(), lines as f64)
                    .with_message(message.trim_end_matches('\n').to_owned());
                if peer.notify_progress(param).await.is_err() {
                    return;
                }
                last_sent = now;
            }
        }
        if closed && pending.is_empty() {
            return;
        }
    }
}

mod trace;

#[cfg(test)]
mod tests;
