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

/// How long a watch (the caches of backends, their Pods and Nodes, a
/// plugin's ConfigMap, the controller's triggers) waits before trying the
/// API server again after it failed: from 0.8 s, doubling, up to 3 s (each
/// wait jittered up to twice that, so under 6 s). A watch that works
/// again starts over from 0.8 s (kube-runtime resets it on the first
/// event; the two-minute timer only covers a watch that yields nothing
/// but failures). kube-runtime's default, client-go's, goes up to 30 s
/// (jittered up to 60 s), which is kind to an API server with thousands of
/// clients; Spawner has a few replicas with a few watches each, and that
/// wait would leave a proxy's routes as far behind after an API server
/// restart (a control-plane upgrade): every backend created since would
/// be a 404.
pub(crate) fn watch_backoff() -> impl kube::runtime::utils::Backoff + 'static {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(800))
        .with_max_delay(std::time::Duration::from_secs(3))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(exponential),
        std::time::Duration::from_secs(120),
    )
}

/// A watch's failures, logged as warnings at most once per 10 s (with how
/// many were held back): its retries come seconds apart
/// ([`watch_backoff`]), and an API server away for a minute would
/// otherwise write a dozen lines for each watch.
pub(crate) struct WatchFailures {
    what: String,
    gate: crate::log_gate::LogGate,
}

impl WatchFailures {
    /// Failures of the watch `what` (`watching the backends' Pods`).
    pub(crate) fn new(what: impl Into<String>) -> Self {
        WatchFailures { what: what.into(), gate: crate::log_gate::LogGate::default() }
    }

    /// Logs `error` unless a line for this watch passed in the last 10 s.
    pub(crate) fn log(&self, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.gate.pass(std::time::Instant::now()) {
            tracing::warn!(error = %error, suppressed, "{}; retrying (`suppressed`: failures not logged since the last line)", self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::utils::Backoff as _;

    /// Retries come at most 6 s apart (3 s, jittered), however long the
    /// API server stays away, and start from 0.8 s again once a watch
    /// works.
    #[test]
    fn watches_retry_at_most_six_seconds_apart_and_start_over_once_they_work() {
        let mut backoff = super::watch_backoff();
        let waits: Vec<Duration> = backoff.by_ref().take(40).collect();
        assert_eq!(waits.len(), 40, "gave up");
        let (first, rest) = (waits[0], &waits[1..]);
        assert!((Duration::from_millis(800)..=Duration::from_millis(1600)).contains(&first), "{first:?}");
        assert!(rest.iter().all(|w| *w <= Duration::from_secs(6)), "{waits:?}");
        assert!(waits[3..].iter().all(|w| *w >= Duration::from_secs(3)), "the cap is reached: {waits:?}");
        backoff.reset();
        let again = backoff.next().unwrap();
        assert!(again <= Duration::from_millis(1600), "{again:?}");
    }
}
