//! Per-principal call limits from its roles: a token bucket for `calls_per_minute` and a
//! count of running calls for `concurrent`.
//!
//! Invariants: a call starts only with a [`Permit`], and the permit's drop is what frees its
//! concurrency slot, so a call that panics or is cancelled frees it too; the limiter fails
//! closed: when it can't decide (its table of principals is full of ones it must remember, or
//! its lock was poisoned) it refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most principals tracked at once. Past it, principals with nothing to remember (a full
/// bucket, no call running) are forgotten; if none can be, new ones are refused.
pub const MAX_TRACKED: usize = 100_000;

/// The limits that apply to one principal (the most generous of its roles').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Calls per minute; `None` is unlimited.
    pub calls_per_minute: Option<u32>,
    /// Calls running at once; `None` is unlimited.
    pub concurrent: Option<u32>,
}

impl Quota {
    /// Whether there is nothing to enforce.
    pub fn unlimited(&self) -> bool {
        self.calls_per_minute.is_none() && self.concurrent.is_none()
    }
}

/// Why a call may not start now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The principal used up its calls per minute.
    #[error(
        "rate limited: `{who}` may start {limit} calls per minute (its roles' limits.calls_per_minute); retry after {} s. Nothing was run",
        retry_after.as_secs()
    )]
    Rate {
        /// The principal.
        who: String,
        /// Its calls per minute.
        limit: u32,
        /// When the next call may start (whole seconds, at least 1).
        retry_after: Duration,
    },
    /// The principal has as many calls running as it may.
    #[error(
        "rate limited: `{who}` already has {limit} calls running (its roles' limits.concurrent); retry when one finishes. Nothing was run"
    )]
    Concurrent {
        /// The principal.
        who: String,
        /// Its calls at once.
        limit: u32,
    },
    /// The limiter could not decide, so it refused.
    #[error(
        "rate limited: the limiter can't decide ({0}), so the call is refused. Nothing was run"
    )]
    Undecided(&'static str),
}

impl Refusal {
    /// Seconds to wait before retrying, when known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Rate { retry_after, .. } => Some(retry_after.as_secs()),
            Refusal::Concurrent { .. } => None,
            Refusal::Undecided(_) => Some(1),
        }
    }

    /// The audit's and structured result's name for it.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Rate { .. } => "rate",
            Refusal::Concurrent { .. } => "concurrent",
            Refusal::Undecided(_) => "undecided",
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Calls it may still start now (fractional: the bucket refills continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    running: u32,
}

/// The limiter, shared by every request.
#[derive(Debug, Default)]
pub struct Limiter {
    table: Mutex<HashMap<String, Entry>>,
}

/// A started call's hold on its principal's concurrency; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(limiter) = &self.limiter else { return };
        // A poisoned lock still holds a count that must go down.
        let mut table = limiter.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.get_mut(&self.key) {
            e.running = e.running.saturating_sub(1);
        }
    }
}

impl Permit {
    /// A permit that holds nothing (no limits apply).
    pub fn free() -> Permit {
        Permit {
            limiter: None,
            key: String::new(),
        }
    }
}

impl Limiter {
    /// Lets a call of the principal `key` (shown as `who`) start under `quota` at `now`, or
    /// says why not.
    pub fn admit(
        self: &Arc<Self>,
        key: &str,
        who: &str,
        quota: Quota,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        if quota.unlimited() {
            return Ok(Permit::free());
        }
        let Ok(mut table) = self.table.lock() else {
            return Err(Refusal::Undecided("its state was damaged by a crash"));
        };
        let capacity = quota.calls_per_minute.map_or(f64::INFINITY, f64::from);
        if !table.contains_key(key) && table.len() >= MAX_TRACKED {
            forget_settled(&mut table, now);
            if table.len() >= MAX_TRACKED {
                return Err(Refusal::Undecided("it tracks as many principals as it can"));
            }
        }
        let entry = table.entry(key.to_owned()).or_insert(Entry {
            tokens: capacity,
            at: now,
            running: 0,
        });
        if let Some(limit) = quota.calls_per_minute {
            let rate = f64::from(limit) / 60.0;
            let elapsed = now.saturating_duration_since(entry.at).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate).min(capacity);
            entry.at = now;
            if entry.tokens < 1.0 {
                let wait = ((1.0 - entry.tokens) / rate).ceil().max(1.0);
                return Err(Refusal::Rate {
                    who: who.to_owned(),
                    limit,
                    retry_after: Duration::from_secs(wait as u64),
                });
            }
        }
        entry.at = now;
        if let Some(limit) = quota.concurrent
            && entry.running >= limit
        {
            return Err(Refusal::Concurrent {
                who: who.to_owned(),
                limit,
            });
        }
        if quota.calls_per_minute.is_some() {
            entry.tokens -= 1.0;
        }
        entry.running += 1;
        Ok(Permit {
            limiter: Some(self.clone()),
            key: key.to_owned(),
        })
    }

    /// How many principals it remembers.
    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// Forgets principals with no call running whose last call is a minute old: their bucket has
/// refilled (a bucket holds one minute's calls), so a fresh entry is the same.
fn forget_settled(table: &mut HashMap<String, Entry>, now: Instant) {
    table.retain(|_, e| {
        e.running > 0 || now.saturating_duration_since(e.at) < Duration::from_secs(60)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(cpm: Option<u32>, concurrent: Option<u32>) -> Quota {
        Quota {
            calls_per_minute: cpm,
            concurrent,
        }
    }

    #[test]
    fn a_bucket_allows_a_minutes_calls_at_once_then_one_per_interval() {
        let l = Arc::new(Limiter::default());
        let t0 = Instant::now();
        let q = quota(Some(6), None);
        for _ in 0..6 {
            drop(l.admit("k", "ci", q, t0).expect("within the bucket"));
        }
        let refused = l.admit("k", "ci", q, t0).unwrap_err();
        assert_eq!(refused.retry_after(), Some(10), "{refused}");
        assert!(
            refused.to_string().contains("retry after 10 s"),
            "{refused}"
        );
        assert!(l.admit("k", "ci", q, t0 + Duration::from_secs(9)).is_err());
        assert!(l.admit("k", "ci", q, t0 + Duration::from_secs(10)).is_ok());
        // Another principal has its own bucket.
        assert!(l.admit("other", "other", q, t0).is_ok());
    }

    #[test]
    fn concurrency_is_freed_when_the_permit_drops() {
        let l = Arc::new(Limiter::default());
        let t0 = Instant::now();
        let q = quota(None, Some(2));
        let a = l.admit("k", "ci", q, t0).unwrap();
        let _b = l.admit("k", "ci", q, t0).unwrap();
        let refused = l.admit("k", "ci", q, t0).unwrap_err();
        assert!(matches!(refused, Refusal::Concurrent { limit: 2, .. }));
        drop(a);
        assert!(l.admit("k", "ci", q, t0).is_ok());
    }

    #[test]
    fn a_full_table_forgets_settled_principals_and_refuses_when_it_cannot() {
        let l = Arc::new(Limiter::default());
        let t0 = Instant::now();
        let q = quota(Some(60), Some(1));
        let mut held = Vec::new();
        for i in 0..MAX_TRACKED {
            held.push(l.admit(&i.to_string(), "p", q, t0).unwrap());
        }
        // Every principal has a call running: nothing can be forgotten, so it fails closed.
        let refused = l.admit("new", "new", q, t0).unwrap_err();
        assert!(matches!(refused, Refusal::Undecided(_)), "{refused}");
        drop(held);
        // A minute on, every bucket is full again and nothing runs: room is made.
        assert!(
            l.admit("new", "new", q, t0 + Duration::from_secs(61))
                .is_ok()
        );
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn a_poisoned_lock_refuses() {
        let l = Arc::new(Limiter::default());
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.table.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let refused = l
            .admit("k", "ci", quota(Some(1), None), Instant::now())
            .unwrap_err();
        assert!(matches!(refused, Refusal::Undecided(_)));
        assert!(Permit::free().limiter.is_none());
    }
}
