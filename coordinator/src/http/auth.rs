//! The front door's checks, run on every request before routing: the caller's credential
//! becomes a [`Principal`] in the request's extensions, and an MCP session stays with the
//! principal that opened it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use super::conns::{Activity, hold_until_sent};
use crate::access::{Access, AuthError, Principal, TokenError};

/// The MCP session header.
const SESSION_HEADER: &str = "mcp-session-id";

/// Where the protected-resource metadata (RFC 9728) is served; open to everyone.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The answer to a request whose credential was refused: 401 with a `WWW-Authenticate`
/// challenge (naming the protected-resource metadata when tokens are accepted), 403
/// `insufficient_scope` for a token without a required scope, 400 for a credential in the
/// URL.
fn refuse(access: &Access, e: &AuthError) -> Response {
    let metadata = access
        .oauth()
        .map(|o| format!("resource_metadata=\"{}\"", o.metadata_url));
    let challenge = |extra: Option<String>| {
        let mut parts: Vec<String> = Vec::new();
        if metadata.is_none() {
            parts.push("realm=\"mcpfier\"".into());
        }
        parts.extend(metadata.clone());
        parts.extend(extra);
        format!("Bearer {}", parts.join(", "))
    };
    let text = e.to_string();
    match e {
        AuthError::InQuery(_) => refusal(StatusCode::BAD_REQUEST, None, &text),
        AuthError::Missing | AuthError::Malformed => {
            refusal(StatusCode::UNAUTHORIZED, Some(&challenge(None)), &text)
        }
        AuthError::Invalid
        | AuthError::Token(TokenError::Invalid(_) | TokenError::UnknownKey { .. }) => {
            // The description is ours (no token bytes in it); quotes would break the header.
            let description = text.replace('"', "'");
            refusal(
                StatusCode::UNAUTHORIZED,
                Some(&challenge(Some(format!(
                    "error=\"invalid_token\", error_description=\"{description}\""
                )))),
                &text,
            )
        }
        AuthError::Token(TokenError::Scope(missing)) => refusal(
            StatusCode::FORBIDDEN,
            Some(&challenge(Some(format!(
                "error=\"insufficient_scope\", scope=\"{}\"",
                missing.join(" ")
            )))),
            &text,
        ),
    }
}

/// The metrics label for why a credential was refused.
fn auth_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Malformed => "malformed",
        AuthError::Invalid => "invalid_key",
        AuthError::InQuery(_) => "in_query",
        AuthError::Token(TokenError::Invalid(_) | TokenError::UnknownKey { .. }) => "invalid_token",
        AuthError::Token(TokenError::Scope(_)) => "insufficient_scope",
    }
}

/// The remote address of a request's connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Marks a request that came in on `server.metrics_listen`: only `/metrics` and the probes
/// are served there, with no credential.
#[derive(Clone, Copy, Debug)]
pub struct OnMetricsListener;

/// What the checks share: the access rules and which principal owns which session.
pub struct Front {
    pub(super) access: Arc<Access>,
    /// The tools that name OAuth scopes, with them.
    tool_scopes: HashMap<String, Vec<String>>,
    /// `server.audit`: refusals are recorded there too.
    audit: Option<Arc<crate::audit::Audit>>,
    /// The open MCP sessions, by id, parked ones included.
    sessions: Mutex<HashMap<String, Session>>,
    /// What each session was opened with (its `initialize` parameters, as JSON): all a
    /// parked session keeps, and what rmcp replays to wake it ([`SessionStore`]).
    opened_with: Mutex<HashMap<String, Box<str>>>,
    /// `server.limits`.
    limits: crate::config::ServerLimits,
}

/// An open MCP session.
struct Session {
    /// The principal that opened it (`method:id`); `None` without authentication.
    owner: Option<String>,
    /// Its requests being answered (a call's SSE stream, a GET stream) and its calls.
    activity: Arc<Activity>,
    /// Held for writing while the session is being parked, so no request starts on it
    /// then; a request holds it for reading until it is counted in `activity`.
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// A request's session, in its extensions: the MCP handler counts the session busy for as
/// long as a call runs, even when the client has stopped reading its answer.
#[derive(Clone)]
pub struct SessionActivity(pub Arc<Activity>);

/// A session that may be parked: idle, with the gate to close while parking it.
pub(super) struct Parkable {
    pub id: String,
    activity: Arc<Activity>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Parkable {
    /// Locks the session against new requests, when it is still idle for `idle`; the
    /// session is parked while the returned guard is held.
    pub fn lock_if_idle(&self, idle: std::time::Duration) -> Option<ParkGuard> {
        let guard = self.gate.clone().try_write_owned().ok()?;
        self.activity
            .idle_for()
            .is_some_and(|d| d >= idle)
            .then_some(ParkGuard(guard))
    }
}

/// Held while a session is parked ([`Parkable::lock_if_idle`]).
pub(super) struct ParkGuard(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>);

impl Front {
    pub(super) fn new(
        access: Arc<Access>,
        tool_scopes: HashMap<String, Vec<String>>,
        audit: Option<Arc<crate::audit::Audit>>,
        limits: crate::config::ServerLimits,
    ) -> Self {
        Self {
            access,
            tool_scopes,
            audit,
            sessions: Mutex::new(HashMap::new()),
            opened_with: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Records a refused request in the audit file, when there is one.
    async fn record(
        &self,
        event: &str,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
        path: &str,
        reason: &str,
    ) {
        let Some(audit) = &self.audit else { return };
        let mut e = serde_json::Map::new();
        e.insert("event".into(), event.into());
        e.insert("principal".into(), principal.map(|p| p.id.clone()).into());
        e.insert("peer".into(), peer.map(|p| p.to_string()).into());
        e.insert("path".into(), path.into());
        e.insert("reason".into(), reason.into());
        if let Err(err) = audit.record(e).await {
            tracing::error!(error = %err, "the audit file can't be written: no more calls run");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, HashMap<String, Box<str>>> {
        self.opened_with.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the sessions that are `live` in rmcp or parked (their `initialize` kept), and
    /// what those and the sessions rmcp is still opening were opened with.
    pub(super) fn retain_sessions(&self, live: impl Fn(&str) -> bool) {
        let mut sessions = self.lock();
        let mut opened = self.lock_opened();
        sessions.retain(|id, _| live(id) || opened.contains_key(id));
        opened.retain(|id, _| live(id) || sessions.contains_key(id));
    }

    /// Forgets a session: it can't be woken any more.
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
        self.lock_opened().remove(id);
    }

    /// The sessions with nothing in flight for `idle`.
    pub(super) fn idle_sessions(&self, idle: std::time::Duration) -> Vec<Parkable> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.activity.idle_for().is_some_and(|d| d >= idle))
            .map(|(id, s)| Parkable {
                id: id.clone(),
                activity: s.activity.clone(),
                gate: s.gate.clone(),
            })
            .collect()
    }

    /// How many sessions are open.
    pub fn open_sessions(&self) -> usize {
        self.lock().len()
    }

    /// How many open sessions are parked (their rmcp session closed, `live` says which
    /// are not).
    pub(super) fn parked_sessions(&self, live: impl Fn(&str) -> bool) -> usize {
        self.lock().keys().filter(|id| !live(id)).count()
    }

    /// The refusal of a new session, when one more would pass `server.limits`.
    fn session_refusal(&self, owner: Option<&str>, who: Option<&Principal>) -> Option<Response> {
        let sessions = self.lock();
        let retry = |status, message: String| {
            let mut r = refusal(status, None, &message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            Some(r)
        };
        let idle = humantime::format_duration(self.limits.session_idle.0);
        if sessions.len() >= self.limits.sessions {
            return retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server has {} MCP sessions open, its limit (server.limits.sessions); retry after 60 s",
                    sessions.len()
                ),
            );
        }
        let owner = owner?;
        let held = sessions
            .values()
            .filter(|s| s.owner.as_deref() == Some(owner))
            .count();
        if held >= self.limits.sessions_per_principal {
            return retry(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limited: `{}` has {held} MCP sessions open, its limit (server.limits.sessions_per_principal); close one (DELETE /mcp) or wait for an idle one to expire ({idle} without a request); retry after 60 s",
                    who.map_or("?", |p| p.id.as_str())
                ),
            );
        }
        None
    }
}

fn refusal(status: StatusCode, challenge: Option<&str>, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    if let Some(c) = challenge
        && let Ok(v) = HeaderValue::from_str(c)
    {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// Authenticates the request (when `server.auth` is on), keeps sessions with their
/// principals and within `server.limits`, and marks a session busy while its request is
/// answered. The probes (`/healthz`, `/readyz`), the protected-resource metadata and the
/// dashboard's static assets (which hold no data) are open.
pub(super) async fn check(
    State(front): State<Arc<Front>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if super::is_probe(path)
        || path.starts_with(METADATA_PATH)
        || super::ui::is_asset(path)
        || req.extensions().get::<OnMetricsListener>().is_some()
    {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let mut authenticated = front.access.authenticate(authorization, req.uri().query());
    // A key id the fetched JWKS lacks: wait for the fetch this asked for, then once more.
    if let Err(AuthError::Token(TokenError::UnknownKey { after, .. })) = &authenticated
        && let Some(remote) = front.access.oauth().and_then(|o| o.remote())
    {
        remote.fetched_after(*after).await;
        authenticated = front.access.authenticate(authorization, req.uri().query());
    }
    let principal = match authenticated {
        Ok(p) => p,
        Err(e) => {
            warn!(
                peer = ?peer,
                path = %req.uri().path(),
                reason = %e,
                "authentication refused"
            );
            metrics::counter!(mcpfier_common::metrics::AUTH_REFUSALS, "reason" => auth_reason(&e))
                .increment(1);
            front
                .record("auth_refused", None, peer, req.uri().path(), &e.to_string())
                .await;
            return refuse(&front.access, &e);
        }
    };
    let is_mcp = path == "/mcp" || path.starts_with("/mcp/");
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let owner_key = principal.as_ref().map(|p| format!("{}:{}", p.method, p.id));
    let mut holds = Vec::new();
    if let Some(id) = &session {
        let found = front
            .lock()
            .get(id)
            .map(|s| (s.owner.clone(), s.activity.clone(), s.gate.clone()));
        if let Some((owner, activity, gate)) = found {
            if let Some(who) = &principal
                && owner != owner_key
            {
                warn!(
                    peer = ?peer,
                    principal = %who.id,
                    owner = %owner.as_deref().unwrap_or("-"),
                    "refused a request on another principal's session"
                );
                metrics::counter!(mcpfier_common::metrics::AUTHZ_REFUSALS, "reason" => "session_owner")
                    .increment(1);
                front
                    .record(
                        "session_refused",
                        Some(who),
                        peer,
                        req.uri().path(),
                        "the session belongs to another principal",
                    )
                    .await;
                return refusal(
                    StatusCode::FORBIDDEN,
                    None,
                    &format!(
                        "this MCP session belongs to another principal, not `{}`: open your own session",
                        who.id
                    ),
                );
            }
            // A session being parked is woken once parked (rmcp replays its initialize).
            let open = gate.read().await;
            holds.push(activity.hold());
            drop(open);
            req.extensions_mut().insert(SessionActivity(activity));
        }
    } else if is_mcp
        && req.method() == Method::POST
        && let Some(refused) = front.session_refusal(owner_key.as_deref(), principal.as_ref())
    {
        warn!(peer = ?peer, principal = principal.as_ref().map_or("-", |p| p.id.as_str()), "new MCP session refused: server.limits");
        let reason = if refused.status() == StatusCode::TOO_MANY_REQUESTS {
            "sessions_per_principal"
        } else {
            "sessions"
        };
        metrics::counter!(mcpfier_common::metrics::RATE_LIMITED, "reason" => reason).increment(1);
        return refused;
    }
    let deleting = req.method() == Method::DELETE;
    if let Some(who) = &principal
        && who.method == crate::access::Method::OAuth
        && !front.tool_scopes.is_empty()
        && req.method() == Method::POST
    {
        req = match step_up(&front, who, req).await {
            Ok(req) => req,
            Err(refused) => return *refused,
        };
    }
    if let Some(who) = principal {
        req.extensions_mut().insert(who);
    }
    let response = next.run(req).await;
    match &session {
        None if is_mcp => {
            if let Some(new) = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                front.lock().insert(
                    new.to_owned(),
                    Session {
                        owner: owner_key,
                        activity: Arc::new(Activity::new()),
                        gate: Arc::new(tokio::sync::RwLock::new(())),
                    },
                );
            }
        }
        Some(old) if deleting && response.status().is_success() => front.forget(old),
        _ => {}
    }
    hold_until_sent(response, holds)
}

/// The most bytes of a request body read to find which tool a `tools/call` names (rmcp's own
/// limit is the same order).
const BODY_LIMIT: usize = 4 << 20;

/// Refuses with 403 `insufficient_scope` a `tools/call` of a tool whose scopes the token
/// lacks, naming them (so the client can ask for a token with them); otherwise hands the
/// request back whole. Only for tools the principal's roles allow: for any other, the MCP
/// handler answers as for a tool that does not exist.
async fn step_up(
    front: &Front,
    principal: &Principal,
    req: Request,
) -> Result<Request, Box<Response>> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        Box::new(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &format!("the request body is over {} MiB", BODY_LIMIT >> 20),
        ))
    })?;
    let called = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|m| m["method"] == "tools/call")
        .and_then(|m| m["params"]["name"].as_str().map(str::to_owned));
    if let Some(tool) = called
        && let Some(needed) = front.tool_scopes.get(&tool)
        && front.access.may_call(Some(principal), &tool)
    {
        let missing = principal.missing_scopes(needed);
        if !missing.is_empty() {
            warn!(principal = %principal.id, tool = %tool, missing = %missing.join(" "), "call refused: the token lacks a scope the tool needs");
            metrics::counter!(mcpfier_common::metrics::AUTHZ_REFUSALS, "reason" => "insufficient_scope")
                .increment(1);
            front
                .record(
                    "insufficient_scope",
                    Some(principal),
                    parts.extensions.get::<Peer>().map(|p| p.0),
                    &tool,
                    &missing.join(" "),
                )
                .await;
            let e = AuthError::Token(TokenError::Scope(
                missing.iter().map(|s| s.to_string()).collect(),
            ));
            return Err(Box::new(refuse(&front.access, &e)));
        }
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// The principal a request was authenticated as (`None` when authentication is off).
pub fn principal_of(req: &axum::http::Extensions) -> Option<&Principal> {
    req.get::<Principal>()
}

/// rmcp's session store, kept in memory: what a session was opened with, so a parked one
/// can be woken. Only the sessions this front door knows are woken, so a session keeps its
/// owner check across parking.
#[async_trait::async_trait]
impl SessionStore for Front {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        if !self.lock().contains_key(session_id) {
            return Ok(None);
        }
        let Some(json) = self.lock_opened().get(session_id).cloned() else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(&json)?))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let json = serde_json::to_string(state)?.into_boxed_str();
        self.lock_opened().insert(session_id.to_owned(), json);
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.forget(session_id);
        Ok(())
    }
}
