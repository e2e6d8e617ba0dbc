//! `mcpfier certs`: a small CA for the fleet's mutual TLS.
//!
//! `init` makes `ca.pem` and `ca.key` in a directory; `issue` signs a key pair for a
//! coordinator or an agent, with the URI SAN `spiffe://mcpfier/<role>/<name>` that peers check,
//! plus any host names or IP addresses given. Keys are ECDSA P-256 and written mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mcpfier_common::tls::{self, Identity, Role, valid_name};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The CA's certificate file name inside a certs directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key file name inside a certs directory (written mode 0600).
pub const CA_KEY: &str = "ca.key";

/// Writes `contents` to a new file `path` with `mode`; with `force`, replaces it.
pub(crate) fn write_new(path: &Path, contents: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; pass --force to replace it",
                path.display()
            )
        } else {
            anyhow::anyhow!("create {}: {e}", path.display())
        }
    })?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// Creates a CA in `dir`; returns the paths of its certificate and key.
pub fn init(dir: &Path, days: u32, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let key = KeyPair::generate().context("generate the CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mcpfier CA");
    dn.push(DnType::OrganizationName, "mcpfier");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days.into());
    let cert = params
        .self_signed(&key)
        .context("sign the CA certificate")?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    write_new(&key_path, &key.serialize_pem(), 0o600, force)?;
    write_new(&cert_path, &cert.pem(), 0o644, force)?;
    Ok((cert_path, key_path))
}

/// What `issue` makes.
pub struct Request<'a> {
    /// The certs directory: holds the CA made by [`init`] and gets the new files.
    pub dir: &'a Path,
    /// Whether the certificate is for a coordinator or an agent.
    pub role: Role,
    /// The agent id or coordinator name; also the files' base name.
    pub name: &'a str,
    /// Extra subject alternative names: each an IP address or a DNS host name.
    pub sans: &'a [String],
    /// Labels the certificate vouches for (agents only), `(key, value)`.
    pub labels: &'a [(String, String)],
    /// Validity in days from now.
    pub days: u32,
    /// Overwrite existing `<name>.pem` and `<name>.key` instead of failing.
    pub force: bool,
}

/// Issues a certificate and key; returns their paths (`<name>.pem`, `<name>.key` in `dir`).
pub fn issue(req: &Request) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !valid_name(req.name) {
        bail!(
            "`{}` is not a valid name: use 1-128 characters of A-Z a-z 0-9 - _ .",
            req.name
        );
    }
    let ca_cert = fs::read_to_string(req.dir.join(CA_CERT)).with_context(|| {
        format!(
            "read {} (create a CA first with `mcpfier certs init --dir {}`)",
            req.dir.join(CA_CERT).display(),
            req.dir.display()
        )
    })?;
    let ca_key = fs::read_to_string(req.dir.join(CA_KEY))
        .with_context(|| format!("read {}", req.dir.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).context("read the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).context("read the CA certificate")?;

    let identity = Identity::new(req.role, req.name);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name);
    dn.push(DnType::OrganizationalUnitName, req.role.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        identity
            .uri()
            .try_into()
            .context("encode the identity URI")?,
    )];
    for (key, value) in req.labels {
        if req.role != Role::Agent {
            bail!("--label is for agent certificates: only agents are placed by labels");
        }
        if !tls::valid_label_part(key) || !tls::valid_label_part(value) {
            bail!(
                "label `{key}={value}`: keys and values are 1-63 characters of A-Z a-z 0-9 - _ ."
            );
        }
        params.subject_alt_names.push(SanType::URI(
            tls::label_uri(key, value)
                .try_into()
                .context("a label URI")?,
        ));
    }
    for san in req.sans {
        let entry =
            match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.as_str().try_into().with_context(|| {
                    format!("`{san}` is neither an IP address nor a host name")
                })?),
            };
        params.subject_alt_names.push(entry);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(req.days.into());
    let key = KeyPair::generate().context("generate the key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("sign the certificate")?;
    let cert_path = req.dir.join(format!("{}.pem", req.name));
    let key_path = req.dir.join(format!("{}.key", req.name));
    write_new(&key_path, &key.serialize_pem(), 0o600, req.force)?;
    write_new(&cert_path, &cert.pem(), 0o644, req.force)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpfier_common::tls::{TlsFiles, load};

    #[test]
    fn issued_certificates_carry_their_identity_and_load() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 30, false).unwrap();
        let (cert, key) = issue(&Request {
            dir: dir.path(),
            role: Role::Agent,
            name: "agent-1",
            sans: &["127.0.0.1".into(), "agent-1.example".into()],
            labels: &[],
            days: 1,
            force: false,
        })
        .unwrap();
        let material = load(&TlsFiles {
            ca: dir.path().join(CA_CERT),
            cert,
            key,
        })
        .unwrap();
        assert_eq!(material.identity, Identity::new(Role::Agent, "agent-1"));
        let mode = fs::metadata(dir.path().join("agent-1.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn labels_go_into_agent_certificates_only_and_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 30, false).unwrap();
        let request = |role, name, labels: &[(String, String)]| {
            issue(&Request {
                dir: dir.path(),
                role,
                name,
                sans: &[],
                labels,
                days: 1,
                force: true,
            })
        };
        let labels = [
            ("pool".to_owned(), "secrets".to_owned()),
            ("region".to_owned(), "eu-west".to_owned()),
        ];
        let (cert, key) = request(Role::Agent, "vault-1", &labels).unwrap();
        let material = load(&TlsFiles {
            ca: dir.path().join(CA_CERT),
            cert,
            key,
        })
        .unwrap();
        // The identity is still the one URI SAN of its kind.
        assert_eq!(material.identity, Identity::new(Role::Agent, "vault-1"));
        let read = tls::certified_labels(&material.chain[0]);
        assert_eq!(read, labels.into_iter().collect());
        let err = request(Role::Coordinator, "c", &[("pool".into(), "x".into())]).unwrap_err();
        assert!(err.to_string().contains("for agent certificates"), "{err}");
        let err = request(Role::Agent, "a", &[("pool".into(), "a b".into())]).unwrap_err();
        assert!(err.to_string().contains("1-63 characters"), "{err}");
    }

    #[test]
    fn nothing_is_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 30, false).unwrap();
        let err = init(dir.path(), 30, false).unwrap_err().to_string();
        assert!(err.contains("already exists; pass --force"), "{err}");
        init(dir.path(), 30, true).unwrap();
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(&Request {
            dir: dir.path(),
            role: Role::Coordinator,
            name: "c",
            sans: &[],
            labels: &[],
            days: 1,
            force: false,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("mcpfier certs init"), "{err:#}");
    }
}
