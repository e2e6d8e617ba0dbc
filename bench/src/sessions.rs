//! Memory per idle MCP session: 20,000 sessions opened (`initialize` and
//! `notifications/initialized`, then nothing), in batches of 2,000, against a server that
//! parks idle sessions (`session_park: 1s`) and the same server that never parks them,
//! in one run. The figure is the growth of the server's resident memory divided by the
//! sessions open, read once a batch has had time to be parked.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{ECHO_TOOL, open_session_as, start_mcpfier_with};

const SESSIONS: usize = 20_000;
const BATCH: usize = 2_000;

/// Bytes per open session: (parked, never parked).
pub fn run(dir: &Path) -> anyhow::Result<(f64, f64)> {
    println!("\nmemory per idle MCP session ({SESSIONS} sessions, batches of {BATCH})");
    let mut per_session = Vec::new();
    for (name, park) in [("parked after 1s", "1s"), ("never parked", "24h")] {
        let yaml = format!(
            "server:\n  limits: {{sessions: {}, sessions_per_principal: {}, session_park: {park}}}\n{ECHO_TOOL}",
            SESSIONS + 1000,
            SESSIONS + 1000
        );
        let (server, addr) = start_mcpfier_with(dir, &format!("sessions-{park}"), &yaml)?;
        let pid = server.0.id();
        // Warm the allocator and the runtime first, as a server that has served a while.
        for _ in 0..200 {
            open_session_as(&addr, None)?;
        }
        settle();
        let base = rss_kib(pid)?;
        let started = Instant::now();
        let mut last = base;
        for opened in (BATCH..=SESSIONS).step_by(BATCH) {
            for _ in 0..BATCH {
                open_session_as(&addr, None)?;
            }
            // A batch is parked 1 s to 1.25 s after its last request.
            settle();
            last = rss_kib(pid)?;
            println!(
                "  {name:<16} {opened:>6} sessions: rss {:>7.1} MB",
                last as f64 / 1024.0
            );
        }
        let bytes = (last.saturating_sub(base) as f64 * 1024.0) / SESSIONS as f64;
        println!(
            "  {name:<16} {:>7.0} bytes per session (rss {:.1} -> {:.1} MB, {:.0} s)",
            bytes,
            base as f64 / 1024.0,
            last as f64 / 1024.0,
            started.elapsed().as_secs_f64()
        );
        per_session.push(bytes);
    }
    Ok((per_session[0], per_session[1]))
}

/// Waits for a parking pass over everything opened so far (park 1 s, checked every 250 ms).
fn settle() {
    std::thread::sleep(Duration::from_millis(1600));
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
