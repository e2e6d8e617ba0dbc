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
pub const PROTOCOL_VERSION: &str = "1.4";

/// The most output bytes one `OutputChunk` carries; larger reads are split.
pub const MAX_CHUNK: usize = 1 << 20;

/// The largest message either side encodes or decodes. Since 1.2 output travels only in
/// chunks of at most [`MAX_CHUNK`], so every message fits; the limit also bounds what a peer
/// can make the other allocate.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Whether a peer of protocol `version` (`major.minor`) takes output in chunks only, with an
/// empty `Finished.stdout`/`stderr` (1.2 and later).
pub fn streams_output(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 2),
        _ => false,
    }
}
