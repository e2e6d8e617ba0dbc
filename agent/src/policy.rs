//! The agent's own limits: what a coordinator may make it run, whatever the coordinator's
//! config says (defence in depth).

use std::time::Duration;

use mcpfier_common::glob::Globs;
use mcpfier_common::{ByteSize, HumanDuration};
use mcpfier_exec::ContainerSpec;
use schemars::JsonSchema;
use serde::Deserialize;

/// The `policy` section of `agent.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tool names this agent runs: globs with `*` (any run of characters) and `?` (one).
    #[serde(default = "Globs::any")]
    pub allow_tools: Globs,
    /// Whether local processes may run (default true).
    #[serde(default = "yes")]
    pub allow_local: bool,
    /// Longest timeout a call may ask for (default 10m).
    #[serde(default = "default_max_timeout")]
    pub max_timeout: HumanDuration,
    /// Largest output cap a call may ask for, per stream (default 16MiB).
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
    /// Whether container calls may run (default true; needs a Docker daemon).
    #[serde(default = "yes")]
    pub allow_containers: bool,
    /// Images container calls may use: globs (default `["*"]`).
    #[serde(default = "Globs::any")]
    pub allow_images: Globs,
    /// Most memory a container call may ask for (default 4GiB).
    #[serde(default = "default_max_memory")]
    pub max_memory: ByteSize,
    /// Most CPUs a container call may ask for (default 4).
    #[serde(default = "default_max_cpus")]
    pub max_cpus: f64,
    /// Most processes a container call may ask for (default 4096).
    #[serde(default = "default_max_pids")]
    pub max_pids: i64,
}

fn default_max_memory() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_max_cpus() -> f64 {
    4.0
}
fn default_max_pids() -> i64 {
    4096
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_tools: Globs::any(),
            allow_local: true,
            max_timeout: default_max_timeout(),
            max_output: default_max_output(),
            allow_containers: true,
            allow_images: Globs::any(),
            max_memory: default_max_memory(),
            max_cpus: default_max_cpus(),
            max_pids: default_max_pids(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_max_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_max_output() -> ByteSize {
    ByteSize(16 << 20)
}

/// Why the policy refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The tool's name matches none of `allow_tools`.
    #[error("tool `{tool}` is not in this agent's allow_tools ({allowed})")]
    Tool {
        /// The tool the call is for.
        tool: String,
        /// The `allow_tools` globs, as written.
        allowed: String,
    },
    /// A local-process call, and `allow_local` is false.
    #[error("this agent does not run local processes (allow_local: false)")]
    Local,
    /// The call's timeout is longer than `max_timeout`.
    #[error("the call asks for a {asked} timeout; this agent allows at most {max} (max_timeout)")]
    Timeout {
        /// The call's timeout, e.g. `20m`.
        asked: String,
        /// `max_timeout`, e.g. `10m`.
        max: String,
    },
    /// The call's output cap is larger than `max_output`.
    #[error(
        "the call asks to keep {asked} of output; this agent allows at most {max} (max_output)"
    )]
    Output {
        /// The call's cap per stream, e.g. `32MiB`.
        asked: String,
        /// `max_output`, e.g. `16MiB`.
        max: String,
    },
    /// A container call, and `allow_containers` is false.
    #[error("this agent does not run containers (allow_containers: false)")]
    Containers,
    /// The container's image matches none of `allow_images`.
    #[error("image `{image}` is not in this agent's allow_images ({allowed})")]
    Image {
        /// The image the call asks for.
        image: String,
        /// The `allow_images` globs, as written.
        allowed: String,
    },
    /// The container asks for more memory, CPUs or processes than `max_memory`, `max_cpus` or
    /// `max_pids` allow.
    #[error("the container asks for {what} {asked}; this agent allows at most {max}")]
    Limit {
        /// The limit exceeded: `memory`, `cpus` or `pids`.
        what: &'static str,
        /// What the call asks for, e.g. `8GiB`.
        asked: String,
        /// The agent's maximum and the setting that sets it, e.g. `4GiB (max_memory)`.
        max: String,
    },
}

impl Policy {
    /// Checks a container call's own limits.
    pub fn check_container(&self, spec: &ContainerSpec) -> Result<(), Refusal> {
        if !self.allow_containers {
            return Err(Refusal::Containers);
        }
        if !self.allow_images.is_match(&spec.image) {
            return Err(Refusal::Image {
                image: spec.image.clone(),
                allowed: self.allow_images.to_string(),
            });
        }
        if spec.memory > self.max_memory.bytes() {
            return Err(Refusal::Limit {
                what: "memory",
                asked: ByteSize(spec.memory).to_string(),
                max: format!("{} (max_memory)", self.max_memory),
            });
        }
        if spec.cpus > self.max_cpus {
            return Err(Refusal::Limit {
                what: "cpus",
                asked: spec.cpus.to_string(),
                max: format!("{} (max_cpus)", self.max_cpus),
            });
        }
        if spec.pids > self.max_pids {
            return Err(Refusal::Limit {
                what: "pids",
                asked: spec.pids.to_string(),
                max: format!("{} (max_pids)", self.max_pids),
            });
        }
        Ok(())
    }

    /// Checks a call against every limit: the tool, then the container's limits or
    /// `allow_local`, then the timeout and the output cap.
    pub fn check(
        &self,
        tool: &str,
        timeout: Duration,
        max_output: u64,
        container: Option<&ContainerSpec>,
    ) -> Result<(), Refusal> {
        if !self.allow_tools.is_match(tool) {
            return Err(Refusal::Tool {
                tool: tool.to_owned(),
                allowed: self.allow_tools.to_string(),
            });
        }
        match container {
            Some(spec) => self.check_container(spec)?,
            None if !self.allow_local => return Err(Refusal::Local),
            None => {}
        }
        if timeout > self.max_timeout.get() {
            return Err(Refusal::Timeout {
                asked: humantime::format_duration(timeout).to_string(),
                max: self.max_timeout.to_string(),
            });
        }
        if max_output > self.max_output.bytes() {
            return Err(Refusal::Output {
                asked: ByteSize(max_output).to_string(),
                max: self.max_output.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_calls_meet_the_image_and_limit_rules() {
        let p = Policy {
            allow_images: Globs::new(&["localhost/tools:*"]).unwrap(),
            max_memory: ByteSize(1 << 30),
            ..Policy::default()
        };
        let spec = ContainerSpec {
            image: "localhost/tools:1.2".into(),
            memory: 512 << 20,
            cpus: 1.0,
            pids: 256,
            network: "none".into(),
            read_only: true,
            user: "65534:65534".into(),
            mounts: vec![],
            pull: mcpfier_exec::Pull::Never,
        };
        let ten = Duration::from_secs(10);
        assert!(p.check("t", ten, 1024, Some(&spec)).is_ok());
        let other = ContainerSpec {
            image: "docker.io/evil:latest".into(),
            ..spec.clone()
        };
        assert!(matches!(
            p.check("t", ten, 1024, Some(&other)),
            Err(Refusal::Image { .. })
        ));
        let big = ContainerSpec {
            memory: 2 << 30,
            ..spec.clone()
        };
        let err = p.check("t", ten, 1024, Some(&big)).unwrap_err().to_string();
        assert!(err.contains("max_memory"), "{err}");
        let no = Policy {
            allow_containers: false,
            ..Policy::default()
        };
        assert_eq!(
            no.check("t", ten, 1024, Some(&spec)),
            Err(Refusal::Containers)
        );
        // allow_local: false does not stop containers.
        let local_off = Policy {
            allow_local: false,
            ..Policy::default()
        };
        assert!(local_off.check("t", ten, 1024, Some(&spec)).is_ok());
    }

    #[test]
    fn each_limit_refuses_with_its_name() {
        let p = Policy {
            allow_tools: Globs::new(&["safe-*"]).unwrap(),
            ..Policy::default()
        };
        let ten = Duration::from_secs(10);
        assert!(p.check("safe-ls", ten, 1024, None).is_ok());
        assert!(matches!(
            p.check("rm", ten, 1024, None),
            Err(Refusal::Tool { .. })
        ));
        let err = p
            .check("safe-ls", Duration::from_secs(3600), 1024, None)
            .unwrap_err();
        assert!(err.to_string().contains("max_timeout"), "{err}");
        let err = p.check("safe-ls", ten, 1 << 30, None).unwrap_err();
        assert!(err.to_string().contains("max_output"), "{err}");
        let local = Policy {
            allow_local: false,
            ..Policy::default()
        };
        assert_eq!(local.check("x", ten, 1, None), Err(Refusal::Local));
    }
}
