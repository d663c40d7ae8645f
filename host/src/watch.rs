//! Hot reload of plugin files: when a configured plugin (or its settings
//! file) changes, it is loaded and validated, then swapped in; a bad file
//! keeps the old plugin and the reason is logged and counted.
//!
//! Only changes count: reading a file for a reload raises access events,
//! which must not trigger the next reload, and a file whose content (with
//! its settings) is what was last tried is not tried again, so one bad
//! write is one error, not one per debounce period. Nor do other files
//! written in a plugin's directory ([`concerns_plugins`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::config::PluginsConfig;
use crate::plugins::{LoadResult, PluginKind, PluginSource, Plugins};

/// Changes are applied this long after the last event, so an editor's
/// write-rename-chmod sequence is one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The longest a burst of changes puts a reload off, unless they name a
/// configured file (one being written: each such change extends it).
const MAX_BURST: Duration = Duration::from_secs(1);

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
///
/// The directories watched are those of each file as configured and of
/// what it resolves to now, followed again after every change: a
/// ConfigMap mounted as a volume is a symlink (`idle.wasm ->
/// ..data/idle.wasm`) whose `..data` the kubelet re-points at a new
/// directory on each update, and a watch on the directory it resolved to
/// at start would see the first update only. Any change there re-reads
/// every configured plugin, and only what differs from what was last
/// tried is reloaded. A reload refused for the moment (see
/// [`LoadError::is_transient`](crate::plugins::LoadError::is_transient))
/// is tried again after [`RETRY`], then less and less often.
pub fn spawn(
    config: PluginsConfig,
    plugins: Arc<Plugins>,
    loaded: HashMap<PluginKind, [u8; 32]>,
) -> notify::Result<Option<Arc<Mutex<notify::RecommendedWatcher>>>> {
    let kinds: Vec<PluginKind> = PluginKind::ALL
        .into_iter()
        .filter(|k| {
            let slot = config.slot(*k);
            slot.file.is_some() || slot.settings_file.is_some()
        })
        .collect();
    if kinds.is_empty() {
        return Ok(None);
    }
    // Where the files lead may change (a symlink re-pointed), so the names
    // are looked up again whenever the watched directories are.
    let names = Arc::new(Mutex::new(file_names(&config)));
    let seen = names.clone();
    // Each change says whether it names a configured file (a plugin being
    // written) or not (a directory come or gone).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(e) = event else { return };
        let names = seen.lock().expect("names lock");
        if changes_content(&e.kind) && concerns_plugins(&e.paths, &names) {
            let _ = tx.send(e.paths.iter().any(|p| p.file_name().is_some_and(|n| names.contains(n))));
        }
    })?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut waiting = Vec::new();
    watch_dirs(&watcher, &config, &mut waiting)?;
    let weak = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        // What was last tried for each kind (digest of component + settings).
        let mut tried = loaded;
        // Reloads refused for the moment in a row (0: none pending).
        let mut retries = 0;
        loop {
            // The next change (then the rest of its burst), or the retry.
            let next = match retries {
                0 => rx.recv().await,
                n => tokio::time::timeout(retry_after(n), rx.recv()).await.unwrap_or(Some(false)),
            };
            if next.is_none() {
                return; // the watcher was dropped
            }
            // The rest of the burst: until quiet for a moment, and while a
            // plugin file is still being written (a slow copy); but other
            // changes put it off a second at most (a directory where files
            // come and go all the time, a parent watched while a plugin
            // directory is gone, would put it off for good).
            let mut burst_ends = tokio::time::Instant::now() + MAX_BURST;
            while tokio::time::Instant::now() < burst_ends
                && let Ok(Some(named)) = tokio::time::timeout_at(burst_ends.min(tokio::time::Instant::now() + DEBOUNCE), rx.recv()).await
            {
                if named {
                    burst_ends = tokio::time::Instant::now() + MAX_BURST;
                }
            }
            if let Some(w) = weak.upgrade()
                && let Err(e) = watch_dirs(&w, &config, &mut waiting)
            {
                tracing::warn!(error = %e, "cannot watch where the plugin files lead now; changes there may be missed");
            }
            *names.lock().expect("names lock") = file_names(&config);
            let mut retry = false;
            for &kind in &kinds {
                let source = match source(&config, kind) {
                    Ok(s) => s,
                    Err(e) => {
                        // Said once, as a bad file is: not again at each
                        // later change in its directory (its own log line,
                        // written there, would be one, and loop).
                        let unreadable: [u8; 32] = Sha256::digest(format!("unreadable: {e}")).into();
                        if tried.insert(kind, unreadable) != Some(unreadable) {
                            plugins.refuse(kind, &e.path().unwrap_or_default(), &e);
                        }
                        continue;
                    }
                };
                match replace_if_changed(&plugins, kind, &source, &mut tried).await {
                    None => {
                        tracing::debug!(kind = kind.as_str(), plugin = %source.name, "plugin files touched but unchanged; not reloaded")
                    }
                    Some(Err(e)) if e.is_transient() => retry = true,
                    Some(_) => {}
                }
            }
            retries = if retry { retries + 1 } else { 0 };
        }
    });
    Ok(Some(watcher))
}

/// Watches `spawner dev`'s config file, which is read at start only, and
/// warns when its content changes: plugin files reload by themselves, so
/// an edited template that silently did nothing (an unknown-template error
/// after adding one) looked like a mistake in the file. Each new content is
/// said once; touching the file, or writing it back as it was, says
/// nothing. The watch stops when the returned watcher is dropped.
/// `read` is the digest of the text Spawner started with (see
/// [`crate::config::Config::file_digest`]), so an edit made while it
/// started is said too.
pub fn warn_on_config_change(file: &Path, read: Option<[u8; 32]>) -> notify::Result<notify::RecommendedWatcher> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let name = file.file_name().map(OsString::from);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && changes_content(&e.kind)
            && e.paths.iter().any(|p| p.file_name().map(OsString::from) == name)
        {
            let _ = tx.send(());
        }
    })?;
    // Its directory: editors replace a file by renaming a new one over it.
    watcher.watch(file.parent().unwrap_or(Path::new("/")), RecursiveMode::NonRecursive)?;
    // Read once the writes have stopped for a moment: read mid-write (or
    // between an editor's two writes), a file is a change too, and was
    // said. The thread ends when the watcher, and so the sender, is gone.
    std::thread::spawn(move || {
        let mut last = read.or_else(|| config_digest(&file));
        while rx.recv().is_ok() {
            while rx.recv_timeout(DEBOUNCE).is_ok() {}
            let now = config_digest(&file);
            if now.is_some() && now != last {
                last = now;
                tracing::warn!(
                    config = %file.display(),
                    "the config file changed; spawner dev reads it at start only: restart it to apply the change (plugin files and their settings files reload by themselves)"
                );
            }
        }
    });
    Ok(watcher)
}

/// The digest of config file `file` as it is now; `None` when it is not a
/// plain file (a backend, which runs as Spawner's user in that directory,
/// could replace it with a link to `/dev/zero`) or cannot be read. At most
/// [`crate::config::MAX_CONFIG_BYTES`] are read, as at start.
fn config_digest(file: &Path) -> Option<[u8; 32]> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(crate::config::MAX_CONFIG_BYTES).read_to_end(&mut bytes).ok()?;
    Some(crate::config::digest(&bytes))
}

/// How long after a reload refused for the moment it is tried again the
/// first time; each further refusal in a row doubles it, up to
/// [`MAX_RETRY`] (a `validate-settings` that never returns is "out of
/// time" on every try, and must not be retried, logged and counted every
/// few seconds for ever).
pub const RETRY: Duration = Duration::from_secs(5);

/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// The wait before retry number `n` (1 for the first) of a reload refused
/// for the moment.
pub fn retry_after(n: u32) -> Duration {
    RETRY.saturating_mul(1 << n.saturating_sub(1).min(16)).min(MAX_RETRY)
}

/// The configured files (plugins and settings), as given and as they
/// resolve now.
fn configured_paths(config: &PluginsConfig) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for kind in PluginKind::ALL {
        let slot = config.slot(kind);
        for f in [&slot.file, &slot.settings_file].into_iter().flatten() {
            paths.extend(std::fs::canonicalize(f).ok());
            paths.push(f.clone());
        }
    }
    paths
}

/// The names of the configured files, as given and as they resolve now.
fn file_names(config: &PluginsConfig) -> HashSet<OsString> {
    configured_paths(config).iter().filter_map(|p| p.file_name()).map(OsString::from).collect()
}

/// Whether an event in a watched directory can concern a plugin: it names
/// one of the configured files, or a path that is not a plain file now (a
/// directory, a symlink re-pointed, a file removed or renamed away: how
/// ConfigMap volumes and some editors swap files in). Another file written
/// there does not: Spawner's own log redirected into the plugin's
/// directory made each line a change, whose handling was logged, and so on
/// for ever.
fn concerns_plugins(paths: &[PathBuf], names: &HashSet<OsString>) -> bool {
    let plain_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    paths.is_empty() || paths.iter().any(|p| p.file_name().is_some_and(|n| names.contains(n)) || !plain_file(p))
}

/// (Re)adds the watches on the directories of the configured files, as
/// given and as they resolve now; `waiting` holds the ancestors watched
/// for directories that are gone.
///
/// Every configured directory that is there is watched again each time:
/// inotify gives an existing watch back, and one that went with its
/// directory (deleted, perhaps made again at once: `rm -rf plugins &&
/// mkdir plugins`, where the new directory may even get the old one's inode
/// number) is made anew. A directory that is not there is waited for: its
/// nearest existing ancestor is watched, which sees it come back, and that
/// watch is dropped once it has.
fn watch_dirs(watcher: &Mutex<notify::RecommendedWatcher>, config: &PluginsConfig, waiting: &mut Vec<PathBuf>) -> notify::Result<()> {
    // A relative file's parent is "": its directory is the current one.
    let dir = |d: &Path| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() };
    // Watch directories, not files: editors and `cp` replace files by
    // renaming, and a symlink is re-pointed in its directory.
    let mut dirs: Vec<PathBuf> = configured_paths(config).iter().filter_map(|p| p.parent()).map(dir).collect();
    dirs.dedup();
    let waits: Vec<PathBuf> =
        dirs.iter().filter(|d| !d.is_dir()).filter_map(|d| d.ancestors().skip(1).map(dir).find(|a| a.is_dir())).collect();
    let mut watcher = watcher.lock().expect("watcher lock");
    // Ancestors no longer needed go first: removing a watch removes it for
    // every name of its directory, and the loop below restores any that a
    // configured file needs.
    waiting.retain(|a| {
        let wanted = waits.contains(a);
        if !wanted {
            let _ = watcher.unwatch(a);
        }
        wanted
    });
    let mut failed = None;
    for d in dirs.iter().filter(|d| d.is_dir()) {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            failed = Some(e);
        }
    }
    // Each time too: an ancestor may itself have been deleted and made
    // again (or moved away) since.
    for a in waits {
        match watcher.watch(&a, RecursiveMode::NonRecursive) {
            Ok(()) if !waiting.contains(&a) => waiting.push(a),
            Ok(()) => {}
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(()), Err)
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
    let before = tried.insert(kind, digest);
    if before == Some(digest) {
        return None;
    }
    let (loader, owned) = (plugins.clone(), source.clone());
    let outcome = match tokio::task::spawn_blocking(move || loader.replace(kind, &owned)).await {
        Ok(outcome) => outcome,
        // `replace` turns the plugin's failures into errors; this is a panic
        // of the host's own, which must not end the watch either.
        Err(e) => {
            let e = crate::plugins::LoadError::Runtime(format!("loading {}: {e}", source.name));
            plugins.refuse(kind, &source.name, &e);
            Err(e)
        }
    };
    // Refused for the moment only (a busy machine, no free instance): not
    // remembered as tried, so the next look tries it again.
    if outcome.as_ref().is_err_and(|e| e.is_transient()) {
        match before {
            Some(b) => tried.insert(kind, b),
            None => tried.remove(&kind),
        };
    }
    Some(outcome)
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
    fn other_files_in_a_plugins_directory_are_not_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("auth.wasm"), "x").unwrap();
        std::fs::write(path("spawner.log"), "a line").unwrap();
        std::fs::create_dir(path("..2026_12_01")).unwrap();
        std::os::unix::fs::symlink("..2026_12_01", path("..data")).unwrap();
        let names: HashSet<OsString> = ["auth.wasm".into(), "settings.json".into()].into();
        let concerns = |n: &str| concerns_plugins(&[path(n)], &names);
        assert!(concerns("auth.wasm"), "the plugin itself");
        assert!(concerns("settings.json"), "its settings, even before they exist");
        assert!(!concerns("spawner.log"), "a log written beside it");
        assert!(concerns("..2026_12_01") && concerns("..data"), "a ConfigMap volume's swap");
        assert!(concerns("auth.wasm.tmp~gone"), "a file renamed away (an editor's save)");
        assert!(concerns_plugins(&[], &names), "an event that names nothing (a rescan)");
    }

    #[test]
    fn the_names_that_count_follow_where_a_symlink_leads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v2")).unwrap();
        std::fs::write(dir.path().join("v2/auth-v2.wasm"), "x").unwrap();
        let link = dir.path().join("auth.wasm");
        std::os::unix::fs::symlink("v2/auth-v2.wasm", &link).unwrap();
        let mut config = PluginsConfig::default();
        config.slot_mut(PluginKind::Auth).file = Some(link);
        let names = file_names(&config);
        assert!(names.contains(&OsString::from("auth.wasm")) && names.contains(&OsString::from("auth-v2.wasm")), "{names:?}");
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
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
