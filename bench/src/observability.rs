//! Metrics and tracing under load: `tools/call echo` through a coordinator to one agent,
//! with Prometheus metrics recorded on both and every call traced (sampled at 100%) to a
//! local OTLP/gRPC receiver, against the same pair with metrics off (`server.metrics:
//! false`, no agent `metrics_listen`) and no `telemetry`; and, to show what each part
//! costs, with only one of the two on. Four coordinator-agent pairs, measured in rounds (six
//! at 1 client, then six at 8), each round every pair once, in an order that turns by one
//! each round; the figure is the median of the rounds' on/off ratios. The CPU time the
//! coordinator, the agent and the receiver spent per call is printed too: it shows the cost
//! without the throughput's noise.
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

/// CPU time a run took, in microseconds per call: the coordinator's, the agent's (not the
/// tool processes it spawned) and this process's (the OTLP receiver; wrk is a child).
#[derive(Clone, Copy, Default)]
struct Cpu {
    coordinator: f64,
    agent: f64,
    receiver: f64,
}

/// User plus system CPU time of process `pid` (`self` for this one) so far, in seconds,
/// from /proc (its threads included, its children not).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // In USER_HZ, which Linux fixes at 100 for what it shows user space.
    Ok(ticks / 100.0)
}

/// Rounds per client count; each round measures every side once.
const ROUNDS: usize = 6;

/// One measurement: a side, at a number of clients, in a round.
struct Run {
    side: Side,
    clients: usize,
    round: usize,
    figures: Figures,
    cpu: Cpu,
}

/// The figures at 1 and 8 clients, each side measured once per round.
pub struct Observability {
    runs: Vec<Run>,
    spans: u64,
    traced_calls: u64,
}

impl Observability {
    fn of(&self, side: Side, clients: usize) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| r.side == side && r.clients == clients)
    }

    fn mean(&self, side: Side, clients: usize, of: impl Fn(&Run) -> f64) -> f64 {
        let v: Vec<f64> = self.of(side, clients).map(of).collect();
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// Each round's calls/s of `side` over that round's `off`, sorted.
    fn ratios(&self, side: Side, clients: usize) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .of(side, clients)
            .filter_map(|r| {
                let off = self.of(Side::Off, clients).find(|o| o.round == r.round)?;
                Some(r.figures.rate / off.figures.rate)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
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
        let pids = (coordinator.0.id().to_string(), agent.0.id().to_string());
        servers.push((agent, coordinator));
        addrs.push((side, addr, pids));
    }
    // Short runs, many rounds: the machine's drift (two runs of the same server have
    // differed by 15%) falls on every side, and the median of each round's ratio to `off`
    // is not moved by one disturbed run.
    let each = (duration / 2).max(Duration::from_secs(2));
    let mut runs = Vec::new();
    for clients in [1, 8] {
        for round in 0..ROUNDS {
            // Each round starts one side later, so each side is measured first, second,
            // third and last equally often.
            for k in 0..addrs.len() {
                let (side, addr, (coordinator, agent)) = &addrs[(round + k) % addrs.len()];
                let before = [
                    cpu_seconds(coordinator)?,
                    cpu_seconds(agent)?,
                    cpu_seconds("self")?,
                ];
                let figures = wrk(side.name(), addr, clients, each)?;
                let calls = (figures.rate * each.as_secs_f64()).max(1.0);
                let per_call = |pid: &str, i: usize| -> anyhow::Result<f64> {
                    Ok((cpu_seconds(pid)? - before[i]) * 1e6 / calls)
                };
                let cpu = Cpu {
                    coordinator: per_call(coordinator, 0)?,
                    agent: per_call(agent, 1)?,
                    receiver: per_call("self", 2)?,
                };
                runs.push(Run {
                    side: *side,
                    clients,
                    round,
                    figures,
                    cpu,
                });
            }
        }
    }
    for run in &runs {
        crate::print(&run.figures);
    }
    let traced_calls = runs
        .iter()
        .filter(|run| run.side.traces())
        .map(|run| run.figures.rate * each.as_secs_f64())
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
    println!(
        "  calls/s on / off: median of {ROUNDS} rounds (each round's ratio; lowest .. highest), mean of all runs"
    );
    for (side, what, target) in [
        (Side::Both, "metrics + traces on", "   (>= 95%)"),
        (Side::MetricsOnly, "metrics only       ", ""),
        (Side::TracesOnly, "traces only        ", ""),
    ] {
        for clients in [1, 8] {
            let r = o.ratios(side, clients);
            let median = if r.is_empty() {
                f64::NAN
            } else if r.len() % 2 == 1 {
                r[r.len() / 2]
            } else {
                (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
            };
            let rate = |s| o.mean(s, clients, |run| run.figures.rate);
            println!(
                "  {what} / off, {clients} client(s)   median {:>5.1}%{target}   ({:.1} .. {:.1}%; mean {:.1}%)",
                100.0 * median,
                100.0 * r.first().copied().unwrap_or(f64::NAN),
                100.0 * r.last().copied().unwrap_or(f64::NAN),
                100.0 * rate(side) / rate(Side::Off),
            );
        }
    }
    for clients in [1, 8] {
        println!(
            "  CPU per call, microseconds (coordinator / agent / receiver), {clients} client(s):"
        );
        for side in Side::ALL {
            println!(
                "    {:<48} {:>6.0} / {:>6.0} / {:>6.0}",
                side.name(),
                o.mean(side, clients, |r| r.cpu.coordinator),
                o.mean(side, clients, |r| r.cpu.agent),
                o.mean(side, clients, |r| r.cpu.receiver),
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
