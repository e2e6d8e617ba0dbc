//! Accept loops: the next connection of a listener, or the end of serving.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The next accepted connection, with `TCP_NODELAY` set (small writes must not wait for
/// the peer's delayed ACK), or `None` once `shutdown` is cancelled. A failed accept (out of
/// descriptors, say) is logged and retried after a moment, rather than spun on.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.cancelled() => return None,
        }
    }
}
