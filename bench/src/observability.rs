//! Metrics and tracing under load: `tools/call echo` through a coordinator to one agent,
//! with Prometheus metrics recorded on both and every call traced (sampled at 100%) to a
//! local OTLP/gRPC receiver, against the same pair with metrics off (`server.metrics:
//! false`, no agent `metrics_listen`) and no `telemetry`; and, to show what each part
//! costs, with only one of the two on. Four coordinator-agent pairs, measured in turn (off,
//! metrics, traces, both, twice at 1 client, then twice at 8) so that drift on a noisy
//! machine falls on every side.
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

/// What a coordinator and its agent record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Off,
    MetricsOnly,
    TracesOnly,
    Both,
}

impl Side {
    const ALL: [Side; 4] = [Side::Off, Side::MetricsOnly, Side::TracesOnly, Side::Both];

    fn name(self) -> &'static str {
        match self {
            Side::Off => "metrics and traces off (coordinator -> agent)",
            Side::MetricsOnly => "metrics on, traces off",
            Side::TracesOnly => "traces on (100% sampled), metrics off",
            Side::Both => "metrics and traces on, 100% sampled",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Side::Off => "obs-off",
            Side::MetricsOnly => "obs-metrics",
            Side::TracesOnly => "obs-traces",
            Side::Both => "obs-both",
        }
    }

    fn metrics(self) -> bool {
        matches!(self, Side::MetricsOnly | Side::Both)
    }

    fn traces(self) -> bool {
        matches!(self, Side::TracesOnly | Side::Both)
    }
}

/// The figures at 1 and 8 clients, each side measured twice.
pub struct Observability {
    runs: Vec<(Side, usize, Figures)>,
    spans: u64,
    traced_calls: u64,
}

impl Observability {
    fn mean(&self, side: Side, clients: usize) -> f64 {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|(s, c, _)| *s == side && *c == clients)
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
    let ids: Vec<&str> = Side::ALL.iter().map(|s| s.id()).collect();
    make_certs(&certs, &ids)?;
    let telemetry = format!("telemetry: {{otlp_endpoint: \"{endpoint}\"}}\n");
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for side in Side::ALL {
        let mut agent_extra = String::new();
        if side.metrics() {
            agent_extra.push_str("metrics_listen: 127.0.0.1:0\n");
        }
        if side.traces() {
            agent_extra.push_str(&telemetry);
        }
        let (agent, agent_addr) = start_agent_with(dir, &certs, side.id(), &agent_extra)?;
        let (coordinator, addr) = start_mcpfier_with(
            dir,
            side.id(),
            &format!(
                "server: {{max_concurrency: 64, metrics: {}}}\n{}{}{}",
                side.metrics(),
                if side.traces() {
                    telemetry.as_str()
                } else {
                    ""
                },
                fleet_yaml(&certs, &[(side.id(), &agent_addr)]),
                crate::ECHO_TOOL
            ),
        )?;
        servers.push((agent, coordinator));
        addrs.push((side, addr));
    }
    let mut runs = Vec::new();
    for clients in [1, 8] {
        for _ in 0..2 {
            for (side, addr) in &addrs {
                runs.push((*side, clients, wrk(side.name(), addr, clients, duration)?));
            }
        }
    }
    for (_, _, f) in &runs {
        crate::print(f);
    }
    let traced_calls = runs
        .iter()
        .filter(|(side, _, _)| side.traces())
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
    drop(servers);
    let _ = stop.send(());
    let _ = runtime.block_on(receiver);
    Ok(Observability {
        runs,
        spans: received.load(Ordering::Relaxed),
        traced_calls,
    })
}

/// Prints the ratio the issue states its target in, and what each part costs.
pub fn print_ratios(o: &Observability) {
    for (side, what, target) in [
        (Side::Both, "metrics + traces on", "   (>= 95%)"),
        (Side::MetricsOnly, "metrics only       ", ""),
        (Side::TracesOnly, "traces only        ", ""),
    ] {
        for clients in [1, 8] {
            println!(
                "  {what} / off, calls/s, {clients} client(s)          {:>5.1}%{target}",
                100.0 * o.mean(side, clients) / o.mean(Side::Off, clients)
            );
        }
    }
    println!(
        "  spans received by the OTLP receiver: {} for {} traced calls ({:.1} per call)",
        o.spans,
        o.traced_calls,
        o.spans as f64 / o.traced_calls.max(1) as f64
    );
}
