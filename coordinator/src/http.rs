//! `mcpfier serve`: MCP over Streamable HTTP at `/mcp` (HTTPS with `server.tls`), behind the
//! front door's checks (`auth`: credentials, session owners), with Host and Origin checks,
//! the fleet's views and `/healthz` and `/readyz` for probes.

pub mod auth;
pub mod client;
pub mod conns;
pub mod tls;
mod ui;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::dispatch::Dispatcher;
use crate::mcp::{self, Server};
use auth::Front;

/// Host names always allowed: this machine's.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Origins always allowed: pages served from this machine.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Whether `addr` may be served with this front door: an address other machines can reach
/// needs authentication, and TLS unless a TLS-terminating proxy is declared in front. The
/// error says what is missing.
pub fn listen_rule(
    addr: SocketAddr,
    auth: bool,
    tls: bool,
    server: &crate::config::ServerSection,
) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !auth {
        missing.push(
            "server.auth, so that only callers with a credential can run tools (mcpfier keys new makes an API key)",
        );
    }
    if !tls && !server.behind_tls_proxy {
        missing.push(
            "server.tls {cert, key}, so that credentials and results don't cross the network in clear (or server.behind_tls_proxy: true when a TLS-terminating proxy is in front)",
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{addr} can be reached from other machines; that needs {}. Or listen on a loopback address (127.0.0.1 or [::1])",
        missing.join(", and ")
    ))
}

/// Refuses to serve `addr` (from `server.listen` or `--listen`) unless [`listen_rule`] allows it.
pub fn check_listen(addr: SocketAddr, catalog: &Catalog) -> anyhow::Result<()> {
    listen_rule(
        addr,
        catalog.access.enabled(),
        catalog.tls.is_some(),
        &catalog.server,
    )
    .map_err(|why| anyhow::anyhow!("refusing to serve: {why}"))
}

/// The axum router: MCP at `/mcp`, the fleet's views, `/healthz` and `/readyz`; every
/// request but the probes passes the front door's checks first ([`auth::check`]).
pub fn router(dispatcher: Dispatcher, tasks: &TaskTracker, shutdown: CancellationToken) -> Router {
    let catalog = dispatcher.catalog().clone();
    // rmcp checks `/mcp`, the guard every other route, against the same lists.
    let guard = Arc::new(Guard::new(&catalog.server));
    let tool_scopes = catalog
        .tools
        .values()
        .filter(|t| !t.scopes.is_empty())
        .map(|t| (t.name.clone(), t.scopes.clone()))
        .collect();
    let front = Arc::new(Front::new(
        catalog.access.clone(),
        tool_scopes,
        dispatcher.audit().cloned(),
        catalog.server.limits.clone(),
    ));
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(guard.hosts.clone())
        .with_allowed_origins(guard.origins.clone())
        .enforce_origin_validation()
        .with_cancellation_token(shutdown.child_token());
    // What a session was opened with stays in the front door, so a parked one is woken.
    config.session_store = Some(front.clone());
    let fleet = dispatcher.fleet().cloned();
    let board = dispatcher.board().clone();
    let server =
        Server::new(dispatcher, tasks, shutdown.clone()).with_result_budget(mcp::RESULT_BUDGET);
    // Sessions are parked and expired here, by `server.limits`, counting a call in flight
    // as activity: rmcp's own keep-alive would end a session whose call is silent for 5 min.
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = None;
    let sessions = Arc::new(manager);
    let service = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), config);
    tasks.spawn(crate::access::jwks::keep_fresh(
        catalog.access.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(keep_sessions(
        front.clone(),
        sessions.clone(),
        catalog.server.limits.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    let access = catalog.access.clone();
    // The refusal for a caller that may not read the fleet; `None` lets it through.
    let may_read = move |ext: &axum::http::Extensions| -> Option<Response> {
        if access.may_read_fleet(auth::principal_of(ext))
            || ext.get::<auth::OnMetricsListener>().is_some()
        {
            return None;
        }
        let who = auth::principal_of(ext)
            .map_or("?", |p| p.id.as_str())
            .to_owned();
        Some(
            (
                StatusCode::FORBIDDEN,
                format!("`{who}` may not read the fleet: give one of its roles `fleet: read`\n"),
            )
                .into_response(),
        )
    };
    let (fleet_for_one, may_read_one) = (fleet.clone(), may_read.clone());
    let (fleet_for_metrics, may_read_metrics) = (fleet.clone(), may_read.clone());
    let front_for_metrics = front.clone();
    let metrics_on = catalog.server.metrics;
    let fleet_for_health = fleet.clone();
    let fleet_for_ready = fleet.clone();
    let auth_on = catalog.access.enabled();
    let started = Started::now();
    // `/fleet`'s body: the routing view, etcd agents that left it lately (`departed`, state
    // `gone`), etcd, and this coordinator's version and uptime.
    let fleet_view = move |fleet: Option<&crate::fleet::Fleet>| match fleet {
        Some(f) => {
            let (agents, etcd) = f.view();
            serde_json::json!({"mode": "fleet", "coordinator": started.view(),
                               "etcd": etcd, "agents": agents, "departed": f.departed()})
        }
        None => serde_json::json!({"mode": "embedded", "coordinator": started.view(),
                                   "agents": []}),
    };
    let board_routes = ui::routes(
        board,
        fleet.clone(),
        catalog.tools.keys().cloned().collect(),
        may_read.clone(),
        fleet_view,
    );
    Router::new()
        .nest_service("/mcp", service)
        .route(
            "/fleet/agents/{id}",
            get(move |Path(id): Path<String>, ext: axum::http::Extensions| {
                let fleet = fleet_for_one.clone();
                let allowed = may_read_one(&ext);
                async move {
                    if let Some(refused) = allowed {
                        return refused;
                    }
                    match fleet.and_then(|f| f.agent_view(&id)) {
                        Some(view) => axum::Json(view).into_response(),
                        None => (StatusCode::NOT_FOUND, "no such agent\n").into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let fleet = fleet_for_health.clone();
                async move {
                    match fleet.map(|f| f.view().1) {
                        // Probes need no credential, so with authentication on they learn
                        // only that etcd is unreachable, not why.
                        Some(etcd) if etcd.configured && !etcd.connected && auth_on => {
                            "ok: etcd unreachable; routing on the last known membership\n"
                                .to_owned()
                        }
                        Some(etcd) if etcd.configured && !etcd.connected => format!(
                            "ok: etcd unreachable ({}); routing on the last known membership\n",
                            etcd.last_error.as_deref().unwrap_or("not connected yet")
                        ),
                        _ => "ok\n".to_owned(),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let fleet = fleet_for_ready.clone();
                async move {
                    match fleet.map(|f| f.view().1) {
                        Some(etcd) if etcd.configured && !etcd.reached => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: etcd has not been reached since the coordinator started\n",
                        )
                            .into_response(),
                        _ => "ready\n".into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |ext: axum::http::Extensions| {
                let allowed = may_read_metrics(&ext);
                let (fleet, front, sessions) = (
                    fleet_for_metrics.clone(),
                    front_for_metrics.clone(),
                    sessions.clone(),
                );
                async move {
                    if let Some(refused) = allowed {
                        return refused;
                    }
                    if !metrics_on {
                        return (
                            StatusCode::NOT_FOUND,
                            "metrics are off in this coordinator (server.metrics: false)\n",
                        )
                            .into_response();
                    }
                    let live = live_sessions(&sessions).await;
                    metrics_page(fleet.as_deref(), &front, &live)
                }
            }),
        )
        .route(
            "/fleet",
            get(move |ext: axum::http::Extensions| {
                let fleet = fleet.clone();
                let allowed = may_read(&ext);
                async move {
                    if let Some(refused) = allowed {
                        return refused;
                    }
                    axum::Json(fleet_view(fleet.as_deref())).into_response()
                }
            }),
        )
        .merge(metadata_routes(&catalog))
        .merge(board_routes)
        .layer(axum::middleware::from_fn_with_state(front, auth::check))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            check_host_and_origin,
        ))
        .layer(axum::middleware::from_fn(session_closed_is_204))
        .layer(axum::middleware::from_fn(conns::busy_while_answering))
}

/// When this coordinator's router was made, for `/fleet`'s version and uptime.
#[derive(Clone, Copy)]
struct Started {
    at_ms: u64,
    at: std::time::Instant,
}

impl Started {
    fn now() -> Started {
        Started {
            at_ms: mcpfier_common::membership::now_ms(),
            at: std::time::Instant::now(),
        }
    }

    fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_ms": self.at_ms,
            "uptime_s": self.at.elapsed().as_secs(),
        })
    }
}

/// Probes: `/healthz` (the process answers) and `/readyz` (it can route). They need no
/// credential and pass any Host, since probes use whatever address reaches the pod.
pub(crate) fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// The Host and Origin checks rmcp gives `/mcp`, for every other route but the probes
/// (probes use whatever address reaches the pod): a page on another origin, or a DNS
/// rebinding, must not read the fleet's topology either.
struct Guard {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Guard {
    fn new(server: &crate::config::ServerSection) -> Guard {
        Guard {
            hosts: LOOPBACK_HOSTS
                .into_iter()
                .map(str::to_owned)
                .chain(server.allowed_hosts.iter().cloned())
                .collect(),
            origins: LOOPBACK_ORIGINS
                .iter()
                .map(|s| s.to_string())
                .chain(server.allowed_origins.iter().cloned())
                .collect(),
        }
    }

    /// Whether `host` (a Host header: `name`, `name:port`, `[v6]:port`) is allowed: an entry
    /// without a port allows every port.
    fn host_allowed(&self, host: &str) -> bool {
        let (name, _) = split_port(host);
        self.hosts.iter().any(|h| {
            h.eq_ignore_ascii_case(host) || h.trim_matches(['[', ']']).eq_ignore_ascii_case(name)
        })
    }

    /// Whether `origin` (`scheme://host[:port]`) is allowed: entries end in `:*` (any port),
    /// `:PORT`, or no port (any port).
    fn origin_allowed(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let (name, port) = split_port(rest);
        self.origins.iter().any(|entry| {
            let Some((e_scheme, e_rest)) = entry.split_once("://") else {
                return false;
            };
            let (e_name, e_port) = split_port(e_rest);
            e_scheme.eq_ignore_ascii_case(scheme)
                && e_name.eq_ignore_ascii_case(name)
                && match e_port {
                    None | Some("*") => true,
                    Some(p) => Some(p) == port,
                }
        })
    }
}

impl Guard {
    /// The 403 for a request whose Host or Origin is not allowed.
    fn refusal(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(host) = header(axum::http::header::HOST)
            && !self.host_allowed(host)
        {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    format!("Host `{host}` is not allowed: add it to server.allowed_hosts\n"),
                )
                    .into_response(),
            );
        }
        if let Some(origin) = header(axum::http::header::ORIGIN)
            && !self.origin_allowed(origin)
        {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    format!("Origin `{origin}` is not allowed: add it to server.allowed_origins\n"),
                )
                    .into_response(),
            );
        }
        None
    }
}

/// `name[:port]` or `[v6][:port]`, the name without brackets.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (authority, None),
    }
}

async fn check_host_and_origin(
    axum::extract::State(g): axum::extract::State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if is_probe(path)
        || path == "/mcp"
        || path.starts_with("/mcp/")
        || req.extensions().get::<auth::OnMetricsListener>().is_some()
    {
        return next.run(req).await;
    }
    if let Some(refused) = g.refusal(req.headers()) {
        return refused;
    }
    next.run(req).await
}

/// On `server.metrics_listen`: `GET /metrics` and the probes, nothing else.
async fn metrics_paths_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    if req.method() == axum::http::Method::GET && (path == "/metrics" || is_probe(path)) {
        return next.run(req).await;
    }
    (
        StatusCode::NOT_FOUND,
        "only /metrics, /healthz and /readyz are served on server.metrics_listen\n",
    )
        .into_response()
}

/// A session's `DELETE /mcp` is answered 204 No Content: rmcp says 202 Accepted, which the
/// official Python client reports as "Session termination failed: 202" at every close.
async fn session_closed_is_204(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let deleting = req.method() == axum::http::Method::DELETE;
    let response = next.run(req).await;
    if deleting && response.status() == StatusCode::ACCEPTED {
        return StatusCode::NO_CONTENT.into_response();
    }
    response
}

/// The protected-resource metadata (RFC 9728) when OAuth tokens are accepted, at
/// `/.well-known/oauth-protected-resource` and at its form suffixed with the resource's path
/// (`.../mcp`), which is where the metadata URL in 401 challenges points.
fn metadata_routes(catalog: &Catalog) -> Router {
    let Some(oauth) = catalog.access.oauth() else {
        return Router::new();
    };
    let document = oauth.metadata();
    let suffixed = oauth
        .metadata_url
        .find(auth::METADATA_PATH)
        .map(|at| oauth.metadata_url[at..].to_owned())
        .unwrap_or_else(|| auth::METADATA_PATH.to_owned());
    let serve = move || {
        let document = document.clone();
        async move { axum::Json(document) }
    };
    let mut router = Router::new().route(auth::METADATA_PATH, get(serve.clone()));
    if suffixed != auth::METADATA_PATH {
        router = router.route(&suffixed, get(serve));
    }
    router
}

/// Parks the MCP sessions idle for `session_park` (rmcp's session, its tasks and channels,
/// ~65 KB, are closed; the front door keeps its owner and its `initialize`, and rmcp replays
/// that on its next request), closes those idle for `session_idle`, and forgets sessions
/// rmcp has closed. Runs every quarter of the shorter of the two (between 100 ms and 30 s),
/// so a session is parked or closed at most 1.25 times its limit after its last request.
async fn keep_sessions(
    front: Arc<Front>,
    sessions: Arc<LocalSessionManager>,
    limits: crate::config::ServerLimits,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    use rmcp::transport::streamable_http_server::session::SessionManager;
    let (idle, park) = (limits.session_idle.0, limits.session_park.0);
    let period = (idle.min(park) / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for session in front.idle_sessions(idle) {
            debug!(session = %session.id, "closing an idle MCP session (server.limits.session_idle)");
            if let Err(e) = sessions.close_session(&session.id.as_str().into()).await {
                debug!(session = %session.id, error = %e, "closing an idle session failed");
            }
            front.forget(&session.id);
        }
        let live: HashSet<String> = live_sessions(&sessions).await;
        let mut parked = 0;
        for session in front.idle_sessions(park) {
            if !live.contains(&session.id) {
                continue;
            }
            let Some(_parking) = session.lock_if_idle(park) else {
                continue;
            };
            match sessions.close_session(&session.id.as_str().into()).await {
                Ok(()) => {
                    parked += 1;
                    debug!(session = %session.id, "parked an idle MCP session (server.limits.session_park)");
                }
                Err(e) => {
                    debug!(session = %session.id, error = %e, "parking an idle session failed")
                }
            }
        }
        // What parked sessions freed stays in the allocator, fragmented, unless trimmed.
        // It takes milliseconds with a large heap, so it runs off the async workers.
        if parked >= TRIM_AFTER_PARKED {
            let started = std::time::Instant::now();
            let released = tasks
                .spawn_blocking(mcpfier_exec::heap::release_free_memory)
                .await
                .unwrap_or(false);
            debug!(
                parked,
                released,
                took_us = started.elapsed().as_micros() as u64,
                "returned the memory of parked sessions to the system"
            );
        }
        let live = live_sessions(&sessions).await;
        front.retain_sessions(|id| live.contains(id));
    }
}

/// `GET /metrics`: the gauges read from the routing view and the sessions, then every
/// metric in Prometheus' text format.
fn metrics_page(
    fleet: Option<&crate::fleet::Fleet>,
    front: &Front,
    live: &HashSet<String>,
) -> Response {
    use mcpfier_common::metrics as m;
    let parked = front.parked_sessions(|id| live.contains(id));
    metrics::gauge!(m::SESSIONS, "state" => "parked").set(parked as f64);
    metrics::gauge!(m::SESSIONS, "state" => "live")
        .set(front.open_sessions().saturating_sub(parked) as f64);
    if let Some(fleet) = fleet {
        let (agents, etcd) = fleet.view();
        let mut counts = [
            ("healthy", 0u32),
            ("draining", 0),
            ("fenced", 0),
            ("unhealthy", 0),
        ];
        for a in &agents {
            if let Some(c) = counts.iter_mut().find(|(state, _)| *state == a.state) {
                c.1 += 1;
            }
        }
        for (state, n) in counts {
            metrics::gauge!(m::AGENTS, "state" => state).set(f64::from(n));
        }
        if etcd.configured {
            metrics::gauge!(m::ETCD_UP).set(if etcd.connected { 1.0 } else { 0.0 });
        }
    }
    match m::render() {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process\n",
        )
            .into_response(),
    }
}

/// Parking this many sessions in one pass (~65 KB each) is worth a heap trim.
const TRIM_AFTER_PARKED: usize = 64;

/// The sessions rmcp holds open (not parked).
async fn live_sessions(sessions: &LocalSessionManager) -> HashSet<String> {
    sessions
        .sessions
        .read()
        .await
        .keys()
        .map(|k| k.to_string())
        .collect()
}

/// Serves until `shutdown` is cancelled: HTTPS with `server.tls`, else plain HTTP. Calls
/// still running are killed as their requests end.
pub async fn serve(
    dispatcher: Dispatcher,
    listen: SocketAddr,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let catalog = dispatcher.catalog().clone();
    check_listen(listen, &catalog)?;
    if catalog.server.metrics {
        mcpfier_common::metrics::install().map_err(anyhow::Error::msg)?;
    }
    let acceptor = match &catalog.tls {
        Some(files) => {
            let store = Arc::new(tls::CertStore::new(files));
            tasks.spawn(store.clone().watch(shutdown.clone()));
            let config = mcpfier_common::tls::https_config(store)?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let local = listener.local_addr().context("read the bound address")?;
    let tools = catalog.tools.len();
    let limits = catalog.server.limits.clone();
    let room = conns::fd_room();
    let cap = if limits.connections > room {
        warn!(
            configured = limits.connections,
            allowed = room,
            "server.limits.connections is more than the open-file limit allows; using {room} (raise `ulimit -n` or LimitNOFILE= for more)"
        );
        room
    } else {
        limits.connections
    };
    let open = conns::Conns::new(cap);
    let app = router(dispatcher, tasks, shutdown.clone());
    if let Some(addr) = catalog.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("server.metrics_listen: bind {addr}"))?;
        let bound = metrics.local_addr()?;
        info!(address = %bound, "serving metrics at http://{bound}/metrics");
        let only = app
            .clone()
            .layer(axum::middleware::from_fn(metrics_paths_only))
            .layer(axum::Extension(auth::OnMetricsListener));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(metrics, only)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "server.metrics_listen failed");
            }
        });
    }
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    info!(
        address = %local,
        tools,
        auth = catalog.access.enabled(),
        connections = cap,
        "serving MCP at {scheme}://{local}/mcp"
    );
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0);
    let (header_timeout, idle_timeout) = (limits.header_timeout.0, limits.idle_timeout.0);
    let connections = TaskTracker::new();
    let mut refused_at: Option<std::time::Instant> = None;
    while let Some((tcp, peer)) = mcpfier_common::net::accept(&listener, &shutdown).await {
        let Some(slot) = open.admit() else {
            // Every connection has a request in flight: this one is closed at once, and said
            // so at most once a minute.
            if refused_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                warn!(
                    cap,
                    "connection refused: server.limits.connections are all busy"
                );
                refused_at = Some(std::time::Instant::now());
            }
            drop(tcp);
            continue;
        };
        let app = app
            .clone()
            .layer(axum::Extension(auth::Peer(peer)))
            .layer(axum::Extension(conns::ConnOf(slot.activity.clone())));
        let service = TowerToHyperService::new(app);
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let served = match acceptor {
                Some(acceptor) => {
                    let stream = tokio::select! {
                        accepted = tokio::time::timeout(header_timeout, acceptor.accept(tcp)) => match accepted {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(peer = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(peer = %peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        () = slot.close.cancelled() => return,
                    };
                    drive(&builder, TokioIo::new(stream), service, &slot, idle_timeout, &shutdown).await
                }
                None => drive(&builder, TokioIo::new(tcp), service, &slot, idle_timeout, &shutdown).await,
            };
            if let Err(e) = served {
                debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(Duration::from_secs(10), connections.wait())
        .await
        .is_err()
    {
        warn!("connections still open 10s after shutdown");
    }
    Ok(())
}

/// Serves one connection until it ends, or until it is asked to close (to make room at the
/// connection cap, or at shutdown) or has had nothing in flight for `idle`: then it is shut
/// down gracefully (a response being sent is finished first, for up to 10 s).
async fn drive<I>(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Router>,
    slot: &conns::Slot,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => return served,
        () = slot.close.cancelled() => debug!("connection closed to make room (server.limits.connections)"),
        () = shutdown.cancelled() => {}
        () = conns::idle(&slot.activity, idle) => debug!("idle connection closed (server.limits.idle_timeout)"),
    }
    conn.as_mut().graceful_shutdown();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .unwrap_or(Ok(()))
}
