//! The agent's listener: TCP, then a TLS 1.3 handshake that requires a coordinator-role client
//! certificate, then gRPC. The TLS configuration can be swapped at run time (SIGHUP reloads
//! the certificate files) without dropping established connections.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use mcpfier_common::tls::{self, Role, TlsFiles};
use mcpfier_proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::service::AgentService;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration in force, replaceable while serving.
#[derive(Clone)]
pub struct TlsState {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsState {
    /// Loads the files; fails if they are unusable.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let config = Self::build(&files)?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(config)),
        })
    }

    fn build(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
        let material = tls::load(files)?;
        Ok(tls::server_config(&material, Role::Coordinator)?)
    }

    /// Reads the files again; on failure the old configuration stays in force.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Self::build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Binds `listen`; returns the listener and the address it got (for port 0).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let local = listener.local_addr().context("read the bound address")?;
    Ok((listener, local))
}

/// Serves gRPC over mutual TLS until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: TlsState,
    service: AgentService,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept_shutdown = shutdown.clone();
    // The accept loop and the handshakes in flight; all end with `shutdown` (a handshake
    // within its timeout).
    let tasks = TaskTracker::new();
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        while let Some((tcp, peer)) = mcpfier_common::net::accept(&listener, &accept_shutdown).await
        {
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    info!("serving gRPC over mutual TLS");
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            AgentServer::new(service)
                .max_decoding_message_size(mcpfier_proto::MAX_MESSAGE)
                .max_encoding_message_size(mcpfier_proto::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown.cancelled())
        .await
        .context("serve gRPC");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    served
}
