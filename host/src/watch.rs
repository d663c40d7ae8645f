//! Hot reload of plugin files: when a configured plugin (or its settings
//! file) changes, it is loaded and validated, then swapped in; a bad file
//! keeps the old plugin and the reason is logged and counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

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
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|source| crate::plugins::LoadError::Read { path: path.display().to_string(), source })?
        }
        (None, None) => String::new(),
    };
    match &slot.file {
        Some(path) => PluginSource::file(path, settings),
        None => Ok(PluginSource::embedded(kind, settings)),
    }
}

/// Watches the configured plugin files; returns the watcher, which stops
/// watching when dropped.
pub fn spawn(config: PluginsConfig, plugins: Arc<Plugins>) -> notify::Result<Option<notify::RecommendedWatcher>> {
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
        if let Ok(e) = event {
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
                let result = source(&config, kind).and_then(|s| plugins.replace(kind, &s));
                if let Err(e) = result {
                    tracing::error!(kind = kind.as_str(), error = %e, "plugin reload failed; the previous plugin stays");
                }
            }
        }
    });
    Ok(Some(watcher))
}
