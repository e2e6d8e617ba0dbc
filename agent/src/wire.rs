//! Conversions between the agent protocol (`mcpfier.agent.v1`) and the execution engine's
//! types. Both the agent and the coordinator use these, so the two ends agree by
//! construction.

use std::path::PathBuf;
use std::time::Duration;

use mcpfier_proto::v1;

use crate::container::{BindMount, ContainerSpec, Pull};
use crate::exec::{EnvVar, Execution, Outcome};

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
    Ok(Execution {
        argv: req.argv.clone(),
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
    })
}

/// The final event for an outcome.
pub fn finished(outcome: &Outcome) -> v1::Finished {
    v1::Finished {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        stdout: outcome.stdout.clone(),
        stderr: outcome.stderr.clone(),
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        timed_out: outcome.timed_out,
        cancelled: outcome.cancelled,
        duration_ms: outcome.duration.as_millis() as u64,
        error: String::new(),
        oom_killed: outcome.oom_killed,
    }
}

/// The outcome a final event reports.
pub fn outcome(f: v1::Finished) -> Outcome {
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
            argv: vec!["/bin/echo".into(), "a b".into()],
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
        };
        let back = execution(&request(&exec, "c1", "r1", "t")).unwrap();
        assert_eq!(back.argv, exec.argv);
        assert_eq!(back.env, exec.env);
        assert_eq!(back.workdir, exec.workdir);
        assert_eq!(back.timeout, exec.timeout);
        assert_eq!(back.max_output, 10);
    }

    #[test]
    fn versions_are_compatible_within_a_major() {
        assert!(compatible("1.0"));
        assert!(compatible("1.7"));
        assert!(!compatible("2.0"));
        assert!(!compatible(""));
    }
}
