//! mcpfier's execution engine.
//!
//! [`model`] says what to run and what came of it; [`process`] runs it as a process group
//! with a clean environment, closed stdin, capped output, a timeout and cancellation;
//! [`container`] runs it in a hardened Docker container through the Engine API;
//! [`executor`] is the one place that chooses between them; [`lifeline`] makes sure nothing
//! a call started outlives the process that ran it. [`error`] is the table of every
//! error kind a call can end with. [`wire`]
//! converts all of it to and from the agent protocol (`mcpfier-proto`), so the coordinator
//! and the agent agree by construction. The coordinator links this crate to run tools
//! in-process; the agent links it to run calls for coordinators.

#![deny(unsafe_code)]

pub mod cgroup;
pub mod container;
pub mod error;
pub mod executor;
pub mod heap;
pub mod lifeline;
pub mod model;
pub mod process;
mod spawn;
pub mod wire;

pub use error::{ErrorKind, HasKind};
pub use executor::Executor;
pub use model::*;

/// The Docker Engine API client, for tests and benchmarks that build and inspect images: the
/// workspace reaches bollard only through this crate.
pub use bollard;
