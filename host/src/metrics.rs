//! The Prometheus registry every subsystem reports into, served at
//! `/metrics`. Each subsystem owns a struct of metric families registered
//! here once at start-up; recording is lock-free afterwards.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// All of Spawner's metrics.
pub struct Metrics {
    registry: Registry,
    /// Plugin calls, failures and loads.
    pub plugins: PluginMetrics,
    /// Backends by phase, spawn-to-ready.
    pub backends: BackendMetrics,
    /// Proxy requests and connections.
    pub proxy: ProxyMetrics,
    /// The Kubernetes operator's leadership and reconcile failures.
    pub operator: OperatorMetrics,
    /// REST API requests.
    pub api: ApiMetrics,
}

/// One in `gauge` while it lives: an open connection or WebSocket is
/// counted until its holder is dropped, also by a panic or a task that is
/// dropped, never left counted.
#[derive(Debug)]
pub struct Counted(Gauge);

impl Counted {
    /// Adds one to `gauge` until the result is dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spawner");
        let plugins = PluginMetrics::register(&mut registry);
        let backends = BackendMetrics::register(&mut registry);
        let proxy = ProxyMetrics::register(&mut registry);
        let operator = OperatorMetrics::register(&mut registry);
        let api = ApiMetrics::register(&mut registry);
        Metrics { registry, plugins, backends, proxy, operator, api }
    }

    /// The text exposition format, for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Labels: plugin kind and the decision it made.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `scheduler`, `auth` or `idle`.
    pub kind: &'static str,
    /// `allow`/`deny`, `keep`/`terminate`, `node`/`anywhere`/`reject`.
    pub decision: &'static str,
}

/// Labels: plugin kind, plugin name and what went wrong.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Plugin kind.
    pub kind: &'static str,
    /// Plugin name (file name or `default-*`).
    pub plugin: String,
    /// `deadline`, `memory`, `trap`, `plugin-error`, `invalid-answer`,
    /// `instantiate`, `host-panic`.
    pub error: &'static str,
}

/// Labels: plugin kind and the outcome of a load or reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// Plugin kind.
    pub kind: &'static str,
    /// `loaded` or `refused`.
    pub result: &'static str,
}

/// Labels: plugin kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Plugin kind.
    pub kind: &'static str,
}

/// Metrics of the plugin host.
pub struct PluginMetrics {
    /// Decisions returned to the rest of Spawner (after any fallback).
    pub decisions: Family<DecisionLabels, Counter>,
    /// Plugin calls that failed and were replaced by the kind's fallback.
    pub failures: Family<FailureLabels, Counter>,
    /// Plugin loads and hot reloads.
    pub loads: Family<LoadLabels, Counter>,
    /// Wall time of one call, instantiation included.
    pub call_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
}

/// Buckets of `plugin_call_seconds`, 2 µs to 1 s: an auth call takes
/// microseconds, and the default deadlines (20 ms for auth, 100 ms for the
/// others) are bucket bounds, so calls near them can be told apart.
const CALL_BUCKETS: [f64; 17] = [2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2.5e-1, 1.0];

impl PluginMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = PluginMetrics {
            decisions: Family::default(),
            failures: Family::default(),
            loads: Family::default(),
            call_seconds: Family::new_with_constructor(|| Histogram::new(CALL_BUCKETS.iter().copied())),
        };
        registry.register("plugin_decisions", "Plugin decisions by kind and outcome", m.decisions.clone());
        registry.register("plugin_failures", "Plugin calls that failed (the kind's fallback applied)", m.failures.clone());
        registry.register("plugin_loads", "Plugin loads and reloads by result", m.loads.clone());
        registry.register("plugin_call_seconds", "Duration of one plugin call, instantiation included", m.call_seconds.clone());
        m
    }
}

/// Labels: lifecycle phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `pending`, `ready`, `terminated`, ...
    pub phase: &'static str,
}

/// Labels: how a backend ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// `terminated` or `failed`.
    pub phase: &'static str,
    /// `idle`, `lifetime`, `requested`, `rejected`, `startup-timeout`,
    /// `exited`, `lost`.
    pub reason: &'static str,
}

/// Metrics of backends.
pub struct BackendMetrics {
    /// Backends currently in each phase (ended ones until forgotten).
    pub phase: Family<PhaseLabels, Gauge>,
    /// Backends that ended, by how: unlike the phase gauge, which loses
    /// ended backends when they are forgotten, this only grows.
    pub ended: Family<EndLabels, Counter>,
    /// From accepted to ready.
    pub spawn_to_ready_seconds: Histogram,
}

impl BackendMetrics {
    /// Counts one backend that reached `status`'s terminal phase.
    pub fn count_end(&self, status: &crate::lifecycle::Status) {
        let reason = status.reason.map_or("unknown", crate::lifecycle::Reason::as_str);
        self.ended.get_or_create(&EndLabels { phase: status.phase.as_str(), reason }).inc();
    }
}

impl BackendMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = BackendMetrics {
            phase: Family::default(),
            ended: Family::default(),
            // 0.5 ms to ~4.4 min: a local process is ready in milliseconds,
            // a Pod whose image is pulled in up to the startup timeout
            // (60 s by default, often raised).
            spawn_to_ready_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
        };
        // Every phase from the start, at 0: an alert on failed backends
        // sees a series before the first failure.
        for phase in crate::lifecycle::Phase::ALL {
            let _ = m.phase.get_or_create(&PhaseLabels { phase: phase.as_str() });
        }
        registry.register("backends", "Backends by lifecycle phase", m.phase.clone());
        registry.register("backends_ended", "Backends that ended, by final phase and reason", m.ended.clone());
        registry.register("spawn_to_ready_seconds", "Time from create to ready", m.spawn_to_ready_seconds.clone());
        m
    }
}

/// Metrics of the REST API (and `/metrics`, `/healthz`, the OpenAPI
/// document): what the web app's server sees, so that failing creates
/// (422, 429, 5xx) or a wrong API token (401) can be alerted on.
pub struct ApiMetrics {
    /// Requests answered, by method, endpoint and status code.
    pub requests: Family<ApiRequestLabels, Counter>,
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics { requests: Family::default() };
        registry.register(
            "api_requests",
            "Requests answered by the REST API (and /metrics, /healthz), by method, endpoint (the OpenAPI document's path, or none) and status code",
            m.requests.clone(),
        );
        m
    }
}

/// Labels: an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `GET`, `POST`, … (`other` beyond the usual ones).
    pub method: &'static str,
    /// The endpoint's path as the OpenAPI document writes it
    /// (`/api/v1/backends/{name}`), `/healthz`, `/metrics`, or `none`.
    pub endpoint: &'static str,
    /// The status code.
    pub code: u16,
}

/// Labels: HTTP status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabels {
    /// `2xx`, `3xx`, `4xx`, `5xx`, `1xx` (WebSocket upgrades).
    pub class: &'static str,
}

/// Labels: a Lease replicas compete for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// The Lease's name (`spawner-operator`; the proxies' sweeping Lease
    /// sets no gauge).
    pub lease: String,
}

/// Labels: why a reconcile failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    /// `api` (the API server refused or was out of reach), `finalizer`,
    /// `pod-name-taken`, `scheduler`, or `watch` (a watch of backends or
    /// their Pods failed).
    pub error: &'static str,
}

/// Metrics of the Kubernetes operator: what on-call needs to tell "no
/// leader" from "no backends", and a failing operator from a quiet one.
pub struct OperatorMetrics {
    /// 1 while this replica holds the Lease, 0 otherwise.
    pub leader: Family<LeaseLabels, Gauge>,
    /// Reconciles that failed and are retried (not counting the expected
    /// retries: a stale read, a Pod still stopping, caches filling), and
    /// failed watches (`error="watch"`).
    pub reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    /// Backends placed again because kube-scheduler could not run their
    /// Pod on the node the scheduler plugin chose (one per move).
    pub rescheduled: Counter,
}

impl OperatorMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = OperatorMetrics { leader: Family::default(), reconcile_errors: Family::default(), rescheduled: Counter::default() };
        registry.register("leader", "Whether this replica holds the Lease (1) or not (0)", m.leader.clone());
        registry.register("reconcile_errors", "Reconciles (and watches) that failed and are retried, by why", m.reconcile_errors.clone());
        registry.register(
            "backends_rescheduled",
            "Backends placed again because their Pod could not run on the node the scheduler plugin chose",
            m.rescheduled.clone(),
        );
        m
    }
}

/// Metrics of the proxy.
pub struct ProxyMetrics {
    /// Proxied requests by response status class.
    pub requests: Family<StatusClassLabels, Counter>,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// WebSockets open now.
    pub open_websockets: Gauge,
    /// Client connections accepted.
    pub connections: Counter,
    /// Times the listener found every connection slot taken and stopped
    /// accepting until one closed (alert on it: new clients, the API's
    /// included, wait meanwhile).
    pub connection_limit_reached: Counter,
    /// Sweeps that judged no backend idle (lifetime limits only) because a
    /// proxy replica could not be asked for its
    /// activity (alert on its rate: idle backends are not being ended).
    pub sweeps_skipped: Counter,
}

impl ProxyMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            requests: Family::default(),
            open_connections: Gauge::default(),
            open_websockets: Gauge::default(),
            connections: Counter::default(),
            connection_limit_reached: Counter::default(),
            sweeps_skipped: Counter::default(),
        };
        registry.register("proxy_requests", "Requests answered by the proxy, by status class", m.requests.clone());
        registry.register(
            "proxy_open_connections",
            "Client connections open on the listener (proxy, API and scrapes alike)",
            m.open_connections.clone(),
        );
        registry.register("proxy_open_websockets", "WebSockets open through the proxy", m.open_websockets.clone());
        registry.register(
            "proxy_connections",
            "Client connections accepted on the listener (proxy, API and scrapes alike)",
            m.connections.clone(),
        );
        registry.register(
            "proxy_connection_limit_reached",
            "Times every connection slot (max-connections) was taken, so that the listener stopped accepting until one closed",
            m.connection_limit_reached.clone(),
        );
        registry.register(
            "proxy_sweeps_skipped",
            "Sweeps that judged no backend idle (lifetime limits only) because a proxy replica could not be asked for its activity",
            m.sweeps_skipped.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_counted_is_counted_until_it_is_dropped_however_that_happens() {
        let gauge = Gauge::<i64>::default();
        let open = Counted::new(&gauge);
        assert_eq!(gauge.get(), 1);
        drop(open);
        assert_eq!(gauge.get(), 0);
        let panicked = std::panic::catch_unwind(|| {
            let _open = Counted::new(&gauge);
            panic!("a relay that panics");
        });
        assert!(panicked.is_err());
        assert_eq!(gauge.get(), 0, "not left counted");
    }
}
