//! Hot reload of plugin files: when a configured plugin (or its settings
//! file) changes, it is loaded and validated, then swapped in; a bad file
//! keeps the old plugin and the reason is logged and counted.
//!
//! Only changes count: reading a file for a reload raises access events,
//! which must not trigger the next reload, and a file whose content (with
//! its settings) is what was last tried is not tried again, so one bad
//! write is one error, not one per debounce period.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::config::PluginsConfig;
use crate::plugins::{LoadResult, PluginKind, PluginSource, Plugins};

/// Changes are applied this long after the last event, so an editor's
/// write-rename-chmod sequence is one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The source of `kind` as configured (file or embedded, with settings).
pub fn source(config: &PluginsConfig, kind: PluginKind) -> LoadResult<PluginSource> {
    let slot = config.slot(kind);
    let settings = match (&slot.settings, &slot.settings_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| crate::plugins::LoadError::ReadSettings { path: path.display().to_string(), source })?,
        (None, None) => String::new(),
    };
    match &slot.file {
        Some(path) => PluginSource::file(path, settings),
        None => Ok(PluginSource::embedded(kind, settings)),
    }
}

/// Watches the configured plugin files; returns the watcher, which stops
/// watching when dropped. `loaded` holds the [`fingerprint`]s of what is
/// loaded now, so touching an unchanged file reloads nothing.
pub fn spawn(
    config: PluginsConfig,
    plugins: Arc<Plugins>,
    loaded: HashMap<PluginKind, [u8; 32]>,
) -> notify::Result<Option<notify::RecommendedWatcher>> {
    let mut files: Vec<(PluginKind, PathBuf)> = Vec::new();
    for kind in PluginKind::ALL {
        let slot = config.slot(kind);
        for f in [&slot.file, &slot.settings_file].into_iter().flatten() {
            files.push((kind, std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && changes_content(&e.kind)
        {
            for p in e.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    // Watch directories: editors and `cp` replace files by renaming.
    let mut dirs: Vec<PathBuf> = files.iter().filter_map(|(_, f)| f.parent().map(PathBuf::from)).collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        // What was last tried for each kind (digest of component + settings).
        let mut tried = loaded;
        while let Some(first) = rx.recv().await {
            let mut changed = vec![first];
            while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                changed.push(p);
            }
            let mut kinds: Vec<PluginKind> = files
                .iter()
                .filter(|(_, f)| changed.iter().any(|c| c == f || std::fs::canonicalize(c).ok().as_ref() == Some(f)))
                .map(|(k, _)| *k)
                .collect();
            kinds.dedup();
            for kind in kinds {
                let source = match source(&config, kind) {
                    Ok(s) => s,
                    Err(e) => {
                        let file = files.iter().find(|(k, _)| *k == kind).map(|(_, f)| f.display().to_string()).unwrap_or_default();
                        plugins.refuse(kind, &file, &e);
                        continue;
                    }
                };
                if replace_if_changed(&plugins, kind, &source, &mut tried).await.is_none() {
                    tracing::debug!(kind = kind.as_str(), plugin = %source.name, "plugin file touched but unchanged; not reloaded");
                }
            }
        }
    });
    Ok(Some(watcher))
}

/// Hot-swaps `kind` to `source` unless that (component and settings) is
/// what was last tried, as `tried` records: one bad write is then one
/// error, not one per notification. `None` when unchanged; else the
/// outcome, which [`Plugins::replace`] has logged and counted.
///
/// Loading compiles the component and calls its `validate-settings` (up to
/// [`DEADLINE_TRIES`](crate::plugins::loaded::DEADLINE_TRIES) deadlines): seconds of
/// CPU for a large plugin. It runs on a blocking thread, so the async
/// workers that carry the proxy's requests are not held up by a reload.
pub async fn replace_if_changed(
    plugins: &Arc<Plugins>,
    kind: PluginKind,
    source: &PluginSource,
    tried: &mut HashMap<PluginKind, [u8; 32]>,
) -> Option<LoadResult<crate::plugins::PluginInfo>> {
    let digest = fingerprint(source);
    if tried.insert(kind, digest) == Some(digest) {
        return None;
    }
    let (loader, owned) = (plugins.clone(), source.clone());
    Some(match tokio::task::spawn_blocking(move || loader.replace(kind, &owned)).await {
        Ok(outcome) => outcome,
        // `replace` turns the plugin's failures into errors; this is a panic
        // of the host's own, which must not end the watch either.
        Err(e) => {
            let e = crate::plugins::LoadError::Runtime(format!("loading {}: {e}", source.name));
            plugins.refuse(kind, &source.name, &e);
            Err(e)
        }
    })
}

/// Whether a file event can mean new content: creation, removal, renames
/// and writes do; reads (opening, closing after reading, atime updates) do
/// not.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        // The end of a write is worth a look; other accesses are reads.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

/// Digest of what a reload would load: the component and its settings.
pub fn fingerprint(source: &PluginSource) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [&source.bytes[..], source.settings.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    #[test]
    fn reads_do_not_count_as_changes_and_writes_do() {
        // What notify's inotify backend reports for IN_OPEN, the event that
        // made every reload trigger the next one.
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!changes_content(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn the_fingerprint_covers_component_and_settings() {
        let a = PluginSource { name: "a".into(), bytes: Arc::from(&b"wasm"[..]), settings: "{}".into() };
        let same = PluginSource { name: "b".into(), bytes: Arc::from(&b"wasm"[..]), settings: "{}".into() };
        let other_settings = PluginSource { settings: "{\"x\":1}".into(), ..same.clone() };
        let other_bytes = PluginSource { bytes: Arc::from(&b"wasm2"[..]), ..same.clone() };
        assert_eq!(fingerprint(&a), fingerprint(&same));
        assert_ne!(fingerprint(&a), fingerprint(&other_settings));
        assert_ne!(fingerprint(&a), fingerprint(&other_bytes));
    }
}
