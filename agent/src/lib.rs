//! mcpfier's agent: runs tool calls for coordinators over mutual-TLS gRPC.
//!
//! [`server`] accepts coordinators (TLS 1.3, coordinator-role certificates only) and serves
//! [`service`]; [`policy`] limits what a coordinator may make it run; [`calls`] keeps calls
//! by id so a repeated `Execute` attaches instead of running twice; [`membership`] registers
//! the agent in etcd; [`metrics`] serves its Prometheus metrics on `metrics_listen`. The
//! commands themselves run through `mcpfier-exec`.

#![forbid(unsafe_code)]

pub mod calls;
pub mod config;
pub mod membership;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod service;
