//! The plugin host against real components: the default bundle, the
//! examples and the misbehaving fixtures (built by spawner-test-plugins).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use spawner::plugins::types::*;
use spawner::plugins::{CallError, LoadError, LoadedPlugin, PluginKind, PluginSource, Runtime, RuntimeConfig};
use spawner_test_plugins as built;

fn deny_status(v: &Verdict) -> Option<u16> {
    match v {
        Verdict::Deny(d) => Some(d.status),
        Verdict::Allow(_) => None,
    }
}

fn termination(v: &IdleVerdict) -> Option<&'static str> {
    match v {
        IdleVerdict::Keep => None,
        IdleVerdict::Terminate(t) => Some(t.kind.as_str()),
    }
}

// ---- the default bundle -------------------------------------------------

#[test]
fn default_auth_allows_a_valid_token_wherever_the_browser_puts_it() {
    let (plugins, _) = defaults();
    let token = key().mint("b1", Some("alice"), NOW - 10, NOW + 600);

    let v = plugins.auth().check(&auth_request("b1", &[("authorization", &bearer(&token))], None));
    let Verdict::Allow(allow) = v else { panic!("denied: {v:?}") };
    assert_eq!(allow.subject.as_deref(), Some("alice"), "the proxy sends it as x-spawner-user");

    let q = format!("token={token}");
    assert!(plugins.auth().check(&auth_request("b1", &[], Some(&q))).is_allow());
    let c = format!("theme=dark; spawner-token={token}");
    assert!(plugins.auth().check(&auth_request("b1", &[("cookie", &c)], None)).is_allow());
}

/// The auth benchmark's floor: a plugin built like the default one whose
/// policy is "allow"; it must decide through the same path (no WASI turn).
#[test]
fn the_benchmarks_allow_all_fixture_allows_without_a_token() {
    let (plugins, metrics) = with(vec![(PluginKind::Auth, source(built::FIXTURE_ALLOW, ""))]);
    assert!(plugins.auth().check(&auth_request("b1", &[], None)).is_allow());
    assert!(!metrics.encode().contains("spawner_plugin_failures_total{"), "{}", metrics.encode());
}

#[test]
fn default_auth_denies_no_token_another_backends_token_expired_and_forged() {
    let (plugins, _) = defaults();
    let k = key();
    let check = |headers: &[(&str, &str)]| plugins.auth().check(&auth_request("b1", headers, None));

    assert_eq!(deny_status(&check(&[])), Some(401));
    let other = k.mint("b2", None, NOW, NOW + 600);
    assert_eq!(deny_status(&check(&[("authorization", &bearer(&other))])), Some(403));
    let expired = k.mint("b1", None, NOW - 600, NOW - 1);
    assert_eq!(deny_status(&check(&[("authorization", &bearer(&expired))])), Some(401));
    let foreign_key = spawner::token::TokenKey::new(b"another-secret-0123456789").unwrap();
    let forged = foreign_key.mint("b1", None, NOW, NOW + 600);
    assert_eq!(deny_status(&check(&[("authorization", &bearer(&forged))])), Some(401));
    assert_eq!(deny_status(&check(&[("authorization", "Bearer not-a-token")])), Some(401));
}

#[test]
fn default_idle_terminates_for_idleness_and_lifetime_and_keeps_open_connections() {
    let (plugins, _) = defaults();
    let idle = |r: IdleRequest| termination(&plugins.idle().evaluate(&r));
    assert_eq!(idle(idle_request(0, 300, 1000, None)), Some("idle"));
    assert_eq!(idle(idle_request(0, 299, 1000, None)), None);
    assert_eq!(idle(idle_request(2, 5000, 5000, None)), None, "open WebSocket keeps it");
    assert_eq!(idle(idle_request(2, 0, 7200, Some(7200))), Some("lifetime"));
}

#[test]
fn default_scheduler_spreads_packs_selects_and_limits_owners() {
    let nodes = || vec![node("a", &[("zone", "x")], 3), node("b", &[("zone", "y")], 1), node("c", &[("zone", "y")], 2)];
    let (spread, _) = defaults();
    assert_eq!(spread.scheduler().place(&placement_request(nodes())), Placement::Node("b".into()));

    let (pack, _) = with(vec![(PluginKind::Scheduler, PluginSource::embedded(PluginKind::Scheduler, r#"{"strategy":"pack"}"#))]);
    assert_eq!(pack.scheduler().place(&placement_request(nodes())), Placement::Node("a".into()));

    let mut selective = placement_request(nodes());
    selective.node_selector = vec![Label { key: "zone".into(), value: "x".into() }];
    assert_eq!(spread.scheduler().place(&selective), Placement::Node("a".into()));

    let (limited, _) = with(vec![(PluginKind::Scheduler, PluginSource::embedded(PluginKind::Scheduler, r#"{"max-per-owner":1}"#))]);
    let mut second = placement_request(nodes());
    second.owner_backends = vec![nodes()[0].backends[0].clone()];
    let Placement::Reject(reason) = limited.scheduler().place(&second) else { panic!("admitted over the limit") };
    assert!(reason.contains("max-per-owner is 1"), "{reason}");
}

/// Auth calls, which anyone can cause, cannot take the instances the other
/// kinds need: with a slow auth plugin running to its deadline on every
/// instance it may have, a scheduler with a quota still decides (before
/// 2026-12-01 it and its fallback could not be instantiated, and the
/// create was admitted over the quota), and the extra auth calls are
/// denied at once.
#[test]
fn a_burst_of_slow_auth_calls_leaves_instances_for_scheduling() {
    let mut config = patient();
    config.max_instances = 4;
    config.auth.deadline_ms = 3_000;
    let rt = Arc::new(Runtime::new(config, Some(key())).unwrap());
    let (plugins, _) = with_in(
        rt.clone(),
        vec![
            // Loops on /spin, importing nothing: no WASI turn to wait for.
            (PluginKind::Auth, source(built::FIXTURE_ALLOW, "")),
            (PluginKind::Scheduler, PluginSource::embedded(PluginKind::Scheduler, r#"{"max-per-owner":1}"#)),
        ],
    );
    let nodes = vec![node("a", &[], 1)];
    let mut second = placement_request(nodes.clone());
    second.owner_backends = vec![nodes[0].backends[0].clone()];
    let mut request = auth_request("b1", &[], None);
    request.request.path = "/spin".into();
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..4).map(|_| s.spawn(|| plugins.auth().check(&request))).collect();
        std::thread::sleep(Duration::from_secs(1));
        let placement = plugins.scheduler().place(&second);
        assert!(matches!(&placement, Placement::Reject(r) if r.contains("max-per-owner is 1")), "{placement:?}");
        for call in calls {
            assert!(!call.join().unwrap().is_allow());
        }
    });
    // Which call found no slot, and why.
    let looping = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_ALLOW, "")).unwrap();
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..3).map(|_| s.spawn(|| looping.check(&rt, &request, 0))).collect();
        let errors: Vec<String> = calls.into_iter().map(|c| c.join().unwrap().unwrap_err().to_string()).collect();
        let busy: Vec<&String> = errors.iter().filter(|e| e.contains("2 auth calls already run at once")).collect();
        assert_eq!(busy.len(), 1, "{errors:?}");
        assert!(busy[0].contains("plugins.max-instances is 4, less 2 kept for scheduling and idle decisions"), "{errors:?}");
    });
}

// ---- examples -------------------------------------------------------------

#[test]
fn quota_by_label_example_rejects_at_its_quota() {
    let settings = r#"{"label":"team","quotas":{"data":3},"default":10}"#;
    let (plugins, _) = with(vec![(PluginKind::Scheduler, source(built::QUOTA_BY_LABEL, settings))]);
    let mut req = placement_request(vec![node("a", &[], 2)]);
    req.backend.labels = vec![Label { key: "team".into(), value: "data".into() }];
    assert_eq!(plugins.scheduler().place(&req), Placement::Node("a".into()));
    req.nodes = vec![node("a", &[], 3)];
    assert!(matches!(plugins.scheduler().place(&req), Placement::Reject(r) if r.contains("quota 3")));
}

#[test]
fn hmac_header_auth_example_allows_signed_owner_headers_only() {
    use hmac::{Hmac, Mac};
    let secret = "shared-secret-with-the-web-app";
    let (plugins, _) = with(vec![(PluginKind::Auth, source(built::HMAC_HEADER_AUTH, &format!(r#"{{"secret":"{secret}"}}"#)))]);
    let sign = |user: &str, exp: u64| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{user}:{exp}:b1").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let exp = (NOW + 60).to_string();
    let request =
        |user: &str, sig: &str| auth_request("b1", &[("x-auth-user", user), ("x-auth-expires", &exp), ("x-auth-signature", sig)], None);

    let v = plugins.auth().check(&request("alice", &sign("alice", NOW + 60)));
    assert!(matches!(&v, Verdict::Allow(a) if a.subject.as_deref() == Some("alice")), "{v:?}");
    assert_eq!(deny_status(&plugins.auth().check(&request("bob", &sign("bob", NOW + 60)))), Some(403));
    assert_eq!(deny_status(&plugins.auth().check(&request("alice", &sign("mallory", NOW + 60)))), Some(401));
    // Its capability tokens mean nothing to this plugin.
    let token = key().mint("b1", Some("alice"), NOW, NOW + 60);
    assert_eq!(deny_status(&plugins.auth().check(&auth_request("b1", &[("authorization", &bearer(&token))], None))), Some(401));
}

#[test]
fn business_hours_example_keeps_quiet_backends_during_work_hours() {
    let settings = r#"{"utc-offset-minutes": 0, "start-hour": 8, "end-hour": 18}"#;
    let (plugins, _) = with(vec![(PluginKind::Idle, source(built::BUSINESS_HOURS_IDLE, settings))]);
    let monday_10h = 1_795_996_800 + 10 * 3600;
    let mut quiet = idle_request(0, 10_000, 20_000, None);
    quiet.now = monday_10h;
    assert_eq!(termination(&plugins.idle().evaluate(&quiet)), None);
    quiet.now = monday_10h + 10 * 3600;
    assert_eq!(termination(&plugins.idle().evaluate(&quiet)), Some("idle"));
}

// ---- misbehaving plugins ------------------------------------------------------

#[test]
fn an_endless_loop_is_stopped_at_its_deadline_and_the_host_keeps_serving() {
    // The default auth deadline (the shared test runtime's are long); the
    // idle calls that must go on meanwhile keep a long one, so that a busy
    // machine cannot fail them.
    let rt = Arc::new(Runtime::new(RuntimeConfig { auth: RuntimeConfig::default().auth, ..patient() }, Some(key())).unwrap());
    let looping = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_LOOP, "")).unwrap();
    let started = Instant::now();
    let result = looping.check(&rt, &auth_request("b1", &[], None), 0);
    let took = started.elapsed();
    assert_eq!(result, Err(CallError::Deadline(20)));
    // Liveness, not a benchmark: a 20 ms deadline must not take seconds.
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    // Sleeping (a wait in the host, where the epoch does not reach) is
    // stopped at the deadline too, not after the minute it asked for.
    let mut sleepy = auth_request("b1", &[], None);
    sleepy.request.path = "/sleep".into();
    let started = Instant::now();
    assert_eq!(looping.check(&rt, &sleepy, 0), Err(CallError::Deadline(20)));
    assert!(started.elapsed() < Duration::from_secs(10), "stopped after {:?}", started.elapsed());
    // Loading one whose validate-settings never returns ends too (after a
    // few tries: a deadline miss at load can be a busy machine's), refused
    // for the deadline.
    match LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_LOOP, "loop")) {
        Err(e @ LoadError::SettingsCall { source: CallError::Deadline(20), .. }) => {
            assert!(e.to_string().contains("20 ms deadline"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a plugin whose validate-settings never returns was loaded"),
    }

    // Through Plugins: fail closed, and other calls go on.
    let (plugins, metrics) = with_in(rt, vec![(PluginKind::Auth, source(built::FIXTURE_LOOP, ""))]);
    let plugins = Arc::new(plugins);
    let p = plugins.clone();
    let looper = std::thread::spawn(move || (0..5).map(|_| p.auth().check(&auth_request("b1", &[], None))).collect::<Vec<_>>());
    for _ in 0..50 {
        assert_eq!(termination(&plugins.idle().evaluate(&idle_request(0, 1000, 1000, None))), Some("idle"));
    }
    for v in looper.join().unwrap() {
        // Out of time may be a busy machine's doing: 503, retry.
        assert_eq!(deny_status(&v), Some(503));
    }
    assert!(
        metrics.encode().contains(r#"spawner_plugin_failures_total{kind="auth",plugin="fixture_loop.wasm",error="deadline"} 5"#),
        "{}",
        metrics.encode()
    );
}

#[test]
fn unbounded_allocation_is_refused_at_the_memory_limit() {
    let config = RuntimeConfig { idle: spawner::plugins::Limits { memory_mib: 16, deadline_ms: 5000 }, ..Default::default() };
    let rt = Runtime::new(config, None).unwrap();
    let alloc = LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_ALLOC, "")).unwrap();
    assert_eq!(alloc.evaluate(&rt, &idle_request(0, 0, 0, None)), Err(CallError::MemoryLimit(16 << 20)));
    // The slot is reusable afterwards (a plugin compiled for the same
    // engine: both start over 128 KiB, see `Reset`).
    let counter = LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_COUNTER_LARGE, "")).unwrap();
    let Ok(IdleVerdict::Terminate(t)) = counter.evaluate(&rt, &idle_request(0, 0, 0, None)) else { panic!("kept") };
    assert_eq!(t.detail, "call 1");

    // A limit under what it needs to start (2 MiB of static data): refused
    // at load, saying what it needs, whether the pool's slots are larger
    // (other kinds' limits) or not.
    for others in [64, 1] {
        let one = spawner::plugins::Limits { memory_mib: 1, deadline_ms: 5000 };
        let other = spawner::plugins::Limits { memory_mib: others, deadline_ms: 5000 };
        let rt = Runtime::new(RuntimeConfig { idle: one, auth: other, scheduler: other, ..Default::default() }, None).unwrap();
        match LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_ALLOC, "")) {
            Err(e @ LoadError::Start { source: CallError::StartMemory { limit: _, .. }, .. }) => {
                let message = e.to_string();
                assert!(message.contains("cannot run: it needs") && message.contains("KiB of memory to start"), "{message}");
                let CallError::StartMemory { needs, .. } = std::error::Error::source(&e).unwrap().downcast_ref::<CallError>().unwrap()
                else {
                    unreachable!()
                };
                assert!(*needs > 2 << 20, "{message}");
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("loaded under a limit below its initial memory"),
        }
    }
}

/// A log that is a shared buffer, for tests that read what was logged.
#[derive(Clone, Default)]
struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Failure lines are one per 10 s per kind; a plugin swapped in gets its
/// first one logged at once, though the one it replaced failed just before
/// (an author's "fix" that still failed left a clean log for 10 s).
#[test]
fn a_replacement_plugins_first_failure_is_logged_at_once() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let (plugins, _) = with(vec![(PluginKind::Auth, source(built::FIXTURE_FAIL_AUTH, "panic"))]);
        let request = auth_request("b1", &[], None);
        assert!(!plugins.auth().check(&request).is_allow());
        assert!(!plugins.auth().check(&request).is_allow(), "held back: the same plugin, moments later");
        plugins.replace(PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "error")).unwrap();
        assert!(!plugins.auth().check(&request).is_allow());
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("plugin call failed")).collect();
    assert_eq!(failures.len(), 2, "{text}");
    assert!(failures[0].contains("auth plugin panicked"), "{text}");
    assert!(failures[1].contains("fixture: cannot decide") && failures[1].contains("suppressed=1"), "{text}");
}

/// A plugin's text reaches Spawner's log on one line: a newline in what it
/// logs or in its termination's detail cannot start a line of its own.
#[test]
fn a_plugin_cannot_forge_lines_of_spawners_log() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let rt = Arc::new(Runtime::new(patient(), Some(key())).unwrap());
    let forger = LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_FAIL_IDLE, "forged-lines")).unwrap();
    let verdict = tracing::subscriber::with_default(subscriber, || forger.evaluate(&rt, &idle_request(0, 0, 0, None)).unwrap());
    match verdict {
        IdleVerdict::Terminate(t) => {
            assert_eq!(t.detail, "bye\\n2026-12-01T00:00:00.000000Z  INFO spawner::plugins: FORGED by a detail")
        }
        keep => panic!("{keep:?}"),
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("logged\\n2026-12-01"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("2026-12-01T00:00:00.000000Z")), "a forged line: {text}");
}

/// A call that began on the plugin being replaced and fails after the
/// swap does not take the line the new plugin's first failure gets.
#[test]
fn a_failure_of_the_replaced_plugin_does_not_take_the_new_ones_line() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let mut config = patient();
    config.auth.deadline_ms = 1_000;
    let rt = Arc::new(Runtime::new(config, Some(key())).unwrap());
    let (plugins, _) = with_in(rt, vec![(PluginKind::Auth, source(built::FIXTURE_LOOP, ""))]);
    let request = auth_request("b1", &[], None);
    tracing::subscriber::with_default(subscriber, || {
        std::thread::scope(|s| {
            // Out of time after a second, on the looping plugin (logged, if
            // at all, on its own thread, which has no subscriber here).
            let old_call = s.spawn(|| plugins.auth().check(&request));
            std::thread::sleep(Duration::from_millis(300));
            plugins.replace(PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "error")).unwrap();
            assert!(!old_call.join().unwrap().is_allow());
        });
        assert!(!plugins.auth().check(&request).is_allow());
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("plugin call failed")).collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(failures[0].contains("fixture: cannot decide"), "{text}");
}

#[test]
fn traps_and_plugin_errors_become_each_kinds_safe_answer() {
    let rt = runtime();
    let fail_auth = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "")).unwrap();
    let err = fail_auth.check(&rt, &auth_request("b1", &[], None), 0).unwrap_err();
    assert!(matches!(&err, CallError::Trap(m) if m.contains("fixture: auth plugin panicked")), "{err:?}");
    // Printing more than the host keeps is not a failure, and a panic after
    // it is still reported with its message (the last bytes are kept).
    let chatty = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "print")).unwrap();
    let printed = chatty.check(&rt, &auth_request("b1", &[], None), 0).unwrap();
    assert_eq!(deny_status(&printed), Some(451), "{printed:?}");
    let chatty = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "chatty-panic")).unwrap();
    let err = chatty.check(&rt, &auth_request("b1", &[], None), 0).unwrap_err();
    assert!(matches!(&err, CallError::Trap(m) if m.contains("panicked after chatter")), "{err:?}");
    // What it wrote to stderr last before panicking comes with it.
    assert!(
        matches!(&err, CallError::Trap(m) if m.ends_with("(its stderr before: fixture: line 95 on stderr, padded to sixty-four bytes ......)")),
        "{err:?}"
    );
    // A trap with no message says where it happened, by the plugin's own
    // function names; a stack overflow says what it most likely is.
    let abort = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "abort")).unwrap();
    let err = abort.check(&rt, &auth_request("b1", &[], None), 0).unwrap_err();
    assert!(
        matches!(&err, CallError::Trap(m) if m.contains("unreachable") && m.contains(" in ") && m.contains("fixture_fail_auth::")),
        "{err:?}"
    );
    let overflow = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "overflow")).unwrap();
    let err = overflow.check(&rt, &auth_request("b1", &[], None), 0).unwrap_err();
    assert!(matches!(&err, CallError::Trap(m) if m.contains("fixture_fail_auth::deep") && m.contains("stack")), "{err:?}");

    // Auth fails closed, on a trap and on a plugin error alike.
    for settings in ["panic", "error", "bad-header", "bad-status"] {
        let (plugins, _) = with(vec![(PluginKind::Auth, source(built::FIXTURE_FAIL_AUTH, settings))]);
        let token = key().mint("b1", None, NOW, NOW + 60);
        let v = plugins.auth().check(&auth_request("b1", &[("authorization", &bearer(&token))], None));
        assert_eq!(deny_status(&v), Some(403), "{settings}: {v:?}");
    }
    // Idle fails safe: the backend is kept.
    for settings in ["panic", "error"] {
        let (plugins, _) = with(vec![(PluginKind::Idle, source(built::FIXTURE_FAIL_IDLE, settings))]);
        assert_eq!(plugins.idle().evaluate(&idle_request(0, 99_999, 99_999, Some(1))), IdleVerdict::Keep, "{settings}");
    }
    // Scheduling falls back to the default scheduler.
    for settings in ["panic", "error", "unknown-node"] {
        let (plugins, metrics) = with(vec![(PluginKind::Scheduler, source(built::FIXTURE_FAIL_SCHEDULER, settings))]);
        let req = placement_request(vec![node("a", &[], 3), node("b", &[], 1)]);
        assert_eq!(plugins.scheduler().place(&req), Placement::Node("b".into()), "{settings}");
        assert!(metrics.encode().contains(r#"plugin="fixture_fail_scheduler.wasm""#));
    }
    // A node without the selector's labels is a failed answer too: the
    // platform would never run the backend there.
    let (plugins, metrics) = with(vec![(PluginKind::Scheduler, source(built::FIXTURE_FAIL_SCHEDULER, "first-node"))]);
    let mut req = placement_request(vec![node("a", &[("zone", "x")], 5), node("b", &[("zone", "y")], 0)]);
    assert_eq!(plugins.scheduler().place(&req), Placement::Node("a".into()), "no selector: the plugin's answer stands");
    assert!(!metrics.encode().contains("invalid-answer"));
    req.node_selector = vec![Label { key: "zone".into(), value: "y".into() }];
    assert_eq!(plugins.scheduler().place(&req), Placement::Node("b".into()), "the default scheduler decided instead");
    let text = metrics.encode();
    assert!(text.lines().any(|l| l.contains("plugin_failures") && l.contains("invalid-answer")), "{text}");
    // With no candidates, a node is no answer: none can run it now, and
    // "anywhere" waits for one.
    let (plugins, _) = with(vec![(PluginKind::Scheduler, source(built::FIXTURE_FAIL_SCHEDULER, "unknown-node"))]);
    let none = placement_request(vec![]);
    assert_eq!(plugins.scheduler().place(&none), Placement::Anywhere(vec![]), "the default scheduler decided instead");
    let unknown = LoadedPlugin::load(&rt, PluginKind::Scheduler, &source(built::FIXTURE_FAIL_SCHEDULER, "unknown-node")).unwrap();
    let err = unknown.place(&rt, &none).unwrap_err();
    assert!(matches!(&err, CallError::InvalidAnswer(m) if m.contains("no node was offered")), "{err:?}");
    // Labels are a Pod's node selector on Kubernetes: they must be labels.
    let bad = LoadedPlugin::load(&rt, PluginKind::Scheduler, &source(built::FIXTURE_FAIL_SCHEDULER, "bad-label")).unwrap();
    let err = bad.place(&rt, &none).unwrap_err();
    assert!(matches!(&err, CallError::InvalidAnswer(m) if m.contains("\"not a key!\"") && m.contains("not a Kubernetes label")), "{err:?}");
    // Nor may "anywhere" contradict the selector.
    let (plugins, _) = with(vec![(PluginKind::Scheduler, source(built::FIXTURE_FAIL_SCHEDULER, "anywhere-zone-x"))]);
    req.node_selector = vec![];
    let zone_x = Placement::Anywhere(vec![Label { key: "zone".into(), value: "x".into() }]);
    assert_eq!(plugins.scheduler().place(&req), zone_x, "no selector: the plugin's answer stands");
    req.node_selector = vec![Label { key: "zone".into(), value: "y".into() }];
    assert_eq!(plugins.scheduler().place(&req), Placement::Node("b".into()), "zone=x against zone=y: the default decided");
}

/// What a plugin answers goes on into headers, statuses, annotations and
/// logs, each with a size limit: past a bound, text is cut and headers are
/// a failed answer (before, 40,000 headers panicked the proxy, and a long
/// detail was an annotation the API server refused on every sweep).
#[test]
fn answers_past_their_bounds_are_cut_or_refused() {
    let rt = runtime();
    let headers = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "many-headers")).unwrap();
    let err = headers.check(&rt, &auth_request("b1", &[], None), 0).unwrap_err();
    assert!(
        matches!(&err, CallError::InvalidAnswer(m) if m.contains("40000 identity headers") && m.contains("at most 32 headers")),
        "{err:?}"
    );
    let reason = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_FAIL_AUTH, "long-reason")).unwrap();
    match reason.check(&rt, &auth_request("b1", &[], None), 0).unwrap() {
        Verdict::Deny(d) => {
            assert_eq!(d.status, 451, "still the plugin's denial");
            assert!(d.reason.len() <= 1024 && d.reason.starts_with("why why") && d.reason.ends_with(" [cut]"), "{}", d.reason.len());
        }
        allow => panic!("{allow:?}"),
    }
    let detail = LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_FAIL_IDLE, "long-detail")).unwrap();
    match detail.evaluate(&rt, &idle_request(0, 0, 0, None)).unwrap() {
        IdleVerdict::Terminate(t) => {
            assert_eq!(t.kind, TerminationKind::Idle, "still the plugin's termination");
            assert!(t.detail.len() <= 1024 && t.detail.ends_with(" [cut]"), "{}", t.detail.len());
        }
        keep => panic!("{keep:?}"),
    }
    // Too little: an empty reason would be an empty status message and
    // log detail; the decision stands, and says whose it was.
    let silent = LoadedPlugin::load(&rt, PluginKind::Idle, &source(built::FIXTURE_FAIL_IDLE, "no-detail")).unwrap();
    match silent.evaluate(&rt, &idle_request(0, 0, 0, None)).unwrap() {
        IdleVerdict::Terminate(t) => assert_eq!((t.kind, t.detail.as_str()), (TerminationKind::Idle, "the idle plugin gave no reason")),
        keep => panic!("{keep:?}"),
    }
    let silent = LoadedPlugin::load(&rt, PluginKind::Scheduler, &source(built::FIXTURE_FAIL_SCHEDULER, "silent-reject")).unwrap();
    let request = placement_request(vec![node("a", &[], 0)]);
    assert_eq!(silent.place(&rt, &request).unwrap(), Placement::Reject("the scheduler plugin gave no reason".into()));
}

/// A plugin with no imports runs on the caller's thread (for the auth
/// plugin, the proxy's async workers: no hop, microseconds). One whose call
/// ran long (here: looped to its deadline) is kept off them from then on,
/// so that a looping auth plugin does not stall every task of the worker
/// it runs on, request after request.
#[test]
fn a_slow_plugin_without_imports_is_kept_off_the_async_workers() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let config = RuntimeConfig { auth: spawner::plugins::Limits { memory_mib: 64, deadline_ms: 300 }, ..Default::default() };
    let rt = Arc::new(Runtime::new(config, None).unwrap());
    let plugin = Arc::new(LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_ALLOW, "")).unwrap());
    assert!(!plugin.runs_off_async_workers(), "loading (its settings check) is not timed");
    let mut spin = auth_request("b1", &[], None);
    spin.request.path = "/spin".into();

    // One worker thread, with a task ticking on it beside the calls.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                counted.fetch_add(1, SeqCst);
            }
        });
        for (call, off_the_worker) in [("first", false), ("second", true)] {
            let (rt, plugin, spin, ticks) = (rt.clone(), plugin.clone(), spin.clone(), ticks.clone());
            // Counted on the worker, right around the call.
            let (answer, during) = tokio::spawn(async move {
                let before = ticks.load(SeqCst);
                let answer = plugin.check(&rt, &spin, 0);
                (answer, ticks.load(SeqCst) - before)
            })
            .await
            .unwrap();
            assert_eq!(answer, Err(CallError::Deadline(300)), "{call}");
            if off_the_worker {
                assert!(during > 20, "{call} call: the worker's other task ticked {during} times in 300 ms");
            } else {
                assert_eq!(during, 0, "{call} call: it held the worker, yet the other task ticked");
            }
        }
        ticker.abort();
    });
    assert!(plugin.runs_off_async_workers());
}

#[test]
fn wrong_world_and_wrong_version_are_refused_naming_both_sides() {
    let rt = runtime();
    let err = LoadedPlugin::load(&rt, PluginKind::Auth, &PluginSource::embedded(PluginKind::Idle, "")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{msg}");
    assert!(
        msg.contains("exports spawner:plugin/idleness@0.2.0 (an idle plugin)")
            && msg.contains("must export spawner:plugin/authorization@0.2.0"),
        "{msg}"
    );

    let msg = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_WRONG_WORLD, "")).unwrap_err().to_string();
    assert!(msg.contains("exports render") && msg.contains("spawner:plugin/authorization@0.2.0"), "{msg}");

    let err = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_WRONG_VERSION, "")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::WrongVersion { .. }), "{msg}");
    assert!(msg.contains("spawner:plugin/authorization@0.1.0") && msg.contains("supports spawner:plugin@0.2.0"), "{msg}");

    let msg = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_BAD_EXPORT, "")).unwrap_err().to_string();
    assert!(msg.contains("not as Spawner defines it") && msg.contains("validate-settings"), "{msg}");
}

#[test]
fn non_components_and_refused_settings_are_explained() {
    let rt = runtime();
    let raw = |bytes: &[u8]| PluginSource { name: "x.wasm".into(), bytes: bytes.into(), settings: String::new() };
    let core = LoadedPlugin::load(&rt, PluginKind::Auth, &raw(b"\0asm\x01\0\0\0")).unwrap_err();
    assert!(matches!(core, LoadError::CoreModule { .. }) && core.to_string().contains("wasm32-wasip2"), "{core}");
    let junk = LoadedPlugin::load(&rt, PluginKind::Auth, &raw(b"#!/bin/sh\necho hi\n")).unwrap_err();
    assert!(matches!(junk, LoadError::NotWasm { .. }) && junk.to_string().contains("does not start with the wasm magic bytes"), "{junk}");
    let empty = LoadedPlugin::load(&rt, PluginKind::Auth, &raw(b"")).unwrap_err();
    assert!(empty.to_string().contains("x.wasm is not a WebAssembly component (the file is empty;"), "{empty}");
    let truncated = &spawner::plugins::embedded::DEFAULT_AUTH[..1000];
    assert!(matches!(LoadedPlugin::load(&rt, PluginKind::Auth, &raw(truncated)).unwrap_err(), LoadError::Compile { .. }));

    let err = LoadedPlugin::load(&rt, PluginKind::Scheduler, &PluginSource::embedded(PluginKind::Scheduler, r#"{"strategy":"random"}"#))
        .unwrap_err();
    assert!(matches!(&err, LoadError::Settings { reason, .. } if reason.contains("unknown variant `random`")), "{err}");
}

// ---- isolation and resources ----------------------------------------------------

#[test]
fn no_state_is_carried_from_one_call_to_the_next() {
    // Either way a memory is reset after a call (`Reset`): copied whole,
    // also when the call grew it past what the copy rewrites, or scanned
    // for the pages the call dirtied.
    let reset = |plugin: &str| spawner::plugins::Reset::for_component(&std::fs::read(plugin).unwrap());
    assert_eq!(reset(built::FIXTURE_COUNTER), spawner::plugins::Reset::Copy);
    assert_eq!(reset(built::FIXTURE_COUNTER_LARGE), spawner::plugins::Reset::Scan);
    for (plugin, settings) in [(built::FIXTURE_COUNTER, ""), (built::FIXTURE_COUNTER, "grow"), (built::FIXTURE_COUNTER_LARGE, "")] {
        let (plugins, _) = with(vec![(PluginKind::Idle, source(plugin, settings))]);
        for _ in 0..200 {
            let IdleVerdict::Terminate(t) = plugins.idle().evaluate(&idle_request(0, 0, 0, None)) else { panic!("kept") };
            assert_eq!(t.detail, "call 1", "{plugin} with settings {settings:?}");
        }
    }
}

#[test]
fn a_lean_plugin_grows_its_memory_up_to_the_limit_and_takes_large_requests() {
    // An auth limit of 5 MiB: a lean plugin (one page at the start) that
    // allocates 4 MiB must fit. Growing by doubling, it asked for 6 MiB at
    // 3 MiB and the call ended at the limit; steps are 256 KiB at most.
    let mut config = RuntimeConfig::default();
    config.auth.memory_mib = 5;
    let rt = Runtime::new(config, None).unwrap();
    let allow = LoadedPlugin::load(&rt, PluginKind::Auth, &source(built::FIXTURE_ALLOW, "")).unwrap();
    let mut req = auth_request("b1", &[], None);
    req.request.path = "/allocate/4096".into();
    assert!(allow.check(&rt, &req, 0).unwrap().is_allow());
    req.request.path = "/allocate/5120".into();
    assert_eq!(allow.check(&rt, &req, 0), Err(CallError::MemoryLimit(5 << 20)));

    // The default auth plugin takes requests far beyond its 16 KiB arena
    // (the rest of its page, then grown memory), one call after another.
    let (plugins, _) = defaults();
    let token = key().mint("b1", None, NOW, NOW + 600);
    for kib in [1, 40, 200, 40, 1] {
        let cookie = format!("big={}", "x".repeat(kib << 10));
        let req = auth_request("b1", &[("authorization", &bearer(&token)), ("cookie", &cookie)], None);
        assert!(plugins.auth().check(&req).is_allow(), "{kib} KiB cookie");
    }
}

/// Runs in a child process (see `ten_thousand_calls_do_not_grow_memory`) so
/// other tests' allocations do not blur the measurement.
#[test]
#[ignore = "run by ten_thousand_calls_do_not_grow_memory in its own process"]
fn memory_child() {
    let (plugins, _) = defaults();
    let token = key().mint("b1", None, NOW, NOW + 600);
    let req = auth_request("b1", &[("authorization", &bearer(&token))], None);
    for _ in 0..1000 {
        assert!(plugins.auth().check(&req).is_allow());
    }
    let before = rss_bytes();
    for _ in 0..10_000 {
        assert!(plugins.auth().check(&req).is_allow());
    }
    let after = rss_bytes();
    println!("RSS_BEFORE={before} RSS_AFTER={after}");
}

#[test]
fn ten_thousand_calls_do_not_grow_memory() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_child", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let num = |k: &str| -> u64 { stdout.split(k).nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap() };
    let (before, after) = (num("RSS_BEFORE="), num("RSS_AFTER="));
    let growth = after.saturating_sub(before);
    // A leak of even 300 bytes per call would show as 3 MB.
    assert!(growth < 3 << 20, "RSS grew by {growth} bytes over 10,000 calls ({before} -> {after})");
}

// ---- hot swap -----------------------------------------------------------------------

#[test]
fn a_bad_replacement_keeps_the_old_plugin_and_a_good_one_takes_over() {
    let (plugins, metrics) = defaults();
    let before = plugins.info(PluginKind::Auth);

    let err = plugins.replace(PluginKind::Auth, &source(built::FIXTURE_WRONG_VERSION, "")).unwrap_err();
    assert!(err.to_string().contains("0.1.0"));
    assert_eq!(plugins.info(PluginKind::Auth), before);
    let err = plugins.replace(PluginKind::Auth, &source(built::HMAC_HEADER_AUTH, r#"{"secret":"short"}"#)).unwrap_err();
    assert!(matches!(err, LoadError::Settings { .. }), "{err}");
    assert_eq!(plugins.info(PluginKind::Auth), before);

    let token = key().mint("b1", None, NOW, NOW + 60);
    let req = auth_request("b1", &[("authorization", &bearer(&token))], None);
    assert!(plugins.auth().check(&req).is_allow());
    let info = plugins.replace(PluginKind::Auth, &source(built::HMAC_HEADER_AUTH, r#"{"secret":"0123456789abcdefgh"}"#)).unwrap();
    assert_eq!(info.name, "hmac_header_auth.wasm");
    assert_eq!(plugins.info(PluginKind::Auth), info);
    assert_eq!(deny_status(&plugins.auth().check(&req)), Some(401), "the new plugin decides");
    let text = metrics.encode();
    assert!(text.contains(r#"spawner_plugin_loads_total{kind="auth",result="refused"} 2"#), "{text}");
}

/// A reload compiles the component and calls its `validate-settings`: here
/// three tries of 500 ms that all run out. The async runtime that carries the
/// proxy's requests goes on meanwhile, even a single-threaded one.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_does_not_hold_up_the_async_runtime() {
    let limits = spawner::plugins::Limits { memory_mib: 64, deadline_ms: 500 };
    let rt = Arc::new(Runtime::new(RuntimeConfig { auth: limits, ..patient() }, Some(key())).unwrap());
    let plugins = Arc::new(with_in(rt, vec![]).0);
    let before = plugins.info(PluginKind::Auth);
    let mut tried = std::collections::HashMap::new();
    let looping = source(built::FIXTURE_LOOP, "loop");
    let reload = async {
        let outcome = spawner::watch::replace_if_changed(&plugins, PluginKind::Auth, &looping, &mut tried).await;
        (outcome, Instant::now())
    };
    let other_work = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Instant::now()
    };
    let ((outcome, reloaded), worked) = tokio::join!(reload, other_work);
    assert!(matches!(outcome, Some(Err(LoadError::SettingsCall { source: CallError::Deadline(500), .. }))), "{outcome:?}");
    assert!(worked < reloaded, "other work waited for the reload to end");
    assert_eq!(plugins.info(PluginKind::Auth), before, "refused: the old plugin stays");
}

/// A reload refused for the moment (its `validate-settings` out of time on a
/// busy machine) is tried again at the next look; one refused for what
/// the plugin is (settings it refuses) is not, until it changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_refused_for_the_moment_is_tried_again() {
    let limits = spawner::plugins::Limits { memory_mib: 64, deadline_ms: 50 };
    let rt = Arc::new(Runtime::new(RuntimeConfig { auth: limits, ..patient() }, Some(key())).unwrap());
    let plugins = Arc::new(with_in(rt, vec![]).0);
    let mut tried = std::collections::HashMap::new();
    let slow = source(built::FIXTURE_LOOP, "loop");
    for attempt in 0..2 {
        let outcome = spawner::watch::replace_if_changed(&plugins, PluginKind::Auth, &slow, &mut tried).await;
        assert!(matches!(&outcome, Some(Err(e)) if e.is_transient()), "attempt {attempt}: {outcome:?}");
    }
    let refused = PluginSource::embedded(PluginKind::Idle, "{not json");
    let outcome = spawner::watch::replace_if_changed(&plugins, PluginKind::Idle, &refused, &mut tried).await;
    assert!(matches!(&outcome, Some(Err(e @ LoadError::Settings { .. })) if !e.is_transient()), "{outcome:?}");
    assert!(spawner::watch::replace_if_changed(&plugins, PluginKind::Idle, &refused, &mut tried).await.is_none(), "not tried again");
}

/// Settings meant for one's own plugin, given without its file, reach the
/// embedded default, which refuses them: the error says where they went.
#[test]
fn settings_without_a_plugin_file_are_said_to_have_gone_to_the_default() {
    let given = PluginSource::embedded(PluginKind::Idle, r#"{"idle_after_seconds": 5}"#);
    let Err(e) = spawner::plugins::Plugins::new(runtime(), Arc::new(spawner::metrics::Metrics::new()), vec![(PluginKind::Idle, given)])
    else {
        panic!("taken");
    };
    let e = e.to_string();
    assert!(e.starts_with("default-idle refused its settings: "), "{e}");
    assert!(e.contains("these settings went to the embedded default idle plugin, as no plugin file was given for idle"), "{e}");
}

/// A replacement that traps (a panic) or loops on its kind's sample
/// request, as `spawner plugin check` tries it, would fail every call: it
/// is refused and the working plugin stays. One that only cannot decide
/// the sample (its own error) is taken, since a real request may differ.
#[test]
fn a_replacement_that_fails_every_call_is_refused() {
    // The default auth deadline (the shared test runtime's are long): the
    // loop costs three of them.
    let rt = Arc::new(Runtime::new(RuntimeConfig { auth: RuntimeConfig::default().auth, ..patient() }, Some(key())).unwrap());
    let (plugins, _) = with_in(rt, vec![]);
    let before = plugins.info(PluginKind::Idle).digest;
    for (plugin, settings, why) in [(built::FIXTURE_FAIL_IDLE, "", "trapped"), (built::FIXTURE_LOOP, "", "deadline")] {
        let kind = if plugin == built::FIXTURE_LOOP { PluginKind::Auth } else { PluginKind::Idle };
        let kept = plugins.info(kind).digest;
        let e = plugins.replace(kind, &source(plugin, settings)).unwrap_err().to_string();
        assert!(e.contains("failed a trial decision on a sample") && e.contains(why), "{e}");
        assert_eq!(plugins.info(kind).digest, kept, "the working plugin stays");
    }
    assert!(plugins.replace(PluginKind::Idle, &source(built::FIXTURE_FAIL_IDLE, "error")).is_ok(), "cannot decide: taken");
    assert_ne!(plugins.info(PluginKind::Idle).digest, before);
}

/// A ConfigMap mounted as a volume: `idle.wasm -> ..data/idle.wasm`, and
/// each update a new directory that `..data` is re-pointed at (then the
/// old one removed), as the kubelet does. Every update is loaded, not
/// only the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_volume_is_followed_through_every_update() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let publish = |version: &str, plugin: &str| {
        let v = d.join(format!("..{version}"));
        std::fs::create_dir(&v).unwrap();
        std::fs::copy(plugin, v.join("idle.wasm")).unwrap();
        std::os::unix::fs::symlink(format!("..{version}"), d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    };
    publish("v1", built::FIXTURE_COUNTER);
    std::os::unix::fs::symlink("..data/idle.wasm", d.join("idle.wasm")).unwrap();
    let mut config = spawner::config::PluginsConfig::default();
    config.idle.file = Some(d.join("idle.wasm"));
    let first = spawner::watch::source(&config, PluginKind::Idle).unwrap();
    let plugins = Arc::new(with(vec![(PluginKind::Idle, first.clone())]).0);
    let loaded = [(PluginKind::Idle, spawner::watch::fingerprint(&first))].into_iter().collect();
    let _watching = spawner::watch::spawn(config, plugins.clone(), loaded).unwrap();

    let mut previous = "v1";
    for (version, plugin) in [("v2", built::BUSINESS_HOURS_IDLE), ("v3", built::FIXTURE_COUNTER_LARGE)] {
        let before = plugins.info(PluginKind::Idle).digest;
        publish(version, plugin);
        std::fs::remove_dir_all(d.join(format!("..{previous}"))).unwrap();
        let mut waited = Duration::ZERO;
        while plugins.info(PluginKind::Idle).digest == before && waited < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_ne!(plugins.info(PluginKind::Idle).digest, before, "update {version} was not loaded");
        previous = version;
    }
}

#[test]
fn calls_running_during_a_swap_all_get_answers() {
    // The shared runtime's patient deadlines: this is about the swap, and a
    // call descheduled past the default 20 ms would be denied for that.
    let plugins = Arc::new(defaults().0);
    let token = key().mint("b1", None, NOW, NOW + 60);
    let req = auth_request("b1", &[("authorization", &bearer(&token))], None);
    let swaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (p, seen) = (plugins.clone(), swaps.clone());
    // Calls go on until 2,000 were made under at least 10 of the plugins
    // swapped in: however the threads are scheduled (a busy machine can
    // hold the caller back while hundreds of swaps go by), the calls
    // overlap the swaps. A minute bounds a caller that never sees them.
    let caller = std::thread::spawn(move || {
        let (mut calls, mut allowed, mut generations) = (0, 0, std::collections::BTreeSet::new());
        let give_up = Instant::now() + Duration::from_secs(60);
        while (calls < 2000 || generations.len() < 10) && Instant::now() < give_up {
            generations.insert(seen.load(Ordering::SeqCst));
            allowed += usize::from(p.auth().check(&req).is_allow());
            calls += 1;
        }
        (calls, allowed, generations.len())
    });
    let mut i = 0;
    while !caller.is_finished() {
        let settings = if i % 2 == 0 { "" } else { "{}" };
        plugins.replace(PluginKind::Auth, &PluginSource::embedded(PluginKind::Auth, settings)).unwrap();
        swaps.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
    let (calls, allowed, generations) = caller.join().unwrap();
    assert_eq!(allowed, calls, "every call allowed: none saw a half-swapped plugin");
    assert!(generations >= 10, "calls were made under {generations} plugins, of {i} swapped in");
}
