//! mcpfier's execution engine and agent.
//!
//! [`exec`] runs one fully resolved command: a process group with a clean environment, closed
//! stdin, capped output, a timeout and cancellation, and nothing left behind. The coordinator
//! links it to run tools in-process; the `mcpfier-agent` binary ([`server`], [`service`])
//! runs the same code for remote calls over mutual-TLS gRPC.

#![forbid(unsafe_code)]

pub mod calls;
pub mod config;
pub mod container;
pub mod exec;
pub mod membership;
pub mod policy;
pub mod server;
pub mod service;
pub mod wire;
