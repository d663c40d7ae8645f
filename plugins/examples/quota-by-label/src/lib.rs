//! Example scheduler: quotas by label.
//!
//! Each backend carries a label (say `team=data`); at most `quotas[value]`
//! live backends (or `default`) may carry the same value across the whole
//! cluster. Admitted backends go to the least loaded node that matches the
//! node selector.
//!
//! Settings: `{"label": "team", "quotas": {"data": 2, "web": 10}, "default": 5}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use spawner_plugin_sdk::host;
use spawner_plugin_sdk::scheduler::*;

/// Quota settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The label whose value is counted.
    pub label: String,
    /// Quota per label value.
    #[serde(default)]
    pub quotas: BTreeMap<String, usize>,
    /// Quota for values not listed (and for backends without the label).
    pub default: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { label: "team".into(), quotas: BTreeMap::new(), default: 5 }
    }
}

/// The plugin.
pub struct QuotaByLabel;

impl Scheduler for QuotaByLabel {
    fn place(request: PlacementRequest) -> Result<Placement, PluginError> {
        Ok(decide(&request, &host::settings_json()?))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        host::parse_settings::<Settings>(settings).map(|_| ())
    }
}

spawner_plugin_sdk::export!(scheduler: QuotaByLabel);

/// The policy.
pub fn decide(request: &PlacementRequest, settings: &Settings) -> Placement {
    let value = request.backend.label(&settings.label).unwrap_or("");
    let quota = settings.quotas.get(value).copied().unwrap_or(settings.default);
    let live = request
        .nodes
        .iter()
        .flat_map(|n| &n.backends)
        .filter(|b| spawner_plugin_sdk::helpers::find_label(&b.labels, &settings.label).unwrap_or("") == value)
        .count();
    if live >= quota {
        host::info(&format!("quota reached for {}={value}: {live}/{quota}", settings.label));
        return Placement::Reject(format!("{}={value} already has {live} backends (quota {quota})", settings.label));
    }
    request
        .nodes
        .iter()
        .filter(|n| request.node_selector.iter().all(|s| n.labels.contains(s)))
        .min_by_key(|n| (n.backends.len(), n.name.clone()))
        .map(|n| Placement::Node(n.name.clone()))
        .unwrap_or_else(|| Placement::Anywhere(request.node_selector.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::{backend, label};

    fn placed(team: &str) -> PlacedBackend {
        PlacedBackend {
            name: "x".into(),
            owner: None,
            labels: vec![label("team", team)],
            node: None,
            requests: Resources { cpu_millis: 0, memory_bytes: 0 },
        }
    }

    fn request(team: &str, existing: Vec<PlacedBackend>) -> PlacementRequest {
        let mut b = backend("new");
        b.labels = vec![label("team", team)];
        PlacementRequest {
            backend: b,
            requests: Resources { cpu_millis: 0, memory_bytes: 0 },
            node_selector: vec![],
            nodes: vec![Node {
                name: "n1".into(),
                labels: vec![],
                capacity: Resources { cpu_millis: 0, memory_bytes: 0 },
                backends: existing,
            }],
            owner_backends: vec![],
            now: 0,
        }
    }

    #[test]
    fn quota_counts_only_the_same_label_value() {
        let s: Settings = host::parse_settings(r#"{"label":"team","quotas":{"data":2},"default":1}"#).unwrap();
        assert_eq!(decide(&request("data", vec![placed("data"), placed("web")]), &s), Placement::Node("n1".into()));
        assert!(
            matches!(decide(&request("data", vec![placed("data"), placed("data")]), &s), Placement::Reject(r) if r.contains("quota 2"))
        );
        assert!(matches!(decide(&request("web", vec![placed("web")]), &s), Placement::Reject(_)));
    }
}
