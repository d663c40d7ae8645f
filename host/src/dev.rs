//! `spawner dev`: the whole system in one process — API, proxy, sweeper,
//! plugins and backends as local processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{self, ApiState};
use crate::backends::Backends;
use crate::config::{Config, Scheme};
use crate::local::{Local, LocalConfig};
use crate::metrics::Metrics;
use crate::plugins::credentials::TokenNames;
use crate::plugins::{PluginKind, Plugins, Runtime};
use crate::proxy::{Proxy, ProxySettings};
use crate::server::{self, App, Limits};
use crate::token::TokenKey;

/// How long a stopping `spawner dev` waits for WebSockets to close and
/// requests forwarded to backends to finish before it stops the backends.
const DEV_DRAIN: Duration = Duration::from_secs(2);

/// A running `spawner dev`.
pub struct Dev {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the API is served, when on its own listener (`api-listen`).
    pub api_addr: Option<SocketAddr>,
    /// The local runtime.
    pub local: Arc<Local>,
    /// The plugins.
    pub plugins: Arc<Plugins>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _api_server: Option<server::AbortOnDrop>,
    _watcher: Option<Arc<std::sync::Mutex<notify::RecommendedWatcher>>>,
    _config_watcher: Option<notify::RecommendedWatcher>,
}

impl Dev {
    /// Builds everything from a validated `config` and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Dev> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let tokens = Arc::new(match &config.token_secret {
            Some(s) => TokenKey::configured(s, &config.previous_token_secrets)?,
            None => TokenKey::random(),
        });
        let runtime = Arc::new(Runtime::new(config.plugins.runtime(), Some(tokens.clone()))?);
        let mut sources = Vec::new();
        for kind in PluginKind::ALL {
            let source = crate::watch::source(&config.plugins, kind)
                .with_context(|| format!("loading the {kind} plugin (--plugin {kind}=FILE, or [plugins.{kind}] in the config file)"))?;
            sources.push((kind, source));
        }
        let proxy_settings = ProxySettings::new(config.host_domain.clone(), config.proxy.forwarded_proto, config.proxy.token_names())
            .with_response_timeout(config.proxy.response_timeout())
            .with_api_token(config.api_token.clone())
            .with_trusted_proxies(config.proxy.trusted_proxies.clone());
        if let Some((_, auth)) = sources.iter().find(|(k, _)| *k == PluginKind::Auth)
            && let Some(warning) = token_names_mismatch(&auth.settings, &proxy_settings.tokens)
        {
            tracing::warn!("{warning}");
        }
        let loaded: HashMap<PluginKind, [u8; 32]> = sources.iter().map(|(k, s)| (*k, crate::watch::fingerprint(s))).collect();
        let plugins = Arc::new(Plugins::new(runtime, metrics.clone(), sources).context("loading plugins")?);

        let listener = server::bind(config.listen, config.proxy.listen_backlog).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (is another Spawner running? pick another address with --listen, SPAWNER_LISTEN or listen in the config file)"
                }
                _ => "",
            };
            anyhow::anyhow!("listening on {}{hint}: {e}", config.listen)
        })?;
        let addr = listener.local_addr()?;
        for warning in url_warnings(&config) {
            tracing::warn!("{warning}");
        }
        for (name, problem) in config.templates.iter().filter_map(|(n, t)| Some((n, t.start_problem()?))) {
            tracing::warn!(template = %name, "template {name:?}: {problem}; creates of it will fail until that is fixed");
        }
        for (name, problem) in config.templates.iter().filter_map(|(n, t)| Some((n, t.unexpanded_variable()?))) {
            tracing::warn!(template = %name, "template {name:?}: {problem}");
        }
        let mut config = config;
        if config.listen.port() == 0 && config.public_url.is_none() {
            config.public_url = Some(format!("http://{addr}"));
        }

        let local = Local::new(LocalConfig::from_config(&config), plugins.clone(), metrics.clone());
        let token_query_param = config.proxy.token_query_param.clone();
        let proxy = Arc::new(Proxy::new(local.clone(), plugins.clone(), metrics.clone(), proxy_settings));
        // Bound first: the API's own links (the original API's readyUrl)
        // name where it listens.
        let api_listener = match config.api_listen {
            Some(at) => Some(server::bind_side(at, "api-listen").await.map_err(|e| {
                anyhow::anyhow!("{e:#} (is another Spawner running? pick another address with --api-listen, SPAWNER_API_LISTEN or api-listen in the config file)")
            })?),
            None => None,
        };
        let api_url = match &api_listener {
            Some(l) => Some(format!("http://{}", l.local_addr()?)),
            None => None,
        };
        let api = api::router(ApiState {
            backends: Backends::Local(local.clone()),
            tokens,
            token_ttl_seconds: config.token_ttl_seconds,
            token_query_param,
            public_url: config.public_url(),
            api_url,
            api_token: config.api_token.clone(),
            metrics: metrics.clone(),
            body_timeout: Duration::from_millis(config.proxy.header_read_timeout_ms),
        });
        // On its own listener, the API has its own connections: backends'
        // clients filling `max-connections` cannot lock the web app out.
        let (api, api_addr, api_server) = match api_listener {
            Some(listener) => {
                // The web app's server, with a status stream per backend it
                // watches: as many connections as the main listener.
                let (bound, task) = server::serve_bound_side(listener, api, "api-listen", Limits::from(&config.proxy), metrics.clone())?;
                (api::api_elsewhere_router(), Some(bound), Some(task))
            }
            None => (api, None, None),
        };
        let app = Arc::new(App::new(proxy, api, metrics.clone()));
        let limits = Limits::from(&config.proxy);
        // No delay (nothing balances load onto `spawner dev`), but a short
        // drain before the backends are stopped: open WebSockets get their
        // Close through (1000 and the backend's reason: they stop with
        // Spawner), so browsers see a clean close rather than a cut
        // connection; requests forwarded to backends may finish.
        // Then the backends stop while status streams are still open, so
        // that a web app watching one sees it stopping, not a cut stream.
        let stopping = server::Stopping { delay: Duration::ZERO, drain: DEV_DRAIN };
        let stop_backends: server::Then = {
            let local = local.clone();
            Box::pin(async move { local.shutdown().await })
        };
        let (shutdown, server) = server::spawn(listener, app, limits, stopping, Some(stop_backends));
        let tasks = vec![
            crate::sweeper::spawn(
                local.clone(),
                plugins.clone(),
                Duration::from_millis(config.sweeper.interval_ms),
                config.sweeper.dry_run,
            ),
            local.start_gc(),
        ];
        let watcher = crate::watch::spawn(config.plugins.clone(), plugins.clone(), loaded).context("watching plugin files")?;
        // Not being able to warn about edits is no reason not to start.
        let config_watcher = config.file.as_deref().and_then(|f| match crate::watch::warn_on_config_change(f, config.file_digest) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the config file; edits to it will not be warned about");
                None
            }
        });
        Ok(Dev {
            addr,
            api_addr,
            local,
            plugins,
            shutdown,
            server,
            _tasks: tasks,
            _api_server: api_server,
            _watcher: watcher,
            _config_watcher: config_watcher,
        })
    }

    /// Stops accepting, terminates every backend and waits for them (the
    /// server does, between closing WebSockets and closing the rest).
    pub async fn stop(self) {
        // No create starts from here on (503), in flight or not: the
        // backends it would start are about to be stopped.
        self.local.refuse_creates();
        let _ = self.shutdown.send(());
        let _ = self.server.await;
    }
}

/// Flags of `spawner dev`; each overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DevArgs {
    /// Config file (TOML; default: built-in settings and the `demo` template).
    #[arg(long, env = "SPAWNER_CONFIG", hide_env_values = true)]
    pub config: Option<PathBuf>,
    /// Address to serve the API and proxy on (default 127.0.0.1:8080; port 0
    /// picks a free one).
    #[arg(long, env = "SPAWNER_LISTEN", hide_env_values = true, value_parser = crate::config::listen_arg)]
    pub listen: Option<SocketAddr>,
    /// Serve the API, /metrics and the OpenAPI document on this address
    /// instead (e.g. 127.0.0.1:8081, where the web app's server calls it,
    /// with no token needed on loopback), and only backends on --listen.
    #[arg(long, env = "SPAWNER_API_LISTEN", hide_env_values = true, value_parser = crate::config::listen_arg)]
    pub api_listen: Option<SocketAddr>,
    /// Base URL browsers reach Spawner at (default: http:// and the listen
    /// address).
    #[arg(long, env = "SPAWNER_PUBLIC_URL", hide_env_values = true)]
    pub public_url: Option<String>,
    /// API bearer token (required off loopback).
    #[arg(long, env = "SPAWNER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<crate::secret::Secret>,
    /// Capability token secret (random per start when unset).
    #[arg(long, env = "SPAWNER_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<crate::secret::Secret>,
    /// A secret tokens were signed with before --token-secret: tokens it
    /// signed still verify (rotating the secret). Repeat, or
    /// comma-separate in the environment.
    #[arg(long = "previous-token-secret", env = "SPAWNER_PREVIOUS_TOKEN_SECRETS", hide_env_values = true, value_delimiter = ',')]
    pub previous_token_secrets: Vec<crate::secret::Secret>,
    /// Enable host routing: `{name}.{DOMAIN}`.
    #[arg(long, env = "SPAWNER_HOST_DOMAIN", hide_env_values = true, value_parser = crate::config::host_domain_arg)]
    pub host_domain: Option<String>,
    /// A plugin file: `KIND=PATH` (kind: scheduler, auth, idle). Repeatable.
    #[arg(long = "plugin", value_name = "KIND=PATH", value_parser = kind_string)]
    pub plugins: Vec<(PluginKind, String)>,
    /// Plugin settings: `KIND=JSON` or `KIND=@FILE`. Repeatable.
    #[arg(long = "plugin-settings", value_name = "KIND=SETTINGS", value_parser = kind_string)]
    pub plugin_settings: Vec<(PluginKind, String)>,
    /// Limits of plugin calls (over the config file's).
    #[command(flatten)]
    pub plugin_limits: crate::cli::PluginLimitArgs,
    /// Time between idle sweeps, milliseconds (default 5000).
    #[arg(long)]
    pub sweep_interval_ms: Option<u64>,
    /// Log what the sweeper would terminate, without terminating.
    #[arg(long)]
    pub dry_run: bool,
    /// The scheme browsers reach Spawner with, sent to backends as
    /// `X-Forwarded-Proto` (`https` behind a TLS terminator; it also makes
    /// the token cookie Secure).
    #[arg(long, env = "SPAWNER_FORWARDED_PROTO")]
    pub forwarded_proto: Option<Scheme>,
    /// A proxy in front (a TLS terminator): an address or range whose
    /// `X-Forwarded-For` names the client (`[proxy] trusted-proxies`).
    /// Repeat, or comma-separate in the environment.
    #[arg(long = "trusted-proxy", value_name = "CIDR", env = "SPAWNER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

fn kind_string(arg: &str) -> Result<(PluginKind, String), String> {
    crate::cli::kind_value(arg).map(|(kind, v)| (kind, v.to_string()))
}

/// An error when `flag` names a kind twice: the second would silently win.
/// Values are shown for `--plugin` only (settings may hold secrets).
fn once_per_kind(flag: &str, items: &[(PluginKind, String)], why: &str) -> anyhow::Result<()> {
    for (i, (kind, first)) in items.iter().enumerate() {
        if let Some((_, second)) = items[i + 1..].iter().find(|(k, _)| k == kind) {
            let values = if flag == "--plugin" { format!(" ({first} and {second})") } else { String::new() };
            anyhow::bail!("{flag} is given twice for {}{values}: {why}; give it once", kind.as_str());
        }
    }
    Ok(())
}

/// The configuration `spawner dev` runs with: file, then flags and env.
pub fn config_from_args(args: &DevArgs) -> anyhow::Result<Config> {
    let mut c = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        c.listen = l;
    }
    if let Some(l) = args.api_listen {
        c.api_listen = Some(l);
    }
    if let Some(u) = &args.public_url {
        c.public_url = Some(u.clone());
    }
    // An empty value (`SPAWNER_API_TOKEN=` from a variable that was not
    // set) gives none, as `spawner proxy` reads it: off loopback Spawner
    // still refuses to start without a token.
    if let Some(t) = args.api_token.as_ref().filter(|t| !t.expose().is_empty()) {
        c.api_token = Some(t.clone());
    }
    if let Some(t) = args.token_secret.as_ref().filter(|t| !t.expose().is_empty()) {
        c.token_secret = Some(t.clone());
    }
    let previous = crate::config::listed_secrets(&args.previous_token_secrets);
    if !previous.is_empty() {
        c.previous_token_secrets = previous;
    }
    if let Some(d) = &args.host_domain {
        c.host_domain = Some(d.clone());
    }
    once_per_kind("--plugin", &args.plugins, "one plugin decides each kind; Spawner does not chain them")?;
    once_per_kind("--plugin-settings", &args.plugin_settings, "a plugin gets one settings string")?;
    for (kind, path) in &args.plugins {
        c.plugins.slot_mut(*kind).file = Some(PathBuf::from(path));
    }
    for (kind, value) in &args.plugin_settings {
        let slot = c.plugins.slot_mut(*kind);
        match value.strip_prefix('@') {
            Some(path) => {
                slot.settings_file = Some(PathBuf::from(path));
                slot.settings = None;
            }
            None => {
                slot.settings = Some(value.clone());
                slot.settings_file = None;
            }
        }
    }
    for kind in PluginKind::ALL {
        let slot = c.plugins.slot_mut(kind);
        slot.deadline_ms = args.plugin_limits.deadline_ms(kind).or(slot.deadline_ms);
        slot.memory_mib = args.plugin_limits.memory_mib(kind).or(slot.memory_mib);
    }
    if let Some(i) = args.sweep_interval_ms {
        c.sweeper.interval_ms = i;
    }
    if args.dry_run {
        c.sweeper.dry_run = true;
    }
    if let Some(s) = args.forwarded_proto {
        c.proxy.forwarded_proto = s;
    }
    if args.trusted_proxies.iter().any(|t| !t.trim().is_empty()) {
        c.proxy.trusted_proxies = args.trusted_proxies.clone().try_into().map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
    }
    let c = c.with_builtin_templates();
    c.validate()?;
    Ok(c)
}

/// Raises the open-file soft limit to the hard limit: every proxied
/// WebSocket holds two descriptors, and the usual soft limit (1024) would
/// cap Spawner at a few hundred sessions. Backends inherit the raised limit.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Makes Spawner non-dumpable: its backends run as the same user, and
/// `/proc/{spawner}/environ` (SPAWNER_API_TOKEN, SPAWNER_TOKEN_SECRET) and
/// `/proc/{spawner}/mem` would otherwise be theirs to read. A program
/// started with `execve` is dumpable again, so backends are unaffected.
pub(crate) fn hide_from_same_user() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not make Spawner non-dumpable: its backends may read its environment");
    }
}

/// Runs `spawner dev` until SIGINT, SIGTERM or SIGHUP, then stops every
/// backend.
pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = config_from_args(&args)?;
    raise_fd_limit();
    hide_from_same_user();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let dev = Dev::start(config.clone()).await?;
        // The API is called from the web app's server, so the lines to try
        // use the address Spawner listens on; browsers use the public URL.
        let base = format!("http://{}", dev.api_addr.unwrap_or(dev.addr));
        let elsewhere = dev.api_addr.map(|_| format!("\nIts API, /metrics and the OpenAPI document are on {base} (api-listen)\n")).unwrap_or_default();
        let auth = if config.api_token.is_some() { " -H \"Authorization: Bearer $SPAWNER_API_TOKEN\"" } else { "" };
        // The token came from the config file or --api-token: the line below
        // needs it in the shell's environment.
        let export = if config.api_token.is_some() && std::env::var_os("SPAWNER_API_TOKEN").is_none() {
            "    (first: export SPAWNER_API_TOKEN=<your api-token>)\n"
        } else {
            ""
        };
        // The links' pattern, as creates will hand them out: under host
        // routing a host per backend, not the public URL itself.
        let public = match (&config.public_url, &config.host_domain) {
            (None, None) => String::new(),
            // As creates make them (with the address bound, not `listen`'s
            // port 0).
            _ => format!("\nBrowsers reach backends at {} (the browserUrl links)\n", dev.local.url("{name}")),
        };
        tracing::info!(listen = %dev.addr, "spawner dev is ready");
        // For a person at a terminal: not in JSON logs, which stay JSON
        // lines for their shipper.
        if !crate::cli::json_logs() {
            crate::cli::say(&format!(
            "\nSpawner is listening on http://{}\n{elsewhere}{public}\n  Start a demo backend (a shared notepad):\n{export}    curl -s{auth} -X POST {base}/api/v1/backends -H 'Content-Type: application/json' -d '{{\"template\":\"demo\"}}'\n  then open the \"browserUrl\" it returns.\n\n  API reference: {base}/api/openapi.json   metrics: {base}/metrics\n",
                dev.addr
            ));
        }
        server::stop_signal().await?;
        tracing::info!("shutting down: stopping every backend (a second Ctrl-C kills them at once)");
        // A second signal does not wait for backends that take their stop
        // timeout (seconds, or whatever the config says) to exit.
        let local = dev.local.clone();
        tokio::select! {
            () = dev.stop() => {}
            () = second_stop_signal() => {
                tracing::warn!("second stop signal: killing every backend now");
                local.kill_all();
            }
        }
        Ok(())
    })
}

/// Resolves on a stop signal that comes a second or more after the first:
/// one keypress under a process manager (foreman, honcho) reaches Spawner
/// twice at once, from the terminal and forwarded, and must not skip the
/// graceful stop.
async fn second_stop_signal() {
    tokio::time::sleep(Duration::from_secs(1)).await;
    if server::stop_signal().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A warning when the auth plugin's settings name a token `cookie` or
/// `query-param` other than Spawner's: the proxy moves, sets and strips
/// tokens only by `proxy.token-cookie` and `proxy.token-query-param`, so a
/// plugin reading Spawner's tokens elsewhere would never see them, and a
/// token in a cookie the proxy does not know would reach the backend.
fn token_names_mismatch(settings: &str, names: &TokenNames) -> Option<String> {
    let serde_json::Value::Object(m) = serde_json::from_str(settings).ok()? else { return None };
    let differs = |key: &str, ours: &str| m.get(key).and_then(|v| v.as_str()).is_some_and(|v| v != ours);
    (differs("cookie", &names.cookie) || differs("query-param", &names.query_param)).then(|| {
        format!(
            "the auth plugin's settings name a cookie or query-param, but Spawner moves, sets and strips capability tokens by the cookie \"{}\" (proxy.token-cookie, prefixed __Host- under host routing over HTTPS) and the query parameter \"{}\" (proxy.token-query-param): make them match",
            names.cookie, names.query_param
        )
    })
}

/// Settings that start but hand out links that will not work as meant.
fn url_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    match &config.public_url {
        None if config.listen.ip().is_unspecified() => warnings.push(format!(
            "listening on {} with no public-url: browserUrl links name that address, which browsers cannot open; set public-url (--public-url, SPAWNER_PUBLIC_URL) to the URL they reach Spawner at",
            config.listen
        )),
        Some(url) if url.starts_with("https://") && config.proxy.forwarded_proto != Scheme::Https => warnings.push(format!(
            "public-url is https ({url}) but proxy.forwarded-proto is \"http\": backends see X-Forwarded-Proto: http and the token cookie is not Secure; set forwarded-proto = \"https\" in [proxy] (or --forwarded-proto https)"
        )),
        _ => {}
    }
    if let Some(too_wide) = config.proxy.trusted_proxies.too_wide() {
        warnings.push(too_wide);
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_will_not_work_as_meant_are_warned_about() {
        let open = Config { listen: "0.0.0.0:8080".parse().unwrap(), ..Config::default() };
        assert!(url_warnings(&open)[0].contains("set public-url"));
        let https = Config { public_url: Some("https://apps.example.com".into()), ..Config::default() };
        assert!(url_warnings(&https)[0].contains("forwarded-proto = \"https\""));
        let mut fine = https.clone();
        fine.proxy.forwarded_proto = Scheme::Https;
        assert!(url_warnings(&fine).is_empty());
        assert!(url_warnings(&Config::default()).is_empty(), "loopback, no public URL: links work locally");
        for (trusted, says) in [("127.0.0.1", "proxy_bind 127.0.0.2"), ("0.0.0.0/0", "every address")] {
            let mut c = Config::default();
            c.proxy.trusted_proxies = vec![trusted.to_string()].try_into().unwrap();
            assert!(url_warnings(&c).iter().any(|w| w.contains(says)), "{trusted}: {:?}", url_warnings(&c));
        }
        let mut own = Config::default();
        own.proxy.trusted_proxies = vec!["127.0.0.2".to_string()].try_into().unwrap();
        assert!(url_warnings(&own).is_empty(), "{:?}", url_warnings(&own));
    }

    #[test]
    fn plugin_limit_flags_override_the_config_file_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spawner.toml");
        std::fs::write(&file, "[plugins.auth]\ndeadline-ms = 40\nmemory-mib = 32\n[plugins.idle]\ndeadline-ms = 150\n").unwrap();
        let parse = |flags: &[&str]| {
            use clap::Parser as _;
            let mut argv = vec!["spawner", "dev", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(flags);
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Dev(args) => config_from_args(&args),
                other => panic!("{other:?}"),
            }
        };
        let c = parse(&["--plugin-deadline-ms", "auth=70", "--plugin-memory-mib", "scheduler=128"]).unwrap().plugins.runtime();
        assert_eq!((c.auth.deadline_ms, c.auth.memory_mib), (70, 32), "the flag wins; the file's other field stays");
        assert_eq!((c.idle.deadline_ms, c.scheduler.memory_mib, c.scheduler.deadline_ms), (150, 128, 100));
        let c = parse(&["--plugin-deadline-ms", "auth=70", "--plugin-deadline-ms", "auth=90"]).unwrap().plugins.runtime();
        assert_eq!(c.auth.deadline_ms, 90, "the last one given");
        assert_eq!(parse(&[]).unwrap().plugins.runtime().auth.deadline_ms, 40, "no flag: the file's");
        let c = parse(&["--plugin", "idle=my_idle.wasm", "--plugin-settings", "idle=@idle.json", "--plugin-settings", "auth={}"]).unwrap();
        assert_eq!(c.plugins.idle.file.as_deref(), Some(std::path::Path::new("my_idle.wasm")));
        assert_eq!(c.plugins.idle.settings_file.as_deref(), Some(std::path::Path::new("idle.json")));
        assert_eq!(c.plugins.auth.settings.as_deref(), Some("{}"));
        let e = parse(&["--plugin", "auth=a.wasm", "--plugin", "idle=i.wasm", "--plugin", "auth=b.wasm"]).unwrap_err().to_string();
        assert!(e.contains("--plugin is given twice for auth (a.wasm and b.wasm): one plugin decides each kind"), "{e}");
        let e = parse(&["--plugin-settings", "idle={}", "--plugin-settings", "idle={\"secret\": \"s\"}"]).unwrap_err().to_string();
        assert!(e.contains("--plugin-settings is given twice for idle: a plugin gets one settings string") && !e.contains("secret"), "{e}");
        use clap::Parser as _;
        let e = crate::cli::Cli::try_parse_from(["spawner", "dev", "--plugin", "auht=x.wasm"]).unwrap_err().to_string();
        assert!(e.contains("--plugin <KIND=PATH>") && e.contains("unknown plugin kind \"auht\""), "{e}");
    }

    #[test]
    fn spawner_hides_its_memory_and_environment_from_its_backends() {
        // The test process itself: nothing in this binary needs it dumpable.
        hide_from_same_user();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }

    #[test]
    fn auth_settings_naming_other_token_places_are_warned_about() {
        let names = TokenNames::default();
        let w = token_names_mismatch(r#"{"cookie":"session"}"#, &names).unwrap();
        assert!(w.contains("the cookie \"spawner-token\" (proxy.token-cookie"), "{w}");
        // Under host routing over HTTPS the cookie is the __Host- one.
        let names = ProxySettings::new(Some("apps.example.com".into()), crate::config::Scheme::Https, TokenNames::default()).tokens;
        assert!(token_names_mismatch(r#"{"cookie":"__Host-spawner-token"}"#, &names).is_none());
        assert!(token_names_mismatch(r#"{"cookie":"spawner-token"}"#, &names).unwrap().contains("\"__Host-spawner-token\""));
        let names = TokenNames::default();
        assert!(token_names_mismatch(r#"{"query-param":"t","secret":"x"}"#, &names).is_some());
        assert!(token_names_mismatch(r#"{"cookie":"spawner-token"}"#, &names).is_none(), "same names: nothing to fix");
        assert!(token_names_mismatch(r#"{"secret":"x"}"#, &names).is_none());
        assert!(token_names_mismatch("", &names).is_none());
    }
}
