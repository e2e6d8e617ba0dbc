//! Prometheus metrics: the names the coordinator and the agent record under, and the one
//! recorder a process installs. Labels are bounded: tool names, agent ids, outcomes and
//! reasons from fixed sets; never arguments, principals' free text or request ids.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Tool calls by `tool` and `outcome` (ok, failed, timed_out, cancelled, or why it was
/// refused or failed to run: an error kind, `forbidden`, `rate_limited`, ...).
pub const TOOL_CALLS: &str = "mcpfier_tool_calls_total";
/// How long a dispatched call took, by `tool`, from the first slot wait to its answer.
pub const TOOL_CALL_DURATION: &str = "mcpfier_tool_call_duration_seconds";
/// Calls holding a `server.max_concurrency` slot.
pub const CALLS_IN_FLIGHT: &str = "mcpfier_calls_in_flight";
/// How long calls waited for a concurrency slot.
pub const QUEUE_WAIT: &str = "mcpfier_queue_wait_seconds";
/// Dispatches to agents by `agent` and `result` (accepted, refused_<kind>, lost, retried).
pub const DISPATCH: &str = "mcpfier_dispatch_total";
/// Agents in the routing view by `state` (healthy, draining, fenced, unhealthy).
pub const AGENTS: &str = "mcpfier_agents";
/// 1 when the coordinator's etcd session is up, 0 when it is configured and down.
pub const ETCD_UP: &str = "mcpfier_etcd_up";
/// Open MCP sessions by `state` (live, parked).
pub const SESSIONS: &str = "mcpfier_sessions";
/// Requests refused at authentication, by `reason`.
pub const AUTH_REFUSALS: &str = "mcpfier_auth_refusals_total";
/// Requests and calls refused by authorization, by `reason`.
pub const AUTHZ_REFUSALS: &str = "mcpfier_authz_refusals_total";
/// Calls refused by a rate or concurrency limit, by `reason`.
pub const RATE_LIMITED: &str = "mcpfier_rate_limited_total";
/// Container calls by `outcome`.
pub const CONTAINER_CALLS: &str = "mcpfier_container_calls_total";
/// Containers removed by `result` (removed, failed, reaped).
pub const CONTAINER_REMOVALS: &str = "mcpfier_container_removals_total";

/// OpenTelemetry's `mcp.server.operation.duration` (GenAI semantic conventions v0.1.0) in
/// Prometheus form: each MCP request handled, by `mcp_method_name`, `gen_ai_tool_name`
/// (catalog tools only) and, when it failed, `error_type`.
pub const MCP_SERVER_OPERATION_DURATION: &str = "mcp_server_operation_duration_seconds";

/// Calls an agent is running.
pub const AGENT_RUNNING: &str = "mcpfier_agent_running_calls";
/// Calls an agent runs at once at most (`capacity`).
pub const AGENT_CAPACITY: &str = "mcpfier_agent_capacity";
/// 1 while the agent is fenced (its etcd lease lost), else 0.
pub const AGENT_FENCED: &str = "mcpfier_agent_fenced";
/// How long an etcd lease renewal took.
pub const AGENT_LEASE_RENEW: &str = "mcpfier_agent_lease_renew_seconds";
/// Calls the agent's policy refused, by `reason`.
pub const AGENT_POLICY_REFUSALS: &str = "mcpfier_agent_policy_refusals_total";
/// Calls an agent finished, by `tool` and `outcome`.
pub const AGENT_CALLS: &str = "mcpfier_agent_calls_total";

/// Histogram buckets for every `_seconds` metric: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's recorder (once; later calls return the same handle). Until it
/// is installed, recording is a no-op.
pub fn install() -> Result<&'static PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("the metrics recorder could not be installed: {e}"))?;
    describe();
    let handle = HANDLE.get_or_init(|| handle);
    // Histogram samples pile up in the recorder until an upkeep folds them into buckets.
    // A scrape does one, but between scrapes (or with none) they would grow without bound
    // and slow every call that records one.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        })
        .map_err(|e| format!("the metrics upkeep thread could not start: {e}"))?;
    Ok(handle)
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The metrics in Prometheus' text format; `None` before [`install`].
pub fn render() -> Option<String> {
    let h = HANDLE.get()?;
    h.run_upkeep();
    Some(h.render())
}

fn describe() {
    describe_counter!(TOOL_CALLS, Unit::Count, "Tool calls by tool and outcome.");
    describe_histogram!(
        MCP_SERVER_OPERATION_DURATION,
        Unit::Seconds,
        "MCP request duration as observed on the server (OpenTelemetry mcp.server.operation.duration)."
    );
    describe_histogram!(
        TOOL_CALL_DURATION,
        Unit::Seconds,
        "How long dispatched tool calls took."
    );
    describe_gauge!(
        CALLS_IN_FLIGHT,
        Unit::Count,
        "Calls holding a server.max_concurrency slot."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "How long calls waited for a concurrency slot."
    );
    describe_counter!(
        DISPATCH,
        Unit::Count,
        "Dispatches to agents by agent and result."
    );
    describe_gauge!(AGENTS, Unit::Count, "Agents in the routing view by state.");
    describe_gauge!(ETCD_UP, "1 when etcd is reachable.");
    describe_gauge!(SESSIONS, Unit::Count, "Open MCP sessions by state.");
    describe_counter!(
        AUTH_REFUSALS,
        Unit::Count,
        "Authentication refusals by reason."
    );
    describe_counter!(
        AUTHZ_REFUSALS,
        Unit::Count,
        "Authorization refusals by reason."
    );
    describe_counter!(RATE_LIMITED, Unit::Count, "Rate-limited calls by reason.");
    describe_counter!(CONTAINER_CALLS, Unit::Count, "Container calls by outcome.");
    describe_counter!(
        CONTAINER_REMOVALS,
        Unit::Count,
        "Container removals by result."
    );
    describe_gauge!(AGENT_RUNNING, Unit::Count, "Calls this agent is running.");
    describe_gauge!(
        AGENT_CAPACITY,
        Unit::Count,
        "Calls this agent runs at once at most."
    );
    describe_gauge!(AGENT_FENCED, "1 while this agent is fenced.");
    describe_histogram!(
        AGENT_LEASE_RENEW,
        Unit::Seconds,
        "How long etcd lease renewals took."
    );
    describe_counter!(
        AGENT_POLICY_REFUSALS,
        Unit::Count,
        "Calls this agent's policy refused, by reason."
    );
    describe_counter!(
        AGENT_CALLS,
        Unit::Count,
        "Calls this agent finished, by tool and outcome."
    );
}
