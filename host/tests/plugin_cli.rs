//! `spawner plugin check|run|defaults` and `spawner token mint`, run as a
//! plugin author would run them.

use std::process::{Command, Output};

use spawner_test_plugins as built;

fn spawner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spawner")).args(args).output().unwrap()
}

/// Same, with long plugin deadlines, for what is not about deadlines: they
/// are wall-clock time, and a busy machine can push a fresh process's call
/// past the default 20 ms (or an allocation past 100 ms).
fn patient(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(args)
        .env("SPAWNER_PLUGIN_DEADLINE_MS", "scheduler=5000,auth=5000,idle=5000")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_accepts_each_default_plugin_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawner(&["plugin", "defaults", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for kind in ["scheduler", "auth", "idle"] {
        let file = dir.path().join(format!("default_{kind}.wasm"));
        let out = spawner(&["plugin", "check", file.to_str().unwrap()]);
        assert!(out.status.success(), "{kind}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.starts_with("ok: ") && stdout.contains(&format!("spawner:plugin/{kind}@0.2.0")), "{stdout}");
        let deadline = if kind == "auth" { "(deadline 20 ms" } else { "(deadline 100 ms" };
        assert!(stdout.contains(deadline), "the trial's time is shown beside the deadline: {stdout}");
        if kind == "auth" {
            // The sample `plugin sample` prints: a token for its backend.
            assert!(stdout.contains("sample decision: allow (subject alice)"), "{stdout}");
        }
        let start = if kind == "auth" { "64 KiB" } else { "128 KiB" };
        assert!(stdout.trim_end().ends_with(&format!("; its memory starts at {start} and is reset by copying")), "{stdout}");
    }
    // A plugin with 1 MiB of static data is told what its size costs.
    let out = spawner(&["plugin", "check", built::FIXTURE_COUNTER_LARGE]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("its memory starts at 1088 KiB, over 128 KiB, so it is reset by a scan"), "{stdout}");
    // Its 1 MiB is static data, which no stack size would change.
    assert!(stdout.contains("its stack is 32 KiB and the rest, about 1056 KiB, is static data"), "{stdout}");
    assert!(!stdout.contains("-zstack-size"), "{stdout}");
}

#[test]
fn check_refuses_each_fixture_with_the_reason() {
    let cases = [
        (built::FIXTURE_LOOP, "deadline"),
        (built::FIXTURE_ALLOC, "memory limit of 64 MiB"),
        (built::FIXTURE_FAIL_AUTH, "panicked at"),
        (built::FIXTURE_FAIL_IDLE, "panicked at"),
        (built::FIXTURE_FAIL_SCHEDULER, "panicked at"),
        (built::FIXTURE_WRONG_WORLD, "is not a Spawner plugin"),
        (built::FIXTURE_WRONG_VERSION, "spawner:plugin/authorization@0.1.0"),
        (built::FIXTURE_BAD_EXPORT, "validate-settings"),
    ];
    for (file, reason) in cases {
        // The loop must meet the deadlines it is checked against.
        let out = if file == built::FIXTURE_LOOP { spawner(&["plugin", "check", file]) } else { patient(&["plugin", "check", file]) };
        assert_eq!(out.status.code(), Some(1), "{file}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("refused: ") && stderr.contains(reason), "{file}: expected {reason:?} in {stderr}");
    }
    // A kind given explicitly is enforced.
    let out = spawner(&["plugin", "check", built::QUOTA_BY_LABEL, "--kind", "auth"]);
    assert!(!out.status.success() && text(&out).contains("an auth plugin must export"), "{}", text(&out));
    // Settings are validated.
    let out = spawner(&["plugin", "check", built::HMAC_HEADER_AUTH, "--settings", r#"{"secret":"short"}"#]);
    assert!(!out.status.success() && text(&out).contains("at least 16 characters"), "{}", text(&out));
    assert!(!text(&out).contains("none were given"), "{}", text(&out));
    // Checked without the settings it needs: how to give them.
    let out = spawner(&["plugin", "check", built::HMAC_HEADER_AUTH]);
    assert!(
        !out.status.success() && text(&out).contains("none were given: check it with the settings it will run with, --settings"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_missing_plugin_file_stops_dev_naming_the_kind_and_the_file() {
    let out = spawner(&["dev", "--listen", "127.0.0.1:0", "--plugin", "auth=/nonexistent/auth.wasm"]);
    assert!(!out.status.success(), "{}", text(&out));
    let text = text(&out);
    assert!(text.contains("loading the auth plugin (--plugin auth=FILE, or [plugins.auth] in the config file)"), "{text}");
    assert!(text.contains("/nonexistent/auth.wasm"), "{text}");
}

#[test]
fn limits_given_by_flag_or_environment_are_the_ones_the_trial_runs_under() {
    // As `spawner proxy` and `spawner operator` take them: per kind.
    let out = spawner(&["plugin", "check", built::FIXTURE_LOOP, "--plugin-deadline-ms", "auth=7", "--plugin-deadline-ms", "idle=300"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("within its 7 ms deadline"), "{}", text(&out));
    let out = spawner(&["plugin", "check", built::FIXTURE_ALLOC, "--plugin-memory-mib", "idle=16", "--plugin-deadline-ms", "idle=5000"]);
    assert!(text(&out).contains("memory limit of 16 MiB"), "{}", text(&out));
    let dir = tempfile::tempdir().unwrap();
    spawner(&["plugin", "defaults", "--out", dir.path().to_str().unwrap()]);
    let idle = dir.path().join("default_idle.wasm");
    let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["plugin", "check", idle.to_str().unwrap()])
        .env("SPAWNER_PLUGIN_DEADLINE_MS", "auth=250,idle=4000")
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).contains("(deadline 4000 ms"), "{}", text(&out));
    // Empty items set nothing: a manifest's "" and a trailing comma are not
    // errors (the idle default is 100 ms).
    for value in ["", "auth=250,"] {
        let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
            .args(["plugin", "check", idle.to_str().unwrap()])
            .env("SPAWNER_PLUGIN_DEADLINE_MS", value)
            .env("SPAWNER_PLUGIN_MEMORY_MIB", value)
            .output()
            .unwrap();
        assert!(out.status.success() && text(&out).contains("(deadline 100 ms"), "{value:?}: {}", text(&out));
    }

    // Bad values are refused before anything runs, saying what to fix.
    for (arg, expected) in [
        ("auth=0", "the value for auth must be between 1 and 60000"),
        ("auth=60001", "the value for auth must be between 1 and 60000"),
        ("auth=soon", "the value for auth must be between 1 and 60000, got \"soon\""),
        ("proxy=50", "unknown plugin kind \"proxy\" (expected scheduler, auth or idle)"),
        ("50", "expected KIND=VALUE"),
    ] {
        let out = spawner(&["plugin", "check", built::FIXTURE_LOOP, "--plugin-deadline-ms", arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}: {}", text(&out));
        assert!(text(&out).contains("--plugin-deadline-ms") && text(&out).contains(expected), "{arg}: {}", text(&out));
    }
    let out = spawner(&["plugin", "check", built::FIXTURE_ALLOC, "--plugin-memory-mib", "idle=5000"]);
    assert!(text(&out).contains("the value for idle must be between 1 and 4096"), "{}", text(&out));
}

#[test]
fn run_prints_the_decision_for_a_minted_token() {
    let secret = "cli-test-secret-0123456789";
    let mint = spawner(&["token", "mint", "--secret", secret, "--backend", "doc-42", "--subject", "alice"]);
    assert!(mint.status.success(), "{}", text(&mint));
    // Held to the API's limits.
    let long = spawner(&["token", "mint", "--secret", secret, "--backend", "doc-42", "--ttl", "2592001"]);
    assert!(!long.status.success() && text(&long).contains("--ttl must be at most 2592000 (30 days)"), "{}", text(&long));
    let nobody = spawner(&["token", "mint", "--secret", secret, "--backend", "doc-42", "--subject", ""]);
    assert!(!nobody.status.success() && text(&nobody).contains("--subject must not be empty"), "{}", text(&nobody));
    let two_lines = spawner(&["token", "mint", "--secret", secret, "--backend", "doc-42", "--subject", "alice\nx-spawner-role: admin"]);
    assert!(!two_lines.status.success() && text(&two_lines).contains("without control characters"), "{}", text(&two_lines));
    let nameless = spawner(&["token", "mint", "--secret", secret, "--backend", ""]);
    assert!(!nameless.status.success() && text(&nameless).contains("--backend is empty"), "{}", text(&nameless));
    let token = String::from_utf8_lossy(&mint.stdout).trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    spawner(&["plugin", "defaults", "--out", dir.path().to_str().unwrap()]);
    let auth = dir.path().join("default_auth.wasm");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let input = serde_json::json!({
        "request": {"method": "GET", "path": "/", "query": format!("token={token}"), "headers": [], "peer": "127.0.0.1:1", "websocket": false},
        "backend": {"name": "doc-42", "key": null, "owner": "alice", "labels": []},
        "now": now,
    })
    .to_string();
    // No --kind: read from the component's exports, as `check` does.
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &input, "--token-secret", secret]);
    assert!(out.status.success(), "{}", text(&out));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["Allow"]["subject"], "alice", "{decision}");
    // The cookie as the proxy names it under host routing over HTTPS.
    let cookie = serde_json::json!({
        "request": {"method": "GET", "path": "/", "query": null, "headers": [{"name": "cookie", "value": format!("theme=dark; __Host-spawner-token={token}")}], "peer": "127.0.0.1:1", "websocket": false},
        "backend": {"name": "doc-42", "key": null, "owner": "alice", "labels": []},
        "now": now,
    })
    .to_string();
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &cookie, "--token-secret", secret]);
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["Allow"]["subject"], "alice", "{decision}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("input's now"), "{}", text(&out));
    // A saved input's time is said when it is far from the clock (tokens
    // expired since then still pass a plugin judging by it).
    let mut old: serde_json::Value = serde_json::from_str(&cookie).unwrap();
    old["now"] = (now - 720).into();
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &old.to_string(), "--token-secret", secret]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: the input's now is 7"), "{}", text(&out));
    // A header value the proxy could never give is refused.
    let mut split = old.clone();
    split["request"]["headers"][0]["value"] = "a\nb".into();
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &split.to_string()]);
    assert!(!out.status.success() && text(&out).contains("which is not a header value"), "{}", text(&out));

    // An edited sample: its pre-verified credential would let anyone in.
    // With --token-secret, the token in its header is what counts, as in
    // the proxy: one for another backend is refused.
    let sample = spawner(&["plugin", "sample", "--kind", "auth"]);
    let mut edited: serde_json::Value = serde_json::from_slice(&sample.stdout).unwrap();
    let foreign = spawner(&["token", "mint", "--secret", secret, "--backend", "other", "--subject", "mallory"]);
    let foreign = String::from_utf8_lossy(&foreign.stdout).trim().to_string();
    for h in edited["request"]["headers"].as_array_mut().unwrap() {
        if h["name"] == "authorization" {
            h["value"] = format!("Bearer {foreign}").into();
        }
    }
    assert!(edited["credentials"].as_array().is_some_and(|c| !c.is_empty()), "the sample carries a credential: {edited}");
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &edited.to_string(), "--token-secret", secret]);
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["Deny"]["status"], 403, "{decision}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential(s) are replaced"), "{}", text(&out));

    // A sample minted with the secret is let in with it: its header holds
    // a real token, not the placeholder.
    let minted = spawner(&["plugin", "sample", "--kind", "auth", "--token-secret", secret]);
    assert!(minted.status.success(), "{}", text(&minted));
    assert!(!String::from_utf8_lossy(&minted.stdout).contains(secret), "the secret is not printed");
    let out =
        patient(&["plugin", "run", auth.to_str().unwrap(), "--input", &String::from_utf8_lossy(&minted.stdout), "--token-secret", secret]);
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["Allow"]["subject"], "alice", "{decision}");

    // The fixture's failure is shown with the fallback the host would use.
    let out = patient(&["plugin", "run", built::FIXTURE_FAIL_IDLE, "--kind", "idle", "--input", "sample"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fallback"], "Keep", "{v}");
    assert!(v["error"].as_str().unwrap().contains("panicked"), "{v}");

    // Bad input says what is wrong.
    let out = patient(&["plugin", "run", auth.to_str().unwrap(), "--kind", "auth", "--input", "{}"]);
    assert!(!out.status.success() && text(&out).contains("not a valid auth request"), "{}", text(&out));
    let idle = dir.path().join("default_idle.wasm");
    let out = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", &input]);
    assert!(
        !out.status.success() && text(&out).contains("--input looks like an auth request, but the plugin is an idle plugin"),
        "{}",
        text(&out)
    );

    // A printed sample is an input `run` takes as it is: the auth one with
    // a verified token for its backend, which the default plugin lets in.
    for (kind, expect) in [("auth", "Allow"), ("idle", "Keep"), ("scheduler", "Node")] {
        let sample = spawner(&["plugin", "sample", "--kind", kind]);
        assert!(sample.status.success(), "{}", text(&sample));
        let file = dir.path().join(format!("{kind}.json"));
        std::fs::write(&file, &sample.stdout).unwrap();
        let plugin = dir.path().join(format!("default_{kind}.wasm"));
        let out = patient(&["plugin", "run", plugin.to_str().unwrap(), "--input", &format!("@{}", file.display())]);
        assert!(out.status.success(), "{kind}: {}", text(&out));
        let decision = String::from_utf8_lossy(&out.stdout);
        assert!(decision.contains(expect), "{kind}: {decision}");
    }

    // A misspelt field is refused, not dropped: the idle sample with its
    // lifetime limit passed would end the backend, and the misspelling
    // would print "Keep" for an input other than the one meant.
    let idle_sample = dir.path().join("idle.json");
    let mut input: serde_json::Value = serde_json::from_slice(&std::fs::read(&idle_sample).unwrap()).unwrap();
    input["lifetime_limit_seconds"] = 60.into();
    let ends = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", &input.to_string()]);
    assert!(String::from_utf8_lossy(&ends.stdout).contains("Lifetime"), "{}", text(&ends));
    let limit = input.as_object_mut().unwrap().remove("lifetime_limit_seconds").unwrap();
    input["lifetime_limit_secs"] = limit;
    input["activity"]["bogus"] = 1.into();
    let out = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", &input.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--input has fields idle requests do not have: activity.bogus, lifetime_limit_secs"), "{}", text(&out));
    // A missing field is named with where it is missing from.
    input["backend"].as_object_mut().unwrap().remove("labels");
    let out = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", &input.to_string()]);
    assert!(text(&out).contains("not a valid idle request at backend: missing field `labels`"), "{}", text(&out));
    // A misspelt required field is missing and unknown: both are named.
    let mut misspelt = input.clone();
    misspelt["backend"]["labels"] = serde_json::json!([]);
    let age = misspelt.as_object_mut().unwrap().remove("age_seconds").unwrap();
    misspelt["age_secs"] = age;
    let out = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", &misspelt.to_string()]);
    assert!(
        text(&out).contains("missing field `age_seconds`")
            && text(&out).contains("it has fields idle requests do not have: activity.bogus, age_secs"),
        "{}",
        text(&out)
    );
    // A file name without `@` is not read as JSON, and the error says so.
    let out = patient(&["plugin", "run", idle.to_str().unwrap(), "--input", idle_sample.to_str().unwrap()]);
    assert!(
        text(&out).contains(&format!(
            "--input is not JSON (expected value at line 1 column 1); to read the file {0}, write --input @{0}",
            idle_sample.display()
        )),
        "{}",
        text(&out)
    );
}
