//! Certificate directories made with the real `mcpfier certs` commands.

use std::path::{Path, PathBuf};

use crate::process::mcpfier_cli;

/// A certificate directory made with `mcpfier certs`.
pub struct Certs {
    /// The directory with `ca.pem`, `ca.key` and the issued `<name>.pem`/`.key` files.
    pub dir: PathBuf,
}

impl Certs {
    /// Creates a CA in `dir`.
    pub fn init(dir: &Path) -> Certs {
        let (code, out, err) = mcpfier_cli(&["certs", "init", "--dir", dir.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "certs init failed: {out}{err}");
        Certs {
            dir: dir.to_owned(),
        }
    }

    /// Issues `name.pem`/`name.key` for `role` (`agent` or `coordinator`).
    pub fn issue(&self, role: &str, name: &str) {
        self.issue_with(role, name, &[]);
    }

    /// Like [`Certs::issue`], with more `mcpfier certs issue` arguments (e.g. `--label`).
    pub fn issue_with(&self, role: &str, name: &str, extra: &[&str]) {
        let dir = self.dir.to_str().unwrap();
        let mut args = vec![
            "certs",
            "issue",
            "--dir",
            dir,
            "--role",
            role,
            "--name",
            name,
            "--san",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = mcpfier_cli(&args, &[]);
        assert_eq!(code, 0, "certs issue failed: {out}{err}");
    }

    /// The YAML `tls:` value for `name`'s files.
    pub fn tls_yaml(&self, name: &str) -> String {
        let d = self.dir.display();
        format!("{{ca: {d}/ca.pem, cert: {d}/{name}.pem, key: {d}/{name}.key}}")
    }
}
