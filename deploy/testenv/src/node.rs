//! Fake Nodes: shaped by a test, run by kwok.

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use super::{ControlPlane, KWOK_NODE_ANNOTATION, START_TIMEOUT, tail};

/// A fake Node for kwok.
#[derive(Debug, Clone)]
pub struct FakeNode {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Allocatable CPU, e.g. "4".
    pub cpu: String,
    /// Allocatable memory, e.g. "8Gi".
    pub memory: String,
    /// Taints, as (key, value, effect).
    pub taints: Vec<(String, String, String)>,
    /// Cordoned (`spec.unschedulable`) from its creation.
    pub cordoned: bool,
}

impl FakeNode {
    /// A node with 4 CPUs and 8 GiB.
    pub fn new(name: &str) -> Self {
        FakeNode { name: name.into(), labels: Vec::new(), cpu: "4".into(), memory: "8Gi".into(), taints: Vec::new(), cordoned: false }
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    /// Adds a taint (effect `NoSchedule`, `PreferNoSchedule` or `NoExecute`),
    /// present from the node's creation.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push((key.into(), value.into(), effect.into()));
        self
    }

    /// Cordoned from its creation, as `kubectl cordon` leaves a node.
    pub fn cordoned(mut self) -> Self {
        self.cordoned = true;
        self
    }
}

impl ControlPlane {
    /// Adds a kwok-managed Node (kwok marks it Ready and runs its Pods),
    /// and waits until kwok has marked it Ready: then kwok is running and
    /// manages it. kube-scheduler places Pods on a Node before that (no
    /// node lifecycle controller taints it not-ready), and had kwok died,
    /// they would never run, with nothing saying why.
    pub async fn add_node(&self, node: &FakeNode) -> anyhow::Result<()> {
        let labels: serde_json::Map<String, serde_json::Value> = node
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .chain([
                ("kubernetes.io/hostname".to_string(), serde_json::Value::String(node.name.clone())),
                ("type".to_string(), serde_json::Value::String("kwok".into())),
            ])
            .collect();
        let taints: Vec<serde_json::Value> =
            node.taints.iter().map(|(k, v, e)| serde_json::json!({"key": k, "value": v, "effect": e})).collect();
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": node.name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
            "spec": {"taints": taints, "unschedulable": node.cordoned},
            "status": {
                "allocatable": {"cpu": node.cpu, "memory": node.memory, "pods": "110"},
                "capacity": {"cpu": node.cpu, "memory": node.memory, "pods": "110"},
            },
        }))?;
        let api = Api::<Node>::all(self.client().await?);
        api.create(&PostParams::default(), &n).await.with_context(|| format!("creating node {}", node.name))?;
        let ready = |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref()?.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let marked = tokio::time::timeout(START_TIMEOUT, kube::runtime::wait::await_condition(api, &node.name, ready)).await;
        if !matches!(marked, Ok(Ok(_))) {
            let exited = self.exited().unwrap_or_else(|| "every component is running".into());
            bail!(
                "kwok did not mark node {} Ready within {START_TIMEOUT:?} ({exited}); its log:\n{}",
                node.name,
                tail(&self.log("kwok"), 40)
            );
        }
        Ok(())
    }
}
