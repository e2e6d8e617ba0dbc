//! `metrics_listen`: `GET /metrics`, the agent's Prometheus metrics with its load and
//! fencing read at each scrape, and the probes `/healthz` (the process answers) and
//! `/readyz` (it takes calls: not draining, not fenced, registered when it uses etcd).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcpfier_common::metrics as m;
use tokio_util::sync::CancellationToken;

use crate::calls::Calls;
use crate::service::Admission;

/// Binds `metrics_listen` and installs the recorder: a bad address fails at start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    m::install().map_err(anyhow::Error::msg)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen: bind {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`. `etcd`:
/// whether the agent registers in etcd.
pub async fn serve(
    listener: tokio::net::TcpListener,
    calls: Arc<Calls>,
    admission: Arc<Admission>,
    capacity: u32,
    etcd: bool,
    shutdown: CancellationToken,
) {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(address = %local, "serving metrics at http://{local}/metrics");
    }
    let ready = admission.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (calls, admission) = (calls.clone(), admission.clone());
                async move { page(&calls, &admission, capacity) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let not_ready = ready.not_ready(etcd);
                async move {
                    match not_ready {
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        )
                            .into_response(),
                        None => "ready\n".into_response(),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

fn page(calls: &Calls, admission: &Admission, capacity: u32) -> Response {
    metrics::gauge!(m::AGENT_RUNNING).set(calls.running() as f64);
    metrics::gauge!(m::AGENT_CAPACITY).set(f64::from(capacity));
    metrics::gauge!(m::AGENT_FENCED).set(if admission.fenced() { 1.0 } else { 0.0 });
    match m::render() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded\n",
        )
            .into_response(),
    }
}
