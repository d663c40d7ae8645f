//! `spawner dev` configuration: one TOML file, every field optional, flags
//! and environment variables on top.
//!
//! Unknown fields are refused (a typo must not be silently ignored), and
//! parse errors name the line and column. [`Config::validate`] checks the
//! combination at start-up, e.g. that a non-loopback listener has an API
//! token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

use crate::plugins::credentials::TokenNames;
use crate::plugins::{Limits, PluginKind, RuntimeConfig};

mod parse_error;

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message has the line).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// The values do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The name of the built-in template that runs the demo backend.
pub const DEMO_TEMPLATE: &str = "demo";

/// Everything `spawner dev` can be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Address for the API, the proxy and /metrics.
    #[serde(deserialize_with = "listen_field")]
    pub listen: SocketAddr,
    /// A separate address for the API, `/metrics` and the OpenAPI
    /// document (`listen` then serves backends and `/healthz` only), so
    /// that the API can stay on loopback, where the web app's server calls
    /// it, while browsers reach `listen` from anywhere.
    #[serde(deserialize_with = "api_listen_field")]
    pub api_listen: Option<SocketAddr>,
    /// Base URL browsers reach Spawner at (default `http://{listen}`).
    pub public_url: Option<String>,
    /// Bearer token the web app's server presents to the API. Required when
    /// `listen` is not a loopback address.
    pub api_token: Option<Secret>,
    /// Secret capability tokens are signed with (at least 16 bytes). When
    /// unset a random one is generated, so tokens do not survive a restart.
    pub token_secret: Option<Secret>,
    /// Secrets tokens were signed with before `token-secret`: they still
    /// verify, and never sign (rotating the secret; README).
    pub previous_token_secrets: Vec<Secret>,
    /// Lifetime of a capability token, in seconds.
    pub token_ttl_seconds: u64,
    /// Enables host routing: `{name}.{host-domain}` reaches backend `name`.
    #[serde(deserialize_with = "host_domain_field")]
    pub host_domain: Option<String>,
    /// Defaults and limits for backends.
    pub backends: BackendsConfig,
    /// The idle sweeper.
    pub sweeper: SweeperConfig,
    /// Proxy hygiene and limits.
    pub proxy: ProxyConfig,
    /// Plugins: files, settings and limits per kind.
    pub plugins: PluginsConfig,
    /// Named templates (a name may be an image reference, e.g.
    /// `"ghcr.io/acme/editor:1"`, so one spec works locally and on
    /// Kubernetes).
    pub templates: BTreeMap<String, Template>,
    /// The file this was read from, if any (not a setting): where to add a
    /// template, the unknown-template error says.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// The SHA-256 of the text read from `file`, to tell an edit since.
    #[serde(skip)]
    pub file_digest: Option<[u8; 32]>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_listen: None,
            public_url: None,
            api_token: None,
            token_secret: None,
            previous_token_secrets: Vec::new(),
            // A day: long enough for a working session, short enough that a
            // leaked URL stops working.
            token_ttl_seconds: 86_400,
            host_domain: None,
            backends: BackendsConfig::default(),
            sweeper: SweeperConfig::default(),
            proxy: ProxyConfig::default(),
            plugins: PluginsConfig::default(),
            templates: BTreeMap::new(),
            file: None,
            file_digest: None,
        }
    }
}

/// The largest config file read at start or hashed to tell an edit: far
/// above any real one (they are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A config file's text; one larger than [`MAX_CONFIG_BYTES`] is refused
/// (a path to `/dev/zero` would be read until memory ran out).
fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!("larger than {} MiB, which no config file is", MAX_CONFIG_BYTES >> 20)));
    }
    Ok(text)
}

/// The digest of a config file's content: the one taken at start
/// ([`Config::file_digest`]) and the one the watch for edits compares with
/// it must be the same function of the same bytes.
pub fn digest(content: &[u8]) -> [u8; 32] {
    <sha2::Sha256 as sha2::Digest>::digest(content).into()
}

/// Upper bound of the timeouts (startup, stop, sweep interval, header
/// read), one day: far above any real use, and low enough that no timer or
/// timestamp arithmetic overflows (a stop timeout near 2^64 s made
/// Spawner's shutdown panic).
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

/// Upper bound of the retention of ended backends, a year (a retention of
/// 10^12 s made garbage collection panic at its first run, and then never
/// run again).
pub const MAX_RETENTION_SECONDS: u64 = 366 * 86_400;

/// Backend defaults and limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendsConfig {
    /// How long a backend may stay unused before the default idle plugin
    /// terminates it, when the create request does not say.
    pub grace_period_seconds: u64,
    /// How long a started backend may take to accept connections.
    pub startup_timeout_seconds: u64,
    /// Between SIGTERM and SIGKILL when stopping a backend.
    pub stop_timeout_seconds: u64,
    /// How long ended backends stay visible in the API.
    pub retention_seconds: u64,
    /// Ended backends kept at most within the retention (the oldest are
    /// forgotten first): a web app that creates and ends backends in a loop
    /// does not grow Spawner's memory without bound.
    pub max_ended: usize,
    /// Live backends at most; creates beyond it get 429.
    pub max_backends: usize,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            // Five minutes: the original Spawner's default, long enough to
            // survive a page reload or a short network drop.
            grace_period_seconds: 300,
            // A minute covers slow language runtimes on a busy laptop.
            startup_timeout_seconds: 60,
            // Ten seconds, like Kubernetes' default grace is 30: enough to
            // flush state, short enough not to hold up a shutdown.
            stop_timeout_seconds: 10,
            // An hour of history for status pages and debugging.
            retention_seconds: 3600,
            // Each keeps its status and up to 256 KiB of its output.
            max_ended: 1000,
            // One machine: a thousand processes is already a lot.
            max_backends: 1000,
        }
    }
}

/// The idle sweeper.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SweeperConfig {
    /// Time between sweeps, in milliseconds.
    pub interval_ms: u64,
    /// Log decisions without terminating anything.
    pub dry_run: bool,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        // Five seconds: idle grace periods are minutes, so this adds at most
        // a few percent to them, at negligible cost.
        SweeperConfig { interval_ms: 5000, dry_run: false }
    }
}

/// The scheme browsers use to reach Spawner: what `X-Forwarded-Proto` says
/// to backends (which build links from it), and whether the token cookie is
/// `Secure`. A type rather than a string, so a typo is refused where it is
/// read (config file: with its line; flag: by clap) and nowhere else.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP (Spawner reached directly, or locally).
    #[default]
    Http,
    /// HTTPS (Spawner behind a TLS terminator).
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proxy limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// Open client connections at most; further ones wait in the backlog.
    pub max_connections: usize,
    /// Time a client has to send its request headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Largest request head (line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Time a backend has to answer a proxied request with its response
    /// head once the proxy has read the request's whole body, and the
    /// longest that body may make no progress, in seconds (the response's
    /// body then streams for as long as it lasts).
    pub response_timeout_seconds: u64,
    /// Listen backlog: connections the kernel queues before we accept them.
    pub listen_backlog: u32,
    /// `X-Forwarded-Proto` sent to backends (set `https` behind a TLS
    /// terminator; never taken from the client).
    pub forwarded_proto: Scheme,
    /// Cookie the proxy moves a browser's token into (and strips before
    /// forwarding). The host finds tokens here, in the query parameter and
    /// in `Authorization: Bearer`, and passes them verified to the auth
    /// plugin.
    pub token_cookie: String,
    /// Query parameter `browserUrl` carries the token in.
    pub token_query_param: String,
    /// Proxies in front of Spawner (a TLS terminator, a load balancer, an
    /// Ingress controller) whose `X-Forwarded-For` names the client: what
    /// backends are told as the client's address (see
    /// [`crate::proxy::client_address`]). None by default.
    pub trusted_proxies: crate::proxy::client_address::TrustedProxies,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            // Each idle WebSocket costs a few KiB; 20k stays far below
            // typical file-descriptor limits of 64k+.
            max_connections: 20_000,
            // Ten seconds defeats slowloris without hurting slow mobiles.
            header_read_timeout_ms: 10_000,
            // 64 KiB: large cookies fit, header floods do not.
            max_header_bytes: 64 * 1024,
            // Five minutes: a backend that accepts and never answers holds
            // the browser's request no longer than that, while a long poll
            // or a slow export of a few minutes still gets through (nginx's
            // 60 s cuts both).
            response_timeout_seconds: 300,
            // 4096 (the kernel's usual somaxconn): a burst of a thousand
            // WebSocket connects must not overflow into SYN retransmits,
            // which a backlog of 128 turns into seconds of delay.
            listen_backlog: 4096,
            forwarded_proto: Scheme::Http,
            token_cookie: TokenNames::default().cookie,
            token_query_param: TokenNames::default().query_param,
            trusted_proxies: Default::default(),
        }
    }
}

impl ProxyConfig {
    /// Checks the values; the message names each field as `name` spells it
    /// (`proxy.token-cookie` in the config file, `--token-cookie` on
    /// `spawner proxy`'s command line).
    pub fn validate(&self, name: impl Fn(&str) -> String) -> Result<(), String> {
        let timeout = self.header_read_timeout_ms;
        if !(1..=MAX_TIMEOUT_SECONDS * 1000).contains(&timeout) {
            return Err(format!("{} must be between 1 and {}, got {timeout}", name("header-read-timeout-ms"), MAX_TIMEOUT_SECONDS * 1000));
        }
        let timeout = self.response_timeout_seconds;
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
            return Err(format!("{} must be between 1 and {MAX_TIMEOUT_SECONDS}, got {timeout}", name("response-timeout-seconds")));
        }
        // hyper reads headers into a buffer of at least 8 KiB; a smaller
        // value would be raised there without a word.
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err(format!("{} must be between 8192 and 1048576, got {}", name("max-header-bytes"), self.max_header_bytes));
        }
        if self.max_connections == 0 || self.listen_backlog == 0 {
            return Err(format!("{} and {} must be positive", name("max-connections"), name("listen-backlog")));
        }
        for (field, value) in [("token-cookie", &self.token_cookie), ("token-query-param", &self.token_query_param)] {
            // Safe both as a cookie name and, undecoded, in a query string.
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
                return Err(format!("{} must be letters, digits, '-', '_', '.' or '~' (got \"{value}\")", name(field)));
            }
        }
        // Browsers drop `__Host-` cookies whose path is not `/` (ours is
        // the backend's prefix), and `__Secure-` ones without `Secure`.
        let cookie = &self.token_cookie;
        if cookie.starts_with(crate::proxy::HOST_COOKIE_PREFIX)
            || (cookie.starts_with("__Secure-") && self.forwarded_proto != Scheme::Https)
        {
            return Err(format!(
                "{} = \"{cookie}\" would be dropped by browsers: the token cookie's path is the backend's /p/{{name}}/ (so no __Host- prefix; under host routing over HTTPS the proxy adds it itself), and __Secure- needs {} = \"https\"",
                name("token-cookie"),
                name("forwarded-proto")
            ));
        }
        Ok(())
    }

    /// The time a backend has to answer (`response-timeout-seconds`).
    pub fn response_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.response_timeout_seconds)
    }

    /// The token cookie and query parameter names.
    pub fn token_names(&self) -> TokenNames {
        TokenNames { cookie: self.token_cookie.clone(), query_param: self.token_query_param.clone() }
    }
}

/// One plugin slot.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginSlot {
    /// Component file; the embedded default when unset. Watched and
    /// hot-reloaded.
    pub file: Option<PathBuf>,
    /// Settings text (by convention JSON). In the file, a table is taken
    /// too, and passed on as its JSON: `settings = { max-per-owner = 3 }`.
    #[serde(deserialize_with = "settings_field")]
    pub settings: Option<String>,
    /// Settings read from a file instead (watched too).
    pub settings_file: Option<PathBuf>,
    /// Memory per call, MiB (default 64).
    pub memory_mib: Option<u64>,
    /// CPU deadline per call, ms (default 20 for auth, 100 otherwise).
    pub deadline_ms: Option<u64>,
}

/// Plugins.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginsConfig {
    /// The scheduler.
    pub scheduler: PluginSlot,
    /// Auth.
    pub auth: PluginSlot,
    /// Idle.
    pub idle: PluginSlot,
    /// Plugin instances at once (see `RuntimeConfig::max_instances`).
    pub max_instances: Option<u32>,
}

impl PluginsConfig {
    /// The slot of `kind`.
    pub fn slot(&self, kind: PluginKind) -> &PluginSlot {
        match kind {
            PluginKind::Scheduler => &self.scheduler,
            PluginKind::Auth => &self.auth,
            PluginKind::Idle => &self.idle,
        }
    }

    /// Mutable slot of `kind`.
    pub fn slot_mut(&mut self, kind: PluginKind) -> &mut PluginSlot {
        match kind {
            PluginKind::Scheduler => &mut self.scheduler,
            PluginKind::Auth => &mut self.auth,
            PluginKind::Idle => &mut self.idle,
        }
    }

    /// The plugin runtime's limits.
    pub fn runtime(&self) -> RuntimeConfig {
        let mut rc = RuntimeConfig::default();
        for kind in PluginKind::ALL {
            let d = rc.limits(kind);
            let s = self.slot(kind);
            rc.set_limits(
                kind,
                Limits { memory_mib: s.memory_mib.unwrap_or(d.memory_mib), deadline_ms: s.deadline_ms.unwrap_or(d.deadline_ms) },
            );
        }
        if let Some(n) = self.max_instances {
            rc.max_instances = n;
        }
        rc
    }
}

/// How to run a backend locally.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Template {
    /// Program to run (path, or a name looked up in PATH).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables for it.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

impl Template {
    /// Makes relative paths independent of where Spawner was started: a
    /// template of a config file runs in that file's directory unless its
    /// `cwd` says otherwise (a relative `cwd` being taken from there too),
    /// and a relative `command` with a `/` in it (`./run.sh`, `bin/server`)
    /// is taken from the directory it runs in, as a shell would after `cd`,
    /// so the program found and the directory it runs in always agree. A
    /// bare name (`python3`) is still looked up in `PATH`.
    fn resolve_paths(&mut self, config_dir: &Path) {
        let cwd = self.cwd.as_deref().map_or_else(|| config_dir.to_path_buf(), |c| config_dir.join(c));
        if self.command.contains('/') && Path::new(&self.command).is_relative() {
            self.command = cwd.join(&self.command).display().to_string();
        }
        self.cwd = Some(cwd);
    }

    /// What would make every create of this template fail as things stand
    /// (its working directory or program missing), for a warning at start:
    /// the program may yet be installed, so it is not an error.
    pub fn start_problem(&self) -> Option<String> {
        if let Some(cwd) = &self.cwd
            && !cwd.is_dir()
        {
            return Some(format!("its cwd {} is not a directory", cwd.display()));
        }
        let candidates: Vec<PathBuf> = if self.command.contains('/') {
            let path = Path::new(&self.command);
            // Relative to where it runs (which is what `resolve_paths` does
            // for templates of a config file).
            vec![self.cwd.as_deref().map_or_else(|| path.to_path_buf(), |c| c.join(path))]
        } else {
            // The backend's PATH: the template's, else Spawner's (passed on).
            let path = self.env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
            std::env::split_paths(&path).map(|dir| dir.join(&self.command)).collect()
        };
        let found: Vec<&PathBuf> = candidates.iter().filter(|c| c.is_file()).collect();
        if found.is_empty() {
            return Some(format!("its command {:?} was not found", self.command));
        }
        // What the kernel would refuse to run (every create failing with
        // "Permission denied" or "Exec format error"); a PATH lookup skips
        // a file that is not executable, as the start would.
        // A bare name is run by glibc's execvp, which runs a script without
        // a `#!` line through /bin/sh; a path is not (Exec format error).
        let needs_interpreter_line = self.command.contains('/');
        let mut first_problem = None;
        for file in found {
            match runnable(file, needs_interpreter_line) {
                Ok(()) => return None,
                Err(why) => {
                    first_problem.get_or_insert_with(|| format!("its command {} {why}", file.display()));
                }
            }
        }
        first_problem
    }

    /// An argument that names a variable Spawner or the template sets
    /// (`$PORT`, `${SPAWNER_BACKEND_NAME}`, a name of `env`) where no shell
    /// expands it: the program gets it as written, and a server told to
    /// listen on port `$PORT` fails or listens elsewhere on every create.
    /// The script of a shell's `-c` (`sh -c '… $PORT'`, also after a
    /// launcher such as `env` or `timeout`) is expanded, and not said; other
    /// variables (awk's `$NF`, perl's `$x`) are the program's own. The
    /// message names the argument's place and the variable, not the
    /// argument, which may hold a secret.
    pub fn unexpanded_variable(&self) -> Option<String> {
        let argv: Vec<&str> = std::iter::once(self.command.as_str()).chain(self.args.iter().map(String::as_str)).collect();
        let is_shell = |word: &str| ["sh", "bash", "dash", "zsh", "ash", "ksh"].contains(&word.rsplit('/').next().unwrap_or_default());
        // The shell's `-c` script: the argument after its first option
        // holding `c`, among the options right after the shell's name.
        let script = argv.iter().position(|w| is_shell(w)).and_then(|shell| {
            let options = argv[shell + 1..].iter().take_while(|a| a.starts_with('-') && !a.starts_with("--"));
            let c = options.clone().position(|o| o.contains('c'))?;
            Some(shell + 1 + c + 1)
        });
        let ours = |name: &str| name == "PORT" || name.starts_with("SPAWNER_") || self.env.contains_key(name);
        let named = |arg: &str| {
            arg.match_indices('$').find_map(|(i, _)| {
                let rest = &arg[i + 1..];
                let rest = rest.strip_prefix('{').unwrap_or(rest);
                let end = rest.find(|c: char| !(c == '_' || c.is_ascii_alphanumeric())).unwrap_or(rest.len());
                let name = &rest[..end];
                (!name.is_empty() && ours(name)).then(|| name.to_string())
            })
        };
        let (place, name) =
            argv.iter().enumerate().skip(1).filter(|(i, _)| Some(*i) != script).find_map(|(i, a)| Some((i - 1, named(a)?)))?;
        Some(format!(
            "args[{place}] names ${name}, which reaches the program as written: no shell expands variables in args; read {name} from the environment, or run it through a shell (command = \"sh\", args = [\"-c\", \"exec … ${name}\"])"
        ))
    }
}

/// Whether `file` would run: executable, and (`interpreter_line`) a
/// program (ELF) or a script with its interpreter's `#!` line, as a command
/// given as a path must be (Spawner starts it itself, with no shell to fall
/// back on for a script without one).
fn runnable(file: &Path, interpreter_line: bool) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot be read: {e}"))?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (chmod +x it, or run it through its interpreter: command = \"python3\", args = [\"app.py\"])".into());
    }
    if !interpreter_line {
        return Ok(());
    }
    // Unreadable (execute-only) files are left to the start to judge.
    let Ok(mut opened) = std::fs::File::open(file) else { return Ok(()) };
    let mut head = [0u8; 4];
    let read = opened.read(&mut head).unwrap_or(0);
    if read >= 2 && (head.starts_with(b"#!") || head == *b"\x7fELF") {
        return Ok(());
    }
    Err("is a script without a #! line (add one, e.g. #!/bin/sh, or run it through its interpreter)".into())
}

/// Checks a public URL (`public-url`, `--public-url`): an origin, since
/// Spawner serves `/api/` and `/p/` at the root of its host. Returns it
/// without a trailing `/`. Also a clap value parser.
pub fn public_url_arg(url: &str) -> Result<String, String> {
    // First, and not echoed: what is before the `@` is a user and password.
    if url.contains('@') {
        return Err("must not hold a user or password (user:password@): browsers are handed this URL".into());
    }
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Err(format!("must start with http:// or https:// (got {url})"));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err(format!("names no host (got {url})"));
    }
    if host.contains(['/', '?', '#']) {
        return Err(format!(
            "must be an origin such as https://apps.example.com, with no path (got {url}): Spawner serves /api/ and /p/ at the root of its host"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The part of `host` before `.{domain}`, when `host` is under `domain`
/// (compared without case): `a` for `a.{domain}`, `x.y` deeper, empty for
/// `.{domain}`; `None` for the domain itself and for hosts outside it.
pub fn below_domain<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let at = host.len().checked_sub(domain.len())?;
    host.get(at..).filter(|tail| tail.eq_ignore_ascii_case(domain))?;
    host[..at].strip_suffix('.')
}

/// Why a (checked) public URL cannot serve the API next to a (checked)
/// host routing domain, if it cannot: a host below the domain is a
/// backend's (`{name}.{domain}`) or no one's (deeper), so the API's URLs
/// there would reach a backend or a 404. The bare domain, or any host
/// outside it, serves the API.
pub fn public_url_conflict(public_url: &str, host_domain: &str) -> Option<String> {
    let uri = public_url.parse::<http::Uri>().ok()?;
    let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
    let name = below_domain(&host, host_domain)?;
    Some(format!(
        "public-url {public_url} names a host under host-domain {host_domain}, where only backends are served ({}), so the API could not be reached there: use {host_domain} itself or a host outside it",
        if name.contains('.') { "a host deeper than {name}.{domain} answers 404" } else { "it would be the backend named by that host" }
    ))
}

/// Reads a listen address (`listen`, `--listen` and the other listeners'
/// flags): an IP address and a port, or `localhost:PORT` for the loopback
/// address (a name would otherwise be refused as "invalid socket address
/// syntax", which does not say that only IP addresses are taken). Also a
/// clap value parser.
pub fn listen_arg(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if let Some(port) = text.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    // A port alone (`--listen 8096`) names no address: say which to add.
    let example = text.parse::<u16>().unwrap_or(8080);
    Err(format!(
        "must be an IP address (or localhost) and a port, such as 127.0.0.1:{example} (this machine only), 0.0.0.0:{example} (every interface), [::1]:{example} or localhost:{example} (got {text:?})"
    ))
}

/// `listen` in the file: read as [`listen_arg`] reads the flag.
fn listen_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    listen_arg(&text).map_err(|why| serde::de::Error::custom(format!("listen {why}")))
}

/// `api-listen` in the file: read as [`listen_arg`] reads the flag.
fn api_listen_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    listen_arg(&text).map(Some).map_err(|why| serde::de::Error::custom(format!("api-listen {why}")))
}

/// Checks a host routing domain (`host-domain`, `--host-domain`): a DNS
/// name such as `apps.example.com`, which `{name}.{domain}` is built on and
/// requests' `Host` headers are matched against. Returns it in lower case
/// (host names are case-insensitive). Also a clap value parser.
pub fn host_domain_arg(domain: &str) -> Result<String, String> {
    let d = domain.to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-')
    };
    if d.len() > 253 || !d.split('.').all(label_ok) {
        return Err(format!(
            "must be a DNS name such as apps.example.com: letters, digits, '-' and dots, with no scheme, port, path or leading dot (got {domain:?})"
        ));
    }
    Ok(d)
}

/// Secrets from a comma-separated list (a flag or variable): each without
/// the spaces around it (`a, b` is two secrets, not one starting with a
/// space, which would never match), empty ones (a variable set to
/// nothing, from an empty Secret key) left out.
pub fn listed_secrets(listed: &[Secret]) -> Vec<Secret> {
    listed.iter().map(|s| s.expose().trim()).filter(|s| !s.is_empty()).map(Secret::from).collect()
}

/// What is wrong with `previous` secrets beside `current` (each named as
/// the caller spells it), if anything: each must be long enough, differ
/// from the current one, and there must be a current one to sign with.
pub fn previous_secrets_problem(current: Option<&Secret>, previous: &[Secret], current_name: &str, previous_name: &str) -> Option<String> {
    if previous.is_empty() {
        return None;
    }
    let Some(current) = current else {
        return Some(format!(
            "{previous_name} needs {current_name}: they verify the tokens handed out before it, which signs the new ones"
        ));
    };
    if let Some(short) = previous.iter().find(|p| p.expose().len() < crate::token::MIN_SECRET_BYTES) {
        return Some(format!(
            "each of {previous_name} must be at least {} bytes (one has {})",
            crate::token::MIN_SECRET_BYTES,
            short.expose().len()
        ));
    }
    previous
        .iter()
        .any(|p| p.expose() == current.expose())
        .then(|| format!("{previous_name} holds {current_name} itself: list only the secrets it replaces"))
}

/// A plugin's `settings` in the file: its text, or a table, which plugins
/// get as JSON (they are written in JSON by convention, and a table is
/// what a TOML file suggests).
fn settings_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(Some(text)),
        toml::Value::Table(table) => Ok(Some(json_of(toml::Value::Table(table)).to_string())),
        other => Err(serde::de::Error::custom(format!(
            "settings must be text (JSON by convention: settings = '{{\"max-per-owner\": 3}}') or a table (settings = {{ max-per-owner = 3 }}), not {}",
            other.type_str()
        ))),
    }
}

/// `value` as JSON; TOML's dates and times as their RFC 3339 text (serde
/// would give them as an internal `$__toml_private_datetime` object).
fn json_of(value: toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.into_iter().map(json_of).collect(),
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| (k, json_of(v))).collect(),
    }
}

/// `host-domain` in the file: checked where it is read, so the error names
/// its line.
fn host_domain_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let domain = String::deserialize(d)?;
    host_domain_arg(&domain).map(Some).map_err(|why| serde::de::Error::custom(format!("host-domain {why}")))
}

/// Whether a (checked) public URL names this machine only: `localhost`,
/// a name under `.localhost`, or a loopback address.
fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    is_localhost_name(&host.to_ascii_lowercase()) || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `localhost` or a name under it (lower case), which resolves to this
/// machine only.
fn is_localhost_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

impl Config {
    /// Reads `path` (or starts from defaults when `None`).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = read_capped(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        let dir = std::path::absolute(path).ok().and_then(|p| p.parent().map(Path::to_path_buf));
        if let Some(dir) = dir {
            for t in config.templates.values_mut() {
                t.resolve_paths(&dir);
            }
            // Like templates: a file's paths are from where the file is, so
            // it works from any directory (flags are from the current one).
            for kind in PluginKind::ALL {
                let slot = config.plugins.slot_mut(kind);
                for path in [&mut slot.file, &mut slot.settings_file].into_iter().flatten() {
                    *path = dir.join(&*path);
                }
            }
        }
        config.file = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        config.file_digest = Some(digest(text.as_bytes()));
        Ok(config)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        // In TOML a struct is a table (`[plugins.auth]`, or `auth = { file = "…" }`).
        toml::from_str(text)
            .map_err(|e| crate::text::name_structs_as(&crate::text::plain_types(&parse_error::describe(text, &e)), "a table"))
    }

    /// Adds the built-in `demo` template unless the file defines one.
    pub fn with_builtin_templates(mut self) -> Self {
        if !self.templates.contains_key(DEMO_TEMPLATE) {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("spawner"));
            self.templates.insert(DEMO_TEMPLATE.into(), demo_template(&exe));
        }
        self
    }

    /// The base URL browsers use.
    pub fn public_url(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.listen)).trim_end_matches('/').to_string()
    }

    /// Checks the values together; the message names the field to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let no_api_token = self.api_token.as_ref().is_none_or(|t| t.expose().is_empty());
        // Where the API is served decides who reaches it: its own listener,
        // or the one browsers reach (through whatever routes them there).
        let api_with_backends = self.api_listen.is_none();
        if let Some(api) = self.api_listen {
            if api == self.listen && api.port() != 0 {
                return bad(format!("api-listen = {api} is listen's address too: give the API another port, or leave api-listen out"));
            }
            if !api.ip().is_loopback() && no_api_token {
                return bad(format!(
                    "api-listen = {api} is reachable from other machines, so the API needs a token: pass --api-token, set SPAWNER_API_TOKEN or api-token in the config file (or serve the API on 127.0.0.1)"
                ));
            }
        }
        if api_with_backends && !self.listen.ip().is_loopback() && no_api_token {
            return bad(format!(
                "listen = {} is reachable from other machines, so the API needs a token: pass --api-token, set SPAWNER_API_TOKEN or api-token in the config file (or listen on 127.0.0.1, or keep the API there with --api-listen 127.0.0.1:PORT)",
                self.listen
            ));
        }
        if let Some(t) = &self.api_token
            && t.expose().len() < 16
        {
            return bad("api-token must be at least 16 bytes (try `openssl rand -hex 32`)".into());
        }
        if let Some(s) = &self.token_secret
            && s.expose().len() < crate::token::MIN_SECRET_BYTES
        {
            return bad(format!("token-secret must be at least {} bytes (try `openssl rand -hex 32`)", crate::token::MIN_SECRET_BYTES));
        }
        previous_secrets_problem(self.token_secret.as_ref(), &self.previous_token_secrets, "token-secret", "previous-token-secrets")
            .map_or(Ok(()), bad)?;
        if !crate::token::TTL_SECONDS.contains(&self.token_ttl_seconds) {
            return bad(format!(
                "token-ttl-seconds must be between 1 and {} (30 days), got {}",
                crate::token::MAX_TTL_SECONDS,
                self.token_ttl_seconds
            ));
        }
        if let Some(u) = &self.public_url {
            public_url_arg(u).map_err(|why| ConfigError::Invalid(format!("public-url: {why}")))?;
            // Listening on loopback behind a reverse proxy (a TLS
            // terminator on this host) exposes the API as well as /p/.
            if api_with_backends && !is_loopback_url(u) && no_api_token {
                return bad(format!(
                    "public-url = {u} says browsers reach Spawner from other machines (through a reverse proxy), which then reach the API too, so it needs a token: pass --api-token, set SPAWNER_API_TOKEN or api-token in the config file"
                ));
            }
        }
        // A reverse proxy in front, said so by trusting one or by its
        // scheme, forwards the API with the backends, whatever address
        // Spawner listens on: a loopback listener is no longer private.
        let behind = match (self.proxy.trusted_proxies.is_empty(), self.proxy.forwarded_proto) {
            (false, _) => Some("proxy.trusted-proxies names a reverse proxy in front"),
            (true, Scheme::Https) => Some("proxy.forwarded-proto = \"https\" says a TLS terminator is in front"),
            (true, Scheme::Http) => None,
        };
        if let Some(behind) = behind
            && api_with_backends
            && no_api_token
        {
            return bad(format!(
                "{behind}, which reaches the API as well as the backends on listen = {}, so the API needs a token: pass --api-token, set SPAWNER_API_TOKEN or api-token in the config file (or keep the API off the proxied listener with --api-listen 127.0.0.1:PORT)",
                self.listen
            ));
        }
        if let Some(d) = &self.host_domain {
            host_domain_arg(d).map_err(|why| ConfigError::Invalid(format!("host-domain {why}")))?;
            // Its URLs work only where its hosts reach this listener (a
            // wildcard DNS record, a reverse proxy), which then reaches
            // the API too.
            if let Some(why) = self.public_url.as_deref().and_then(|u| public_url_conflict(u, d)) {
                return bad(why);
            }
            if api_with_backends && !is_localhost_name(d) && no_api_token {
                return bad(format!(
                    "host-domain = {d} says browsers reach backends at {{name}}.{d}, from other machines, and whatever routes those hosts here reaches the API too, so it needs a token: pass --api-token, set SPAWNER_API_TOKEN or api-token in the config file (or use a domain under .localhost)"
                ));
            }
        }
        let b = &self.backends;
        for (field, value, min, max) in [
            ("backends.startup-timeout-seconds", b.startup_timeout_seconds, 1, MAX_TIMEOUT_SECONDS),
            ("backends.stop-timeout-seconds", b.stop_timeout_seconds, 0, MAX_TIMEOUT_SECONDS),
            ("backends.retention-seconds", b.retention_seconds, 0, MAX_RETENTION_SECONDS),
            ("sweeper.interval-ms", self.sweeper.interval_ms, 1, MAX_TIMEOUT_SECONDS * 1000),
        ] {
            if !(min..=max).contains(&value) {
                return bad(format!("{field} must be between {min} and {max}, got {value}"));
            }
        }
        if self.backends.max_ended == 0 {
            return bad(
                "backends.max-ended must be at least 1 (an ended backend would vanish before anyone could read why it ended)".into()
            );
        }
        if self.backends.max_backends == 0 {
            return bad("backends.max-backends must be at least 1 (every create would be refused)".into());
        }
        // The default for creates that give none: out of range, every such
        // create would be refused for a field its caller never sent.
        let grace = self.backends.grace_period_seconds;
        if !(1..=crate::backends::MAX_GRACE_SECONDS).contains(&grace) {
            return bad(crate::backends::out_of_range("backends.grace-period-seconds", Some(crate::backends::MAX_GRACE_SECONDS), grace));
        }
        self.proxy.validate(|field| format!("proxy.{field}")).map_err(ConfigError::Invalid)?;
        for (name, t) in &self.templates {
            if t.command.trim().is_empty() {
                return bad(format!(
                    "templates.\"{name}\".command is missing or empty: give the program to run, e.g. command = \"python3\""
                ));
            }
            // Spawner sets these for each backend; the template's value
            // would be silently replaced (a create's `env` is refused alike).
            if let Some(k) = t.env.keys().find(|k| crate::backends::set_by_spawner(k)) {
                return bad(format!(
                    "templates.\"{name}\".env.{k} is set by Spawner for each backend and cannot be set here (PORT and every SPAWNER_ variable are Spawner's); remove it, or rename it"
                ));
            }
            // Checked here, not at each create: every create would fail,
            // naming the program instead of the variable.
            if let Some((k, v)) = t.env.iter().find(|(k, v)| !crate::backends::is_env_name(k) || v.contains('\0')) {
                let what = if v.contains('\0') {
                    "its value holds a NUL byte, which no environment variable can"
                } else {
                    &format!("not a variable name ({})", crate::backends::ENV_NAME_RULE)
                };
                return bad(format!("templates.\"{name}\".env.{k:?}: {what}"));
            }
        }
        for kind in PluginKind::ALL {
            let s = self.plugins.slot(kind);
            if s.settings.is_some() && s.settings_file.is_some() {
                return bad(format!("plugins.{kind}: set settings or settings-file, not both"));
            }
        }
        self.plugins.runtime().validate().map_err(ConfigError::Invalid)
    }
}

/// The `demo` template for Spawner running as `exe`: the
/// `spawner-demo-backend` executable beside it when there is one (it starts
/// in about half the time), else `exe demo-backend`.
fn demo_template(exe: &Path) -> Template {
    let small = exe.with_file_name(format!("spawner-demo-backend{}", std::env::consts::EXE_SUFFIX));
    let (command, args) =
        if small.is_file() { (small.display().to_string(), vec![]) } else { (exe.display().to_string(), vec!["demo-backend".to_string()]) };
    Template { command, args, env: BTreeMap::new(), cwd: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_template_prefers_the_small_executable_beside_spawner() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("spawner");
        let t = demo_template(&exe);
        assert_eq!((t.command.as_str(), t.args.as_slice()), (exe.to_str().unwrap(), ["demo-backend".to_string()].as_slice()));
        let small = dir.path().join("spawner-demo-backend");
        std::fs::write(&small, "").unwrap();
        let t = demo_template(&exe);
        assert_eq!(t.command, small.to_str().unwrap());
        assert!(t.args.is_empty());
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn type_errors_name_toml_types_not_rust_ones() {
        let e = Config::parse("[plugins]\nauth = \"x.wasm\"\n").unwrap_err();
        assert!(e.contains("expected a table") && !e.contains("PluginSlot"), "{e}");
        let e = Config::parse("backends = 5\n").unwrap_err();
        assert!(e.contains("expected a table") && !e.contains("struct"), "{e}");
        let e = Config::parse("[plugins]\nmax-instances = 99999999999\n").unwrap_err();
        assert!(e.contains("expected a whole number from 0 to 4294967295"), "{e}");
    }

    #[test]
    fn a_full_file_parses() {
        let c = Config::parse(
            r#"
            listen = "127.0.0.1:9000"
            token-ttl-seconds = 60
            [backends]
            grace-period-seconds = 30
            [proxy]
            token-cookie = "s"
            [plugins.auth]
            file = "auth.wasm"
            settings = '{"header":"x-key"}'
            deadline-ms = 5
            [templates."ghcr.io/acme/editor:1"]
            command = "node"
            args = ["server.js"]
            env = { NODE_ENV = "production" }
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.backends.grace_period_seconds, 30);
        assert_eq!(c.plugins.runtime().auth, Limits { memory_mib: 64, deadline_ms: 5 });
        assert_eq!(c.templates["ghcr.io/acme/editor:1"].env["NODE_ENV"], "production");
        assert_eq!(c.proxy.token_names(), TokenNames { cookie: "s".into(), query_param: "token".into() });
    }

    #[test]
    fn previous_token_secrets_need_a_current_one_and_the_length() {
        let with = |current: Option<&str>, previous: &[&str]| Config {
            token_secret: current.map(Into::into),
            previous_token_secrets: previous.iter().map(|p| (*p).into()).collect(),
            ..Config::default()
        };
        with(Some("new-0123456789abcdef"), &["old-0123456789abcdef"]).validate().unwrap();
        for (config, says) in [
            (with(None, &["old-0123456789abcdef"]), "previous-token-secrets needs token-secret"),
            (with(Some("new-0123456789abcdef"), &["short"]), "must be at least 16 bytes (one has 5)"),
            (with(Some("new-0123456789abcdef"), &["new-0123456789abcdef"]), "holds token-secret itself"),
        ] {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let listed = listed_secrets(
            &["old-0123456789abcdef, other-0123456789abcdef".into(), "".into()][..]
                .iter()
                .flat_map(|s: &Secret| s.expose().split(',').map(Secret::from).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            listed.iter().map(|s| s.expose()).collect::<Vec<_>>(),
            ["old-0123456789abcdef", "other-0123456789abcdef"],
            "spaces and empty entries"
        );
        let c = Config::parse("token-secret = \"new-0123456789abcdef\"\nprevious-token-secrets = [\"old-0123456789abcdef\"]\n").unwrap();
        assert_eq!(c.previous_token_secrets.len(), 1);
    }

    #[test]
    fn plugin_settings_are_text_or_a_table_passed_on_as_json() {
        let c = Config::parse("[plugins.scheduler]\nsettings = { max-per-owner = 3, spread = true, zones = [\"a\"] }\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(c.plugins.scheduler.settings.as_deref().unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"max-per-owner": 3, "spread": true, "zones": ["a"]}));
        let c = Config::parse("[plugins.idle]\nsettings = { since = 2024-01-01, at = 1979-05-27T07:32:00Z }\n").unwrap();
        assert_eq!(c.plugins.idle.settings.as_deref(), Some(r#"{"at":"1979-05-27T07:32:00Z","since":"2024-01-01"}"#), "dates as text");
        let c = Config::parse("[plugins.idle.settings]\ngrace = 5\n").unwrap();
        assert_eq!(c.plugins.idle.settings.as_deref(), Some(r#"{"grace":5}"#), "a [plugins.idle.settings] table too");
        let c = Config::parse("[plugins.idle]\nsettings = 'keep'\n").unwrap();
        assert_eq!(c.plugins.idle.settings.as_deref(), Some("keep"), "text as it is");
        let e = Config::parse("[plugins.idle]\nsettings = 5\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("settings must be text") && e.contains("not integer"), "{e}");
    }

    #[test]
    fn token_names_must_be_safe_in_a_cookie_and_a_query_string() {
        for bad in ["", "a b", "a;b", "t=1", "tök"] {
            let mut c = Config::default();
            c.proxy.token_query_param = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("proxy.token-query-param"), "{bad:?}: {e}");
        }
        let mut c = Config::default();
        c.proxy.token_cookie = "my-app.session_1".into();
        c.validate().unwrap();
        c.proxy.token_cookie = "__Host-session".into();
        assert!(c.validate().unwrap_err().to_string().contains("__Host-"));
        c.proxy.token_cookie = "__Secure-session".into();
        assert!(c.validate().is_err());
        c.proxy.forwarded_proto = Scheme::Https;
        c.api_token = Some("0123456789abcdef".into());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_types_name_the_line() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\n\n[backends]\ngrace-period = 3\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("grace-period"), "{e}");
        let e = Config::parse("token-ttl-seconds = -5\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(e.contains("expected a whole number, 0 or more") && !e.contains("u64"), "no Rust type names: {e}");
    }

    #[test]
    fn a_variable_in_args_that_no_shell_expands_is_said() {
        let t = |command: &str, args: &[&str]| Template {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
        };
        let said = t("python3", &["-m", "http.server", "$PORT"]).unexpanded_variable().unwrap();
        assert!(said.starts_with("args[2] names $PORT, which reaches the program as written: no shell expands"), "{said}");
        let said = t("node", &["server.js", "--url=postgres://u:secret@db/${SPAWNER_BACKEND_NAME}"]).unexpanded_variable().unwrap();
        assert!(said.starts_with("args[1] names $SPAWNER_BACKEND_NAME") && !said.contains("secret"), "the argument is not quoted: {said}");
        // A shell's script is expanded, also after a launcher; what follows
        // the script is not.
        assert_eq!(t("sh", &["-c", "exec python3 -m http.server $PORT"]).unexpanded_variable(), None);
        assert_eq!(t("/bin/bash", &["-ec", "exec server --port $PORT"]).unexpanded_variable(), None);
        assert_eq!(t("env", &["A=1", "sh", "-c", "exec server --port $PORT"]).unexpanded_variable(), None);
        assert!(
            t("sh", &["-c", "exec srv --port \"$1\"", "sh", "$PORT"]).unexpanded_variable().unwrap().starts_with("args[3] names $PORT")
        );
        assert!(t("bash", &["run.sh", "--config", "x", "$PORT"]).unexpanded_variable().is_some(), "a script file, not -c");
        // Variables that are the program's own, and dollar amounts.
        assert_eq!(t("awk", &["{print $NF}"]).unexpanded_variable(), None);
        assert_eq!(t("perl", &["-e", "my $x = 1"]).unexpanded_variable(), None);
        assert_eq!(t("echo", &["costs $5", "a$", "$PORTAL"]).unexpanded_variable(), None);
    }

    #[test]
    fn listen_takes_an_ip_address_or_localhost_and_says_so() {
        assert_eq!(Config::parse("listen = \"localhost:9000\"\n").unwrap().listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(listen_arg("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        for bad in ["example.com:80", ":8080", "127.0.0.1", "localhost"] {
            let e = Config::parse(&format!("\nlisten = \"{bad}\"\n")).unwrap_err();
            assert!(
                e.contains("line 2") && e.contains("listen must be an IP address (or localhost) and a port, such as 127.0.0.1:8080"),
                "{bad}: {e}"
            );
            assert!(listen_arg(bad).is_err(), "the flag too: {bad}");
        }
        // A port alone: the examples carry it.
        let e = listen_arg("8096").unwrap_err();
        assert!(e.contains("such as 127.0.0.1:8096 (this machine only), 0.0.0.0:8096") && e.contains("localhost:8096"), "{e}");
    }

    #[test]
    fn the_host_domain_is_a_dns_name_in_lower_case() {
        let c = Config::parse("host-domain = \"Apps.Example.com\"\n").unwrap();
        assert_eq!(c.host_domain.as_deref(), Some("apps.example.com"));
        for bad in ["http://apps.localhost", ".apps.localhost", "apps.localhost:8080", "", "apps..localhost", "apps/x"] {
            let e = Config::parse(&format!("\nhost-domain = \"{bad}\"\n")).unwrap_err();
            assert!(e.contains("line 2") && e.contains("host-domain must be a DNS name such as apps.example.com"), "{bad}: {e}");
            assert!(host_domain_arg(bad).is_err(), "the flag too: {bad}");
        }
        assert_eq!(host_domain_arg("APPS.localhost"), Ok("apps.localhost".to_string()));
    }

    #[test]
    fn a_public_listener_needs_an_api_token() {
        let mut c = Config { listen: "0.0.0.0:8080".parse().unwrap(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("needs a token"));
        c.api_token = Some("0123456789abcdef0123".into());
        c.validate().unwrap();
        c.token_secret = Some("short".into());
        assert!(c.validate().unwrap_err().to_string().contains("token-secret"));
    }

    #[test]
    fn an_api_on_its_own_loopback_listener_needs_no_token_wherever_backends_are_served() {
        let (c, _, _dir) = load_in_dir(
            "listen = \"0.0.0.0:8080\"\napi-listen = \"127.0.0.1:8081\"\npublic-url = \"https://apps.example.com\"\nhost-domain = \"apps.example.com\"\n",
        );
        assert_eq!(c.api_listen, Some("127.0.0.1:8081".parse().unwrap()));
        c.validate().unwrap();
        let open = Config { api_listen: Some("0.0.0.0:8081".parse().unwrap()), ..Config::default() };
        assert!(open.validate().unwrap_err().to_string().contains("api-listen = 0.0.0.0:8081 is reachable from other machines"));
        let same = Config { api_listen: Some("127.0.0.1:8080".parse().unwrap()), ..Config::default() };
        assert!(same.validate().unwrap_err().to_string().contains("is listen's address too"));
        let e = Config::parse("api-listen = \"8081\"\n").unwrap_err().to_string();
        assert!(e.contains("api-listen"), "{e}");
    }

    /// Loads `text` as a config file in a fresh directory: the config, the
    /// directory's absolute path, and the directory (removed when dropped).
    fn load_in_dir(text: &str) -> (Config, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spawner.toml");
        std::fs::write(&file, text).unwrap();
        let c = Config::load(Some(&file)).unwrap();
        (c, std::path::absolute(dir.path()).unwrap(), dir)
    }

    #[test]
    fn relative_template_paths_are_taken_from_the_config_file() {
        let (c, root, _dir) = load_in_dir(
            "[templates.a]\ncommand = \"./run.sh\"\ncwd = \"www\"\n[templates.b]\ncommand = \"bin/server\"\n[templates.c]\ncommand = \"python3\"\n",
        );
        assert_eq!(c.templates["a"].cwd.as_deref(), Some(root.join("www").as_path()));
        assert_eq!(c.templates["a"].command, root.join("www/./run.sh").display().to_string());
        assert_eq!(c.templates["b"].command, root.join("bin/server").display().to_string());
        assert_eq!(c.templates["b"].cwd.as_deref(), Some(root.as_path()), "runs where its command was found: the file's directory");
        assert_eq!(c.templates["c"].command, "python3");
        assert_eq!(c.templates["c"].cwd.as_deref(), Some(root.as_path()));
    }

    #[test]
    fn relative_plugin_paths_are_taken_from_the_config_file() {
        let (c, root, _dir) = load_in_dir(
            "[plugins.idle]\nfile = \"idle.wasm\"\nsettings-file = \"conf/idle.json\"\n[plugins.auth]\nfile = \"/opt/auth.wasm\"\n",
        );
        assert_eq!(c.plugins.idle.file, Some(root.join("idle.wasm")));
        assert_eq!(c.plugins.idle.settings_file, Some(root.join("conf/idle.json")));
        assert_eq!(c.plugins.auth.file.as_deref(), Some(Path::new("/opt/auth.wasm")), "absolute paths stay");
    }

    #[test]
    fn the_public_url_is_an_origin() {
        assert_eq!(public_url_arg("https://apps.example.com/"), Ok("https://apps.example.com".into()));
        assert_eq!(public_url_arg("http://127.0.0.1:8080"), Ok("http://127.0.0.1:8080".into()));
        assert!(public_url_arg("https://apps.example.com/base").unwrap_err().contains("no path"));
        assert!(public_url_arg("https://apps.example.com/?x=1").unwrap_err().contains("no path"));
        assert!(public_url_arg("apps.example.com").unwrap_err().contains("http://"));
        assert!(public_url_arg("https://").unwrap_err().contains("no host"));
        let c = Config { public_url: Some("https://x.example/base".into()), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("public-url: must be an origin"), "the field is named");
    }

    #[test]
    fn a_public_url_other_machines_reach_needs_an_api_token() {
        let with = |url: &str, token: Option<&str>| Config {
            public_url: Some(url.into()),
            api_token: token.map(crate::secret::Secret::from),
            ..Config::default()
        };
        let e = with("https://apps.example.com", None).validate().unwrap_err().to_string();
        assert!(e.contains("public-url = https://apps.example.com") && e.contains("--api-token"), "{e}");
        assert!(with("https://apps.example.com", Some("0123456789abcdef")).validate().is_ok());
        for local in ["http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080", "http://apps.localhost:8080"] {
            assert!(with(local, None).validate().is_ok(), "{local}");
        }
    }

    /// A reverse proxy on the same machine forwards to a loopback listener,
    /// so loopback no longer keeps the API private there.
    #[test]
    fn a_reverse_proxy_in_front_needs_an_api_token() {
        let trusting = Config::parse("[proxy]\ntrusted-proxies = [\"127.0.0.2\"]\n").unwrap();
        let e = trusting.validate().unwrap_err().to_string();
        assert!(e.contains("proxy.trusted-proxies") && e.contains("listen = 127.0.0.1:8080") && e.contains("--api-token"), "{e}");
        let https = Config::parse("[proxy]\nforwarded-proto = \"https\"\n").unwrap();
        let e = https.validate().unwrap_err().to_string();
        assert!(e.contains("forwarded-proto") && e.contains("--api-listen"), "{e}");
        for mut c in [trusting, https] {
            c.api_token = Some("0123456789abcdef".into());
            c.validate().unwrap();
            c.api_token = None;
            c.api_listen = Some("127.0.0.1:8081".parse().unwrap());
            c.validate().unwrap();
        }
    }

    #[test]
    fn names_below_the_host_domain() {
        assert_eq!(below_domain("a.apps.test", "apps.test"), Some("a"));
        assert_eq!(below_domain("X.y.Apps.Test", "apps.test"), Some("X.y"), "without case");
        assert_eq!(below_domain(".apps.test", "apps.test"), Some(""));
        for outside in ["apps.test", "xapps.test", "a.apps.test.evil", "test", "é.apps.tesé"] {
            assert_eq!(below_domain(outside, "apps.test"), None, "{outside}");
        }
    }

    #[test]
    fn the_public_url_is_not_a_backends_host() {
        let with = |url: &str| Config { public_url: Some(url.into()), host_domain: Some("apps.localhost".into()), ..Config::default() };
        for ok in ["http://apps.localhost:8080", "http://spawner.localhost", "http://127.0.0.1:8080", "http://xapps.localhost"] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        let message = |url: &str| with(url).validate().unwrap_err().to_string();
        assert!(message("http://api.apps.localhost:8080").contains("would be the backend named by that host"), "one level");
        let deeper = message("http://api.x.APPS.localhost");
        assert!(deeper.contains("under host-domain apps.localhost") && deeper.contains("404"), "{deeper}");
    }

    /// Whatever routes `{name}.{domain}` here (a wildcard DNS record, a
    /// reverse proxy) routes `x.y.{domain}` and `{domain}` too.
    #[test]
    fn a_host_domain_other_machines_reach_needs_an_api_token() {
        let with = |domain: &str, token: Option<&str>| Config {
            host_domain: Some(domain.into()),
            api_token: token.map(crate::secret::Secret::from),
            ..Config::default()
        };
        let e = with("apps.example.com", None).validate().unwrap_err().to_string();
        assert!(e.contains("host-domain = apps.example.com") && e.contains("--api-token"), "{e}");
        assert!(with("apps.example.com", Some("0123456789abcdef")).validate().is_ok());
        for local in ["localhost", "apps.localhost"] {
            assert!(with(local, None).validate().is_ok(), "{local}");
        }
    }

    #[test]
    fn the_forwarded_scheme_is_http_or_https() {
        let e = Config::parse("[proxy]\nforwarded-proto = \"ftp\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("`http`") && e.contains("`https`"), "{e}");
        let c = Config::parse("[proxy]\nforwarded-proto = \"https\"\n").unwrap();
        assert_eq!(c.proxy.forwarded_proto, Scheme::Https);
    }

    #[test]
    fn template_variables_spawner_sets_are_refused_and_missing_programs_found() {
        let e = Config::parse("[templates.t]\ncommand = \"python3\"\nenv = { PORT = \"1\" }\n").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("templates.\"t\".env.PORT is set by Spawner"), "{e}");
        // Refused at load, naming the variable, not at every create naming
        // the program.
        for (env, says) in [
            (r#"{ A = "x\u0000y" }"#, "templates.\"t\".env.\"A\": its value holds a NUL byte"),
            (r#"{ "A=B" = "x" }"#, "templates.\"t\".env.\"A=B\": not a variable name"),
            (r#"{ "1A" = "x" }"#, "templates.\"t\".env.\"1A\": not a variable name"),
        ] {
            let e = Config::parse(&format!("[templates.t]\ncommand = \"sh\"\nenv = {env}\n")).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(says), "{env}: {e}");
        }

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.path().join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let t = |command: &str, cwd: Option<&Path>| Template {
            command: command.into(),
            args: vec![],
            env: BTreeMap::new(),
            cwd: cwd.map(Path::to_path_buf),
        };
        assert_eq!(t("sh", None).start_problem(), None, "found in PATH");
        assert_eq!(t("./run.sh", Some(dir.path())).start_problem(), None, "found where it runs");
        assert!(t("no-such-program-here", None).start_problem().unwrap().contains("was not found"));
        assert!(t("./missing.sh", Some(dir.path())).start_problem().unwrap().contains("was not found"));
        assert!(t("sh", Some(&dir.path().join("nope"))).start_problem().unwrap().contains("is not a directory"));

        // Found, but the kernel would not run it: every create would fail.
        use std::os::unix::fs::PermissionsExt;
        let script = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            format!("./{name}")
        };
        let plain = script("plain.sh", "#!/bin/sh\nexit 0\n", 0o644);
        assert!(t(&plain, Some(dir.path())).start_problem().unwrap().contains("plain.sh is not executable (chmod +x it"));
        let bare = script("bare.sh", "exit 0\n", 0o755);
        assert!(t(&bare, Some(dir.path())).start_problem().unwrap().contains("bare.sh is a script without a #! line"));
        let good = script("good.sh", "#!/bin/sh\nexit 0\n", 0o755);
        assert_eq!(t(&good, Some(dir.path())).start_problem(), None);
        // In PATH: a file that is not executable is skipped for a later one.
        let other = tempfile::tempdir().unwrap();
        script("tool", "#!/bin/sh\n", 0o644);
        std::fs::write(other.path().join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(other.path().join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let in_path = |dirs: &[&Path]| Template {
            env: BTreeMap::from([("PATH".to_string(), std::env::join_paths(dirs).unwrap().into_string().unwrap())]),
            ..t("tool", None)
        };
        assert_eq!(in_path(&[dir.path(), other.path()]).start_problem(), None);
        assert!(in_path(&[dir.path()]).start_problem().unwrap().contains("is not executable"));
        // Found through PATH, a script without `#!` runs (execvp hands it to
        // /bin/sh); given as a path, it does not.
        script("bare", "exit 0\n", 0o755);
        let bare_in_path = Template { env: BTreeMap::from([("PATH".to_string(), dir.path().display().to_string())]), ..t("bare", None) };
        assert_eq!(bare_in_path.start_problem(), None);
    }

    #[test]
    fn a_header_limit_under_what_the_server_reads_is_refused_at_load() {
        for (bytes, ok) in [(8191, false), (8192, true), (1 << 20, true), ((1 << 20) + 1, false)] {
            let mut c = Config::default();
            c.proxy.max_header_bytes = bytes;
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "{bytes}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("proxy.max-header-bytes must be between 8192 and 1048576"), "{e}");
            }
        }
    }

    #[test]
    fn keeping_no_ended_backend_is_refused_at_load() {
        let e = Config::parse("[backends]\nmax-ended = 0\n").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("backends.max-ended must be at least 1"), "{e}");
    }

    #[test]
    fn a_zero_backend_limit_is_refused_at_load() {
        let mut c = Config::default();
        c.backends.max_backends = 0;
        assert!(c.validate().unwrap_err().to_string().contains("backends.max-backends must be at least 1"));
    }

    #[test]
    fn a_default_grace_period_no_create_could_have_is_refused_at_load() {
        for bad in [0, crate::backends::MAX_GRACE_SECONDS + 1] {
            let mut c = Config::default();
            c.backends.grace_period_seconds = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("backends.grace-period-seconds must be between 1 and 4294967295"), "{e}");
        }
    }

    #[test]
    fn timeouts_beyond_what_timers_and_timestamps_hold_are_refused_at_load() {
        type Set = fn(&mut Config, u64);
        let cases: [(&str, Set, u64, u64); 6] = [
            ("backends.startup-timeout-seconds", |c, v| c.backends.startup_timeout_seconds = v, 1, 86_400),
            ("backends.stop-timeout-seconds", |c, v| c.backends.stop_timeout_seconds = v, 0, 86_400),
            ("backends.retention-seconds", |c, v| c.backends.retention_seconds = v, 0, 31_622_400),
            ("sweeper.interval-ms", |c, v| c.sweeper.interval_ms = v, 1, 86_400_000),
            ("proxy.header-read-timeout-ms", |c, v| c.proxy.header_read_timeout_ms = v, 1, 86_400_000),
            ("proxy.response-timeout-seconds", |c, v| c.proxy.response_timeout_seconds = v, 1, 86_400),
        ];
        for (field, set, min, max) in cases {
            for ok in [min, max] {
                let mut c = Config::default();
                set(&mut c, ok);
                c.validate().unwrap_or_else(|e| panic!("{field} = {ok}: {e}"));
            }
            for bad in [min.wrapping_sub(1), max + 1, u64::MAX].into_iter().filter(|v| *v < min || *v > max) {
                let mut c = Config::default();
                set(&mut c, bad);
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains(&format!("{field} must be between {min} and {max}, got {bad}")), "{e}");
            }
        }
    }

    #[test]
    fn the_default_token_lifetime_is_bounded_like_a_requested_one() {
        let c = Config { token_ttl_seconds: crate::token::MAX_TTL_SECONDS + 1, ..Config::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("token-ttl-seconds must be between 1 and 2592000 (30 days), got 2592001"), "{e}");
        Config { token_ttl_seconds: crate::token::MAX_TTL_SECONDS, ..Config::default() }.validate().unwrap();
    }
}
