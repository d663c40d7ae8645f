//! Plugins from a ConfigMap, hot-reloaded: the Kubernetes counterpart of
//! `spawner dev --plugin KIND=FILE`.
//!
//! Layout of the ConfigMap, per kind (`scheduler`, `auth`, `idle`):
//! - `binaryData` `<kind>.wasm`: the component (`kubectl create configmap
//!   spawner-plugins --from-file=auth.wasm` puts a binary file there);
//! - `data` `<kind>.json`: its settings, passed verbatim.
//!
//! A kind with neither runs the embedded default; settings alone configure
//! the embedded default (`scheduler.json: {"max-per-owner": 3}`).
//!
//! Each process loads the kinds it uses (the operator the scheduler, the
//! proxy auth and idle) from the same ConfigMap. At start a plugin that is
//! refused stops the process with the reason: there is no previous plugin
//! to keep, and silently running the default instead of a deployment's own
//! auth policy would be worse. Afterwards every change is loaded and
//! validated before it replaces the running plugin; a refused one leaves
//! the running plugin in place, and the reason is logged, counted
//! (`plugin_loads_total`) and recorded as a Warning Event on the ConfigMap
//! (`kubectl describe configmap spawner-plugins`). Deleting the ConfigMap
//! returns to the defaults, as starting without one does: absence is "no
//! plugin configured", which is not the same as a plugin refused (the
//! default auth plugin, the one then used, requires Spawner's tokens).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _};

use crate::metrics::Metrics;
use crate::plugins::{LoadError, PluginKind, PluginSource, Plugins, Runtime};
use crate::watch::{fingerprint, replace_if_changed};

/// Where a process's plugins come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfigMap {
    /// The ConfigMap's namespace (Spawner's own, not the backends').
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Why the plugins could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum PluginMapError {
    /// The ConfigMap could not be read.
    #[error("reading ConfigMap {namespace}/{name}: {source}")]
    Read {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// An entry is in the wrong place.
    #[error("ConfigMap {0}: {1}")]
    Layout(String, String),
    /// A plugin was refused.
    #[error("ConfigMap {0}: {1}")]
    Load(String, #[source] LoadError),
}

/// The sources `configmap` holds for `kinds` (see the module docs), named
/// `NAMESPACE/NAME/KEY` in messages; no ConfigMap means the defaults.
pub fn sources(configmap: Option<&ConfigMap>, kinds: &[PluginKind]) -> Result<Vec<(PluginKind, PluginSource)>, String> {
    let empty = Default::default();
    let (data, binary) = match configmap {
        Some(cm) => (cm.data.as_ref().unwrap_or(&empty), cm.binary_data.as_ref()),
        None => (&empty, None),
    };
    let label =
        configmap.map(|cm| format!("{}/{}", cm.metadata.namespace.as_deref().unwrap_or(""), cm.metadata.name.as_deref().unwrap_or("")));
    let mut out = Vec::new();
    for &kind in kinds {
        let (wasm, settings) = (format!("{kind}.wasm"), format!("{kind}.json"));
        if data.contains_key(&wasm) {
            return Err(format!(
                "{wasm} is under data, which holds text; a component goes under binaryData \
                 (kubectl create configmap --from-file={wasm} puts it there)"
            ));
        }
        let settings_text = data.get(&settings).cloned().unwrap_or_default();
        let source = match binary.and_then(|b| b.get(&wasm)) {
            Some(bytes) => PluginSource {
                name: format!("{}/{wasm}", label.as_deref().unwrap_or("")),
                bytes: Arc::from(&bytes.0[..]),
                settings: settings_text,
            },
            None => PluginSource::embedded(kind, settings_text),
        };
        out.push((kind, source));
    }
    Ok(out)
}

/// Keys that are no plugin's: likely typos (`schedular.wasm`), reported so
/// a plugin that silently is not loaded does not go unnoticed.
fn unknown_keys(configmap: &ConfigMap) -> Vec<String> {
    let known = |k: &str| PluginKind::ALL.iter().any(|kind| k == format!("{kind}.wasm") || k == format!("{kind}.json"));
    let data = configmap.data.iter().flat_map(|d| d.keys());
    let binary = configmap.binary_data.iter().flat_map(|d| d.keys());
    data.chain(binary).filter(|k| !known(k)).cloned().collect()
}

/// Loads `kinds` from the ConfigMap (the defaults if it does not exist),
/// then keeps watching it and hot-swaps what changes. Returns the plugins
/// and the watching task (abort it to stop).
pub async fn load(
    client: Client,
    at: &PluginConfigMap,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    kinds: &'static [PluginKind],
    reporter: &str,
) -> Result<(Arc<Plugins>, tokio::task::JoinHandle<()>), PluginMapError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let label = format!("{}/{}", at.namespace, at.name);
    let current = api.get_opt(&at.name).await.map_err(|source| PluginMapError::Read {
        namespace: at.namespace.clone(),
        name: at.name.clone(),
        source,
    })?;
    match &current {
        Some(cm) => {
            for key in unknown_keys(cm) {
                tracing::warn!(configmap = %label, key = %key, "ConfigMap key is no plugin's (expected KIND.wasm or KIND.json); ignored");
            }
        }
        None => tracing::info!(configmap = %label, "no plugin ConfigMap; using the embedded defaults until it is created"),
    }
    let sources = sources(current.as_ref(), kinds).map_err(|e| PluginMapError::Layout(label.clone(), e))?;
    let tried: HashMap<PluginKind, [u8; 32]> = sources.iter().map(|(k, s)| (*k, fingerprint(s))).collect();
    let plugins = Arc::new(Plugins::new(runtime, metrics, sources).map_err(|e| PluginMapError::Load(label.clone(), e))?);
    let events = Recorder::new(client, Reporter { controller: reporter.into(), instance: std::env::var("POD_NAME").ok() });
    let watching = tokio::spawn(follow(api, at.name.clone(), plugins.clone(), kinds, tried, events));
    Ok((plugins, watching))
}

/// Applies every change of the ConfigMap to `plugins`.
async fn follow(
    api: Api<ConfigMap>,
    name: String,
    plugins: Arc<Plugins>,
    kinds: &'static [PluginKind],
    mut tried: HashMap<PluginKind, [u8; 32]>,
    events: Recorder,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).backoff(super::watch_backoff()).boxed();
    let failures = super::WatchFailures::new(format!("watching the plugin ConfigMap {name}"));
    // A (re)listing that finds no ConfigMap means it was deleted, perhaps
    // while the watch was down (no Delete event then).
    let mut listed = false;
    // The ConfigMap as last seen, and how many reloads of it in a row were
    // refused for the moment only (to be tried again, less and less often:
    // see `watch::retry_after`).
    let mut last: Option<ConfigMap> = None;
    let mut retries = 0;
    loop {
        // The next event, or (`None`) the retry of the last ConfigMap.
        let event = match retries {
            0 => Some(stream.next().await),
            n => tokio::time::timeout(crate::watch::retry_after(n), stream.next()).await.ok(),
        };
        let configmap = match event {
            None => last.clone(),
            Some(None) => return,
            Some(Some(Ok(watcher::Event::Init))) => {
                listed = false;
                continue;
            }
            Some(Some(Ok(watcher::Event::InitApply(cm)))) => {
                listed = true;
                Some(cm)
            }
            Some(Some(Ok(watcher::Event::InitDone))) if !listed => None,
            Some(Some(Ok(watcher::Event::InitDone))) => continue,
            Some(Some(Ok(watcher::Event::Apply(cm)))) => Some(cm),
            Some(Some(Ok(watcher::Event::Delete(_)))) => None,
            Some(Some(Err(e))) => {
                failures.log(&e);
                continue;
            }
        };
        let again = apply(configmap.as_ref(), &plugins, kinds, &mut tried, &events).await;
        retries = if again { retries + 1 } else { 0 };
        last = configmap;
    }
}

/// Loads what differs from what was last tried; reports each outcome.
/// True when a reload was refused for the moment only (and should be
/// tried again).
async fn apply(
    configmap: Option<&ConfigMap>,
    plugins: &Arc<Plugins>,
    kinds: &[PluginKind],
    tried: &mut HashMap<PluginKind, [u8; 32]>,
    events: &Recorder,
) -> bool {
    let report = |type_: EventType, reason: &str, mut note: String| {
        crate::text::cut_to(&mut note, super::MAX_EVENT_NOTE, "…");
        let event = KubeEvent { type_, reason: reason.into(), note: Some(note), action: "LoadPlugin".into(), secondary: None };
        async move {
            let Some(cm) = configmap else { return };
            if let Err(e) = events.publish(&event, &cm.object_ref(&())).await {
                tracing::warn!(error = %e, "could not record a Kubernetes Event on the plugin ConfigMap");
            }
        }
    };
    // Said only when something else was loaded (not on a start without one).
    let customised = kinds.iter().any(|k| tried.get(k).is_some_and(|d| *d != fingerprint(&PluginSource::embedded(*k, ""))));
    if configmap.is_none() && customised {
        tracing::info!("the plugin ConfigMap is gone; returning to the embedded defaults");
    }
    if let Some(cm) = configmap {
        let unknown = unknown_keys(cm);
        if !unknown.is_empty() {
            let note =
                format!("keys {} are no plugin's (expected KIND.wasm in binaryData, KIND.json in data); ignored", unknown.join(", "));
            tracing::warn!("{note}");
            report(EventType::Warning, "UnknownKeys", note).await;
        }
    }
    let sources = match sources(configmap, kinds) {
        Ok(s) => s,
        Err(e) => {
            // Counted for each kind it carries plugins for, as a refused
            // reload of theirs.
            let label = configmap.and_then(|cm| cm.metadata.name.clone()).unwrap_or_default();
            for &kind in kinds {
                plugins.refuse(kind, &label, &e);
            }
            report(EventType::Warning, "PluginRejected", format!("{e}; the running plugins stay")).await;
            return false;
        }
    };
    let mut retry = false;
    for (kind, source) in sources {
        match replace_if_changed(plugins, kind, &source, tried).await {
            None => {}
            Some(Ok(info)) => {
                let note = format!("{kind} plugin {} (sha256 {}) loaded", info.name, &info.digest[..12]);
                report(EventType::Normal, "PluginLoaded", note).await;
            }
            Some(Err(e)) => {
                let keeping = plugins.info(kind).name;
                let again = match e.is_transient() {
                    true => " (refused for the moment: tried again later)".to_string(),
                    false => String::new(),
                };
                retry |= e.is_transient();
                report(EventType::Warning, "PluginRejected", format!("{e}; keeping {keeping}{again}")).await;
            }
        }
    }
    retry
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn configmap(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("spawner-plugins".into());
        cm.metadata.namespace = Some("spawner".into());
        cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
        cm.binary_data = Some(binary.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect::<BTreeMap<_, _>>());
        cm
    }

    #[test]
    fn components_settings_and_defaults_per_kind() {
        let cm = configmap(&[("auth.json", r#"{"secret":"x"}"#), ("scheduler.json", r#"{"max-per-owner":1}"#)], &[("auth.wasm", b"\0asm")]);
        let got = sources(Some(&cm), &PluginKind::ALL).unwrap();
        let by_kind: HashMap<PluginKind, PluginSource> = got.into_iter().collect();
        assert_eq!(by_kind[&PluginKind::Auth].name, "spawner/spawner-plugins/auth.wasm");
        assert_eq!(&*by_kind[&PluginKind::Auth].bytes, b"\0asm");
        assert_eq!(by_kind[&PluginKind::Auth].settings, r#"{"secret":"x"}"#);
        assert_eq!(by_kind[&PluginKind::Scheduler].name, "default-scheduler", "settings alone configure the default");
        assert_eq!(by_kind[&PluginKind::Scheduler].settings, r#"{"max-per-owner":1}"#);
        assert_eq!(by_kind[&PluginKind::Idle].name, "default-idle");
        assert_eq!(sources(None, &[PluginKind::Auth]).unwrap()[0].1.name, "default-auth");
    }

    #[test]
    fn a_component_under_data_and_unknown_keys_are_reported() {
        let cm = configmap(&[("auth.wasm", "not binary")], &[]);
        let e = sources(Some(&cm), &[PluginKind::Auth]).unwrap_err();
        assert!(e.contains("binaryData"), "{e}");
        let cm = configmap(&[("schedular.json", "{}")], &[("auth.wasm", b"\0asm")]);
        assert_eq!(unknown_keys(&cm), ["schedular.json"]);
    }
}
