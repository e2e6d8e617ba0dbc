//! The span of each MCP request the server handles (`{mcp.method.name} {target}`, kind
//! server) and OpenTelemetry's `mcp.server.operation.duration`, both per the GenAI semantic
//! conventions v0.1.0. The parent is the trace context in the request's `_meta` (SEP-414),
//! else the HTTP request's `traceparent` header.

use std::time::Instant;

use mcpfier_common::telemetry::{self, Attribute, Kind, Span};
use rmcp::RoleServer;
use rmcp::service::RequestContext;

use super::http_request;

/// One MCP request being handled: its span and when it began.
pub(super) struct Request {
    pub(super) span: Span,
    method: &'static str,
    tool: Option<String>,
    started: Instant,
}

impl Request {
    /// Starts the span of `method`. `tool` names the target only when it is a catalog tool
    /// the caller may see: a made-up name must not become a span name or a label.
    pub(super) fn start(
        context: &RequestContext<RoleServer>,
        method: &'static str,
        tool: Option<&str>,
    ) -> Request {
        let parts = http_request(context);
        let header = |name| {
            parts
                .and_then(|p| p.headers.get(name))
                .and_then(|v| v.to_str().ok())
        };
        let parent = match context.meta.get_traceparent() {
            Some(tp) => telemetry::extract(Some(tp), context.meta.get_tracestate()),
            None => telemetry::extract(header("traceparent"), header("tracestate")),
        };
        let span = Span::start(Kind::Server, &parent, || {
            let mut attributes = vec![
                Attribute::new("mcp.method.name", method),
                Attribute::new("jsonrpc.request.id", context.id.to_string()),
                Attribute::new(
                    "network.transport",
                    if parts.is_some() { "tcp" } else { "pipe" },
                ),
            ];
            if let Some(info) = context.peer.peer_info() {
                attributes.push(Attribute::new(
                    "mcp.protocol.version",
                    info.protocol_version.to_string(),
                ));
            }
            // The session id lets its holder use the session, so spans carry a digest of
            // it: enough to group a session's requests, useless to anyone who reads the trace.
            if let Some(session) = header("mcp-session-id") {
                let digest = crate::audit::sha256_hex(session.as_bytes());
                attributes.push(Attribute::new("mcp.session.id", digest[..32].to_owned()));
            }
            let name = match tool {
                Some(t) => {
                    attributes.push(Attribute::new("gen_ai.tool.name", t.to_owned()));
                    attributes.push(Attribute::new("gen_ai.operation.name", "execute_tool"));
                    format!("{method} {t}")
                }
                None => method.to_owned(),
            };
            (name.into(), attributes)
        });
        Request {
            span,
            method,
            tool: tool.map(str::to_owned),
            started: Instant::now(),
        }
    }

    /// Ends the request: `error`, when it failed, is the low-cardinality `error.type`
    /// (`tool_error` for a result with `isError`) and a message for the span's status.
    pub(super) fn end(self, error: Option<(String, String)>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut labels = vec![("mcp_method_name", self.method.to_owned())];
        if let Some(tool) = &self.tool {
            labels.push(("gen_ai_tool_name", tool.clone()));
        }
        if let Some((kind, message)) = error {
            self.span.fail(&kind, message);
            labels.push(("error_type", kind));
        }
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::histogram!(
            mcpfier_common::metrics::MCP_SERVER_OPERATION_DURATION,
            labels
        )
        .record(elapsed);
    }
}
