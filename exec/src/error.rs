//! The one table of error kinds: every way a call can end without an [`Outcome`](crate::Outcome),
//! with its gRPC code (agent -> coordinator), its `structuredContent.error.kind` string (MCP
//! clients) and its HTTP status (the HTTP front door), in one place.
//!
//! A kind travels typed across the wire (`wire::refusal` puts it in the `mcpfier-error-kind`
//! metadata of a gRPC status, `Finished.error_kind` carries a start failure), and every
//! decision the coordinator makes about a failed call branches on the kind, never on the
//! gRPC code or on text. A timeout is not here: a command killed at its timeout has an
//! outcome (`timed_out: true`).

use std::fmt;
use std::str::FromStr;

/// Whether the command may have run when a call ends with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Nothing ran: the call can be made again safely.
    NotRun,
    /// It may or may not have run.
    Unknown,
}

impl Ran {
    /// The `structuredContent.error.outcome` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Ran::NotRun => "not_run",
            Ran::Unknown => "unknown",
        }
    }
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $kind:ident = $name:literal, $grpc:ident, $http:literal, $ran:ident; )*) => {
        /// Every kind of error a call can end with.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[$doc])* $kind, )*
        }

        impl ErrorKind {
            /// Every kind, in table order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// The `structuredContent.error.kind` string, also sent in gRPC metadata.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorKind::$kind => $name,)* }
            }

            /// The gRPC status code an agent answers with.
            pub fn grpc_code(self) -> tonic::Code {
                match self { $(ErrorKind::$kind => tonic::Code::$grpc,)* }
            }

            /// The HTTP status the front door answers with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorKind::$kind => $http,)* }
            }

            /// Whether the command may have run when a call ends with this kind.
            pub fn ran(self) -> Ran {
                match self { $(ErrorKind::$kind => Ran::$ran,)* }
            }
        }

        impl FromStr for ErrorKind {
            type Err = UnknownKind;

            fn from_str(s: &str) -> Result<Self, UnknownKind> {
                match s {
                    $($name => Ok(ErrorKind::$kind),)*
                    _ => Err(UnknownKind(s.to_owned())),
                }
            }
        }
    };
}

kinds! {
    /// The agent's policy does not allow the call (tool, image, limits).
    Policy = "policy", PermissionDenied, 403, NotRun;
    /// The agent runs as many calls as its capacity allows.
    Capacity = "capacity", ResourceExhausted, 503, NotRun;
    /// The agent is draining: running calls finish, new ones go elsewhere.
    Draining = "draining", Unavailable, 503, NotRun;
    /// The agent could not renew its etcd lease and takes no calls until it does.
    Fenced = "fenced", Unavailable, 503, NotRun;
    /// The request is malformed (empty argv, zero timeout, incomplete container section).
    Invalid = "invalid", InvalidArgument, 400, NotRun;
    /// The peers' protocol major versions differ.
    Version = "version", FailedPrecondition, 400, NotRun;
    /// The arguments do not meet the tool's parameter rules.
    InvalidArguments = "invalid_arguments", InvalidArgument, 400, NotRun;
    /// No tool has that name.
    UnknownTool = "unknown_tool", NotFound, 404, NotRun;
    /// The tool's or the server's concurrency limit stayed full for the tool's timeout.
    Busy = "busy", ResourceExhausted, 503, NotRun;
    /// No healthy agent can run the tool.
    NoAgent = "no_agent", Unavailable, 503, NotRun;
    /// Agents were tried and none accepted the call.
    NotAccepted = "not_accepted", Unavailable, 503, NotRun;
    /// The agent was lost after it accepted the call.
    AgentLost = "agent_lost", Unavailable, 502, Unknown;
    /// The command could not start (no such program, bad working directory, Docker error).
    StartFailed = "start_failed", FailedPrecondition, 500, NotRun;
    /// The container image is not present and the tool says `pull: never`.
    ImageMissing = "image_missing", FailedPrecondition, 424, NotRun;
    /// No Docker daemon is reachable, so no container runs here.
    NoDaemon = "no_daemon", Unavailable, 503, NotRun;
    /// The caller cancelled the call.
    Cancelled = "cancelled", Cancelled, 499, Unknown;
}

/// A kind string this build does not know (a newer peer's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error kind `{0}`")]
pub struct UnknownKind(pub String);

impl ErrorKind {
    /// Whether the coordinator may try another agent after an agent answered with this kind
    /// before accepting the call (nothing ran).
    pub fn try_elsewhere(self) -> bool {
        matches!(
            self,
            ErrorKind::Policy
                | ErrorKind::Capacity
                | ErrorKind::Draining
                | ErrorKind::Fenced
                | ErrorKind::Version
                | ErrorKind::NoDaemon
        )
    }

    /// Whether an agent that answered with this kind is unfit for routing until its next
    /// health check. A draining or fenced agent is not failed: it says so itself and comes
    /// back (or leaves) on its own.
    pub fn marks_agent_failed(self) -> bool {
        matches!(self, ErrorKind::Version)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its kind.
pub trait HasKind {
    /// The kind, for branching and for the edges (gRPC, MCP, HTTP).
    fn kind(&self) -> ErrorKind;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_string() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(*kind));
        }
        assert_eq!(
            "from-the-future".parse::<ErrorKind>(),
            Err(UnknownKind("from-the-future".into()))
        );
    }

    #[test]
    fn kind_strings_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let s = kind.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
        }
    }

    #[test]
    fn only_a_lost_agent_or_a_cancel_leaves_the_outcome_unknown() {
        let unknown: Vec<_> = ErrorKind::ALL
            .iter()
            .filter(|k| k.ran() == Ran::Unknown)
            .collect();
        assert_eq!(unknown, [&ErrorKind::AgentLost, &ErrorKind::Cancelled]);
    }

    #[test]
    fn draining_and_fenced_are_not_failures() {
        for kind in [ErrorKind::Draining, ErrorKind::Fenced] {
            assert!(kind.try_elsewhere() && !kind.marks_agent_failed());
            assert_eq!(kind.grpc_code(), tonic::Code::Unavailable);
        }
    }

    #[test]
    fn http_statuses_are_errors() {
        for kind in ErrorKind::ALL {
            assert!((400..600).contains(&kind.http_status()), "{kind}");
        }
    }
}
