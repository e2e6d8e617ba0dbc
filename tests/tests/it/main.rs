//! mcpfier's integration tests: the real `mcpfier` binary, driven over stdio and Streamable
//! HTTP by the official MCP Python SDK.

mod chaos;
mod cli;
mod container;
mod dashboard;
mod dispatch;
mod embedded;
mod etcd_auth;
mod fleet;
mod front_door;
mod mcp;
mod membership;
mod metrics;
mod paths;
mod policy;
mod server_limits;
mod signed;
mod status;
mod tidy;
mod traces;
