//! The fleet dashboard at `/ui`: three static assets compiled into the binary (nothing from a
//! CDN) and `/ui/state`, the data the page polls: the routing view and the dashboard's call
//! records (`crate::board`). The assets hold no data and need no credential; `/ui/state` is
//! behind `fleet: read` like `/fleet`, and every `/ui` route behind the Host/Origin checks.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::board::Board;
use crate::fleet::Fleet;

const INDEX: &str = include_str!("../ui/index.html");
const APP: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// Only this origin's scripts, styles and requests; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The paths of the static assets, which need no credential.
pub(super) fn is_asset(path: &str) -> bool {
    matches!(path, "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The `/ui` routes. `may_read` is the `fleet: read` check (`None` lets the request through);
/// `fleet_view` makes the `/fleet` body the page shows; `tools` are the catalog's tool names.
pub(super) fn routes<R, V>(
    board: Arc<Board>,
    fleet: Option<Arc<Fleet>>,
    tools: Vec<String>,
    may_read: R,
    fleet_view: V,
) -> Router
where
    R: Fn(&axum::http::Extensions) -> Option<Response> + Clone + Send + Sync + 'static,
    V: Fn(Option<&Fleet>) -> serde_json::Value + Clone + Send + Sync + 'static,
{
    let index = || async { asset("text/html; charset=utf-8", INDEX) };
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/ui/state",
            get(move |ext: axum::http::Extensions| {
                let refused = may_read(&ext);
                let (board, fleet, tools, fleet_view) = (
                    board.clone(),
                    fleet.clone(),
                    tools.clone(),
                    fleet_view.clone(),
                );
                async move {
                    if let Some(refused) = refused {
                        return refused;
                    }
                    let mut state = fleet_view(fleet.as_deref());
                    let names: Vec<&str> = tools.iter().map(String::as_str).collect();
                    state["board"] = board.view(&names, mcpfier_common::membership::now_ms());
                    let mut response = axum::Json(state).into_response();
                    response
                        .headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
            }),
        )
}
