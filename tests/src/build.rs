//! Where things are and how they are built: the workspace, the `mcpfier` and
//! `mcpfier-agent` binaries (built once per test run), and the Python with the MCP SDK.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Python package the tests drive mcpfier with.
pub const MCP_PYPI_PIN: &str = "mcp==2.3.0";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn build_binaries() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let args = [
            "build",
            "--quiet",
            "-p",
            "mcpfier-coordinator",
            "-p",
            "mcpfier-agent",
            "--bins",
        ];
        let status = Command::new(cargo)
            .args(args)
            .current_dir(workspace())
            .status()
            .expect("run cargo build for the mcpfier binaries");
        assert!(
            status.success(),
            "cargo build of the mcpfier binaries failed"
        );
        target_dir().join("debug")
    })
}

/// The `mcpfier` binary, built (once per test run) from this checkout.
pub fn mcpfier() -> PathBuf {
    build_binaries().join("mcpfier")
}

/// The `mcpfier-agent` binary, built with `mcpfier`.
pub fn mcpfier_agent() -> PathBuf {
    build_binaries().join("mcpfier-agent")
}

/// The Python interpreter of the venv that has the official MCP SDK.
pub fn python() -> PathBuf {
    let python = std::env::var_os("MCPFIER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("mcp-venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with the MCP SDK at {}: run `cargo xtask test`, which creates it \
         (or: python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install {MCP_PYPI_PIN} \
         opentelemetry-proto grpcio)",
        python.display()
    );
    python
}
