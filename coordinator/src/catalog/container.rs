//! Checks a tool's `container` section and turns it into the engine's [`ContainerSpec`].

use mcpfier_exec::{BindMount, ContainerSpec, Pull};

use crate::config::{ContainerSection, PullPolicy};

/// The spec of `c` (at path `p`); every problem goes to `problem`.
pub(super) fn build(
    c: &ContainerSection,
    p: &str,
    problem: &mut dyn FnMut(String, String),
) -> ContainerSpec {
    if c.image.trim().is_empty() {
        problem(
            format!("{p}.image"),
            "is empty: name a local image, e.g. localhost/tools:1.2".into(),
        );
    }
    if c.memory.bytes() < (6 << 20) {
        problem(
            format!("{p}.memory"),
            "must be at least 6MiB (Docker's minimum)".into(),
        );
    }
    if !(c.cpus > 0.0 && c.cpus <= 1024.0) {
        problem(
            format!("{p}.cpus"),
            format!("{} is not a CPU count (e.g. 0.5 or 2)", c.cpus),
        );
    }
    if c.pids < 1 {
        problem(format!("{p}.pids"), "must be at least 1".into());
    }
    for (i, m) in c.mounts.iter().enumerate() {
        if !m.source.is_absolute() || !m.target.starts_with('/') {
            problem(
                format!("{p}.mounts[{i}]"),
                "source and target must be absolute paths".into(),
            );
        }
    }
    ContainerSpec {
        image: c.image.clone(),
        memory: c.memory.bytes(),
        cpus: c.cpus,
        pids: c.pids,
        network: c.network.clone(),
        read_only: c.read_only,
        user: c.user.clone(),
        mounts: c
            .mounts
            .iter()
            .map(|m| BindMount {
                source: m.source.display().to_string(),
                target: m.target.clone(),
                rw: m.rw,
            })
            .collect(),
        pull: match c.pull {
            PullPolicy::Never => Pull::Never,
            PullPolicy::Missing => Pull::Missing,
        },
    }
}
