//! mcpfier's coordinator: reads `mcpfier.yaml`, serves its tools over MCP (stdio and
//! Streamable HTTP) and runs calls.

#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod board;
pub mod catalog;
pub mod certs;
pub mod config;
pub mod dispatch;
pub mod fleet;
pub mod http;
pub mod mcp;
pub mod membership;
pub mod status;
