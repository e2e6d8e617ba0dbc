//! OpenTelemetry traces, shared by both binaries: the `telemetry` config section, the OTLP
//! exporter (gRPC), W3C trace context in and out, and [`Span`], a span that ends when dropped.
//!
//! Without a `telemetry` section nothing is traced and no span is made ([`Span::start`] only
//! passes its parent on), but an incoming trace context is still handed to the next hop, so a
//! trace crosses a coordinator that does not record.
//!
//! Names and attributes follow the OpenTelemetry GenAI semantic conventions v0.1.0 for MCP
//! and the semantic conventions v1.37.0 for RPC (see docs/observability.md).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use schemars::JsonSchema;
use serde::Deserialize;

pub use opentelemetry::Context;
pub use opentelemetry::KeyValue as Attribute;
pub use opentelemetry::trace::SpanKind as Kind;

/// `telemetry:` in mcpfier.yaml and agent.yaml.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where spans go: an OTLP/gRPC receiver such as an OpenTelemetry Collector, e.g.
    /// `http://127.0.0.1:4317`. Plain `http://` only: run a collector beside the process and
    /// let it forward over TLS.
    pub otlp_endpoint: String,
    /// `service.name` of every span (default: `mcpfier` for the coordinator, `mcpfier-agent`
    /// for agents).
    #[serde(default)]
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0 (default 1.0). A call that arrives with
    /// a trace context follows its caller's decision.
    #[serde(default = "all")]
    pub sample_ratio: f64,
}

fn all() -> f64 {
    1.0
}

impl TelemetryConfig {
    /// Every problem with the section, as `field: message`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.otlp_endpoint.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", _)) => out.push((
                "otlp_endpoint",
                format!(
                    "`{}`: https is not supported; send to a collector on this host over http (e.g. http://127.0.0.1:4317) and let it forward over TLS",
                    self.otlp_endpoint
                ),
            )),
            _ => out.push((
                "otlp_endpoint",
                format!(
                    "`{}` is not an http://HOST:PORT address (e.g. http://127.0.0.1:4317)",
                    self.otlp_endpoint
                ),
            )),
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            out.push((
                "sample_ratio",
                format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            ));
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            out.push(("service_name", "is empty".to_owned()));
        }
        out
    }
}

/// The tracer, once [`Telemetry::start`] made one.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The running exporter; [`Telemetry::shutdown`] flushes what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `config.otlp_endpoint` and makes spans from now on. Call it inside
    /// the Tokio runtime, once per process. The receiver may be down: spans wait in a bounded
    /// queue (2,048; the oldest are dropped past it) and nothing blocks a call.
    pub fn start(config: &TelemetryConfig, default_service: &str) -> Result<Telemetry, String> {
        use opentelemetry_otlp::WithExportConfig as _;
        if let Some((field, why)) = config.problems().into_iter().next() {
            return Err(format!("telemetry.{field}: {why}"));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| {
                format!(
                    "telemetry: the OTLP exporter for {}: {e}",
                    config.otlp_endpoint
                )
            })?;
        let exporter = OnRuntime {
            inner: Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
        };
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let service = config
            .service_name
            .clone()
            .unwrap_or_else(|| default_service.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        TRACER
            .set(provider.tracer("mcpfier"))
            .map_err(|_| "telemetry: started twice".to_owned())?;
        Ok(Telemetry { provider })
    }

    /// Exports what is queued (waiting up to 5 s for the receiver) and stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "telemetry: spans left unexported at shutdown");
            }
        })
        .await;
    }
}

/// The OTLP exporter, run on the process's Tokio runtime: the batch processor exports from
/// its own thread, and tonic's connections need a Tokio reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!("export task: {e}"))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Whether spans are made (a `telemetry` section started).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A span, ended when dropped. Without telemetry it holds only its parent's context, so
/// that context still reaches the next hop.
pub struct Span {
    cx: Context,
    own: bool,
}

impl Span {
    /// Starts a span of `kind` under `parent`, named and described by `describe`, which is
    /// called only when spans are made: without telemetry a span costs no name or attribute.
    pub fn start(
        kind: SpanKind,
        parent: &Context,
        describe: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Span {
        let Some(tracer) = TRACER.get() else {
            return Span {
                cx: parent.clone(),
                own: false,
            };
        };
        let (name, attributes) = describe();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Span {
            cx: parent.with_span(span),
            own: true,
        }
    }

    /// No span, and no trace to continue.
    pub fn none() -> Span {
        Span {
            cx: Context::new(),
            own: false,
        }
    }

    /// A child of this span (see [`Span::start`]).
    pub fn child(
        &self,
        kind: SpanKind,
        describe: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Span {
        Span::start(kind, &self.cx, describe)
    }

    /// The context to pass on: this span as the parent.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Adds an attribute.
    pub fn set(&self, attribute: KeyValue) {
        if self.own {
            self.cx.span().set_attribute(attribute);
        }
    }

    /// Marks the span failed: `error.type` set to `kind` (low-cardinality), and the status
    /// to Error with `message`.
    pub fn fail(&self, kind: &str, message: impl Into<Cow<'static, str>>) {
        if self.own {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
            span.set_status(Status::error(message));
        }
    }

    /// The trace id as 32 hex digits, for logs; `-` when there is no trace.
    pub fn trace_id(&self) -> String {
        trace_id(&self.cx)
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if self.own {
            self.cx.span().end();
        }
    }
}

/// The trace id of `cx` as 32 hex digits; `-` when it has none.
pub fn trace_id(cx: &Context) -> String {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        "-".to_owned()
    }
}

/// The W3C trace context from its two headers (or `_meta` keys), as a remote parent; an
/// empty context when there is none or it does not parse.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    struct Pair<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Pair<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    TraceContextPropagator::new().extract(&Pair(traceparent, tracestate))
}

/// Writes the W3C trace context of `cx` through `set` (nothing when it has none; no empty
/// `tracestate`).
pub fn inject(cx: &Context, set: impl FnMut(&'static str, String)) {
    struct By<F>(F);
    impl<F: FnMut(&'static str, String)> Injector for By<F> {
        fn set(&mut self, key: &str, value: String) {
            let key = match key {
                "traceparent" => "traceparent",
                "tracestate" => "tracestate",
                _ => return,
            };
            if !value.is_empty() {
                (self.0)(key, value);
            }
        }
    }
    TraceContextPropagator::new().inject_context(cx, &mut By(set));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_goes_through_unchanged_without_telemetry() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(Some(tp), None);
        assert_eq!(trace_id(&cx), "4bf92f3577b34da6a3ce929d0e0e4736");
        let span = Span::start(SpanKind::Server, &cx, || ("x".into(), vec![]));
        let mut out = Vec::new();
        inject(span.context(), |k, v| out.push((k, v)));
        assert_eq!(out, [("traceparent", tp.to_owned())]);
    }

    #[test]
    fn a_bad_traceparent_is_no_trace() {
        let cx = extract(Some("00-zz-00-01"), None);
        assert_eq!(trace_id(&cx), "-");
        let mut out = Vec::new();
        inject(&cx, |k, v| out.push((k, v)));
        assert!(out.is_empty());
    }

    #[test]
    fn the_section_names_each_problem() {
        let bad: TelemetryConfig = serde_json::from_value(serde_json::json!({
            "otlp_endpoint": "https://collector:4317", "sample_ratio": 2.0
        }))
        .unwrap();
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["otlp_endpoint", "sample_ratio"]);
        let good: TelemetryConfig =
            serde_json::from_value(serde_json::json!({"otlp_endpoint": "http://127.0.0.1:4317"}))
                .unwrap();
        assert!(good.problems().is_empty());
        assert_eq!(good.sample_ratio, 1.0);
    }
}
