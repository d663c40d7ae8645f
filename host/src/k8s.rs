//! Kubernetes mode: the `SessionLivedBackend` resource ([`crd`]), its Pods
//! ([`pod`]), the controller that reconciles one into the other
//! ([`controller`], `spawner operator`, scheduling from the caches in
//! [`inventory`]), and the proxy's and sweeper's view
//! of them ([`cluster`], `spawner proxy`), and the REST API's runtime over
//! them ([`control`]), plugins from a ConfigMap ([`plugins`]), with the lifecycle, plugins, proxy, sweeper and API
//! local mode uses.

pub mod cluster;
pub mod control;
pub mod controller;
pub mod crd;
pub mod inventory;
pub mod leader;
pub mod peers;
pub mod plugins;
pub mod pod;
pub mod serve;

/// The longest Event note the API server accepts (`events.k8s.io/v1`,
/// in bytes); a longer one is refused whole, and the Event lost.
pub(crate) const MAX_EVENT_NOTE: usize = 1024;
