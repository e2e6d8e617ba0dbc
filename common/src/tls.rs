//! Mutual TLS between coordinator and agents: identities, PEM loading, and rustls configs
//! that check them.
//!
//! Every certificate carries one URI SAN `spiffe://mcpfier/<role>/<name>`. An agent (server)
//! accepts only clients with the coordinator role; a coordinator (client) accepts only a
//! server with the agent role and the exact name it expects for that address. Chains must lead
//! to the configured CA and be within their validity period. TLS 1.3 only, ring only.
//!
//! The MCP front door (`server.tls`) is the one exception: a public HTTPS server for MCP
//! clients, with an ordinary web certificate, no client certificate, and TLS 1.2 or 1.3
//! ([`https_config`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The URI prefix of every mcpfier identity.
pub const SPIFFE_PREFIX: &str = "spiffe://mcpfier/";

/// The URI SAN prefix of a label the certificate vouches for: `urn:mcpfier:label:KEY=VALUE`.
pub const LABEL_PREFIX: &str = "urn:mcpfier:label:";

/// Labels a certificate vouches for, by key.
pub type CertifiedLabels = std::collections::BTreeMap<String, String>;

/// Where a client verifier records the labels of the last agent certificate it accepted.
pub type LabelSlot = Arc<std::sync::RwLock<Option<CertifiedLabels>>>;

/// Whether `s` can be a label key or value: 1-63 of `A-Z a-z 0-9 - _ .`.
pub fn valid_label_part(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The URI SAN that vouches for label `key=value`.
pub fn label_uri(key: &str, value: &str) -> String {
    format!("{LABEL_PREFIX}{key}={value}")
}

/// The labels a DER certificate vouches for (its `urn:mcpfier:label:` URI SANs); malformed
/// entries are ignored, and a key given twice vouches for nothing.
pub fn certified_labels(der: &[u8]) -> CertifiedLabels {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertifiedLabels::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return CertifiedLabels::new();
    };
    let mut labels = CertifiedLabels::new();
    let mut twice = Vec::new();
    for name in &san.value.general_names {
        let x509_parser::extensions::GeneralName::URI(u) = name else {
            continue;
        };
        let Some((k, v)) = u
            .strip_prefix(LABEL_PREFIX)
            .and_then(|kv| kv.split_once('='))
        else {
            continue;
        };
        if valid_label_part(k) && valid_label_part(v) && labels.insert(k.into(), v.into()).is_some()
        {
            twice.push(k.to_owned());
        }
    }
    for k in twice {
        labels.remove(&k);
    }
    labels
}

/// What a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A coordinator: the gRPC client that dispatches calls.
    Coordinator,
    /// An agent: the gRPC server that runs calls.
    Agent,
}

impl Role {
    /// The role as it appears in identity URIs and config: `coordinator` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer's identity: its role and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Whether the peer is a coordinator or an agent.
    pub role: Role,
    /// The agent id or coordinator name; see [`valid_name`].
    pub name: String,
}

impl Identity {
    /// The identity `role` / `name`; `name` is not checked here.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            role,
            name: name.into(),
        }
    }

    /// `spiffe://mcpfier/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_PREFIX}{}/{}", self.role, self.name)
    }

    /// Reads a `spiffe://mcpfier/<role>/<name>` URI.
    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "coordinator" => Role::Coordinator,
            "agent" => Role::Agent,
            _ => return None,
        };
        valid_name(name).then(|| Identity::new(role, name))
    }

    /// The identity in a DER certificate's URI SANs.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Identity(format!("the certificate does not parse: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Identity(format!("its subjectAltName does not parse: {e}")))?;
        let uris = san.into_iter().flat_map(|ext| {
            ext.value.general_names.iter().filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        });
        let ids: Vec<Identity> = uris.filter_map(|u| Identity::parse_uri(&u)).collect();
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::Identity(format!(
                "the certificate has no `{SPIFFE_PREFIX}<role>/<name>` URI SAN (issue it with `mcpfier certs issue`)"
            ))),
            _ => Err(Error::Identity(
                "the certificate has more than one mcpfier identity".into(),
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.role, self.name)
    }
}

/// Whether `name` can be an identity name (agent ids, coordinator names).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The PEM files of one side of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate(s) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This side's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the config file's directory).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or held nothing usable, or the leaf's identity is bad.
    #[error("read {what} from {path}: {why}")]
    Read {
        /// Which material, e.g. `the CA certificate`, `the private key`.
        what: &'static str,
        /// The file it was read from.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A certificate does not parse, or does not carry exactly one mcpfier identity URI SAN.
    #[error("{0}")]
    Identity(String),
    /// rustls rejected the material, e.g. the key does not fit the certificate.
    #[error("build the TLS configuration: {0}")]
    Config(String),
}

/// Loaded PEM material.
pub struct Material {
    /// The CA certificates peers must chain to.
    pub roots: Arc<RootCertStore>,
    /// This side's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This side's private key.
    pub key: PrivateKeyDer<'static>,
    /// The identity in this side's own certificate.
    pub identity: Identity,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn read_err(what: &'static str, path: &Path, why: impl fmt::Display) -> Error {
    Error::Read {
        what,
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// Reads the CA, certificate and key named by `files`.
pub fn load(files: &TlsFiles) -> Result<Material, Error> {
    let mut roots = RootCertStore::empty();
    let cas: Vec<_> = CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| read_err("the CA certificate", &files.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("the CA certificate", &files.ca, e))?;
    if cas.is_empty() {
        return Err(read_err(
            "the CA certificate",
            &files.ca,
            "no certificate in the file",
        ));
    }
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| read_err("the CA certificate", &files.ca, e))?;
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| read_err("the certificate", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("the certificate", &files.cert, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| read_err("the certificate", &files.cert, "no certificate in the file"))?;
    let identity = Identity::of_certificate(leaf)
        .map_err(|e| read_err("the certificate's identity", &files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| read_err("the private key", &files.key, e))?;
    Ok(Material {
        roots: Arc::new(roots),
        chain,
        key,
        identity,
    })
}

/// Reads an HTTPS certificate chain and its private key (PEM) and checks that they fit.
pub fn load_server_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err("the certificate", cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("the certificate", cert, e))?;
    if chain.is_empty() {
        return Err(read_err(
            "the certificate",
            cert,
            "no certificate in the file",
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err("the private key", key, e))?;
    let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        Error::Config(format!(
            "the certificate {} and the key {} do not fit together: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// The MCP front door's HTTPS config: TLS 1.2 or 1.3, no client certificate, ALPN `h2` and
/// `http/1.1`, the certificate from `resolver` at each handshake (so it can be replaced
/// while serving).
pub fn https_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn identity_failure(message: String) -> rustls::Error {
    #[derive(Debug)]
    struct Mismatch(String);
    impl fmt::Display for Mismatch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Mismatch {}
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Mismatch(
        message,
    )))))
}

/// Checks a client certificate chain, then that the client has `role`.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity =
            Identity::of_certificate(end_entity).map_err(|e| identity_failure(e.to_string()))?;
        if identity.role != self.role {
            return Err(identity_failure(format!(
                "client is {identity}, but only the {} role may connect",
                self.role
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a server certificate chain, then that the server is exactly `expected`. Host names
/// are not used: the identity is the URI SAN.
#[derive(Debug)]
struct IdentityServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: Identity,
    labels: Option<LabelSlot>,
}

impl ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let identity =
            Identity::of_certificate(end_entity).map_err(|e| identity_failure(e.to_string()))?;
        if identity != self.expected {
            return Err(identity_failure(format!(
                "server is {identity}, expected {}",
                self.expected
            )));
        }
        if let Some(slot) = &self.labels {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(certified_labels(end_entity));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 server config that requires a client certificate with role `accept`.
pub fn server_config(material: &Material, accept: Role) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
    let verifier = Arc::new(RoleClientVerifier {
        inner,
        role: accept,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(|e| Error::Config(format!("the certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS 1.3 client config that presents this side's certificate and accepts only a server
/// that is exactly `expected`.
pub fn client_config(material: &Material, expected: Identity) -> Result<Arc<ClientConfig>, Error> {
    client_config_from(
        material.roots.clone(),
        Some((material.chain.clone(), material.key.clone_key())),
        expected,
    )
}

/// Like [`client_config`]; each accepted handshake also records the labels the agent's
/// certificate vouches for in `labels`.
pub fn client_config_recording(
    material: &Material,
    expected: Identity,
    labels: LabelSlot,
) -> Result<Arc<ClientConfig>, Error> {
    build_client_config(
        material.roots.clone(),
        Some((material.chain.clone(), material.key.clone_key())),
        expected,
        Some(labels),
    )
}

/// Like [`client_config`], from parts; `cert` is `None` for a client without a certificate.
pub fn client_config_from(
    roots: Arc<RootCertStore>,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    expected: Identity,
) -> Result<Arc<ClientConfig>, Error> {
    build_client_config(roots, cert, expected, None)
}

fn build_client_config(
    roots: Arc<RootCertStore>,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    expected: Identity,
    labels: Option<LabelSlot>,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier = Arc::new(IdentityServerVerifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
        expected,
        labels,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Config(format!("the certificate and key do not fit: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_uris() {
        let id = Identity::new(Role::Agent, "agent-eu-1");
        assert_eq!(id.uri(), "spiffe://mcpfier/agent/agent-eu-1");
        assert_eq!(Identity::parse_uri(&id.uri()), Some(id));
        assert_eq!(Identity::parse_uri("spiffe://mcpfier/root/x"), None);
        assert_eq!(Identity::parse_uri("spiffe://other/agent/x"), None);
        assert_eq!(Identity::parse_uri("spiffe://mcpfier/agent/a/b"), None);
    }
}
