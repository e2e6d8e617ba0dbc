//! One gRPC channel per agent: a lazily connected HTTP/2 connection over TLS whose verifier
//! checks that agent's identity, and the text of a failed status with its causes.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// Whether a failed call never left this process: the connection to the agent could not be
/// made, so no byte of the request reached it. Anything else may have reached it.
pub(super) fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A status with the chain of causes behind it (TLS refusals hide in there).
pub(super) fn status_text(status: &tonic::Status) -> String {
    let mut text = without_links(status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = without_links(&cause.to_string());
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` without the documentation links some libraries append to their messages
/// (rustls: "...close_notify: https://docs.rs/..."): an error for an operator says what
/// happened, not where a library's manual is.
fn without_links(text: &str) -> String {
    match text.find("https://docs.rs/") {
        Some(at) => text[..at].trim_end_matches([' ', ':']).to_owned(),
        None => text.to_owned(),
    }
}

/// A lazily connecting gRPC channel to `address` over TLS with `config`: one HTTP/2
/// connection, re-established when it breaks.
pub fn channel(
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    address: &str,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    let connector = TlsConnector::from(config);
    let address_for_dial = address.to_owned();
    let dial = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let address = address_for_dial.clone();
        async move {
            // TCP and TLS together within the timeout, so a peer that accepts TCP and never
            // speaks TLS (a tarpit) fails as a connect error: the call certainly never left.
            let dial = async {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                // The name is not checked: the verifier checks the agent's identity instead.
                let name = ServerName::try_from("agent.mcpfier.invalid").expect("a valid DNS name");
                connector.connect(name, tcp).await
            };
            let tls = tokio::time::timeout(connect_timeout, dial)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no TLS connection within {}",
                            humantime::format_duration(connect_timeout)
                        ),
                    )
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(dial))
}

#[cfg(test)]
mod tests {
    #[test]
    fn documentation_links_are_cut_from_error_text() {
        assert_eq!(
            super::without_links(
                "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/x"
            ),
            "peer closed connection without sending TLS close_notify"
        );
        assert_eq!(super::without_links("plain"), "plain");
    }
}
