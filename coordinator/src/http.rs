//! `mcpfier serve`: MCP over Streamable HTTP at `/mcp`, with Host and Origin checks, and a
//! `/healthz` for probes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::dispatch::Dispatcher;
use crate::mcp::Server;

/// Origins always allowed: pages served from this machine.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Refuses addresses other machines could reach: there is no authentication yet.
pub fn check_listen(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to serve on {addr}: mcpfier has no authentication yet, so anyone who can reach \
             that address could run its tools. Listen on a loopback address (127.0.0.1 or [::1]) \
             in server.listen or --listen"
        );
    }
    Ok(())
}

/// The axum router serving MCP at `/mcp`.
pub fn router(dispatcher: Dispatcher, tasks: &TaskTracker, shutdown: CancellationToken) -> Router {
    let catalog = dispatcher.catalog().clone();
    let origins = LOOPBACK_ORIGINS
        .iter()
        .map(|s| s.to_string())
        .chain(catalog.server.allowed_origins.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_cancellation_token(shutdown.child_token());
    let fleet = dispatcher.fleet().cloned();
    let server = Server::new(dispatcher, tasks, shutdown.clone());
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let fleet_for_one = fleet.clone();
    let fleet_for_health = fleet.clone();
    Router::new()
        .nest_service("/mcp", service)
        .route(
            "/fleet/agents/{id}",
            axum::routing::get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let fleet = fleet_for_one.clone();
                    async move {
                        match fleet.and_then(|f| f.agent_view(&id)) {
                            Some(view) => axum::Json(view).into_response(),
                            None => (axum::http::StatusCode::NOT_FOUND, "no such agent\n")
                                .into_response(),
                        }
                    }
                },
            ),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let fleet = fleet_for_health.clone();
                async move {
                    match fleet.map(|f| f.view().1) {
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
            "/fleet",
            axum::routing::get(move || {
                let fleet = fleet.clone();
                async move {
                    let body = match fleet {
                        Some(f) => {
                            let (agents, etcd) = f.view();
                            serde_json::json!({"mode": "fleet", "etcd": etcd, "agents": agents})
                        }
                        None => serde_json::json!({"mode": "embedded", "agents": []}),
                    };
                    axum::Json(body)
                }
            }),
        )
}

/// Serves until `shutdown` is cancelled. Calls still running are killed as their requests
/// end.
pub async fn serve(
    dispatcher: Dispatcher,
    listen: SocketAddr,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_listen(listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let local = listener.local_addr().context("read the bound address")?;
    let tools = dispatcher.catalog().tools.len();
    let app = router(dispatcher, tasks, shutdown.clone());
    // Small SSE writes must not wait for the peer's delayed ACK (about 40 ms per response).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    info!(address = %local, tools, "serving MCP at http://{local}/mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serve HTTP")?;
    Ok(())
}
