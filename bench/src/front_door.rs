//! The whole front door under load: `tools/call echo` over HTTP with API-key
//! authentication, role authorization, per-role rate and concurrency limits and the audit
//! file all on, against the same server with them all off, measured alternately in one run
//! (off, on, on-interval, off, ...) so that drift on a noisy machine falls on every side.
//! "On" is measured twice: with the audit's default (each line synced to disk before its
//! call is answered) and with `sync_interval: 100ms` (written before, synced after).

use std::path::Path;
use std::time::Duration;

use crate::{ECHO_TOOL, Figures, start_mcpfier_with, wrk_as};

/// Limits far above what the bench reaches: they are checked on every call, never hit.
const ROLES: &str =
    "roles:\n  bench: {tools: [\"*\"], limits: {calls_per_minute: 100000000, concurrent: 1000}}\n";

/// Which server a run measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Off,
    On,
    OnInterval,
}

/// The figures at 1 and 8 clients (each the mean of two alternating runs).
pub struct FrontDoor {
    runs: Vec<(Side, usize, Figures)>,
}

impl FrontDoor {
    fn mean(&self, side: Side, clients: usize, f: impl Fn(&Figures) -> f64) -> f64 {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|(s, c, _)| *s == side && *c == clients)
            .map(|(_, _, fig)| f(fig))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn run(dir: &Path, duration: Duration) -> anyhow::Result<FrontDoor> {
    let key = mcpfier_coordinator::access::new_key()?;
    let hash = mcpfier_coordinator::access::key_hash(&key);
    let mut keys = String::new();
    for i in 0..9 {
        let other = mcpfier_coordinator::access::new_key()?;
        keys.push_str(&format!(
            "      - {{id: k{i}, hash: \"{}\", roles: [bench]}}\n",
            mcpfier_coordinator::access::key_hash(&other)
        ));
    }
    let on_yaml = |audit: &str| {
        format!(
            "server:\n  max_concurrency: 64\n  auth:\n    api_keys:\n{keys}      - {{id: bench, hash: \"{hash}\", roles: [bench]}}\n  audit: {audit}\n{ROLES}{ECHO_TOOL}"
        )
    };
    let line_audit = dir.join("front-door-audit.jsonl");
    let interval_audit = dir.join("front-door-audit-interval.jsonl");
    let off_yaml = format!("server: {{max_concurrency: 64}}\n{ECHO_TOOL}");
    let (_off, off_addr) = start_mcpfier_with(dir, "front-door-off", &off_yaml)?;
    let (_on, on_addr) = start_mcpfier_with(
        dir,
        "front-door-on",
        &on_yaml(&format!("{{path: {}}}", line_audit.display())),
    )?;
    let (_oni, oni_addr) = start_mcpfier_with(
        dir,
        "front-door-on-interval",
        &on_yaml(&format!(
            "{{path: {}, sync_interval: 100ms}}",
            interval_audit.display()
        )),
    )?;
    let sides = [
        (
            Side::Off,
            "front door off, tools/call echo",
            &off_addr,
            None,
        ),
        (
            Side::On,
            "front door on (key, roles, limits, audit)",
            &on_addr,
            Some(key.as_str()),
        ),
        (
            Side::OnInterval,
            "front door on, audit sync_interval 100ms",
            &oni_addr,
            Some(key.as_str()),
        ),
    ];
    let mut runs = Vec::new();
    for clients in [1, 8] {
        for _ in 0..2 {
            for (side, name, addr, bearer) in &sides {
                runs.push((
                    *side,
                    clients,
                    wrk_as(name, addr, clients, duration, *bearer)?,
                ));
            }
        }
    }
    for (_, _, f) in &runs {
        crate::print(f);
    }
    for audit in [&line_audit, &interval_audit] {
        let v = mcpfier_coordinator::audit::verify(std::slice::from_ref(audit), false, None)?;
        println!(
            "  {}: {} lines, chain intact",
            audit.file_name().unwrap_or_default().to_string_lossy(),
            v.lines
        );
    }
    Ok(FrontDoor { runs })
}

/// Prints the ratios the issue states its target in.
pub fn print_ratios(f: &FrontDoor) {
    for (side, what) in [
        (Side::On, "audit synced per line (default)"),
        (Side::OnInterval, "audit sync_interval 100ms"),
    ] {
        for clients in [1, 8] {
            println!(
                "  front door on / off, calls/s, {clients} client(s), {what:<32} {:>5.1}%   (>= 95%)",
                100.0 * f.mean(side, clients, |x| x.rate) / f.mean(Side::Off, clients, |x| x.rate)
            );
        }
        println!(
            "  front door on - off, p50, 1 client, {what:<32} {:>+7.1} us",
            f.mean(side, 1, |x| x.p50_us) - f.mean(Side::Off, 1, |x| x.p50_us)
        );
    }
}
