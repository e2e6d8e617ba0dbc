//! What the dashboard shows of calls: the last calls, and per tool the calls, errors and
//! latency of each 10-second slot over the last 15 minutes. Bounded: 200 recent calls, 90
//! slots per tool, tools from the catalog only (a call of an unknown tool counts under no
//! name), 17 latency buckets per slot.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

/// How many recent calls are kept.
pub const RECENT: usize = 200;
/// Seconds per slot of the per-tool series.
pub const SLOT_SECONDS: u64 = 10;
/// Slots kept: 15 minutes.
pub const SLOTS: usize = 90;
/// Upper bounds of the latency buckets, in milliseconds (the last is everything above).
const BOUNDS_MS: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// One finished (or refused) call.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// When it ended, Unix milliseconds.
    pub at_ms: u64,
    /// The tool; `None` for a name that is not in the catalog (or not the caller's to see).
    pub tool: Option<String>,
    /// Who called, when the front door knows.
    pub principal: Option<String>,
    /// The agent that ran it; `None` when it ran here or did not run.
    pub agent: Option<String>,
    /// `ok`, `failed` (an exit code outside `ok_exit_codes`), `timed_out`, `cancelled`, or why
    /// it did not run.
    pub outcome: String,
    /// How long it took, when it was dispatched.
    pub duration_ms: Option<u64>,
}

impl CallRecord {
    /// Whether the dashboard counts it as an error.
    pub fn failed(&self) -> bool {
        self.outcome != "ok"
    }
}

#[derive(Default)]
struct Slot {
    /// Which slot: Unix seconds / [`SLOT_SECONDS`].
    index: u64,
    calls: u32,
    errors: u32,
    buckets: [u32; BOUNDS_MS.len() + 1],
}

impl Slot {
    /// The latency (ms) below which `q` of the slot's timed calls fall: a bucket's upper bound.
    fn quantile(&self, q: f64) -> Option<u64> {
        let timed: u32 = self.buckets.iter().sum();
        if timed == 0 {
            return None;
        }
        let want = (f64::from(timed) * q).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<CallRecord>,
    tools: HashMap<String, VecDeque<Slot>>,
}

/// The dashboard's call records; cheap to record into from every call.
#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

impl Board {
    /// Records a call that ended.
    pub fn record(&self, call: CallRecord) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tool) = &call.tool {
            let index = call.at_ms / 1000 / SLOT_SECONDS;
            let series = inner.tools.entry(tool.clone()).or_default();
            if series.back().is_none_or(|s| s.index < index) {
                series.push_back(Slot {
                    index,
                    ..Slot::default()
                });
                while series.len() > SLOTS {
                    series.pop_front();
                }
            }
            // A record from a slot already closed (a clock step back) counts in the last one.
            if let Some(slot) = series.back_mut() {
                slot.calls += 1;
                if call.failed() {
                    slot.errors += 1;
                }
                if let Some(ms) = call.duration_ms {
                    let i = BOUNDS_MS
                        .iter()
                        .position(|b| ms <= *b)
                        .unwrap_or(BOUNDS_MS.len());
                    slot.buckets[i] += 1;
                }
            }
        }
        inner.recent.push_back(call);
        while inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
    }

    /// The last calls (newest first), and per tool in `tools` the series of the last 15
    /// minutes up to `now_ms`: per slot `[start_ms, calls, errors, p50_ms, p99_ms]`, with
    /// empty slots filled in, so each series has [`SLOTS`] points.
    pub fn view(&self, tools: &[&str], now_ms: u64) -> Value {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<&CallRecord> = inner.recent.iter().rev().collect();
        let last = now_ms / 1000 / SLOT_SECONDS;
        let first = last.saturating_sub(SLOTS as u64 - 1);
        let mut series = serde_json::Map::new();
        for tool in tools {
            let slots = inner.tools.get(*tool);
            let points: Vec<Value> = (first..=last)
                .map(|index| {
                    let slot = slots.and_then(|s| s.iter().find(|s| s.index == index));
                    let start_ms = index * SLOT_SECONDS * 1000;
                    match slot {
                        Some(s) => json!([
                            start_ms,
                            s.calls,
                            s.errors,
                            s.quantile(0.5),
                            s.quantile(0.99)
                        ]),
                        None => json!([start_ms, 0, 0, null, null]),
                    }
                })
                .collect();
            series.insert((*tool).to_owned(), Value::Array(points));
        }
        json!({
            "slot_seconds": SLOT_SECONDS,
            "recent": recent,
            "tools": series,
        })
    }
}

/// A duration in whole milliseconds.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(at_ms: u64, tool: &str, outcome: &str, ms: u64) -> CallRecord {
        CallRecord {
            at_ms,
            tool: Some(tool.to_owned()),
            principal: None,
            agent: Some("a1".into()),
            outcome: outcome.to_owned(),
            duration_ms: Some(ms),
        }
    }

    #[test]
    fn slots_count_calls_errors_and_quantiles() {
        let board = Board::default();
        let t0 = 1_000_000_000_000;
        for i in 0..99 {
            board.record(call(t0 + i, "say", "ok", 3));
        }
        board.record(call(t0 + 100, "say", "failed", 4_000));
        let view = board.view(&["say", "idle"], t0 + 200);
        let say = view["tools"]["say"].as_array().unwrap();
        assert_eq!(say.len(), SLOTS);
        let last = &say[SLOTS - 1];
        assert_eq!(last[1], 100);
        assert_eq!(last[2], 1);
        assert_eq!(last[3], 5, "p50 bucket");
        assert_eq!(last[4], 5, "p99 is the 99th of 100");
        assert_eq!(say[0][1], 0);
        assert_eq!(view["tools"]["idle"][SLOTS - 1][1], 0);
        assert_eq!(view["recent"][0]["outcome"], "failed", "newest first");
    }

    #[test]
    fn memory_is_bounded() {
        let board = Board::default();
        for i in 0..(RECENT as u64 * 3) {
            // One call per slot, for longer than the window.
            board.record(call(i * SLOT_SECONDS * 1000, "say", "ok", 1));
        }
        let inner = board.inner.lock().unwrap();
        assert_eq!(inner.recent.len(), RECENT);
        assert_eq!(inner.tools["say"].len(), SLOTS);
    }

    #[test]
    fn an_unknown_tool_gets_no_series() {
        let board = Board::default();
        board.record(CallRecord {
            tool: None,
            ..call(5, "x", "unknown_tool", 0)
        });
        let inner = board.inner.lock().unwrap();
        assert!(inner.tools.is_empty());
        assert_eq!(inner.recent.len(), 1);
    }
}
