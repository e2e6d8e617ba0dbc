//! Routing: which agent runs a call. Among agents fit for the tool (healthy, not draining,
//! labels including its placement, a policy that allows it, Docker for a container tool),
//! the one with the fewest running calls relative to its capacity; ties rotate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::agent::Agent;
use super::{Error, Fleet};
use crate::catalog::Tool;

/// The index of the least-loaded candidate (`None`: not a candidate), scanning from `start`
/// so that among equal loads the choice rotates.
fn least_loaded(loads: &[Option<f64>], start: usize) -> Option<usize> {
    let n = loads.len();
    let mut best: Option<(f64, usize)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if let Some(load) = loads[i]
            && best.is_none_or(|(b, _)| load < b)
        {
            best = Some((load, i));
        }
    }
    best.map(|(_, i)| i)
}

impl Fleet {
    /// The agent to run a call with these placement labels, skipping `exclude`.
    pub(super) fn pick(&self, tool: &Tool, exclude: &[String]) -> Option<Arc<Agent>> {
        let agents = self.snapshot();
        let n = agents.len();
        if n == 0 {
            return None;
        }
        let loads: Vec<Option<f64>> = agents
            .iter()
            .map(|agent| {
                let s = agent.status();
                (!exclude.contains(&agent.id) && agent.fits(&s, tool))
                    .then(|| s.load(agent.inflight.load(Ordering::SeqCst)))
            })
            .collect();
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        least_loaded(&loads, start).map(|i| agents[i].clone())
    }

    pub(super) fn no_agent(&self, labels: &BTreeMap<String, String>) -> Error {
        let wanted = if labels.is_empty() {
            String::new()
        } else {
            format!(
                " with labels {}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let agents: Vec<_> = self.snapshot().iter().map(|a| a.describe()).collect();
        Error::NoAgent(format!(
            "none healthy{wanted}; agents: {}",
            if agents.is_empty() {
                "none configured".to_owned()
            } else {
                agents.join("; ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {

    use mcpfier_common::glob::Globs;

    use super::super::agent::Status;
    use super::*;

    #[test]
    fn the_least_loaded_candidate_wins() {
        let loads = [Some(0.5), Some(0.25), None, Some(0.75)];
        for start in 0..8 {
            assert_eq!(least_loaded(&loads, start), Some(1), "start {start}");
        }
        assert_eq!(least_loaded(&[None, None], 0), None);
        assert_eq!(least_loaded(&[], 3), None);
    }

    #[test]
    fn ties_rotate_with_the_start() {
        let loads = [Some(0.0), None, Some(0.0), Some(0.0)];
        let picks: Vec<_> = (0..4).map(|s| least_loaded(&loads, s).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 3]);
    }

    #[test]
    fn load_counts_the_busier_of_ours_and_theirs_over_capacity() {
        let s = Status {
            running: 3,
            capacity: 4,
            ..Status::default()
        };
        assert_eq!(s.load(1), 0.75);
        assert_eq!(s.load(4), 1.0);
        let zero = Status::default();
        assert_eq!(zero.load(2), 2.0, "capacity 0 counts as 1");
    }

    fn tool(yaml_tool: &str) -> Arc<Tool> {
        let (_dir, catalog) = super::super::test_catalog(&format!("  - {yaml_tool}\n"));
        catalog.tools.values().next().unwrap().clone()
    }

    fn healthy() -> Status {
        Status {
            healthy: true,
            capacity: 4,
            labels: [("pool".to_owned(), "build".to_owned())].into(),
            ..Status::default()
        }
    }

    #[test]
    fn an_agent_fits_a_tool_only_when_every_rule_holds() {
        let t = tool("{name: build-x, command: [/bin/true], placement: {labels: {pool: build}}}");
        assert!(healthy().fits(&t));
        let down = Status {
            healthy: false,
            ..healthy()
        };
        assert!(!down.fits(&t), "unhealthy");
        let draining = Status {
            draining: true,
            ..healthy()
        };
        assert!(!draining.fits(&t), "draining");
        let other_pool = Status {
            labels: [("pool".to_owned(), "gpu".to_owned())].into(),
            ..healthy()
        };
        assert!(!other_pool.fits(&t), "labels");
        let policy = Status {
            allow_tools: Some(Arc::new(Globs::new(&["deploy-*"]).unwrap())),
            ..healthy()
        };
        assert!(!policy.fits(&t), "allow_tools");
        let allowed = Status {
            allow_tools: Some(Arc::new(Globs::new(&["build-*"]).unwrap())),
            ..healthy()
        };
        assert!(allowed.fits(&t));
    }

    #[test]
    fn a_container_tool_needs_an_agent_with_docker() {
        let t = tool("{name: c, command: [/bin/true], container: {image: localhost/x:1}}");
        let plain = Status {
            labels: BTreeMap::new(),
            ..healthy()
        };
        assert!(!plain.fits(&t));
        let docker = Status {
            features: vec!["docker".into()],
            ..plain
        };
        assert!(docker.fits(&t));
    }
}
