//! Kubernetes mode: the `SessionLivedBackend` resource ([`crd`]).
//!
//! The operator that reconciles it into Pods, using the same lifecycle,
//! plugins, proxy and sweeper as local mode, builds on these types.

pub mod crd;
pub mod pod;
