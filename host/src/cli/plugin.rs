//! `spawner plugin check FILE` and `spawner plugin run FILE`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;

use crate::plugins::credentials::{self, TokenNames};
use crate::plugins::loaded::{TrialDecision, detect_kind};
use crate::plugins::types::*;
use crate::plugins::{LoadError, LoadedPlugin, PluginKind, PluginSource, Runtime, RuntimeConfig, sample};
use crate::token::{TokenKey, now_unix};

/// Plugin author commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin as Spawner would, then make one trial decision on a
    /// sample input. Exits 0 with a one-line summary, or 1 with the reason.
    Check {
        /// The component (.wasm) to check.
        file: PathBuf,
        /// The kind it must be (default: read from its exports).
        #[arg(long)]
        kind: Option<PluginKind>,
        /// Settings to validate: JSON text, @file or - for stdin.
        #[arg(long)]
        settings: Option<String>,
        /// The limits the trial runs under (as where the plugin will run).
        #[command(flatten)]
        limits: super::PluginLimitArgs,
    },
    /// Write the embedded default plugins (default_scheduler.wasm,
    /// default_auth.wasm, default_idle.wasm) into a directory, to inspect,
    /// check or use as a starting point.
    Defaults {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print a sample input of a kind as JSON: a starting point for
    /// `plugin run --input @file`. The auth sample carries one verified
    /// bearer token, to show the shape of `credentials`; its header holds
    /// a placeholder, or, with --token-secret, a real token minted with it,
    /// for `plugin run --token-secret` to verify.
    Sample {
        /// The kind of plugin the input is for.
        #[arg(long)]
        kind: PluginKind,
        /// Secret to mint the auth sample's token with.
        #[arg(long)]
        token_secret: Option<crate::secret::Secret>,
    },
    /// Make one decision with a plugin and print it as JSON.
    ///
    /// Input shapes (JSON, snake_case fields): auth {"request": {"method",
    /// "path", "query", "headers": [{"name","value"}], "peer", "websocket"},
    /// "backend": {"name","key","owner","labels": [{"key","value"}]}, "now",
    /// "credentials": [{"source": "Bearer"|"Query"|"Cookie", "verified":
    /// {"Ok": {"backend","subject","issued_at","expires_at"}} or {"Err":
    /// "BadSignature"} or {"Err": {"Malformed": "why"}}}]} (with
    /// --token-secret, or without "credentials", the tokens in its bearer
    /// header, `token` parameter and `spawner-token` cookie, the default
    /// names, become "credentials", verified with --token-secret as the
    /// proxy would; without it each is {"Malformed": "not checked: …"});
    /// idle {"backend", "age_seconds", "grace_period_seconds",
    /// "lifetime_limit_seconds", "activity": {"open_connections",
    /// "in_flight_requests", "seconds_since_last_activity", "bytes_in",
    /// "bytes_out", "websocket_messages"}, "now"}; scheduler {"backend",
    /// "requests": {"cpu_millis","memory_bytes"}, "node_selector", "nodes":
    /// [{"name","labels","capacity","backends"}], "owner_backends", "now"}.
    /// Every field is required except the WIT's options, which may be
    /// null or left out: a backend's "key" and "owner", a placed backend's
    /// "owner" and "node", a verified token's "subject", "query",
    /// "lifetime_limit_seconds", and "credentials"; a field not listed
    /// here is refused, with its path (a misspelling is not ignored).
    /// Variants are written as in the Rust bindings, in input and output
    /// alike: {"Allow": {...}}, {"Deny": {...}}, "Keep", {"Terminate": {...}},
    /// {"Node": "name"}, {"Anywhere": [labels]}, {"Reject": "why"}.
    /// `--input sample` uses the sample `plugin check` uses, which `spawner
    /// plugin sample --kind KIND` prints to start from. A decision that
    /// fails prints {"error": "why", "fallback": what Spawner would do
    /// instead} and exits 1.
    Run {
        /// The component (.wasm) to run.
        file: PathBuf,
        /// The kind of plugin (default: read from its exports).
        #[arg(long)]
        kind: Option<PluginKind>,
        /// The request: JSON text, @file, - for stdin, or `sample`.
        #[arg(long)]
        input: String,
        /// Settings: JSON text, @file or - for stdin.
        #[arg(long)]
        settings: Option<String>,
        /// Secret capability tokens are verified with, for the request's
        /// credentials and `verify-capability-token` (mint matching tokens
        /// with `spawner token mint`). Only from this flag, not from
        /// SPAWNER_TOKEN_SECRET: it changes what the input means.
        #[arg(long)]
        token_secret: Option<crate::secret::Secret>,
        /// The limits the decision runs under.
        #[command(flatten)]
        limits: super::PluginLimitArgs,
    },
}

/// Runs a plugin command.
pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Check { file, kind, settings, limits } => check(file, kind, settings, limits.runtime()),
        PluginCommand::Run { file, kind, input, settings, token_secret, limits } => {
            run_once(file, kind, input, settings, token_secret.as_ref().map(|s| s.expose().to_string()), limits.runtime())
        }
        PluginCommand::Sample { kind, token_secret } => {
            let now = now_unix();
            let key = token_secret.map(|s| TokenKey::new(s.expose().as_bytes())).transpose()?;
            let json = match kind {
                PluginKind::Auth => serde_json::to_string_pretty(&sample::auth_request_minted(now, key.as_ref())),
                PluginKind::Idle => serde_json::to_string_pretty(&sample::idle_request(now)),
                PluginKind::Scheduler => serde_json::to_string_pretty(&sample::placement_request(now)),
            }?;
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Defaults { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for kind in PluginKind::ALL {
                let path = out.join(format!("default_{kind}.wasm"));
                std::fs::write(&path, crate::plugins::embedded::bytes(kind)).with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn settings_arg(settings: Option<String>) -> anyhow::Result<String> {
    settings.map(|s| crate::cli::read_arg(&s, "settings")).transpose().map(Option::unwrap_or_default)
}

fn check(file: PathBuf, kind: Option<PluginKind>, settings: Option<String>, limits: RuntimeConfig) -> anyhow::Result<ExitCode> {
    let settings = settings_arg(settings)?;
    // A random key: the trial decision only needs verification to work.
    let rt = Runtime::new(limits, Some(Arc::new(TokenKey::random())))?;
    let outcome = (|| -> Result<String, String> {
        let source = PluginSource::file(&file, settings).map_err(|e| e.to_string())?;
        let kind = match kind {
            Some(k) => k,
            None => detect_kind(&rt, &source).map_err(|e| e.to_string())?,
        };
        let plugin = LoadedPlugin::load(&rt, kind, &source).map_err(|e| match e {
            // Checked with no settings at all: say how to give some.
            LoadError::Settings { .. } if source.settings.is_empty() => {
                format!("{e} (none were given: check it with the settings it will run with, --settings JSON or --settings @FILE)")
            }
            e => e.to_string(),
        })?;
        let (trial, took, missed) = plugin.trial(&rt, kind);
        let trial = trial.map_err(|e| format!("{}: trial decision on a sample {kind} request failed: the plugin {e}", source.name))?;
        let trial = match trial {
            TrialDecision::Auth(v) => describe_verdict(&v),
            TrialDecision::Idle(v) => describe_idle(&v),
            TrialDecision::Scheduler(p) => describe_placement(&p),
        };
        // Passing on a later try is not nothing: every real call is a
        // first call on a fresh instance.
        let missed = match missed {
            0 => String::new(),
            n => {
                format!("; {n} earlier {} missed the deadline: measure it with `spawner plugin run`", if n == 1 { "try" } else { "tries" })
            }
        };
        let info = plugin.info();
        let reset = memory_note(&source.bytes);
        Ok(format!(
            "ok: {} is {} plugin (spawner:plugin/{kind}@{}), {} KiB, sha256 {}; settings accepted; sample decision: {trial} in {:.2} ms (deadline {} ms, memory {} MiB){missed}{reset}",
            info.name,
            kind.with_article(),
            crate::plugins::PACKAGE_VERSION,
            info.size.div_ceil(1024),
            &info.digest[..16],
            took.as_secs_f64() * 1e3,
            rt.config().limits(kind).deadline_ms,
            rt.config().limits(kind).memory_mib
        ))
    })();
    match outcome {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("refused: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What `plugin check` says of a plugin's memory: what it starts at, how
/// it is reset after each call, and, when that is the costlier scan, what
/// would bring it under (a smaller stack only if the stack is what is
/// over).
fn memory_note(bytes: &[u8]) -> String {
    use crate::plugins::runtime::{largest_start, stack_size};
    let start = largest_start(bytes);
    let copied = crate::plugins::Reset::for_start(start) == crate::plugins::Reset::Copy;
    memory_words(start.unwrap_or(0), stack_size(bytes), copied)
}

/// [`memory_note`] from the numbers: the memory's start and stack sizes
/// in bytes, and whether it is reset by copying.
fn memory_words(start: u64, stack: Option<u64>, copied: bool) -> String {
    use crate::plugins::runtime::COPY_RESET_BYTES;
    const ADVISED_STACK: u64 = 64 << 10;
    if copied {
        return format!("; its memory starts at {} KiB and is reset by copying", start.div_ceil(1024));
    }
    let advice = match stack {
        Some(stack) if stack > ADVISED_STACK && start.saturating_sub(stack) + ADVISED_STACK <= COPY_RESET_BYTES => {
            format!("its stack is {} KiB: a 64 KiB one (-C link-arg=-zstack-size=65536) would bring it under", stack / 1024)
        }
        Some(stack) => format!(
            "its stack is {} KiB and the rest, about {} KiB, is static data (a dependency's tables, large static arrays): only less of that would bring it under",
            stack / 1024,
            start.saturating_sub(stack).div_ceil(1024)
        ),
        None => "a smaller stack or less static data would bring it under".into(),
    };
    format!(
        "; its memory starts at {} KiB, over {} KiB, so it is reset by a scan for dirtied pages, which costs more per call than the copy smaller ones get (README, \"Cost per call\"): {advice}",
        start.div_ceil(1024),
        COPY_RESET_BYTES / 1024
    )
}

fn run_once(
    file: PathBuf,
    kind: Option<PluginKind>,
    input: String,
    settings: Option<String>,
    secret: Option<String>,
    limits: RuntimeConfig,
) -> anyhow::Result<ExitCode> {
    let settings = settings_arg(settings)?;
    let key = match secret {
        Some(s) => Some(Arc::new(TokenKey::new(s.as_bytes())?)),
        None => None,
    };
    let rt = Runtime::new(limits, key)?;
    let source = PluginSource::file(&file, settings)?;
    let kind = match kind {
        Some(k) => k,
        None => detect_kind(&rt, &source)?,
    };
    let plugin = LoadedPlugin::load(&rt, kind, &source)?;
    let input = if input == "sample" { None } else { Some(crate::cli::read_arg(&input, "input")?) };
    let now = now_unix();
    let (decision, fallback) = match kind {
        PluginKind::Auth => {
            let req = match &input {
                Some(i) => parse_input::<AuthInput>(i, kind)?.held_to_what_the_proxy_gives()?.into_request(rt.token_key()),
                None => sample::auth_request_with_token(now),
            };
            let verdict = plugin.check(&rt, &req, 0);
            let fallback = verdict.as_ref().err().map(crate::plugins::auth_fallback);
            if let Ok(Verdict::Allow(allow)) = &verdict {
                for dropped in dropped_headers(allow) {
                    eprintln!(
                        "note: the proxy drops the verdict's {dropped} header: it sets {} from `subject` and {} to the backend's name itself",
                        crate::proxy::headers::USER_HEADER,
                        crate::proxy::headers::BACKEND_HEADER
                    );
                }
            }
            (verdict.map(|v| serde_json::to_value(v).expect("serialisable")), serde_json::to_value(fallback)?)
        }
        PluginKind::Idle => {
            let req: IdleRequest = match &input {
                Some(i) => parse_input(i, kind)?,
                None => sample::idle_request(now),
            };
            (plugin.evaluate(&rt, &req).map(|v| serde_json::to_value(v).expect("serialisable")), serde_json::to_value(IdleVerdict::Keep)?)
        }
        PluginKind::Scheduler => {
            let req: PlacementRequest = match &input {
                Some(i) => parse_input(i, kind)?,
                None => sample::placement_request(now),
            };
            let r = plugin.place(&rt, &req).map(|v| serde_json::to_value(v).expect("serialisable"));
            (r, serde_json::json!("the default scheduler decides"))
        }
    };
    match decision {
        Ok(d) => {
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let out = serde_json::json!({ "error": format!("the plugin {e}"), "fallback": fallback });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The verdict's headers the proxy does not forward as they are: the two
/// it sets itself (see `proxy::headers::inject_identity`), so that `plugin
/// run` does not show an author a header the backend never gets.
fn dropped_headers(allow: &Allow) -> Vec<&str> {
    allow.headers.iter().map(|h| h.name.as_str()).filter(|n| crate::proxy::headers::set_by_proxy(n)).collect()
}

/// `--input` as a `kind` request. Refused, with the field's path: text that
/// is not JSON (with a hint when it names a file, which needs `@`), a value
/// of the wrong shape, and a field the request does not have (ignoring a
/// misspelt `lifetime_limit_secs` would print the decision for another
/// input than the one meant).
fn parse_input<T: serde::de::DeserializeOwned>(text: &str, kind: PluginKind) -> anyhow::Result<T> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let hint = match std::path::Path::new(text.trim()).is_file() {
            true => format!("; to read the file {}, write --input @{}", text.trim(), text.trim()),
            false => String::new(),
        };
        anyhow::bail!("--input is not JSON ({e}){hint}");
    }
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&mut json, &mut |path: serde_ignored::Path<'_>| {
        unknown.push(path.to_string())
    }));
    let strangers = |unknown: &[String]| {
        format!(
            "{} {kind} requests do not have: {} (misspelt? the names are snake_case; see `spawner plugin run --help` for the shape)",
            if unknown.len() == 1 { "a field" } else { "fields" },
            unknown.join(", ")
        )
    };
    let value: T = match parsed {
        Ok(value) => value,
        Err(e) => match input_kind(text).filter(|k| *k != kind) {
            Some(other) => {
                anyhow::bail!("--input looks like {} request, but the plugin is {} plugin", other.with_article(), kind.with_article())
            }
            None => {
                let at = match e.path().to_string().as_str() {
                    "." => String::new(),
                    path => format!(" at {path}"),
                };
                // A misspelt field is both missing and unknown: name the
                // one written too, not only the one expected.
                let also = match unknown.is_empty() {
                    true => "see `spawner plugin run --help` for the shape".to_string(),
                    false => format!("it has {}", strangers(&unknown)),
                };
                anyhow::bail!("--input is not a valid {kind} request{at}: {} ({also})", e.inner())
            }
        },
    };
    if !unknown.is_empty() {
        anyhow::bail!("--input has {}", strangers(&unknown));
    }
    Ok(value)
}

/// An auth request as `plugin run` reads it: `credentials` may be left out,
/// and are then found and verified as the proxy would.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthInput {
    request: HttpRequest,
    backend: Backend,
    now: u64,
    credentials: Option<Vec<Credential>>,
}

impl AuthInput {
    /// The input, held to what the proxy gives a plugin (the WIT's
    /// promises): a plugin tried on something else could pass here and
    /// fail live, or the reverse. Header names are lower-cased, as the
    /// proxy has them (said on stderr); a method, path or peer the proxy
    /// could not give is refused with what it would be (a lower-case
    /// method it can: a client may send one).
    fn held_to_what_the_proxy_gives(mut self) -> anyhow::Result<Self> {
        let r = &mut self.request;
        // Any case: the proxy passes the method as the client sent it.
        if http::Method::from_bytes(r.method.as_bytes()).is_err() {
            anyhow::bail!("--input's request.method {:?} is not an HTTP method (GET, POST, …)", r.method);
        }
        if !r.path.starts_with('/') {
            anyhow::bail!(
                "--input's request.path {:?} must start with '/': the path below the backend's prefix (/p/NAME/x gives \"/x\")",
                r.path
            );
        }
        if r.peer.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "--input's request.peer {:?} is not ip:port: the proxy gives the client's TCP address (\"203.0.113.7:52114\")",
                r.peer
            );
        }
        let mut renamed = Vec::new();
        for h in &mut r.headers {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                anyhow::bail!("--input's request.headers has {:?}, which is not a header name", h.name);
            }
            if http::HeaderValue::from_str(&h.value).is_err() {
                anyhow::bail!(
                    "--input's request.headers has {}: {:?}, which is not a header value (no control characters but tab): the proxy never gives one",
                    h.name,
                    h.value
                );
            }
            let lower = h.name.to_ascii_lowercase();
            if lower != h.name {
                renamed.push(format!("{} → {lower}", h.name));
                h.name = lower;
            }
        }
        if !renamed.is_empty() {
            eprintln!("note: header names lower-cased, as the proxy gives them: {}", renamed.join(", "));
        }
        // A saved sample keeps the time it was made: a token that has
        // expired since still passes a plugin that judges by `now`.
        let clock = now_unix();
        let drift = self.now as i64 - clock as i64;
        if drift.abs() > 60 {
            eprintln!(
                "note: the input's now is {} s {} the clock; plugins judge token expiry by it (the proxy gives the current time): set it to {} to try the request as it would be now",
                drift.abs(),
                if drift < 0 { "behind" } else { "ahead of" },
                clock
            );
        }
        Ok(self)
    }

    /// The request the plugin sees. With a secret, its credentials are
    /// what the proxy would find and verify in it, replacing any the input
    /// gives (said on stderr: an edited sample keeps its pre-verified one,
    /// and a token put in its header would otherwise go unread). Without
    /// one, the input's credentials, else the tokens found, unverified.
    fn into_request(self, key: Option<&TokenKey>) -> AuthRequest {
        let found = || {
            // Under host routing over HTTPS the proxy's cookie is named
            // `__Host-` + the name (`ProxySettings::new`): a request copied
            // from such a browser carries that one, which the proxy reads.
            let names = TokenNames::default();
            let host = TokenNames { cookie: format!("{}{}", crate::proxy::HOST_COOKIE_PREFIX, names.cookie), ..names.clone() };
            let with_host = credentials::find(&self.request, &host, key, &self.backend.name);
            match with_host.iter().any(|c| c.source == crate::plugins::types::CredentialSource::Cookie) {
                true => with_host,
                false => credentials::find(&self.request, &names, key, &self.backend.name),
            }
        };
        let credentials = match (self.credentials.clone(), key) {
            (Some(given), Some(_)) => {
                eprintln!(
                    "note: --token-secret given, so the input's {} credential(s) are replaced by the tokens found in its request and verified, as the proxy does",
                    given.len()
                );
                found()
            }
            (Some(given), None) => given,
            (None, _) => found(),
        };
        AuthRequest { request: self.request, backend: self.backend, now: self.now, credentials }
    }
}

/// The kind an input is for, by a field only that kind's requests have.
fn input_kind(input: &str) -> Option<PluginKind> {
    let v: serde_json::Value = serde_json::from_str(input).ok()?;
    let has = |field: &str| v.get(field).is_some();
    match (has("request"), has("activity"), has("nodes")) {
        (true, false, false) => Some(PluginKind::Auth),
        (false, true, false) => Some(PluginKind::Idle),
        (false, false, true) => Some(PluginKind::Scheduler),
        _ => None,
    }
}

fn describe_verdict(v: &Verdict) -> String {
    match v {
        Verdict::Allow(a) => format!("allow (subject {})", a.subject.as_deref().unwrap_or("none")),
        Verdict::Deny(d) => format!("deny {} ({})", d.status, d.reason),
    }
}

fn describe_idle(v: &IdleVerdict) -> String {
    match v {
        IdleVerdict::Keep => "keep".into(),
        IdleVerdict::Terminate(t) => format!("terminate, reason {} ({})", t.kind.as_str(), t.detail),
    }
}

fn describe_placement(p: &Placement) -> String {
    match p {
        Placement::Node(n) => format!("place on {n}"),
        Placement::Anywhere(_) => "place anywhere matching the selector".into(),
        Placement::Reject(r) => format!("reject ({r})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_note_advises_a_smaller_stack_only_where_it_would_help() {
        const KIB: u64 = 1024;
        assert_eq!(memory_words(64 * KIB, Some(32 * KIB), true), "; its memory starts at 64 KiB and is reset by copying");
        // Rust's default 1 MiB stack and a little data: the stack is it.
        let big_stack = memory_words(1088 * KIB, Some(1024 * KIB), false);
        assert!(
            big_stack.contains("its stack is 1024 KiB: a 64 KiB one (-C link-arg=-zstack-size=65536) would bring it under"),
            "{big_stack}"
        );
        // Already at 64 KiB, with 448 KiB of tables: no stack size helps.
        let big_data = memory_words(512 * KIB, Some(64 * KIB), false);
        assert!(big_data.contains("its stack is 64 KiB and the rest, about 448 KiB, is static data"), "{big_data}");
        assert!(!big_data.contains("zstack-size"), "{big_data}");
        // A large stack, but data that alone is over: the data is what to cut.
        let both = memory_words(1536 * KIB, Some(1024 * KIB), false);
        assert!(both.contains("about 512 KiB, is static data"), "{both}");
        assert!(memory_words(512 * KIB, None, false).contains("a smaller stack or less static data"));
    }

    #[test]
    fn plugin_run_gives_the_plugin_a_request_as_the_proxy_would() {
        let input = |method: &str, path: &str, peer: &str| {
            let text = serde_json::json!({
                "request": {"method": method, "path": path, "query": null, "peer": peer, "websocket": false,
                    "headers": [{"name": "X-Team", "value": "blue"}, {"name": "accept", "value": "*/*"}]},
                "backend": {"name": "b", "key": null, "owner": null, "labels": []},
                "now": 1,
            })
            .to_string();
            parse_input::<AuthInput>(&text, PluginKind::Auth).unwrap().held_to_what_the_proxy_gives()
        };
        let ok = input("GET", "/x", "127.0.0.1:5000").unwrap();
        let names: Vec<&str> = ok.request.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-team", "accept"]);
        assert!(input("PROPFIND", "/", "[::1]:1").is_ok(), "an extension method is passed as it is");
        assert_eq!(input("get", "/", "[::1]:1").unwrap().request.method, "get", "as a client may send it");
        for (method, path, peer, says) in [
            ("G ET", "/x", "127.0.0.1:5000", "is not an HTTP method"),
            ("GET", "x", "127.0.0.1:5000", "must start with '/'"),
            ("GET", "/x", "not-an-addr", "is not ip:port"),
        ] {
            let e = input(method, path, peer).err().unwrap().to_string();
            assert!(e.contains(says), "{method} {path} {peer}: {e}");
        }
    }

    #[test]
    fn plugin_run_names_the_headers_the_proxy_sets_itself() {
        let header = |name: &str| Header { name: name.into(), value: "v".into() };
        let allow = Allow {
            subject: Some("ada".into()),
            headers: vec![header("X-Spawner-User"), header("x-spawner-role"), header("x-spawner-backend")],
        };
        assert_eq!(dropped_headers(&allow), ["X-Spawner-User", "x-spawner-backend"]);
        assert!(dropped_headers(&Allow { subject: None, headers: vec![header("x-spawner-role")] }).is_empty());
    }
}
