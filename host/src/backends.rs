//! What a backend is, independent of where it runs, and the [`Control`]
//! interface the API uses to manage backends (implemented by the local
//! runtime and by the Kubernetes one, [`crate::k8s::control`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::lifecycle::Status;
use crate::process::LogLine;

/// How long a terminate request waits for the backend to leave its phase
/// before answering (locally the driver acts within milliseconds; on
/// Kubernetes the operator within a round trip or two).
pub const TERMINATE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest key accepted (Kubernetes names are 253; keys become labels).
pub const MAX_KEY_LEN: usize = 253;

/// A create request after defaults are applied and input validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Template (or image) name.
    pub template: String,
    /// Get-or-create key.
    pub key: Option<String>,
    /// The user it is for.
    pub owner: Option<String>,
    /// Free-form labels, passed to plugins.
    pub labels: BTreeMap<String, String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Idle grace period, seconds.
    pub grace_period_seconds: u64,
    /// Maximum lifetime, seconds.
    pub lifetime_limit_seconds: Option<u64>,
    /// Requested CPU, thousandths of a core.
    pub cpu_millis: u64,
    /// Requested memory, bytes.
    pub memory_bytes: u64,
    /// Node labels required.
    pub node_selector: BTreeMap<String, String>,
    /// Node taints the backend tolerates (Kubernetes only: this machine
    /// has none, but they are checked the same so a spec runs in both).
    pub tolerations: Vec<Toleration>,
    /// The application's HTTP port on Kubernetes (default 8080). Local
    /// backends always listen on the port Spawner passes in `PORT`.
    pub port: Option<u16>,
}

/// A node taint a backend tolerates: Kubernetes' `Toleration`, with its
/// fields, defaults and rules, so the API can pass it to the Pod as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// The taint's key; empty (with `Exists`) tolerates every taint.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(nullable)]
    pub key: String,
    /// `Equal` (the default when empty): the taint's value must be `value`;
    /// `Exists`: any value.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(nullable)]
    pub operator: String,
    /// The taint's value, for `Equal`.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(nullable)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty for all.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(nullable)]
    pub effect: String,
    /// With `NoExecute` only: seconds the backend may stay on a node after
    /// the taint appears there (none: for ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// A string field given as `null` reads as empty, as the API server reads
/// it (clients that serialise every field, such as Kubernetes' Python
/// client, send `null` for unset ones).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Toleration {
    /// What is wrong with it, by the rules the API server applies to a
    /// Pod's tolerations (`ValidateTolerations`); none if it is valid.
    /// Checked before anything is created: on Kubernetes the Pod is only
    /// made after scheduling, and its refusal would then be a failed
    /// backend instead of an answer that says what to fix.
    pub fn problem(&self) -> Option<String> {
        let Toleration { key, operator, value, effect, toleration_seconds } = self;
        if !key.is_empty() && !is_label_key(key) {
            return Some(format!("key {key:?} is not a valid Kubernetes label key"));
        }
        match operator.as_str() {
            "" | "Equal" if key.is_empty() => {
                return Some("an empty key requires operator Exists (which tolerates every taint)".into());
            }
            "" | "Equal" if !is_label_value(value) => return Some(format!("value {value:?} is not a valid Kubernetes label value")),
            "Exists" if !value.is_empty() => return Some(format!("value must be empty when operator is Exists (got {value:?})")),
            "" | "Equal" | "Exists" => {}
            other => return Some(format!("operator must be Equal or Exists (got {other:?})")),
        }
        if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect.as_str()) {
            return Some(format!("effect must be NoSchedule, PreferNoSchedule or NoExecute, or empty for all (got {effect:?})"));
        }
        if toleration_seconds.is_some() && effect != "NoExecute" {
            return Some("tolerationSeconds needs effect NoExecute (other effects never evict)".into());
        }
        None
    }
}

/// A backend as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// Unique name; also the URL segment `/p/{name}/`.
    pub name: String,
    /// Template it runs.
    pub template: String,
    /// Get-or-create key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The user it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Idle grace period, seconds.
    pub grace_period_seconds: u64,
    /// Maximum lifetime, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_limit_seconds: Option<u64>,
    /// The URL a browser opens (without a token; see `token`).
    pub url: String,
    /// Lifecycle status.
    pub status: Status,
    /// Where the backend listens (local mode: `127.0.0.1:PORT`; Kubernetes:
    /// the Pod IP and port). For operators; browsers go through `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// WebSockets open through the proxy right now (HTTP requests count
    /// while in flight, in the idle plugin's activity).
    pub open_connections: u32,
    /// Its object's uid on Kubernetes, where a key's backends share a name:
    /// the tokens the API mints name it (not shown).
    #[serde(skip)]
    pub uid: Option<String>,
}

/// One entry of a backend's status history (SSE event id = `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Position in this backend's history, from 1.
    pub seq: u64,
    /// The status at that point.
    pub status: Status,
}

/// Everything needed to stream a backend's status: what happened so far,
/// and a receiver for what comes next.
#[derive(Debug)]
pub struct StatusFeed {
    /// Past events, oldest first.
    pub history: Vec<StatusEvent>,
    /// Changes from here on.
    pub live: watch::Receiver<StatusEvent>,
    /// Whether no event id beyond the current one can have been sent: true
    /// where this process numbers the events (local mode); false on
    /// Kubernetes, where a client may resume from another replica whose
    /// cache is ahead of this one's.
    pub complete: bool,
}

/// List filter (all conditions must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these phases (any when empty).
    pub phases: Vec<crate::lifecycle::Phase>,
    /// Only this owner.
    pub owner: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only backends carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only live (`true`) or only ended (`false`) backends.
    pub live: Option<bool>,
}

impl Filter {
    /// Whether `v` passes.
    pub fn matches(&self, v: &BackendView) -> bool {
        (self.phases.is_empty() || self.phases.contains(&v.status.phase))
            && self.owner.as_ref().is_none_or(|o| v.owner.as_ref() == Some(o))
            && self.key.as_ref().is_none_or(|k| v.key.as_ref() == Some(k))
            && self.labels.iter().all(|(k, val)| v.labels.get(k) == Some(val))
            && self.live.is_none_or(|live| live != v.status.phase.is_terminal())
    }
}

/// The warning for a create-or-get that returns `existing`, the live
/// backend holding its key, when the request asked for another template:
/// it is returned as it is, and the web app's server is told rather than
/// handed another program in silence. None when the templates agree. (Other
/// owners are not worth a word: a second user joining a document's backend
/// is what keys are for, and the token is made out to them.)
pub fn returned_as_it_is(spec: &BackendSpec, existing: &BackendView) -> Vec<String> {
    if spec.template == existing.template {
        return Vec::new();
    }
    let (key, name) = (spec.key.as_deref().unwrap_or_default(), &existing.name);
    let warning = format!(
        "key {key:?} is held by live backend {name}, returned as it is: it runs template {:?}, not {:?}; to start one from this request, terminate it first (DELETE /api/v1/backends/{name})",
        existing.template, spec.template
    );
    tracing::info!(backend = %name, "{warning}");
    vec![warning]
}

/// Errors of [`Control`] operations, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// No backend of that name.
    #[error("no backend named {0}")]
    NotFound(String),
    /// The template is not configured: its name, those that are, and how
    /// to add it.
    #[error("unknown template {0:?}; configured templates: {1} ({2})")]
    UnknownTemplate(String, String, String),
    /// Input is invalid; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// Too many live backends.
    #[error("{0}")]
    Capacity(String),
    /// Spawner is shutting down.
    #[error("spawner is shutting down")]
    ShuttingDown,
    /// What was asked for existed once and is gone; the message says what.
    #[error("{0}")]
    Gone(String),
    /// The runtime's store (the Kubernetes API) failed; worth a retry.
    #[error("{0}")]
    Unavailable(String),
    /// What the request names is held by something it may not be given
    /// (a key held by an object the API did not create).
    #[error("{0}")]
    Conflict(String),
}

/// Result of a create-or-get.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The backend.
    pub backend: BackendView,
    /// False when a live backend with the same key was returned.
    pub created: bool,
    /// What the caller should know about its request (also logged): the
    /// web app's server reads the answer, not Spawner's log.
    pub warnings: Vec<String>,
}

/// What the API needs from a runtime. Methods return futures so that a
/// runtime backed by a remote store (the Kubernetes API) fits the same API.
pub trait Control: Send + Sync + 'static {
    /// Creates a backend, or returns the live one with the same key.
    /// Concurrent calls with one key create exactly one.
    fn create(&self, spec: BackendSpec) -> impl Future<Output = Result<Created, ControlError>> + Send;
    /// One backend (none: no such backend; an error: it could not be read).
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<BackendView>, ControlError>> + Send;
    /// Backends passing `filter`, newest first.
    fn list(&self, filter: &Filter) -> impl Future<Output = Vec<BackendView>> + Send;
    /// Asks a backend to stop (reason `requested`); idempotent.
    fn terminate(&self, name: &str) -> impl Future<Output = Result<BackendView, ControlError>> + Send;
    /// Status history and live changes (none: no such backend).
    fn subscribe(&self, name: &str) -> impl Future<Output = Result<Option<StatusFeed>, ControlError>> + Send;
    /// Captured output, the last `tail` lines.
    fn logs(&self, name: &str, tail: Option<usize>) -> impl Future<Output = Result<Vec<LogLine>, ControlError>> + Send;
    /// Names of the configured templates.
    fn templates(&self) -> Vec<String>;
}

/// A label name or value: 1-63 letters, digits and `-_.`, starting and
/// ending with a letter or digit.
fn is_label_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
/// Labels follow Kubernetes' rules in both modes, so a spec that works
/// locally also works on a cluster.
fn is_label_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        None => is_label_name(k),
        Some((prefix, name)) => {
            is_label_name(name)
                && (1..=253).contains(&prefix.len())
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                })
        }
    }
}

/// An environment variable name as Kubernetes takes it (its
/// `IsEnvVarName`): letters, digits, `_`, `-` and `.`, not starting with a
/// digit, and neither `.` nor `..`. Wider than what a shell can name
/// (`my.var` is a Spring Boot setting), so that a spec the original
/// Spawner ran, on Kubernetes, runs here too.
pub fn is_env_name(k: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    k.chars().next().is_some_and(|c| allowed(c) && !c.is_ascii_digit()) && k.chars().all(allowed) && k != "." && k != ".."
}

/// What [`is_env_name`] takes, for error messages.
pub const ENV_NAME_RULE: &str = "letters, digits, '_', '-' and '.', not starting with a digit";

/// A Kubernetes label value: empty, or a label name.
fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

/// A Kubernetes label: a valid key with a valid value.
pub fn is_label(k: &str, v: &str) -> bool {
    is_label_key(k) && is_label_value(v)
}

/// Checks a user name (a backend's `owner`, a token's `subject`): 1-253
/// bytes of UTF-8 without control characters, since the proxy sends it to the
/// backend in a header (`x-spawner-user`) and a token must stay short
/// enough to be accepted.
pub fn check_user(field: &str, user: &str) -> Result<(), ControlError> {
    if user.is_empty() || user.len() > 253 || user.chars().any(char::is_control) {
        return Err(ControlError::Invalid(format!("{field} must be 1-253 bytes (UTF-8) without control characters")));
    }
    Ok(())
}

/// Checks a key, labels, env and owner; the message names the field.
pub fn validate_spec(spec: &BackendSpec) -> Result<(), ControlError> {
    let bad = |m: String| Err(ControlError::Invalid(m));
    if spec.template.trim().is_empty() {
        return bad("template is empty: name a configured template (or, on Kubernetes, an image)".into());
    }
    if let Some(k) = &spec.key
        && (k.is_empty() || k.len() > MAX_KEY_LEN || k.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return bad(format!("key must be 1-{MAX_KEY_LEN} bytes (UTF-8) without spaces or control characters"));
    }
    if let Some(o) = &spec.owner {
        check_user("owner", o)?;
    }
    for (field, map) in [("label", &spec.labels), ("nodeSelector", &spec.node_selector)] {
        for (k, v) in map {
            if !is_label(k, v) {
                return bad(format!(
                    "{field} {k:?}={v:?} is not a valid Kubernetes label: a key is a name of 1-63 letters, digits and -_. that \
                     starts and ends with a letter or digit, optionally after a prefix of lowercase letters, digits, '-' and '.' \
                     (a DNS subdomain, up to 253) and '/'; a value is empty or such a name"
                ));
            }
        }
    }
    if let Some((i, problem)) = spec.tolerations.iter().enumerate().find_map(|(i, t)| Some((i, t.problem()?))) {
        return bad(format!("tolerations[{i}]: {problem}"));
    }
    for k in spec.env.keys() {
        if !is_env_name(k) {
            return bad(format!("env name {k:?} is not a valid variable name ({ENV_NAME_RULE})"));
        }
        if set_by_spawner(k) {
            return bad(format!("env {k}: PORT and every SPAWNER_ variable are Spawner's to set, and cannot be given"));
        }
        if loads_code(k) {
            return bad(format!(
                "env {k}: a variable that makes the dynamic loader, a shell or a language runtime load or run other code cannot be \
                 given in a create (it would run whatever the caller chose in place of the template's program); set it in the \
                 template if the program needs it"
            ));
        }
    }
    // Names were checked above; a value can hold anything but NUL.
    if let Some(k) = spec.env.iter().find_map(|(k, v)| v.contains('\0').then_some(k)) {
        return bad(format!("env {k}: the value contains a NUL byte, which no environment variable can hold"));
    }
    if !(1..=MAX_GRACE_SECONDS).contains(&spec.grace_period_seconds) {
        return bad(out_of_range("gracePeriodSeconds", Some(MAX_GRACE_SECONDS), spec.grace_period_seconds));
    }
    if spec.lifetime_limit_seconds == Some(0) {
        return bad(format!("{} (omit it for no limit)", out_of_range("lifetimeLimitSeconds", None, 0)));
    }
    if spec.port == Some(0) {
        return bad("port must be between 1 and 65535, got 0".into());
    }
    Ok(())
}

/// The longest idle grace period, seconds: what a SessionLivedBackend
/// holds (a uint32, about 136 years), so a spec that runs locally also runs
/// on a cluster.
pub const MAX_GRACE_SECONDS: u64 = u32::MAX as u64;

/// An environment variable Spawner sets for every backend (`PORT`,
/// `SPAWNER_*`), which neither a create nor a template may set.
pub fn set_by_spawner(name: &str) -> bool {
    name == "PORT" || name.starts_with("SPAWNER_")
}

/// Whether a create's `env` variable `name` would let its caller run code
/// of their choosing in the backend instead of the template's program: the
/// dynamic loader's (`LD_PRELOAD`), a shell's start-up files, the usual
/// runtimes' option and module-path variables (Python's `PYTHONWARNINGS`
/// can import any module), and `PATH`, where the command is looked up.
/// The API's caller holds the API token, but what runs is the template's
/// to say (locally, the config file's; on Kubernetes, the allowed images'),
/// so a leaked token or a web app passing its users' names through does
/// not become a shell. A list can only be of the known ones; a template
/// sets any such variable itself.
pub fn loads_code(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "PATH",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5DB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "LUA_INIT",
        "ERL_AFLAGS",
        "ERL_FLAGS",
        "ERL_ZFLAGS",
        "PHPRC",
        "PHP_INI_SCAN_DIR",
        "DOTNET_STARTUP_HOOKS",
    ];
    const PREFIXES: &[&str] = &["LD_", "PYTHON", "BASH_FUNC_"];
    // Python's that only set how output is written.
    const HARMLESS: &[&str] = &["PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8"];
    (NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))) && !HARMLESS.contains(&name)
}

/// The message for a duration `field` outside 1 to `max` seconds (no
/// `max`: no upper bound); the same whether the value was negative, zero
/// or too large.
pub fn out_of_range(field: &str, max: Option<u64>, got: impl std::fmt::Display) -> String {
    match max {
        Some(max) => format!("{field} must be between 1 and {max}, got {got}"),
        None => format!("{field} must be at least 1, got {got}"),
    }
}

/// The URL a browser opens for backend `name`: `{public_url}/p/{name}/`,
/// or with host routing `{scheme}://{name}.{domain}[:{port}]/`, keeping the
/// public URL's scheme and port.
pub fn backend_url(public_url: &str, host_domain: Option<&str>, name: &str) -> String {
    let Some(domain) = host_domain else {
        return format!("{}/p/{name}/", public_url.trim_end_matches('/'));
    };
    let uri = public_url.parse::<http::Uri>().ok();
    let scheme = uri.as_ref().and_then(|u| u.scheme_str()).unwrap_or("http");
    match uri.as_ref().and_then(|u| u.port_u16()) {
        Some(port) => format!("{scheme}://{name}.{domain}:{port}/"),
        None => format!("{scheme}://{name}.{domain}/"),
    }
}

/// Whether `name` could be a backend's name in either mode: an object name
/// (a DNS subdomain), of which local names (a DNS label) are a part.
/// Anything else is not looked up on the API server.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A new backend name: a slug of the template and ten random characters,
/// valid as a DNS label and a URL segment.
pub fn new_name(template: &str) -> String {
    use rand::Rng;
    let slug: String = template
        .rsplit('/')
        .next()
        .unwrap_or(template)
        .split(':')
        .next()
        .unwrap_or("b")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(20)
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let slug = if slug.is_empty() || !slug.starts_with(|c: char| c.is_ascii_lowercase()) { format!("b{slug}") } else { slug };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..10).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{slug}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BackendSpec {
        BackendSpec {
            template: "demo".into(),
            key: Some("doc-1".into()),
            owner: Some("alice".into()),
            labels: BTreeMap::from([("team".into(), "data".into())]),
            env: BTreeMap::from([("MODE".into(), "x".into())]),
            grace_period_seconds: 300,
            lifetime_limit_seconds: None,
            cpu_millis: 0,
            memory_bytes: 0,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            port: None,
        }
    }

    #[test]
    fn a_create_may_not_set_variables_that_run_other_code() {
        for name in [
            "LD_PRELOAD",
            "LD_AUDIT",
            "PATH",
            "BASH_ENV",
            "PYTHONWARNINGS",
            "PYTHONPATH",
            "NODE_OPTIONS",
            "PERL5OPT",
            "JAVA_TOOL_OPTIONS",
            "LUA_INIT",
        ] {
            let spec = BackendSpec { env: [(name.to_string(), "x".to_string())].into(), ..spec() };
            let e = validate_spec(&spec).unwrap_err().to_string();
            assert!(e.contains(&format!("env {name}:")) && e.contains("set it in the template"), "{name}: {e}");
        }
        for name in ["DOC_ID", "PYTHONUNBUFFERED", "NODE_ENV", "ENV", "LANG", "path"] {
            let spec = BackendSpec { env: [(name.to_string(), "x".to_string())].into(), ..spec() };
            assert!(validate_spec(&spec).is_ok(), "{name}");
        }
    }

    #[test]
    fn urls_by_path_or_by_host_keep_the_public_port_and_scheme() {
        assert_eq!(backend_url("https://spawner.example.com/", None, "b1"), "https://spawner.example.com/p/b1/");
        assert_eq!(backend_url("http://127.0.0.1:18092", Some("apps.localhost"), "b1"), "http://b1.apps.localhost:18092/");
        assert_eq!(backend_url("https://spawner.example.com", Some("apps.example.com"), "b1"), "https://b1.apps.example.com/");
        assert_eq!(backend_url("https://spawner.example.com:8443/", Some("apps.example.com"), "b1"), "https://b1.apps.example.com:8443/");
    }

    #[test]
    fn names_are_dns_labels() {
        for t in ["demo", "ghcr.io/acme/Editor_App:1.2", "123", "---"] {
            let n = new_name(t);
            assert!(n.len() <= 63 && n.starts_with(|c: char| c.is_ascii_lowercase()), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
        }
        assert!(new_name("ghcr.io/acme/editor:1").starts_with("editor-"));
        assert_ne!(new_name("demo"), new_name("demo"));
    }

    #[test]
    fn invalid_input_is_explained() {
        validate_spec(&spec()).unwrap();
        let with = |f: fn(&mut BackendSpec)| {
            let mut s = spec();
            f(&mut s);
            validate_spec(&s).unwrap_err().to_string()
        };
        assert!(with(|s| s.key = Some("has space".into())).contains("key"));
        assert!(with(|s| s.env.insert("PORT".into(), "1".into()).map(|_| ()).unwrap_or(())).contains("PORT"));
        assert!(with(|s| s.env.insert("1BAD".into(), "1".into()).map(|_| ()).unwrap_or(())).contains("valid variable"));
        for good in ["A", "_x", "my.var", "my-var", "spring.profiles.active", "-a", ".a", "X1"] {
            assert!(is_env_name(good), "Kubernetes takes {good:?}");
        }
        for bad in ["", "1A", "a b", "a=b", "tök", ".", ".."] {
            assert!(!is_env_name(bad), "{bad:?}");
        }
        assert!(with(|s| s.labels.insert("ok".into(), "bad value!".into()).map(|_| ()).unwrap_or(())).contains("label"));
        assert!(with(|s| s.node_selector.insert("zone".into(), "-a".into()).map(|_| ()).unwrap_or(())).contains("nodeSelector"));
        for bad_key in ["bad/key/twice", "Example.com/x", "example.com/", "/x", "x".repeat(64).as_str(), "a..b/x", "-a.com/x"] {
            assert!(!is_label_key(bad_key), "{bad_key}");
        }
        for good_key in ["team", "app.kubernetes.io/name", "example.com/Team_1", "a.b-c.d/x.y"] {
            assert!(is_label_key(good_key), "{good_key}");
        }
        assert!(is_label_value("") && is_label_value("v1.2_a-b") && !is_label_value("a ") && !is_label_value(&"v".repeat(64)));
        assert_eq!(with(|s| s.grace_period_seconds = 0), "gracePeriodSeconds must be between 1 and 4294967295, got 0");
        assert!(with(|s| s.grace_period_seconds = MAX_GRACE_SECONDS + 1).contains("got 4294967296"), "a cluster could not hold it");
        assert_eq!(with(|s| s.lifetime_limit_seconds = Some(0)), "lifetimeLimitSeconds must be at least 1, got 0 (omit it for no limit)");
        assert_eq!(with(|s| s.port = Some(0)), "port must be between 1 and 65535, got 0");
        let nul = with(|s| s.env.insert("A".into(), "x\0y".into()).map(|_| ()).unwrap_or(()));
        assert!(nul.starts_with("env A: the value contains a NUL byte"), "{nul}");
        assert!(with(|s| s.tolerations = vec![Toleration::default()]).contains("tolerations[0]: an empty key requires operator Exists"));
    }

    #[test]
    fn tolerations_follow_the_api_servers_rules() {
        let t = |json: serde_json::Value| serde_json::from_value::<Toleration>(json).unwrap().problem();
        use serde_json::json;
        for valid in [
            json!({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}),
            json!({"key": "gpu", "value": "true"}),
            json!({"key": "example.com/dedicated", "operator": "Equal", "value": "", "effect": "PreferNoSchedule"}),
            json!({"operator": "Exists"}),
            json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}),
        ] {
            assert_eq!(t(valid.clone()), None, "{valid}");
        }
        for (invalid, says) in [
            (json!({"value": "x"}), "empty key requires operator Exists"),
            (json!({"key": "gpu", "operator": "Exists", "value": "true"}), "value must be empty"),
            (json!({"key": "gpu", "operator": "In"}), "operator must be Equal or Exists"),
            (json!({"key": "gpu", "effect": "NoRun"}), "effect must be"),
            (json!({"key": "bad key"}), "not a valid Kubernetes label key"),
            (json!({"key": "gpu", "value": "not valid!"}), "not a valid Kubernetes label value"),
            (json!({"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}), "needs effect NoExecute"),
        ] {
            let problem = t(invalid.clone()).unwrap_or_default();
            assert!(problem.contains(says), "{invalid}: {problem}");
        }
        assert!(serde_json::from_value::<Toleration>(json!({"key": "gpu", "operater": "Exists"})).is_err(), "misspelt fields are refused");
        let nulls = json!({"key": "gpu", "operator": "Exists", "value": null, "effect": null, "tolerationSeconds": null});
        assert_eq!(t(nulls), None, "null reads as unset, as the API server reads it");
    }
}

/// The runtime behind the API, chosen at start-up. An enum rather than a
/// trait object: [`Control`]'s methods return futures, and static dispatch
/// keeps the API handlers plain functions.
#[derive(Clone)]
pub enum Backends {
    /// Local processes (`spawner dev`).
    Local(std::sync::Arc<crate::local::Local>),
    /// `SessionLivedBackend` objects (`spawner proxy`).
    Kubernetes(std::sync::Arc<crate::k8s::control::KubeBackends>),
}

impl Backends {
    /// See [`Control::create`].
    pub async fn create(&self, spec: BackendSpec) -> Result<Created, ControlError> {
        match self {
            Backends::Local(l) => l.create(spec).await,
            Backends::Kubernetes(k) => k.create(spec).await,
        }
    }

    /// See [`Control::get`].
    pub async fn get(&self, name: &str) -> Result<Option<BackendView>, ControlError> {
        match self {
            Backends::Local(l) => l.get(name).await,
            Backends::Kubernetes(k) => k.get(name).await,
        }
    }

    /// See [`Control::list`].
    pub async fn list(&self, filter: &Filter) -> Vec<BackendView> {
        match self {
            Backends::Local(l) => l.list(filter).await,
            Backends::Kubernetes(k) => k.list(filter).await,
        }
    }

    /// See [`Control::terminate`].
    pub async fn terminate(&self, name: &str) -> Result<BackendView, ControlError> {
        match self {
            Backends::Local(l) => l.terminate(name).await,
            Backends::Kubernetes(k) => k.terminate(name).await,
        }
    }

    /// See [`Control::subscribe`].
    pub async fn subscribe(&self, name: &str) -> Result<Option<StatusFeed>, ControlError> {
        match self {
            Backends::Local(l) => l.subscribe(name).await,
            Backends::Kubernetes(k) => k.subscribe(name).await,
        }
    }

    /// See [`Control::logs`].
    pub async fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<LogLine>, ControlError> {
        match self {
            Backends::Local(l) => l.logs(name, tail).await,
            Backends::Kubernetes(k) => k.logs(name, tail).await,
        }
    }

    /// See [`Control::templates`].
    pub fn templates(&self) -> Vec<String> {
        match self {
            Backends::Local(l) => l.templates(),
            Backends::Kubernetes(k) => k.templates(),
        }
    }

    /// Default idle grace period for creates that do not give one.
    pub fn default_grace_seconds(&self) -> u64 {
        match self {
            Backends::Local(l) => l.default_grace_seconds(),
            Backends::Kubernetes(k) => k.default_grace_seconds(),
        }
    }
}
