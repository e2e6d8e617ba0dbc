//! What the server holds open for its clients: TCP connections (a cap, and an idle timeout)
//! and how to tell that a request is still being answered (a response body that has not
//! ended).
//!
//! Invariants: a connection counts as busy from the moment its request reaches the router
//! until the response body ends or is dropped, so a long call or an open SSE stream is never
//! idle; at the cap, room is made only by closing a connection with nothing in flight.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

/// Something in flight (a connection's request, a session's call): counted up while held.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the last in-flight thing ended, as milliseconds since `epoch`.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Nothing in flight, idle since now.
    pub fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Counts one more thing in flight until the returned guard drops.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Hold(self.clone())
    }

    /// How long it has had nothing in flight (`None` while something is).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    fn stamp(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }
}

/// A hold on an [`Activity`]; dropping it ends the thing in flight.
#[derive(Debug)]
pub struct Hold(Arc<Activity>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.stamp();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps holds until it ends or is dropped.
struct HeldBody {
    inner: Body,
    _holds: Vec<Hold>,
}

impl http_body::Body for HeldBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `response` with `holds` kept until its body ends.
pub fn hold_until_sent(response: Response, holds: Vec<Hold>) -> Response {
    if holds.is_empty() {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(HeldBody {
            inner: body,
            _holds: holds,
        }),
    )
}

/// The connection a request came on (an extension the accept loop adds).
#[derive(Debug, Clone)]
pub struct ConnOf(pub Arc<Activity>);

/// Marks the request's connection busy until its response has been sent.
pub async fn busy_while_answering(req: Request, next: Next) -> Response {
    let hold = req.extensions().get::<ConnOf>().map(|c| c.0.hold());
    let response = next.run(req).await;
    hold_until_sent(response, hold.into_iter().collect())
}

struct Entry {
    activity: Arc<Activity>,
    close: CancellationToken,
}

/// The open connections, against `server.limits.connections`.
pub struct Conns {
    cap: usize,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

/// A registered connection: its activity, the token that asks it to close, and its slot
/// (freed on drop).
pub struct Slot {
    /// Its requests in flight.
    pub activity: Arc<Activity>,
    /// Cancelled when it should close.
    pub close: CancellationToken,
    id: u64,
    conns: Arc<Conns>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl Conns {
    /// At most `cap` open at once.
    pub fn new(cap: usize) -> Arc<Conns> {
        Arc::new(Conns {
            cap,
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection. At the cap, the connection idle the longest is asked to
    /// close and its place taken; with none idle, `None`: the new connection must be closed.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        if open.len() >= self.cap {
            let idlest = open
                .iter()
                .filter_map(|(id, e)| e.activity.idle_for().map(|d| (d, *id)))
                .max()
                .map(|(_, id)| id)?;
            if let Some(e) = open.remove(&idlest) {
                e.close.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let close = CancellationToken::new();
        open.insert(
            id,
            Entry {
                activity: activity.clone(),
                close: close.clone(),
            },
        );
        Some(Slot {
            activity,
            close,
            id,
            conns: self.clone(),
        })
    }

    /// How many are open.
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Resolves once `activity` has had nothing in flight for `idle`.
pub async fn idle(activity: &Activity, idle: Duration) {
    loop {
        let wait = match activity.idle_for() {
            Some(d) if d >= idle => return,
            Some(d) => idle - d,
            // Busy: look again after a while (a hold's end does not wake this).
            None => idle.min(Duration::from_secs(1)),
        };
        tokio::time::sleep(wait).await;
    }
}

/// The most connections the process's file descriptors allow, leaving room for everything
/// else it opens (files, etcd, agents, children's pipes).
pub fn fd_room() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => (soft as usize).saturating_sub(256).max(64),
        Err(_) => 1024 - 256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_idlest_connection_makes_room_and_a_busy_one_never_does() {
        let conns = Conns::new(2);
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        let busy_a = a.activity.hold();
        let _busy_b = b.activity.hold();
        assert!(conns.admit().is_none(), "every connection is busy");
        drop(busy_a);
        let c = conns.admit().expect("a is idle now");
        assert!(a.close.is_cancelled() && !b.close.is_cancelled());
        assert_eq!(conns.count(), 2);
        drop(c);
        assert_eq!(conns.count(), 1);
    }
}
