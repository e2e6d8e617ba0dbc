//! Every conversion between the agent protocol (`mcpfier.agent.v1`) and the engine's types:
//! executions, events, outcomes and error kinds. Both the agent and the coordinator use
//! these, so the two ends agree by construction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpfier_common::tool::paths::PathArg;
use mcpfier_proto::v1;

use mcpfier_proto::v1::execute_event;

use crate::error::ErrorKind;
use crate::model::{
    BindMount, Captured, Chunk, ContainerSpec, EnvVar, Event, Execution, Outcome, Pull, SignedCall,
    Stream,
};

/// gRPC metadata key naming the [`ErrorKind`] of a refusal.
pub const ERROR_KIND: &str = "mcpfier-error-kind";

/// The protocol request for `exec`.
pub fn request(
    exec: &Execution,
    call_id: &str,
    request_id: &str,
    tool: &str,
) -> v1::ExecuteRequest {
    v1::ExecuteRequest {
        call_id: call_id.to_owned(),
        request_id: request_id.to_owned(),
        tool: tool.to_owned(),
        argv: exec.argv.clone(),
        env: exec
            .env
            .iter()
            .map(|v| v1::EnvVar {
                name: v.name.clone(),
                value: v.value.clone(),
                secret: v.secret,
            })
            .collect(),
        workdir: exec
            .workdir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        timeout_ms: exec.timeout.as_millis() as u64,
        max_output: exec.max_output,
        kill_grace_ms: exec.kill_grace.as_millis() as u64,
        protocol_version: mcpfier_proto::PROTOCOL_VERSION.to_owned(),
        container: exec.container.as_ref().map(|c| v1::Container {
            image: c.image.clone(),
            memory: c.memory,
            cpus: c.cpus,
            pids: c.pids,
            network: c.network.clone(),
            read_only: c.read_only,
            user: c.user.clone(),
            mounts: c
                .mounts
                .iter()
                .map(|m| v1::BindMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    rw: m.rw,
                })
                .collect(),
            pull_never: c.pull == Pull::Never,
        }),
        signed: exec.signed.as_ref().map(|s| v1::SignedTool {
            definition: s.definition.to_vec(),
            signature: s.signature.to_vec(),
            arguments: s.arguments.clone(),
        }),
        paths: exec
            .paths
            .iter()
            .map(|p| v1::PathArg {
                param: p.param.clone(),
                value: p.value.clone(),
                within: p.within.display().to_string(),
                must_exist: p.must_exist,
            })
            .collect(),
    }
}

/// The execution a request describes, or what is wrong with it.
pub fn execution(req: &v1::ExecuteRequest) -> Result<Execution, String> {
    if req.call_id.is_empty() {
        return Err("call_id is empty".into());
    }
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err("argv is empty".into());
    }
    if req.timeout_ms == 0 {
        return Err("timeout_ms is zero".into());
    }
    if req.max_output == 0 {
        return Err("max_output is zero".into());
    }
    let mut paths = Vec::with_capacity(req.paths.len());
    for p in &req.paths {
        if p.param.is_empty() || !Path::new(&p.within).is_absolute() {
            return Err(format!(
                "path argument `{}` has no parameter name or a relative `within`",
                p.param
            ));
        }
        paths.push(PathArg {
            param: p.param.clone(),
            value: p.value.clone(),
            within: PathBuf::from(&p.within),
            must_exist: p.must_exist,
        });
    }
    Ok(Execution {
        argv: req.argv.clone(),
        paths,
        program: None,
        env: req
            .env
            .iter()
            .map(|v| EnvVar {
                name: v.name.clone(),
                value: v.value.clone(),
                secret: v.secret,
            })
            .collect(),
        workdir: (!req.workdir.is_empty()).then(|| PathBuf::from(&req.workdir)),
        timeout: Duration::from_millis(req.timeout_ms),
        max_output: req.max_output,
        kill_grace: Duration::from_millis(req.kill_grace_ms.max(100)),
        container: match &req.container {
            None => None,
            Some(c) => {
                if c.image.is_empty() || c.memory == 0 || c.cpus <= 0.0 || c.pids < 1 {
                    return Err("the container section is incomplete".into());
                }
                Some(ContainerSpec {
                    image: c.image.clone(),
                    memory: c.memory,
                    cpus: c.cpus,
                    pids: c.pids,
                    network: if c.network.is_empty() {
                        "none".into()
                    } else {
                        c.network.clone()
                    },
                    read_only: c.read_only,
                    user: if c.user.is_empty() {
                        "65534:65534".into()
                    } else {
                        c.user.clone()
                    },
                    mounts: c
                        .mounts
                        .iter()
                        .map(|m| BindMount {
                            source: m.source.clone(),
                            target: m.target.clone(),
                            rw: m.rw,
                        })
                        .collect(),
                    pull: if c.pull_never {
                        Pull::Never
                    } else {
                        Pull::Missing
                    },
                })
            }
        },
        signed: req.signed.as_ref().map(|s| SignedCall {
            definition: s.definition.as_slice().into(),
            signature: s.signature.as_slice().into(),
            arguments: s.arguments.clone(),
        }),
    })
}

/// The protocol events for an engine event: output is split into chunks of at most
/// [`MAX_CHUNK`](mcpfier_proto::MAX_CHUNK) bytes.
pub fn events(event: Event) -> Vec<execute_event::Event> {
    match event {
        Event::Started { pid } => vec![execute_event::Event::Started(v1::Started { pid })],
        Event::Output(chunk) => {
            let stream = match chunk.stream {
                Stream::Stdout => v1::OutputStream::Stdout as i32,
                Stream::Stderr => v1::OutputStream::Stderr as i32,
            };
            if chunk.data.len() <= mcpfier_proto::MAX_CHUNK {
                return vec![execute_event::Event::Output(v1::OutputChunk {
                    stream,
                    data: chunk.data,
                })];
            }
            chunk
                .data
                .chunks(mcpfier_proto::MAX_CHUNK)
                .map(|data| {
                    execute_event::Event::Output(v1::OutputChunk {
                        stream,
                        data: data.to_vec(),
                    })
                })
                .collect()
        }
    }
}

/// The engine event a protocol `Started` reports.
pub fn started(s: &v1::Started) -> Event {
    Event::Started { pid: s.pid }
}

/// The engine event a protocol output chunk reports.
pub fn output(chunk: v1::OutputChunk) -> Event {
    let stream = if chunk.stream == v1::OutputStream::Stderr as i32 {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    Event::Output(Chunk {
        stream,
        data: chunk.data,
    })
}

/// A refusal: a gRPC status with the kind's code and the kind in [`ERROR_KIND`] metadata.
pub fn refusal(kind: ErrorKind, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::new(kind.grpc_code(), message.into());
    status.metadata_mut().insert(
        ERROR_KIND,
        tonic::metadata::MetadataValue::from_static(kind.as_str()),
    );
    status
}

/// The kind of a refusal, when the status carries one this build knows (a transport failure
/// carries none).
pub fn refusal_kind(status: &tonic::Status) -> Option<ErrorKind> {
    status
        .metadata()
        .get(ERROR_KIND)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// The final event of a call that could not run: its kind and what went wrong.
pub fn finished_error(kind: ErrorKind, message: impl Into<String>) -> v1::Finished {
    v1::Finished {
        error: message.into(),
        error_kind: kind.as_str().to_owned(),
        ..Default::default()
    }
}

/// A call's output as its `OutputChunk` events carry it, for a `Finished` with
/// `output_in_chunks`; each stream keeps at most the call's `max_output`, whatever the agent
/// sends.
pub struct Collected {
    max: u64,
    stdout: Captured,
    stderr: Captured,
}

impl Collected {
    /// Nothing collected yet; keeps at most `max` bytes per stream.
    pub fn new(max: u64) -> Collected {
        Collected {
            max,
            stdout: Captured::default(),
            stderr: Captured::default(),
        }
    }

    /// Adds one chunk's bytes to its stream.
    pub fn push(&mut self, chunk: &v1::OutputChunk) {
        let stream = if chunk.stream == v1::OutputStream::Stderr as i32 {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        stream.take(&chunk.data, self.max);
    }
}

/// What a final event reports: the outcome, or why nothing ran. The output is `collected`
/// when the agent sent it in chunks only (1.2), else the event's own. A peer of protocol 1.0
/// sends no kind with its error; its errors were all start failures.
pub fn finished_result(
    mut f: v1::Finished,
    collected: Collected,
) -> Result<Outcome, (ErrorKind, String)> {
    if f.error.is_empty() {
        if f.output_in_chunks {
            f.stdout = collected.stdout.data;
            f.stderr = collected.stderr.data;
            f.stdout_truncated |= collected.stdout.truncated;
            f.stderr_truncated |= collected.stderr.truncated;
        }
        return Ok(outcome(f));
    }
    let kind = f.error_kind.parse().unwrap_or(ErrorKind::StartFailed);
    Err((kind, f.error))
}

/// The final event for an outcome. With `in_chunks` (a 1.2 coordinator) the output is left
/// out: the call's output events carried all of it.
pub fn finished(outcome: &Outcome, in_chunks: bool) -> v1::Finished {
    let bytes = |b: &Vec<u8>| if in_chunks { Vec::new() } else { b.clone() };
    v1::Finished {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        stdout: bytes(&outcome.stdout),
        stderr: bytes(&outcome.stderr),
        output_in_chunks: in_chunks,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        timed_out: outcome.timed_out,
        cancelled: outcome.cancelled,
        duration_ms: outcome.duration.as_millis() as u64,
        error: String::new(),
        error_kind: String::new(),
        oom_killed: outcome.oom_killed,
    }
}

/// The outcome a final event reports (see [`finished_result`] for one that may carry an
/// error).
fn outcome(f: v1::Finished) -> Outcome {
    Outcome {
        exit_code: f.exit_code,
        signal: f.signal,
        stdout: f.stdout,
        stderr: f.stderr,
        stdout_truncated: f.stdout_truncated,
        stderr_truncated: f.stderr_truncated,
        timed_out: f.timed_out,
        cancelled: f.cancelled,
        duration: Duration::from_millis(f.duration_ms),
        oom_killed: f.oom_killed,
    }
}

/// Whether a peer's `major.minor` protocol version can talk to ours (same major).
pub fn compatible(theirs: &str) -> bool {
    let major = |v: &str| v.split('.').next().map(str::to_owned);
    !theirs.is_empty() && major(theirs) == major(mcpfier_proto::PROTOCOL_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_survives_the_round_trip() {
        let exec = Execution {
            argv: vec!["/bin/echo".into(), "a b".into(), "\0path:f\0".into()],
            paths: vec![PathArg {
                param: "f".into(),
                value: "../x".into(),
                within: "/srv".into(),
                must_exist: true,
            }],
            program: None,
            env: vec![EnvVar {
                name: "T".into(),
                value: "s".into(),
                secret: true,
            }],
            workdir: Some("/tmp".into()),
            timeout: Duration::from_secs(3),
            max_output: 10,
            kill_grace: Duration::from_secs(2),
            container: None,
            signed: Some(SignedCall {
                definition: b"{}".as_slice().into(),
                signature: vec![7; 64].into(),
                arguments: "{\"a\":1}".into(),
            }),
        };
        let back = execution(&request(&exec, "c1", "r1", "t")).unwrap();
        let signed = back.signed.as_ref().unwrap();
        assert_eq!(&*signed.definition, b"{}");
        assert_eq!(signed.signature.len(), 64);
        assert_eq!(signed.arguments, "{\"a\":1}");
        assert_eq!(back.argv, exec.argv);
        assert_eq!(back.paths, exec.paths);
        assert_eq!(back.env, exec.env);
        assert_eq!(back.workdir, exec.workdir);
        assert_eq!(back.timeout, exec.timeout);
        assert_eq!(back.max_output, 10);
    }

    #[test]
    fn events_survive_the_round_trip() {
        let chunk = Event::Output(Chunk {
            stream: Stream::Stderr,
            data: b"x".to_vec(),
        });
        match events(chunk).remove(0) {
            execute_event::Event::Output(c) => match output(c) {
                Event::Output(back) => {
                    assert_eq!(back.stream, Stream::Stderr);
                    assert_eq!(back.data, b"x");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        match events(Event::Started { pid: 7 }).remove(0) {
            execute_event::Event::Started(s) => {
                assert!(matches!(started(&s), Event::Started { pid: 7 }))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_carries_its_kind_typed() {
        for kind in ErrorKind::ALL {
            let status = refusal(*kind, "no");
            assert_eq!(status.code(), kind.grpc_code());
            assert_eq!(refusal_kind(&status), Some(*kind));
        }
        assert_eq!(
            refusal_kind(&tonic::Status::unavailable("conn reset")),
            None
        );
    }

    #[test]
    fn a_start_error_keeps_its_kind() {
        let f = finished_error(ErrorKind::ImageMissing, "image `x` is not present");
        assert_eq!(
            finished_result(f, Collected::new(1 << 30)).unwrap_err(),
            (ErrorKind::ImageMissing, "image `x` is not present".into())
        );
        // A 1.0 agent sent only the text.
        let old = v1::Finished {
            error: "could not start".into(),
            ..Default::default()
        };
        assert_eq!(
            finished_result(old, Collected::new(1 << 30)).unwrap_err().0,
            ErrorKind::StartFailed
        );
        let ok = finished(
            &Outcome {
                exit_code: Some(3),
                ..Outcome::default()
            },
            true,
        );
        assert_eq!(
            finished_result(ok, Collected::new(1 << 30))
                .unwrap()
                .exit_code,
            Some(3)
        );
    }

    #[test]
    fn big_output_crosses_in_chunks_and_no_message_grows_with_it() {
        use prost::Message;
        let data = vec![b'x'; 8 << 20];
        let outcome = Outcome {
            exit_code: Some(0),
            stdout: data.clone(),
            ..Outcome::default()
        };
        let mut collected = Collected::new(8 << 20);
        let chunks = events(Event::Output(Chunk {
            stream: Stream::Stdout,
            data,
        }));
        assert_eq!(chunks.len(), 8);
        for event in chunks {
            let execute_event::Event::Output(chunk) = event else {
                panic!("not output")
            };
            assert!(chunk.encoded_len() <= mcpfier_proto::MAX_CHUNK + 16);
            collected.push(&chunk);
        }
        let f = finished(&outcome, true);
        assert!(
            f.encoded_len() < 64,
            "Finished is {} bytes",
            f.encoded_len()
        );
        assert_eq!(
            finished_result(f, collected).unwrap().stdout,
            outcome.stdout
        );
        // A 1.1 coordinator still gets the output in Finished.
        let old = finished(&outcome, false);
        assert_eq!(old.stdout.len(), 8 << 20);
        assert!(!mcpfier_proto::streams_output("1.1"));
        assert!(mcpfier_proto::streams_output("1.2") && mcpfier_proto::streams_output("2.0"));
    }

    #[test]
    fn versions_are_compatible_within_a_major() {
        assert!(compatible("1.0"));
        assert!(compatible("1.7"));
        assert!(!compatible("2.0"));
        assert!(!compatible(""));
    }
}
