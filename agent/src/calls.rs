//! The calls an agent knows, by call id: running ones and, for a while, finished ones.
//!
//! Every event of a call is kept in order, so a repeated `Execute` with the same call id
//! replays what happened and follows the rest instead of running the command again. When the
//! last stream following a running call goes away, the call is cancelled: a coordinator that
//! dropped its stream leaves nothing running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use mcpfier_proto::v1::{self, ExecuteEvent, execute_event::Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a finished call is remembered for attaching (a coordinator reconnects within
/// seconds; the bound keeps memory flat under sustained load).
pub const RETAIN_FINISHED: Duration = Duration::from_secs(120);

/// One call's record.
pub struct Call {
    log: Mutex<Log>,
    version: watch::Sender<u64>,
    /// Cancelled by `Cancel`, or when the last follower goes away.
    pub cancel: CancellationToken,
    followers: AtomicUsize,
}

#[derive(Default)]
struct Log {
    events: Vec<ExecuteEvent>,
    finished_at: Option<Instant>,
}

impl Call {
    fn new() -> Arc<Call> {
        Arc::new(Call {
            log: Mutex::new(Log::default()),
            version: watch::channel(0).0,
            cancel: CancellationToken::new(),
            followers: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event for followers. The final event goes through [`Calls::finish`], which
    /// also stops counting the call as running.
    pub fn push(&self, event: Event) {
        let mut log = self.lock();
        if log.finished_at.is_some() {
            return;
        }
        if matches!(event, Event::Finished(_)) {
            log.finished_at = Some(Instant::now());
        }
        log.events.push(ExecuteEvent { event: Some(event) });
        drop(log);
        self.version.send_modify(|v| *v += 1);
    }

    /// Whether the call's final (`Finished`) event has been recorded.
    pub fn is_finished(&self) -> bool {
        self.lock().finished_at.is_some()
    }

    /// The call's events from index `from` on, then the rest as they come; ends after the
    /// final event.
    pub fn follow(
        self: &Arc<Self>,
        from: usize,
    ) -> impl Stream<Item = Result<ExecuteEvent, tonic::Status>> + Send + 'static {
        self.followers.fetch_add(1, Ordering::SeqCst);
        let follower = Follower(self.clone());
        let rx = self.version.subscribe();
        futures::stream::unfold(
            (follower, from, rx),
            |(follower, next, mut rx)| async move {
                loop {
                    {
                        let log = follower.0.lock();
                        if let Some(event) = log.events.get(next) {
                            let event = event.clone();
                            drop(log);
                            return Some((Ok(event), (follower, next + 1, rx)));
                        }
                        if log.finished_at.is_some() {
                            return None;
                        }
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
    }
}

/// Counts a stream following a call; the last one to go cancels a running call.
struct Follower(Arc<Call>);

impl Drop for Follower {
    fn drop(&mut self) {
        if self.0.followers.fetch_sub(1, Ordering::SeqCst) == 1 && !self.0.is_finished() {
            self.0.cancel.cancel();
        }
    }
}

/// All calls, and how many are running.
pub struct Calls {
    map: Mutex<HashMap<String, Arc<Call>>>,
    /// Registered calls without a final event (kept apart so admission never scans the map,
    /// which also holds finished calls). A `watch`, so a waiter never misses a change made
    /// between reading the count and starting to wait.
    running: watch::Sender<usize>,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            map: Mutex::default(),
            running: watch::channel(0).0,
        }
    }
}

/// What `Calls::start` found.
pub enum Start {
    /// A new call, to be run by the caller.
    New(Arc<Call>),
    /// A call with that id exists already.
    Existing(Arc<Call>),
    /// No room: `running` calls are already running.
    Full {
        /// Calls running when it was refused (at least the capacity).
        running: usize,
    },
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Call>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the call `id` or, when there is room for one more, registers it with its
    /// `Accepted` event.
    pub fn start(&self, id: &str, capacity: usize, accepted: v1::Accepted) -> Start {
        let mut map = self.lock();
        if let Some(call) = map.get(id) {
            return Start::Existing(call.clone());
        }
        let running = *self.running.borrow();
        if running >= capacity {
            return Start::Full { running };
        }
        let call = Call::new();
        call.push(Event::Accepted(accepted));
        map.insert(id.to_owned(), call.clone());
        self.running.send_modify(|n| *n += 1);
        Start::New(call)
    }

    /// Remembers `id` as cancelled before it arrived (a coordinator gave up on a call it sent
    /// over a stalled connection), so an `Execute` delivered later attaches to this record
    /// instead of running. Returns false when the call is known already.
    pub fn cancel_unknown(&self, id: &str, accepted: v1::Accepted, finished: v1::Finished) -> bool {
        let mut map = self.lock();
        if map.contains_key(id) {
            return false;
        }
        let call = Call::new();
        call.push(Event::Accepted(accepted));
        call.push(Event::Finished(finished));
        call.cancel.cancel();
        map.insert(id.to_owned(), call);
        true
    }

    /// Records `call`'s final event; it no longer counts as running.
    pub fn finish(&self, call: &Call, finished: v1::Finished) {
        if !call.is_finished() {
            call.push(Event::Finished(finished));
            self.running.send_modify(|n| *n -= 1);
        }
    }

    /// The call `id`, running or finished and not yet evicted (see [`RETAIN_FINISHED`]);
    /// `None` when this agent never saw it or has forgotten it.
    pub fn get(&self, id: &str) -> Option<Arc<Call>> {
        self.lock().get(id).cloned()
    }

    /// Calls not finished yet.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// The number of running calls, as it changes.
    pub fn watch_running(&self) -> watch::Receiver<usize> {
        self.running.subscribe()
    }

    /// Cancels every running call (shutdown).
    pub fn cancel_all(&self) {
        for call in self.lock().values() {
            call.cancel.cancel();
        }
    }

    /// Forgets calls that finished more than `RETAIN_FINISHED` ago.
    pub fn evict_old(&self) {
        self.lock().retain(|_, call| {
            call.lock()
                .finished_at
                .is_none_or(|at| at.elapsed() < RETAIN_FINISHED)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn accepted() -> v1::Accepted {
        v1::Accepted {
            agent_id: "a".into(),
            attached: false,
        }
    }

    #[tokio::test]
    async fn the_last_follower_leaving_cancels_a_running_call() {
        let calls = Calls::default();
        let Start::New(call) = calls.start("c", 1, accepted()) else {
            panic!("a new call")
        };
        let first = call.follow(0);
        let second = call.follow(0);
        drop(first);
        assert!(!call.cancel.is_cancelled());
        drop(second);
        assert!(call.cancel.is_cancelled());
    }

    #[tokio::test]
    async fn a_finished_call_is_replayed_whole_and_not_cancelled() {
        let calls = Calls::default();
        let Start::New(call) = calls.start("c", 1, accepted()) else {
            panic!("a new call")
        };
        calls.finish(&call, v1::Finished::default());
        let events: Vec<_> = call.follow(0).collect().await;
        assert_eq!(events.len(), 2);
        assert!(!call.cancel.is_cancelled());
        assert!(matches!(
            calls.start("c", 1, accepted()),
            Start::Existing(_)
        ));
    }

    #[tokio::test]
    async fn a_call_cancelled_before_it_arrived_never_starts() {
        let calls = Calls::default();
        assert!(calls.cancel_unknown("late", accepted(), v1::Finished::default()));
        assert!(matches!(
            calls.start("late", 1, accepted()),
            Start::Existing(_)
        ));
        assert_eq!(calls.running(), 0);
        // A known call is not replaced.
        let Start::New(_) = calls.start("known", 1, accepted()) else {
            panic!("a new call")
        };
        assert!(!calls.cancel_unknown("known", accepted(), v1::Finished::default()));
    }

    #[tokio::test]
    async fn capacity_counts_only_running_calls() {
        let calls = Calls::default();
        let Start::New(call) = calls.start("a", 1, accepted()) else {
            panic!("a new call")
        };
        assert!(matches!(
            calls.start("b", 1, accepted()),
            Start::Full { running: 1 }
        ));
        calls.finish(&call, v1::Finished::default());
        assert!(matches!(calls.start("b", 1, accepted()), Start::New(_)));
    }

    #[tokio::test]
    async fn a_waiter_sees_the_last_call_finish_even_if_it_finished_first() {
        let calls = Calls::default();
        let Start::New(call) = calls.start("a", 1, accepted()) else {
            panic!("a new call")
        };
        let mut running = calls.watch_running();
        assert_eq!(*running.borrow(), 1);
        // The call ends before the waiter starts waiting: the count is not missed.
        calls.finish(&call, v1::Finished::default());
        tokio::time::timeout(Duration::from_secs(5), running.wait_for(|n| *n == 0))
            .await
            .expect("the waiter sees zero")
            .unwrap();
    }
}
