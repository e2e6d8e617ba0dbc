//! A real etcd (Debian's etcd-server) on free loopback ports with its own data dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::http::{free_port, http_request};
use crate::process::{Process, wait_for};

/// A real etcd (Debian's etcd-server) on free loopback ports with its own data dir.
pub struct EtcdServer {
    /// The etcd process, `None` while the test has it stopped.
    pub process: Option<Process>,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    args: Vec<String>,
    dir: PathBuf,
    /// `host:port` serving `/health` over plain HTTP.
    health: String,
}

impl EtcdServer {
    /// Starts etcd with its data in `dir`/etcd and waits until it answers `/health`.
    pub fn start(dir: &Path) -> EtcdServer {
        Self::start_with(dir, None)
    }

    /// Starts etcd serving clients over TLS only, requiring client certificates signed by
    /// `certs` (its own CA, not the fleet's); `/health` is served over plain HTTP on a port
    /// of its own. Auth is not enabled yet: see [`EtcdServer::enable_auth`].
    pub fn start_tls(dir: &Path, certs: &EtcdCerts) -> EtcdServer {
        Self::start_with(dir, Some(certs))
    }

    fn start_with(dir: &Path, certs: Option<&EtcdCerts>) -> EtcdServer {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "no etcd at /usr/bin/etcd: run `cargo xtask test` (it installs Debian's etcd-server)"
        );
        let client = free_port();
        let peer = free_port();
        let data = dir.join("etcd");
        let scheme = if certs.is_some() { "https" } else { "http" };
        let mut args = vec![
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            format!("{scheme}://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("{scheme}://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("test=http://127.0.0.1:{peer}"),
        ];
        let mut health = format!("127.0.0.1:{client}");
        if let Some(certs) = certs {
            let metrics = free_port();
            health = format!("127.0.0.1:{metrics}");
            let d = certs.dir.display();
            args.extend([
                "--cert-file".into(),
                format!("{d}/server.pem"),
                "--key-file".into(),
                format!("{d}/server.key"),
                "--trusted-ca-file".into(),
                format!("{d}/ca.pem"),
                "--client-cert-auth".into(),
                "--listen-metrics-urls".into(),
                format!("http://{health}"),
            ]);
        }
        let mut server = EtcdServer {
            process: None,
            endpoint: format!("{scheme}://127.0.0.1:{client}"),
            args,
            dir: dir.to_owned(),
            health,
        };
        server.restart();
        server
    }

    /// Starts (again) with the same ports and data.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args(&self.args);
        self.process = Some(Process::start(cmd, &self.dir.join("etcd.cfg"), "etcd"));
        let addr = self.health.clone();
        let healthy = wait_for(Duration::from_secs(30), || {
            let (status, body) = http_request(&addr, "GET", "/health", &[], "").ok()?;
            (status == 200 && body.contains("true")).then_some(())
        });
        assert!(
            healthy.is_some(),
            "etcd did not become healthy:\n{}",
            self.process
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default()
        );
    }

    /// Stops it (SIGTERM); data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The YAML `etcd:` value for `prefix`.
    pub fn yaml(&self, prefix: &str) -> String {
        format!("{{endpoints: [\"{}\"], prefix: {prefix}}}", self.endpoint)
    }
}

/// etcd's own CA (never the fleet's), its server certificate and client certificates, made
/// with rcgen; etcd maps a client certificate's CN to a user.
pub struct EtcdCerts {
    /// Holds `ca.pem`, `server.pem`/`server.key` and `<cn>.pem`/`<cn>.key`.
    pub dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl EtcdCerts {
    /// A CA and a server certificate for 127.0.0.1 in `dir`.
    pub fn new(dir: &Path) -> EtcdCerts {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let certs = EtcdCerts {
            dir: dir.to_owned(),
            ca: rcgen::Issuer::new(params, key),
        };
        certs.issue("server", &["127.0.0.1"]);
        certs
    }

    /// Issues `<cn>.pem`/`<cn>.key` with common name `cn` (and IP SANs `ips`).
    pub fn issue(&self, cn: &str, ips: &[&str]) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = ips
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(ip.parse().unwrap()))
            .collect();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.key")), key.serialize_pem()).unwrap();
    }

    /// The YAML `tls:` value for client `cn`.
    pub fn tls_yaml(&self, cn: &str) -> String {
        let d = self.dir.display();
        format!("{{ca: {d}/ca.pem, cert: {d}/{cn}.pem, key: {d}/{cn}.key}}")
    }

    /// The access of client `cn`, with a user name and password when given.
    pub fn access(
        &self,
        cn: &str,
        user: Option<(&str, &str)>,
    ) -> mcpfier_common::membership::Access {
        mcpfier_common::membership::Access {
            tls: Some(mcpfier_common::tls::TlsFiles {
                ca: self.dir.join("ca.pem"),
                cert: self.dir.join(format!("{cn}.pem")),
                key: self.dir.join(format!("{cn}.key")),
            }),
            username: user.map(|(u, _)| u.to_owned()),
            password: user.map(|(_, p)| mcpfier_common::secret::Secret::new(p.to_owned())),
        }
    }
}
