//! Shared setup for the Kubernetes-mode tests (against deploy/testenv's
//! real control plane).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::wait::await_condition;
use spawner::k8s::crd::{SessionLivedBackend, SessionLivedBackendStatus};
use spawner::metrics::Metrics;
use spawner::plugins::{PluginKind, PluginSource, Plugins, Runtime, RuntimeConfig};

/// How long a test waits for the control plane to get somewhere.
pub const WAIT: Duration = Duration::from_secs(60);

/// A path under deploy/.
pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// The default plugins, the scheduler with `scheduler_settings`.
pub fn plugins(scheduler_settings: &str) -> Arc<Plugins> {
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), None).unwrap());
    let sources = vec![(PluginKind::Scheduler, PluginSource::embedded(PluginKind::Scheduler, scheduler_settings))];
    Arc::new(Plugins::new(runtime, Arc::new(Metrics::new()), sources).unwrap())
}

/// Waits until the object's status satisfies `f` (saying `what` it waited
/// for when it never does), and returns the object.
pub async fn until(
    api: &Api<SessionLivedBackend>,
    name: &str,
    what: &str,
    f: impl Fn(&SessionLivedBackendStatus) -> bool,
) -> SessionLivedBackend {
    let cond = move |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(&f);
    match tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(o))) => o,
        other => {
            let now = api.get_opt(name).await.unwrap().map(|o| (o.metadata.annotations, o.status));
            panic!("{name} never {what}: {other:?}; now: {now:?}")
        }
    }
}
