//! Checks a tool's `container` section. The engine's `ContainerSpec` is made from the tool's
//! signable definition (`signing::definition`), so what runs is what a signature covers.

use crate::config::ContainerSection;

/// Checks `c` (at path `p`); every problem goes to `problem`.
pub(super) fn check(c: &ContainerSection, p: &str, problem: &mut dyn FnMut(String, String)) {
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
}
