//! The harness for mcpfier's integration tests: builds and starts the real binaries, drives
//! them with the official MCP Python SDK (`tests/py/mcp_driver.py`), and cleans up after
//! itself (SIGTERM, then SIGKILL, on drop).
//!
//! Each test gets its own temp dir, its own port (the coordinator binds port 0 and the harness
//! reads the bound address from its log), and a log file per process.
//!
//! One module per role: `build` (the binaries and the Python), `process` (temp dirs, processes,
//! deadlines), `coordinator`, `agent`, `certs`, `etcd`, `mcp_client` (the Python MCP driver),
//! `http`, `docker`, `prometheus` (a real Prometheus scraping them), `otlp` (a real OTLP
//! trace receiver), `browser` (a real headless Chromium) and `proxy` (a TCP relay
//! that stalls or cuts connections on demand).
//! Everything is re-exported here, so tests name `mcpfier_tests::X`.

#![forbid(unsafe_code)]

mod agent;
mod browser;
mod build;
mod certs;
mod coordinator;
mod docker;
mod etcd;
mod http;
mod mcp_client;
mod otlp;
mod process;
mod prometheus;
mod proxy;

pub use agent::Agent;
pub use browser::Browser;
pub use build::{MCP_PYPI_PIN, mcpfier, mcpfier_agent, python, workspace};
pub use certs::Certs;
pub use coordinator::{Coordinator, Guarded};
pub use docker::{
    TEST_IMAGE, TEST_IMAGE_WITHOUT_TMP, containers_with_label, test_image, test_image_without_tmp,
};
pub use etcd::{EtcdCerts, EtcdServer};
pub use http::{Reply, free_port, get_json, http_exchange, http_request};
pub use mcp_client::{
    StdioRun, drive_http, drive_http_as, drive_http_ok_as, drive_http_raw, drive_stdio,
    result_stderr, result_stdout, result_text,
};
pub use otlp::OtlpReceiver;
pub use process::{
    Process, Scratch, alive, assert_all_gone, mcpfier_cli, new_key, read_lines, read_pids, wait_for,
};
pub use prometheus::Prometheus;
pub use proxy::{Direction, Proxy};
