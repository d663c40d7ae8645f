//! The REST API's contract: errors that say what to fix, the bearer token,
//! filters, and the OpenAPI document.

mod common;

use common::dev::{Dev, FAST};
use serde_json::{Value, json};

async fn post_raw(dev: &Dev, path: &str, body: impl Into<reqwest::Body>, json_type: bool) -> (u16, String) {
    let mut r = dev.http.post(format!("{}{path}", dev.base)).body(body);
    if json_type {
        r = r.header("content-type", "application/json");
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_that_says_what_to_fix() {
    let dev = Dev::start(FAST, &[]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad JSON", "{\"template\": ".into(), 400, "the body is not valid JSON: template: EOF while parsing"),
        // serde's "key must be a string" is about JSON syntax, not the `key` field.
        ("unquoted name", "{template: 1}".into(), 400, "the body is not valid JSON: object keys must be strings in double quotes"),
        ("empty body", "".into(), 400, "the body is empty: send a JSON object (the fields are in /api/openapi.json)"),
        ("unknown field", r#"{"template":"demo","gracePeriod":5}"#.into(), 422, "unknown field `gracePeriod`"),
        (
            "negative duration",
            r#"{"template":"demo","gracePeriodSeconds":-5}"#.into(),
            422,
            "gracePeriodSeconds must be between 1 and 4294967295, got -5",
        ),
        (
            "zero grace",
            r#"{"template":"demo","gracePeriodSeconds":0}"#.into(),
            422,
            "gracePeriodSeconds must be between 1 and 4294967295, got 0",
        ),
        // What a SessionLivedBackend can hold, so a spec that runs here runs on a cluster.
        ("huge grace", r#"{"template":"demo","gracePeriodSeconds":4294967296}"#.into(), 422, "gracePeriodSeconds must be between 1"),
        (
            "negative lifetime",
            r#"{"template":"demo","lifetimeLimitSeconds":-1}"#.into(),
            422,
            "lifetimeLimitSeconds must be at least 1, got -1",
        ),
        ("zero port", r#"{"template":"demo","port":0}"#.into(), 422, "port must be between 1 and 65535, got 0"),
        ("NUL in env", r#"{"template":"demo","env":{"A":"x\u0000y"}}"#.into(), 422, "env A: the value contains a NUL byte"),
        (
            "unknown template",
            r#"{"template":"nope"}"#.into(),
            422,
            "unknown template \"nope\"; configured templates: demo (add [templates.\"nope\"] with the command that runs it to /",
        ),
        (
            "empty template",
            r#"{"template":" "}"#.into(),
            422,
            "template is empty: name a configured template (or, on Kubernetes, an image)",
        ),
        ("no template", r#"{"key":"k"}"#.into(), 422, "missing field `template` (or its alias `image`)"),
        ("invalid key", r#"{"template":"demo","key":"has space"}"#.into(), 422, "key must be"),
        (
            "reserved env",
            r#"{"template":"demo","env":{"PORT":"1"}}"#.into(),
            422,
            "env PORT: PORT and every SPAWNER_ variable are Spawner's",
        ),
        (
            "reserved prefix",
            r#"{"template":"demo","env":{"SPAWNER_FOO":"1"}}"#.into(),
            422,
            "env SPAWNER_FOO: PORT and every SPAWNER_ variable are Spawner's to set",
        ),
        // Kubernetes' rules locally too, so a spec that runs here runs on a cluster.
        (
            "invalid toleration",
            r#"{"template":"demo","tolerations":[{"key":"gpu","operator":"Exists"},{"key":"gpu","operator":"In"}]}"#.into(),
            422,
            "tolerations[1]: operator must be Equal or Exists",
        ),
        ("misspelt toleration", r#"{"template":"demo","tolerations":[{"kee":"gpu"}]}"#.into(), 422, "unknown field `kee`"),
        (
            "oversized body",
            format!(r#"{{"template":"demo","key":"{}"}}"#, "k".repeat(100_000)),
            413,
            "larger than the API's limit of 64 KiB",
        ),
        ("not an object", "[1, 2]".into(), 422, "the body must be a JSON object"),
        ("empty array", "[]".into(), 422, "the body must be a JSON object"),
        (
            "nested non-object",
            r#"{"template":"demo","resources":null}"#.into(),
            422,
            "resources: invalid type: null, expected a JSON object",
        ),
        (
            "template and image",
            r#"{"template":"demo","image":"demo"}"#.into(),
            422,
            "the template is given twice (as `template`, or as its alias `image`): give it once",
        ),
        // Checked before anything starts: a refused create leaves nothing running.
        ("zero token TTL", r#"{"template":"demo","tokenTtlSeconds":0}"#.into(), 422, "tokenTtlSeconds must be between 1 and 2592000"),
        // A subject goes to the backend in a header and into the token.
        ("subject with a line break", r#"{"template":"demo","subject":"alice\r\nX-Evil: 1"}"#.into(), 422, "subject must be 1-253 bytes"),
        ("empty subject", r#"{"template":"demo","subject":""}"#.into(), 422, "subject must be 1-253 bytes"),
        ("huge subject", format!(r#"{{"template":"demo","subject":"{}"}}"#, "a".repeat(254)), 422, "subject must be 1-253 bytes"),
        ("owner with a control character", r#"{"template":"demo","owner":"a\u007fb"}"#.into(), 422, "owner must be 1-253 bytes"),
        (
            "negative token TTL",
            r#"{"template":"demo","tokenTtlSeconds":-1}"#.into(),
            422,
            "tokenTtlSeconds must be between 1 and 2592000 (30 days), got -1",
        ),
        (
            "huge token TTL",
            r#"{"template":"demo","tokenTtlSeconds":99999999}"#.into(),
            422,
            "tokenTtlSeconds must be between 1 and 2592000",
        ),
    ];
    for (what, body, status, message) in cases {
        let (got, text) = post_raw(&dev, "/api/v1/backends", body, true).await;
        assert_eq!(got, status, "{what}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(json!({"error": text}));
        assert!(v["error"].as_str().unwrap_or("").contains(message), "{what}: {text}");
    }
    let (got, text) = post_raw(&dev, "/api/v1/backends", r#"{"template":"demo"}"#, false).await;
    assert_eq!(got, 415, "{text}");
    assert!(text.contains("Content-Type: application/json"), "{text}");
    // Nothing was created by all that.
    let list: Value = dev.http.get(format!("{}/api/v1/backends", dev.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(list, json!([]));
    let missing = dev.http.get(format!("{}/api/v1/backends/nope", dev.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let slash = dev.http.get(format!("{}/api/v1/backends/", dev.base)).send().await.unwrap();
    assert_eq!(slash.status(), 404);
    let error = slash.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.contains("paths take no trailing slash: /api/v1/backends"), "{error}");
    // Not where the path without it is no endpoint either.
    let slash = dev.http.get(format!("{}/foo/", dev.base)).send().await.unwrap();
    let error = slash.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("no such endpoint; see"), "{error}");
    // All of it counted, by endpoint and status: what a web app alerts on.
    let metrics = dev.http.get(format!("{}/metrics", dev.base)).send().await.unwrap().text().await.unwrap();
    let count = |labels: &str| {
        let prefix = format!("spawner_api_requests_total{{{labels}}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    assert!(count(r#"method="POST",endpoint="/api/v1/backends",code="422""#) >= 1, "{metrics}");
    assert_eq!(count(r#"method="GET",endpoint="/api/v1/backends/{name}",code="404""#), 1, "{metrics}");
    assert_eq!(count(r#"method="GET",endpoint="none",code="404""#), 2, "{metrics}");
    assert_eq!(count(r#"method="POST",endpoint="/api/v1/backends",code="201""#), 0, "nothing was created: {metrics}");
    // A name that is not UTF-8 once decoded: the API's JSON error too.
    for path in ["/api/v1/backends/%FF", "/api/v1/backends/%C0/tokens", "/api/backend/%FF/status"] {
        let r = dev
            .http
            .request(if path.ends_with("tokens") { reqwest::Method::POST } else { reqwest::Method::GET }, format!("{}{path}", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{path}: {v}");
    }
    // Query strings and methods get the same kind of answer.
    let r = dev.http.get(format!("{}/api/v1/backends/nope/ready?timeout=-1", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "timeout: expected a whole number, 0 or more");
    let r = dev.http.get(format!("{}/api/v1/backends/nope/logs?tail=", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "tail is empty: give a value, or leave it out");
    let r = dev.http.put(format!("{}/api/v1/backends/nope", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "this endpoint takes GET, HEAD, DELETE, not PUT; see /api/openapi.json");
    assert_eq!(allow.as_deref(), Some("GET,HEAD,DELETE"), "the Allow header says the same");
}

/// A backend's page shares the API's origin in path routing: its scripts,
/// forms, frames and windows may not use the API (open on loopback); what
/// the user types in and a link to `readyUrl` from another origin still
/// open, and servers, which send no such headers, are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn pages_in_a_browser_may_not_call_the_api() {
    let dev = Dev::start(FAST, &[]);
    let (name, _) = dev.create_ok(json!({"template": "demo"})).await;
    let url = |path: &str| format!("{}{path}", dev.base);
    let script = [("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "cors"), ("sec-fetch-dest", "empty")];
    let with = |mut r: reqwest::RequestBuilder, headers: &[(&str, &str)]| {
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r
    };
    for request in [
        with(dev.http.get(url("/api/v1/backends")), &script),
        with(dev.http.post(url(&format!("/api/v1/backends/{name}/tokens"))), &script),
        with(dev.http.delete(url(&format!("/api/v1/backends/{name}"))), &[("origin", "http://127.0.0.1")]),
        with(
            dev.http.post(url("/api/spawn")).json(&json!({"image": "demo"})),
            &[("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "navigate")],
        ),
        // A frame or window a backend's page opens on the API: same origin,
        // so the page could read it...
        with(
            dev.http.get(url("/api/v1/backends")),
            &[("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")],
        ),
        // ... even when sent through another site's redirect first.
        with(
            dev.http.get(url("/api/v1/backends")),
            &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")],
        ),
        with(
            dev.http.get(url(&format!("/api/v1/backends/{name}"))),
            &[("sec-fetch-site", "same-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")],
        ),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("the API is for your web app's server"));
    }
    let navigation = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")];
    let r = with(dev.http.get(url(&format!("/api/backend/{name}/ready"))), &navigation).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 302 | 409), "{}", r.status());
    // Not into another site's frame.
    let framed = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")];
    let r = with(dev.http.get(url(&format!("/api/backend/{name}/ready"))), &framed).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("readyUrl opens in a window or tab, not in a frame"));
    let typed = [("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")];
    assert_eq!(with(dev.http.get(url("/api/v1/backends")), &typed).send().await.unwrap().status(), 200);
    // A page's CORS preflight is told the same, not "no such method".
    let preflight = [("origin", "http://127.0.0.1:5000"), ("access-control-request-method", "POST")];
    let r = with(dev.http.request(reqwest::Method::OPTIONS, url("/api/v1/backends")), &preflight).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("the API is for your web app's server"));
    // A backend's page with a link that starts with `/` lands here: told why.
    for path in ["/info", "/static/"] {
        let r = dev.http.get(url(path)).header("referer", format!("{}/p/{name}/notes?x=1", dev.base)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let why = r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
        assert!(
            why.contains(&format!(
                "backend {name}'s page asked for {path}: a link that starts with / leaves the backend's /p/{name}/ prefix"
            )),
            "{why}"
        );
    }
    // Not for another site's page.
    let r = dev.http.get(url("/info")).header("referer", format!("http://elsewhere.example/p/{name}/")).send().await.unwrap();
    assert!(!r.text().await.unwrap().contains("page asked for"));
    assert_eq!(dev.backend(&name).await["status"]["phase"].as_str().map(|p| p != "terminated"), Some(true), "nothing was ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn more_tokens_for_a_backend_name_their_user_and_need_no_body() {
    let dev = Dev::start(FAST, &[]);
    let (name, _) = dev.create_ok(json!({"template":"demo","owner":"alice"})).await;
    dev.wait_ready(&name).await;
    let tokens = format!("/api/v1/backends/{name}/tokens");

    // A second user of the same document.
    let (status, text) = post_raw(&dev, &tokens, r#"{"subject":"bob","ttlSeconds":60}"#, true).await;
    assert_eq!(status, 201, "{text}");
    let minted: Value = serde_json::from_str(&text).unwrap();
    let token = minted["token"].as_str().unwrap();
    assert!(minted["browserUrl"].as_str().unwrap().contains(&format!("/p/{name}/?token=")), "{minted}");
    let seen: Value = dev.get(&name, "/headers", Some(token)).await.json().await.unwrap();
    assert_eq!(seen["headers"]["x-spawner-user"], json!(["bob"]), "the backend is told who it is");

    // Every field is optional: no body at all is all defaults.
    let r = dev.http.post(format!("{}{tokens}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    // So is `null`, which the OpenAPI document allows.
    let (got, text) = post_raw(&dev, &tokens, "null", true).await;
    assert_eq!(got, 201, "{text}");
    // A body without a Content-Type is not skipped (it was: a day-long
    // token for nobody instead of bob's for a minute).
    let (got, text) = post_raw(&dev, &tokens, r#"{"subject":"bob","ttlSeconds":60}"#, false).await;
    assert_eq!(got, 415, "{text}");
    assert!(text.contains("the body has no Content-Type: send it as Content-Type: application/json"), "{text}");
    for (what, body, status, message) in [
        ("empty JSON body", "", 400, "the body is empty: send a JSON object ({} for all defaults)"),
        ("negative lifetime", r#"{"ttlSeconds":-1}"#, 422, "ttlSeconds must be between 1 and 2592000 (30 days), got -1"),
        ("misspelt field", r#"{"ttl":60}"#, 422, "unknown field `ttl`"),
        // serde would read the fields in order: a token for eve, 60 s.
        ("fields as an array", r#"["eve", 60]"#, 422, "the body must be a JSON object ({...}), not an array or a value"),
        ("empty array", "[]", 422, "the body must be a JSON object ({...}), not an array or a value"),
        (
            "subject with a line break",
            r#"{"subject":"bob\r\nX-Evil: 1"}"#,
            422,
            "subject must be 1-253 bytes (UTF-8) without control characters",
        ),
    ] {
        let (got, text) = post_raw(&dev, &tokens, body, true).await;
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(message), "{what}: {text}");
    }
    assert_eq!(post_raw(&dev, "/api/v1/backends/nope/tokens", "{}", true).await.0, 404);
    let ended = dev.http.delete(format!("{}/api/v1/backends/{name}", dev.base)).send().await.unwrap();
    assert_eq!(ended.status(), 202);
    dev.wait_phase(&name, "terminated").await;
    let (got, text) = post_raw(&dev, &tokens, "{}", true).await;
    assert_eq!(got, 410, "no tokens for an ended backend: {text}");
    // A bad body is a bad body whatever the backend's state, as in a create.
    let (got, text) = post_raw(&dev, &tokens, r#"{"ttlSeconds":0}"#, true).await;
    assert_eq!(got, 422, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_terminate_and_openapi() {
    let dev = Dev::start(FAST, &[]);
    let (a, _) = dev.create_ok(json!({"template":"demo","owner":"alice","labels":{"team":"data"},"tolerations":[{"key":"gpu","operator":"Exists"}],"gracePeriodSeconds":60})).await;
    let (b, _) = dev.create_ok(json!({"template":"demo","owner":"bob","gracePeriodSeconds":60})).await;
    dev.wait_ready(&a).await;
    dev.wait_ready(&b).await;
    let names = |v: Value| v.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let get = |q: &str| dev.http.get(format!("{}/api/v1/backends{q}", dev.base)).send();
    assert_eq!(names(get("?owner=alice").await.unwrap().json().await.unwrap()), vec![a.clone()]);
    assert_eq!(names(get("?labels=team=data").await.unwrap().json().await.unwrap()), vec![a.clone()]);
    assert_eq!(get("?phase=flying").await.unwrap().status(), 400);
    for bad in ["?labels=team", "?labels=team=data,,x=y", "?labels=bad%20key=v"] {
        let r = get(bad).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains("k=v pairs of valid labels"), "{bad}");
    }
    // A malformed escape would otherwise be read literally and match nothing.
    let r = get("?owner=%ZZ").await.unwrap();
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("malformed percent-escape \"%ZZ\""), "{error}");
    assert_eq!(names(get("?owner=%61lice").await.unwrap().json().await.unwrap()), vec![a.clone()], "escapes decode");

    let r = dev.http.delete(format!("{}/api/v1/backends/{b}", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert!(matches!(answer["status"]["phase"].as_str(), Some("terminating" | "terminated")), "the answer shows the termination: {answer}");
    // Idempotent: asking again answers the same way.
    let again = dev.http.delete(format!("{}/api/v1/backends/{b}", dev.base)).send().await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert!(matches!(again["status"]["phase"].as_str(), Some("terminating" | "terminated")), "{again}");
    let ended = dev.wait_phase(&b, "terminated").await;
    assert_eq!(ended["status"]["reason"], "requested");
    let r = dev.http.get(format!("{}/api/v1/backends/{b}/ready", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 410);
    let text = r.text().await.unwrap();
    assert!(text.contains("was ready and has ended") && text.contains("terminated through the API"), "{text}");
    assert_eq!(names(get("?live=true").await.unwrap().json().await.unwrap()), vec![a.clone()]);
    assert_eq!(names(get("?live=false").await.unwrap().json().await.unwrap()), vec![b.clone()], "ended ones only");
    assert_eq!(names(get("?phase=ready,terminated").await.unwrap().json().await.unwrap()), vec![b.clone(), a.clone()], "either phase");
    assert_eq!(names(get("?phase=terminated").await.unwrap().json().await.unwrap()), vec![b.clone()]);
    assert_eq!(
        names(get("?phase=ready,%20terminated,").await.unwrap().json().await.unwrap()),
        vec![b.clone(), a.clone()],
        "spaces and empty items are ignored"
    );
    let twice: Value = get("?phase=ready&phase=failed").await.unwrap().json().await.unwrap();
    assert!(twice["error"].as_str().unwrap().contains("separated by commas"), "{twice}");
    let twice: Value = get("?owner=a&owner=b").await.unwrap().json().await.unwrap();
    assert_eq!(twice["error"], "owner is given twice: give it once");
    let both: Value = get("?labels=team=data,team=web").await.unwrap().json().await.unwrap();
    assert!(both["error"].as_str().unwrap().contains("team is given twice"), "{both}");
    // An empty filter is refused: `owner=${user}` with no user must not
    // list every owner's backends.
    for empty in ["?owner=", "?key=", "?labels=", "?phase=", "?owner=%20", "?phase=,", "?phase=%20,%20"] {
        let r = get(empty).await.unwrap();
        assert_eq!(r.status(), 400, "{empty}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("is empty: give a value, or leave it out"), "{empty}: {v}");
    }
    let bad = get("?phase=ready,flying").await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert!(bad["error"].as_str().unwrap().contains("unknown phase \"flying\"; one of pending, scheduled"), "{bad}");

    let doc: Value = dev.http.get(format!("{}/api/openapi.json", dev.base)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/backends", "/api/v1/backends/{name}", "/api/v1/backends/{name}/events", "/api/spawn", "/api/backend/{id}/ready"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // Unique, as OpenAPI requires: code generators and links name
            // operations by it (the two ready endpoints shared one).
            let id = op["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_string()), "{method} {path}: operationId {id} is used twice");
            assert!(op["responses"].get("401").is_some(), "{method} {path}: the API token's 401 is not documented");
            assert!(op["responses"]["401"]["headers"].get("WWW-Authenticate").is_some(), "{method} {path}: 401's WWW-Authenticate");
            assert!(op["responses"].get("403").is_some(), "{method} {path}: a browser page's 403 is not documented");
            assert!(op["responses"].get("503").is_some(), "{method} {path}: 503 is not documented");
            assert!(op["responses"].get("405").is_some(), "{method} {path}: 405 is not documented");
            let takes_body = op.get("requestBody").is_some();
            assert_eq!(op["responses"].get("408").is_some(), takes_body, "{method} {path}: 408 for a late body, where there is one");
        }
    }
    assert!(doc["paths"]["/api/v1/backends"]["post"]["responses"].get("408").is_some(), "a create takes a body");
    // Bounds the server checks are in the schemas.
    for schema in ["CreateRequest", "SpawnRequest"] {
        let port = &doc["components"]["schemas"][schema]["properties"]["port"];
        assert_eq!((port["minimum"].as_u64(), port["maximum"].as_u64()), (Some(1), Some(65535)), "{schema}.port: {port}");
        let grace = &doc["components"]["schemas"][schema]["properties"]["gracePeriodSeconds"];
        assert_eq!((grace["minimum"].as_u64(), grace["maximum"].as_u64()), (Some(1), Some(4294967295)), "{schema}: {grace}");
    }
    // Headers clients follow are documented where they are sent.
    for (path, method, status, name) in [
        ("/api/v1/backends", "post", "201", "Location"),
        ("/api/v1/backends/{name}/ready", "get", "202", "Retry-After"),
        ("/api/backend/{id}/ready", "get", "302", "Location"),
    ] {
        assert!(doc["paths"][path][method]["responses"][status]["headers"].get(name).is_some(), "{method} {path} {status}: {name}");
    }
    // What the server refuses, the schemas refuse: empty filters and
    // templates, a null header.
    let list = doc["paths"]["/api/v1/backends"]["get"]["parameters"].as_array().unwrap();
    for p in list.iter().filter(|p| p["name"] != "live") {
        assert_eq!(p["schema"]["minLength"], 1, "{p}");
    }
    for field in ["template", "image"] {
        assert_eq!(doc["components"]["schemas"]["CreateRequest"]["properties"][field]["minLength"], 1, "{field}");
    }
    let events = doc["paths"]["/api/v1/backends/{name}/events"]["get"]["parameters"].as_array().unwrap();
    let last_event_id = events.iter().find(|p| p["name"] == "Last-Event-ID").unwrap();
    assert_eq!(last_event_id["schema"]["type"], "integer", "{last_event_id}");
    let tokens = &doc["paths"]["/api/v1/backends/{name}/tokens"]["post"]["requestBody"];
    assert_ne!(tokens["required"], true, "a token request needs no body: {tokens}");
    // Path parameters are placeholders of their path; the rest are optional
    // query parameters (client generators break otherwise).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => assert!(path.contains(&format!("{{{name}}}")), "{method} {path}: path parameter {name} is not in the path"),
                    "query" => assert_ne!(p["required"], true, "{method} {path}: query parameter {name} should be optional"),
                    "header" => assert!(
                        name == "Last-Event-ID" && (path.ends_with("/stream") || path.ends_with("/events")),
                        "{method} {path}: header {name}"
                    ),
                    other => panic!("{method} {path}: parameter {name} in {other}"),
                }
            }
        }
    }
    let list_params = doc["paths"]["/api/v1/backends"]["get"]["parameters"].as_array().unwrap();
    assert!(list_params.iter().any(|p| p["name"] == "owner" && p["in"] == "query"), "{list_params:?}");
    // Every error answer is described with the body it has.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap().iter().filter(|(s, _)| s.as_str() >= "400") {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }
    let error: Value = dev.http.get(format!("{}/api/v1/backends/nope", dev.base)).send().await.unwrap().json().await.unwrap();
    assert!(error.as_object().is_some_and(|o| o.len() == 1 && o["error"].is_string()), "the body is as described: {error}");
    for stream in ["/api/v1/backends/{name}/events", "/api/backend/{id}/status/stream"] {
        let params = doc["paths"][stream]["get"]["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "Last-Event-ID" && p["in"] == "header"), "{stream}: {params:?}");
    }
    // `image` is the alias of `template`: either may be sent.
    let create = &doc["components"]["schemas"]["CreateRequest"];
    assert!(create["properties"]["image"].is_object() && create["properties"]["template"].is_object(), "{create}");
    assert!(!create["required"].as_array().into_iter().flatten().any(|r| r == "template" || r == "image"), "{create}");
    // The limits the API checks are in the document, as the API checks them.
    let field = |name: &str| &create["properties"][name];
    assert_eq!(field("key")["maxLength"].as_u64(), Some(spawner::backends::MAX_KEY_LEN as u64));
    assert_eq!(field("gracePeriodSeconds")["maximum"].as_u64(), Some(spawner::backends::MAX_GRACE_SECONDS));
    assert_eq!(field("tokenTtlSeconds")["maximum"].as_u64(), Some(spawner::token::MAX_TTL_SECONDS));
}

#[tokio::test(flavor = "multi_thread")]
async fn off_loopback_the_api_requires_its_token() {
    // Refuses to start without a token.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["dev", "--listen", "0.0.0.0:0", "--config", cfg.to_str().unwrap()])
        .env_remove("SPAWNER_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"), "{}", String::from_utf8_lossy(&out.stderr));
    // An empty one (a variable that was not set, passed on) is none.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["dev", "--listen", "0.0.0.0:0", "--config", cfg.to_str().unwrap()])
        .env("SPAWNER_API_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"), "{}", String::from_utf8_lossy(&out.stderr));

    // With one, calls must present it.
    let token = "api-token-0123456789abcdef";
    let dev = Dev::start(FAST, &["--api-token", token]);
    let r = dev.http.get(format!("{}/api/v1/backends", dev.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = dev.http.get(format!("{}/api/v1/backends", dev.base)).bearer_auth("wrong-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = dev.http.get(format!("{}/api/v1/backends", dev.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A backend's capability token in its place is named as such.
    let created: serde_json::Value = dev
        .http
        .post(format!("{}/api/v1/backends", dev.base))
        .bearer_auth(token)
        .json(&json!({"template": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let capability = created["token"].as_str().unwrap();
    let r = dev.http.get(format!("{}/api/v1/backends", dev.base)).bearer_auth(capability).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let error = r.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("the API token is not valid: that is a backend's capability token (st1.…)"), "{error}");
    // The scheme's name is case-insensitive (RFC 7235), as in the proxy.
    let r = dev.http.get(format!("{}/api/v1/backends", dev.base)).header("authorization", format!("bearer {token}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A body is read only once the token is checked: an anonymous caller
    // that announces one and sends less gets its 401 at once.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(dev.base.trim_start_matches("http://")).await.unwrap();
        let head = "POST /api/v1/backends HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{";
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(read.is_ok() && answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    // A server relaying a browser's requests with the API token added
    // (the page's cookie lets them in) does not hand it to the backend,
    // which could otherwise use the whole API.
    let api = |r: reqwest::RequestBuilder| r.bearer_auth(token);
    let (status, created) = dev.create_as(json!({"template":"demo"}), Some(token)).await;
    assert_eq!(status, 201, "{created}");
    let (name, user_token) = (created["backend"]["name"].as_str().unwrap(), created["token"].as_str().unwrap());
    let r = api(dev.http.get(format!("{}/api/v1/backends/{name}/ready?timeout=30", dev.base))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let relayed = api(dev.http.get(format!("{}/p/{name}/headers", dev.base))).header("cookie", format!("spawner-token={user_token}"));
    let seen: Value = relayed.send().await.unwrap().json().await.unwrap();
    assert_eq!(seen["headers"]["authorization"], Value::Null, "{seen}");
    assert_eq!(seen["headers"]["x-spawner-backend"], json!([name]), "let in by the cookie: {seen}");
    // Sent alone to a backend, the API token is refused saying what it is.
    let r = api(dev.http.get(format!("{}/p/{name}/headers", dev.base))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let why = r.text().await.unwrap();
    assert!(why.contains("that is Spawner's API token, which opens the API, not backends"), "{why}");
    assert!(!why.contains(token), "{why}");
    // The OpenAPI document and health stay public.
    assert_eq!(dev.http.get(format!("{}/api/openapi.json", dev.base)).send().await.unwrap().status(), 200);
    assert_eq!(dev.http.get(format!("{}/healthz", dev.base)).send().await.unwrap().status(), 200);
}

/// A caller that announces a body and sends less is answered 408 once the
/// body timeout (the header-read timeout) passes: it held its connection,
/// and its place under `max-connections`, for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_arrives_is_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dev = Dev::start(&format!("{FAST}\n[proxy]\nheader-read-timeout-ms = 1000\n"), &[]);
    let mut stream = tokio::net::TcpStream::connect(dev.base.trim_start_matches("http://")).await.unwrap();
    let head = "POST /api/v1/backends HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer in 20 s: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("the request body did not arrive within 1000 ms"), "{answer}");
    // A body that does arrive is read as before.
    let (status, body) = post_raw(&dev, "/api/v1/backends", r#"{"template":"nope"}"#, true).await;
    assert_eq!(status, 422, "{body}");
}

/// The `port` warning is for a backend started here, and names it: not for
/// a create that found one by its key, nor for one refused (a client
/// retrying at capacity wrote a warning per call); the capacity line
/// itself comes once per period, however many are refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_port_warning_is_for_a_started_backend_and_refusals_are_not_a_flood() {
    let dev = Dev::start(&format!("{FAST}max-backends = 1\n"), &[]);
    let (status, first) = dev.create(json!({"template":"demo","key":"doc-1","port":8080})).await;
    assert_eq!(status, 201, "{first}");
    let name = first["backend"]["name"].as_str().unwrap().to_string();
    // Said to the caller too, who reads the answer, not Spawner's log.
    let warning = "port is for Kubernetes; locally the backend must listen on the port in its PORT variable (port 8080 is not used)";
    assert_eq!(first["warnings"], json!([warning]), "{first}");
    let (status, again) = dev.create(json!({"template":"demo","key":"doc-1","port":8080})).await;
    assert_eq!((status, again["created"].as_bool()), (200, Some(false)), "{again}");
    assert!(again.get("warnings").is_none(), "a backend found by its key was not started now: {again}");
    for _ in 0..5 {
        assert_eq!(dev.create(json!({"template":"demo","port":8080})).await.0, 429);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = dev.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("port is for Kubernetes")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(&name), "{}", warnings[0]);
    assert_eq!(log.matches("create refused for capacity").count(), 1, "{log}");
}

/// The config file is read at start only: an edit is warned about once
/// (plugin files reload by themselves, so silence looked like a mistake in
/// the edit), and an unknown template's error says which file to add it to
/// and to restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_edited_config_file_is_said_to_need_a_restart() {
    let dev = Dev::start(FAST, &[]);
    let file = dev.dir.path().join("spawner.toml");
    let edited = format!("{FAST}[templates.py2]\ncommand = \"python3\"\n");
    std::fs::write(&file, &edited).unwrap();
    let said = "the config file changed; spawner dev reads it at start only: restart it to apply the change";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dev.log_text().contains(said) {
        assert!(std::time::Instant::now() < deadline, "no warning: {}", dev.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = dev.create(json!({"template": "py2"})).await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    let expected = format!("to {}, then restart spawner: templates are read at start", file.display());
    assert!(error.contains(r#"add [templates."py2"] with the command that runs it"#) && error.contains(&expected), "{error}");
    // Written again as it is: nothing new to say. (Shown by the next
    // edit's warning being the second, not the third.)
    std::fs::write(&file, &edited).unwrap();
    std::fs::write(&file, format!("{edited}[templates.py3]\ncommand = \"python3\"\n")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dev.log_text().matches(said).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second warning: {}", dev.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(dev.log_text().matches(said).count(), 2, "{}", dev.log_text());
}

/// A create-or-get whose key a live backend holds returns it as it is; when
/// the request asked for another template, its answer says so (a web app
/// asking for one program must not get another in silence). Another owner
/// joining is what keys are for: nothing to say.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_by_another_template_is_returned_with_a_warning() {
    let dev = Dev::start(&format!("{FAST}[templates.other]\ncommand = \"sleep\"\nargs = [\"60\"]\n"), &[]);
    let (status, first) = dev.create(json!({"template":"demo","key":"shared","owner":"ivy"})).await;
    assert_eq!(status, 201, "{first}");
    let name = first["backend"]["name"].as_str().unwrap().to_string();
    let (status, same) = dev.create(json!({"template":"demo","key":"shared","owner":"ivy"})).await;
    assert_eq!((status, same.get("warnings")), (200, None), "the same request: nothing to say: {same}");
    let (status, other) = dev.create(json!({"template":"other","key":"shared","owner":"jack"})).await;
    assert_eq!((status, other["backend"]["template"].as_str()), (200, Some("demo")), "{other}");
    let warning = format!(
        "key \"shared\" is held by live backend {name}, returned as it is: it runs template \"demo\", not \"other\"; to start one from this request, terminate it first (DELETE /api/v1/backends/{name})"
    );
    assert_eq!(other["warnings"], json!([warning]), "{other}");
    let (_, joining) = dev.create(json!({"template":"demo","key":"shared","owner":"jack"})).await;
    assert!(joining.get("warnings").is_none(), "another user joins: {joining}");
}

/// A mistake in the config file stops Spawner with the line and what is
/// wrong, and without the secrets written there: the error is logged.
#[test]
fn a_config_mistake_is_said_without_the_secrets_on_its_line() {
    let secret = "c2VjcmV0LXZhbHVlLTAxMjM0NTY3ODk=";
    let dir = tempfile::tempdir().unwrap();
    for (file, says) in [
        (format!("apitoken = \"{secret}\"\n"), "unknown field `apitoken`"),
        (format!("api-token = {secret}\n"), "TOML parse error at line 1"),
        (format!("previous-token-secrets = \"{secret}\"\n"), "invalid type: a string, expected a sequence"),
        (format!("public-url = \"https://me:{secret}@example.com\"\n"), "must not hold a user or password"),
        (format!("public-url = \"HTTPS://me:{secret}@example.com\"\n"), "must not hold a user or password"),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, &file).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spawner"))
            .args(["dev", "--listen", "127.0.0.1:0", "--config", cfg.to_str().unwrap()])
            .env("SPAWNER_LOG_FORMAT", "json")
            .env_remove("SPAWNER_API_TOKEN")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: {said}");
        assert!(said.contains(says), "{file}: {said}");
        assert!(!said.contains(&secret[..12]), "{file}: the secret is shown: {said}");
    }
}
