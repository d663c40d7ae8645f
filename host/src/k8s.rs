//! Kubernetes mode: the `SessionLivedBackend` resource ([`crd`]), its Pods
//! ([`pod`]) and the controller that reconciles one into the other
//! ([`controller`]) with the lifecycle and plugins local mode uses.

pub mod controller;
pub mod crd;
pub mod pod;
