//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `test [ARGS]`: install what the tests need (Debian packages when missing, the official
//!   MCP Python SDK in `target/mcp-venv`), then `cargo test --workspace [ARGS]`.
//! - `example`: serve `examples/mcpfier.yaml` on http://127.0.0.1:8080/mcp.
//! - `bench [ARGS]`: install the benchmark's tools and run `bench/` in release mode.
//! - `chaos [CALLS] [SEED]`: the fault matrix (tests/tests/it/chaos.rs) with CALLS calls
//!   (default 1200); prints the results table kept in docs/chaos.md.
//!
//! Every task exports `PROTOC` from the vendored protoc, so a fresh machine needs nothing
//! installed beforehand.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The official MCP Python SDK the tests drive mcpfier with (keep in step with
/// `mcpfier_tests::MCP_PYPI_PIN`).
const MCP_PYPI_PIN: &str = "mcp==2.3.0";

/// What else the test venv holds: the OpenTelemetry protocol definitions and gRPC, for the
/// tests' OTLP receiver (`tests/py/otlp_receiver.py`).
const OTHER_PYPI_PINS: &[&str] = &["opentelemetry-proto==1.45.2", "grpcio==1.85.3"];

/// Debian packages the tests need, each with a file that shows it is installed.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("etcd-server", "/usr/bin/etcd"),
    // The container tests import a root filesystem around it as their image.
    ("busybox-static", "/bin/busybox"),
    // The metrics tests scrape the binaries with a real Prometheus.
    ("prometheus", "/usr/bin/prometheus"),
    // The dashboard tests load /ui in a real headless browser.
    ("chromium", "/usr/bin/chromium"),
];

/// Debian packages the benchmark needs.
const BENCH_PACKAGES: &[(&str, &str)] =
    &[("wrk", "/usr/bin/wrk"), ("etcd-server", "/usr/bin/etcd")];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("enter the workspace root")?;
    match task.as_str() {
        "test" => test(&root, &rest),
        "example" => example(&rest),
        "bench" => bench(&root, &rest),
        "chaos" => chaos(&root, &rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 test [ARGS]    install test prerequisites, then cargo test --workspace [ARGS]\n  \
                 example        serve examples/mcpfier.yaml at http://127.0.0.1:8080/mcp\n  \
                 bench [ARGS]   run the benchmark (release build) and print its report\n  \
                 chaos [CALLS] [SEED]  the fault matrix with CALLS calls (default 1200)"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    match protoc_bin_vendored::protoc_bin_path() {
        Ok(protoc) => {
            cmd.env("PROTOC", protoc);
        }
        Err(e) => {
            eprintln!("xtask: no vendored protoc for this platform ({e}); using protoc from PATH")
        }
    }
    cmd
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Installs missing Debian packages with apt-get (as root, or through sudo).
fn apt_install(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt(&["update", "-qq"]), "apt-get update")?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(install, "apt-get install")
        .with_context(|| format!("install {} (the tests need them)", missing.join(" ")))
}

/// Creates `target/mcp-venv` with the pinned MCP SDK and the OTLP receiver's packages,
/// unless it is already there with exactly these pins.
fn python_venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/mcp-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".mcpfier-pin");
    let pins: Vec<&str> = std::iter::once(MCP_PYPI_PIN)
        .chain(OTHER_PYPI_PINS.iter().copied())
        .collect();
    let wanted = pins.join(" ");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("xtask: creating {} with {wanted}", venv.display());
    let mut create = Command::new("python3");
    create.args(["-m", "venv", "--clear"]).arg(&venv);
    run(
        create,
        "python3 -m venv (install python3-venv if it is missing)",
    )?;
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    pip.args(&pins);
    run(
        pip,
        "pip install of the MCP SDK and the OTLP receiver's packages",
    )?;
    std::fs::write(&stamp, wanted).context("write the venv stamp")?;
    Ok(python)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    apt_install(TEST_PACKAGES)?;
    let python = python_venv(root)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"])
        .args(args)
        .env("MCPFIER_TEST_PYTHON", python);
    run(cmd, "cargo test")
}

fn chaos(root: &Path, args: &[String]) -> anyhow::Result<()> {
    apt_install(TEST_PACKAGES)?;
    let python = python_venv(root)?;
    let calls = args.first().map_or("1200", String::as_str);
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "mcpfier-tests",
        "--test",
        "it",
        "--",
        "chaos::",
        "--nocapture",
    ])
    .env("MCPFIER_TEST_PYTHON", python)
    .env("MCPFIER_CHAOS_CALLS", calls);
    if let Some(seed) = args.get(1) {
        cmd.env("MCPFIER_CHAOS_SEED", seed);
    }
    run(cmd, "the chaos suite")
}

fn example(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "mcpfier-coordinator",
        "--bin",
        "mcpfier",
        "--",
    ])
    .args(["--config", "examples/mcpfier.yaml", "serve"])
    .args(args);
    run(cmd, "mcpfier serve")
}

fn bench(root: &Path, args: &[String]) -> anyhow::Result<()> {
    apt_install(BENCH_PACKAGES)?;
    let python = python_venv(root)?;
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "mcpfier-coordinator",
        "-p",
        "mcpfier-agent",
        "-p",
        "mcpfier-bench",
    ]);
    run(build, "release build")?;
    let mut cmd = Command::new(root.join("target/release/mcpfier-bench"));
    cmd.args(args).env("MCPFIER_BENCH_PYTHON", python);
    run(cmd, "the benchmark")
}
