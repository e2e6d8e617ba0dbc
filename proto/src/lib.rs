//! mcpfier's agent protocol, generated from `proto/mcpfier/agent/v1/agent.proto`.
//!
//! Invariant: nothing else in the workspace derives prost types; the coordinator and agent
//! convert to and from their own types at the edge.

#![allow(missing_docs, clippy::all)]

/// Package `mcpfier.agent.v1`.
pub mod v1 {
    tonic::include_proto!("mcpfier.agent.v1");
}

/// The protocol version this build speaks: `major.minor`. Peers of the same major version
/// interoperate; a minor version adds fields and features only.
pub const PROTOCOL_VERSION: &str = "1.1";
