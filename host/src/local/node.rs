//! This machine, described as the scheduler's one candidate node.

use std::sync::OnceLock;

use crate::plugins::types::{Label, Resources};

/// Name, labels and capacity of this machine, read once.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub name: String,
    pub labels: Vec<Label>,
    pub capacity: Resources,
}

pub(crate) fn this_machine() -> &'static NodeInfo {
    static NODE: OnceLock<NodeInfo> = OnceLock::new();
    NODE.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        let labels = vec![
            Label { key: "kubernetes.io/hostname".into(), value: name.clone() },
            Label { key: "kubernetes.io/os".into(), value: std::env::consts::OS.into() },
            Label {
                key: "kubernetes.io/arch".into(),
                value: if std::env::consts::ARCH == "x86_64" { "amd64".into() } else { std::env::consts::ARCH.into() },
            },
            Label { key: "spawner.dev/runtime".into(), value: "local".into() },
        ];
        NodeInfo { name, labels, capacity: Resources { cpu_millis: cpus * 1000, memory_bytes: memory } }
    })
}
