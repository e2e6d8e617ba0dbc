//! The harness for mcpfier's integration tests: builds and starts the real binaries, drives
//! them with the official MCP Python SDK (`tests/py/mcp_driver.py`), and cleans up after
//! itself (SIGTERM, then SIGKILL, on drop).
//!
//! Each test gets its own temp dir, its own port (the coordinator binds port 0 and the harness
//! reads the bound address from its log), and a log file per process.

#![forbid(unsafe_code)]

mod agent;
mod build;
mod certs;
mod coordinator;
mod docker;
mod etcd;
mod http;
mod mcp_client;
mod process;

pub use agent::*;
pub use build::*;
pub use certs::*;
pub use coordinator::*;
pub use docker::*;
pub use etcd::*;
pub use http::*;
pub use mcp_client::*;
pub use process::*;
