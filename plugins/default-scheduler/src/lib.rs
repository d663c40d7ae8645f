//! Spawner's default scheduler plugin.
//!
//! - Admission: rejects a backend whose owner already has `max-per-owner`
//!   live backends (no limit by default).
//! - Filtering: only nodes that carry every label of the backend's node
//!   selector, and whose free capacity covers the backend's requests
//!   (a node with zero capacity reported is treated as unbounded).
//! - Placement: `spread` (default) picks the node with the fewest backends;
//!   `pack` picks the fullest node that still fits, keeping others free.
//!   Ties go to the node name, so the answer is deterministic.
//! - With no candidate nodes listed, it answers `anywhere` with the node
//!   selector and lets the platform pick.
//!
//! Settings (JSON, all optional): `{"max-per-owner": 3, "strategy": "pack"}`.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use spawner_plugin_sdk::host;
use spawner_plugin_sdk::scheduler::*;

/// How to choose among nodes that fit.
#[derive(Debug, Default, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Fewest backends first: spreads load and failure domains.
    #[default]
    Spread,
    /// Most backends first: frees whole nodes for scale-down.
    Pack,
}

/// Settings of the default scheduler.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Maximum live backends per owner; none means no limit.
    pub max_per_owner: Option<u32>,
    /// Node choice.
    pub strategy: Strategy,
}

/// The plugin, exported below.
pub struct DefaultScheduler;

impl Scheduler for DefaultScheduler {
    fn place(request: PlacementRequest) -> Result<Placement, PluginError> {
        let settings: Settings = host::settings_json()?;
        Ok(decide(&request, &settings))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        let s: Settings = host::parse_settings(settings)?;
        if s.max_per_owner == Some(0) {
            return Err(PluginError::InvalidSettings("max-per-owner must be at least 1 (omit it for no limit)".into()));
        }
        Ok(())
    }
}

spawner_plugin_sdk::lean_runtime!();
spawner_plugin_sdk::export!(scheduler: DefaultScheduler);

/// The policy as a plain function.
pub fn decide(request: &PlacementRequest, settings: &Settings) -> Placement {
    if let (Some(max), Some(owner)) = (settings.max_per_owner, &request.backend.owner) {
        let live = request.owner_backends.len();
        if live >= max as usize {
            let backends = if live == 1 { "backend" } else { "backends" };
            return Placement::Reject(format!("owner {owner} already has {live} {backends} (max-per-owner is {max})"));
        }
    }
    if request.nodes.is_empty() {
        return Placement::Anywhere(request.node_selector.clone());
    }
    let selected: Vec<&Node> = request.nodes.iter().filter(|n| matches_selector(n, &request.node_selector)).collect();
    if selected.is_empty() {
        return Placement::Reject(format!("no node matches the node selector {}", describe(&request.node_selector)));
    }
    let fitting: Vec<&Node> = selected.into_iter().filter(|n| fits(n, &request.requests)).collect();
    let best = match settings.strategy {
        Strategy::Spread => fitting.iter().min_by(|a, b| a.backends.len().cmp(&b.backends.len()).then(a.name.cmp(&b.name))),
        Strategy::Pack => fitting.iter().max_by(|a, b| a.backends.len().cmp(&b.backends.len()).then(b.name.cmp(&a.name))),
    };
    match best {
        Some(node) => Placement::Node(node.name.clone()),
        None => Placement::Reject(format!(
            "no node has room for {} mCPU and {} bytes of memory",
            request.requests.cpu_millis, request.requests.memory_bytes
        )),
    }
}

fn matches_selector(node: &Node, selector: &[Label]) -> bool {
    selector.iter().all(|want| node.labels.iter().any(|l| l.key == want.key && l.value == want.value))
}

fn fits(node: &Node, requests: &Resources) -> bool {
    let used = node.backends.iter().fold(Resources { cpu_millis: 0, memory_bytes: 0 }, |acc, b| acc.plus(&b.requests));
    let total = used.plus(requests);
    (node.capacity.cpu_millis == 0 || total.cpu_millis <= node.capacity.cpu_millis)
        && (node.capacity.memory_bytes == 0 || total.memory_bytes <= node.capacity.memory_bytes)
}

fn describe(labels: &[Label]) -> String {
    let parts: Vec<String> = labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::{self, Harness, backend, label, placement_request};

    const GI: u64 = 1 << 30;

    fn placed(name: &str, owner: &str, cpu: u64) -> PlacedBackend {
        let mut p = testing::placed(name, Some(owner), None);
        p.requests.cpu_millis = cpu;
        p
    }

    fn node(name: &str, labels: Vec<Label>, cpu: u64, backends: Vec<PlacedBackend>) -> Node {
        Node { labels, backends, ..testing::node(name, cpu, 8 * GI) }
    }

    fn request(nodes: Vec<Node>) -> PlacementRequest {
        let mut b = backend("new");
        b.owner = Some("alice".into());
        let mut req = placement_request(b, nodes, 0);
        req.requests = Resources { cpu_millis: 500, memory_bytes: GI };
        req
    }

    fn cluster() -> Vec<Node> {
        vec![
            node("a", vec![label("zone", "x")], 4000, vec![placed("1", "bob", 500), placed("2", "bob", 500)]),
            node("b", vec![label("zone", "y")], 4000, vec![placed("3", "bob", 500)]),
            node("c", vec![label("zone", "y"), label("gpu", "yes")], 1000, vec![placed("4", "bob", 800)]),
        ]
    }

    #[test]
    fn spread_picks_the_emptiest_fitting_node_and_pack_the_fullest() {
        let req = request(cluster());
        // c has one backend but no room for 500 m more.
        assert_eq!(decide(&req, &Settings::default()), Placement::Node("b".into()));
        let pack = Settings { strategy: Strategy::Pack, ..Default::default() };
        assert_eq!(decide(&req, &pack), Placement::Node("a".into()));
    }

    #[test]
    fn node_selector_is_respected() {
        let mut req = request(cluster());
        req.node_selector = vec![label("gpu", "yes")];
        req.requests.cpu_millis = 100;
        assert_eq!(decide(&req, &Settings::default()), Placement::Node("c".into()));
        req.node_selector = vec![label("zone", "z")];
        assert!(matches!(decide(&req, &Settings::default()), Placement::Reject(r) if r.contains("zone=z")));
    }

    #[test]
    fn owner_quota_rejects_with_a_reason() {
        let mut req = request(cluster());
        req.owner_backends = vec![placed("o1", "alice", 0), placed("o2", "alice", 0)];
        let s = Settings { max_per_owner: Some(2), ..Default::default() };
        let Placement::Reject(reason) = decide(&req, &s) else { panic!("admitted") };
        assert!(reason.contains("max-per-owner is 2"), "{reason}");
        req.owner_backends.pop();
        assert_eq!(decide(&req, &s), Placement::Node("b".into()));
    }

    #[test]
    fn no_room_anywhere_is_a_rejection_and_no_nodes_means_anywhere() {
        let mut req = request(cluster());
        req.requests.cpu_millis = 100_000;
        assert!(matches!(decide(&req, &Settings::default()), Placement::Reject(r) if r.contains("no node has room")));
        let mut req = request(vec![]);
        req.node_selector = vec![label("zone", "x")];
        assert_eq!(decide(&req, &Settings::default()), Placement::Anywhere(vec![label("zone", "x")]));
    }

    #[test]
    fn settings_are_read_through_the_host_and_validated() {
        let mut req = request(cluster());
        req.owner_backends = vec![placed("o1", "alice", 0)];
        let h = Harness::new().settings(r#"{"max-per-owner": 1}"#);
        assert!(matches!(h.run(|| DefaultScheduler::place(req)).unwrap(), Placement::Reject(_)));
        assert!(DefaultScheduler::validate_settings(r#"{"max-per-owner": 0}"#).is_err());
        assert!(DefaultScheduler::validate_settings(r#"{"strategy": "random"}"#).is_err());
        assert!(DefaultScheduler::validate_settings(r#"{"strategy": "pack"}"#).is_ok());
    }
}
