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
}

impl EtcdServer {
    /// Starts etcd with its data in `dir`/etcd and waits until it answers `/health`.
    pub fn start(dir: &Path) -> EtcdServer {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "no etcd at /usr/bin/etcd: run `cargo xtask test` (it installs Debian's etcd-server)"
        );
        let client = free_port();
        let peer = free_port();
        let data = dir.join("etcd");
        let args = vec![
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("test=http://127.0.0.1:{peer}"),
        ];
        let mut server = EtcdServer {
            process: None,
            endpoint: format!("http://127.0.0.1:{client}"),
            args,
            dir: dir.to_owned(),
        };
        server.restart();
        server
    }

    /// Starts (again) with the same ports and data.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args(&self.args);
        self.process = Some(Process::start(cmd, &self.dir.join("etcd.cfg"), "etcd"));
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
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
