//! Metrics and tracing under load: `tools/call echo` through a coordinator to one agent,
//! with Prometheus metrics recorded on both and every call traced (sampled at 100%) to a
//! local OTLP/gRPC receiver, against the same pair with metrics off (`server.metrics:
//! false`, no agent `metrics_listen`) and no `telemetry`. Measured alternately in one run
//! (off, on, off, on) so that drift on a noisy machine falls on both sides.
//!
//! The receiver runs in this process (tonic, on the OpenTelemetry protocol definitions): it
//! decodes each export and counts its spans, so the figure includes the export itself.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::{
    Figures, fleet_yaml, free_port, make_certs, start_agent_with, start_mcpfier_with, wrk,
};

/// Counts the spans it is sent.
#[derive(Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The figures at 1 and 8 clients, each side measured twice.
pub struct Observability {
    runs: Vec<(bool, usize, Figures)>,
    spans: u64,
    traced_calls: u64,
}

impl Observability {
    fn mean(&self, on: bool, clients: usize) -> f64 {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|(o, c, _)| *o == on && *c == clients)
            .map(|(_, _, f)| f.rate)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn run(dir: &Path, duration: Duration) -> anyhow::Result<Observability> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let received = Arc::new(AtomicU64::new(0));
    let port = free_port()?;
    let service = TraceServiceServer::new(Counter(received.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver = runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_shutdown(([127, 0, 0, 1], port).into(), async {
                let _ = stopped.await;
            }),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    crate::wait_for_port(&format!("127.0.0.1:{port}"))?;

    let certs = dir.join("obs-certs");
    make_certs(&certs, &["obs-off", "obs-on"])?;
    let telemetry = format!("telemetry: {{otlp_endpoint: \"{endpoint}\"}}\n");
    let (_agent_off, off_agent) = start_agent_with(dir, &certs, "obs-off", "")?;
    let (_agent_on, on_agent) = start_agent_with(
        dir,
        &certs,
        "obs-on",
        &format!("metrics_listen: 127.0.0.1:0\n{telemetry}"),
    )?;
    let (_off, off_addr) = start_mcpfier_with(
        dir,
        "obs-off",
        &format!(
            "server: {{max_concurrency: 64, metrics: false}}\n{}{}",
            fleet_yaml(&certs, &[("obs-off", &off_agent)]),
            crate::ECHO_TOOL
        ),
    )?;
    let (_on, on_addr) = start_mcpfier_with(
        dir,
        "obs-on",
        &format!(
            "server: {{max_concurrency: 64}}\n{telemetry}{}{}",
            fleet_yaml(&certs, &[("obs-on", &on_agent)]),
            crate::ECHO_TOOL
        ),
    )?;
    let mut runs = Vec::new();
    for clients in [1, 8] {
        for _ in 0..2 {
            runs.push((
                false,
                clients,
                wrk(
                    "metrics and traces off (coordinator -> agent)",
                    &off_addr,
                    clients,
                    duration,
                )?,
            ));
            runs.push((
                true,
                clients,
                wrk(
                    "metrics and traces on, 100% sampled",
                    &on_addr,
                    clients,
                    duration,
                )?,
            ));
        }
    }
    for (_, _, f) in &runs {
        crate::print(f);
    }
    let traced_calls = runs
        .iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, _, f)| f.rate * duration.as_secs_f64())
        .sum::<f64>() as u64;
    // What the batch processors still hold goes out within their 500 ms delay.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = u64::MAX;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(700));
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let _ = stop.send(());
    let _ = runtime.block_on(receiver);
    Ok(Observability {
        runs,
        spans: received.load(Ordering::Relaxed),
        traced_calls,
    })
}

/// Prints the ratio the issue states its target in.
pub fn print_ratios(o: &Observability) {
    for clients in [1, 8] {
        println!(
            "  metrics + traces on / off, calls/s, {clients} client(s)          {:>5.1}%   (>= 95%)",
            100.0 * o.mean(true, clients) / o.mean(false, clients)
        );
    }
    println!(
        "  spans received by the OTLP receiver: {} for {} traced calls ({:.1} per call)",
        o.spans,
        o.traced_calls,
        o.spans as f64 / o.traced_calls.max(1) as f64
    );
}
