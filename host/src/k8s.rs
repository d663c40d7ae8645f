//! Kubernetes mode: the `SessionLivedBackend` resource ([`crd`]), its Pods
//! ([`pod`]), the controller that reconciles one into the other
//! ([`controller`], `spawner operator`), and the proxy's and sweeper's view
//! of them ([`cluster`], `spawner proxy`), with the lifecycle, plugins,
//! proxy and sweeper local mode uses.

pub mod cluster;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod pod;
pub mod serve;
