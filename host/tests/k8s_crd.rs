//! The `SessionLivedBackend` CRD against a real kube-apiserver (built by
//! deploy/testenv): the generated YAML installs, the original Spawner's
//! manifest shape applies, the server refuses bad specs with a reason,
//! status is a subresource, and `kubectl get slab` shows the printer
//! columns with what the status says. Also: deploy/Dockerfile agrees with
//! the toolchain, the binaries and the manifests (no container engine here
//! to build it).

mod common;

use common::k8s::deploy;
use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use spawner::k8s::crd::{SessionLivedBackend, SessionLivedBackendStatus};
use spawner::lifecycle::{Phase, Status};
use spawner_testenv::shared;

async fn installed() -> (&'static spawner_testenv::ControlPlane, kube::Client) {
    let plane = shared().await;
    let names = plane.install_crds(&deploy("crd")).await.expect("the generated CRD installs and is established");
    assert_eq!(names, ["sessionlivedbackends.spawner.dev"]);
    (plane, plane.client().await.unwrap())
}

/// deploy/examples/notes.yaml, and the backends of a fresh namespace
/// (named after `prefix`) to create it in.
async fn example_in(prefix: &str) -> (SessionLivedBackend, Api<SessionLivedBackend>) {
    let (plane, client) = installed().await;
    let ns = plane.namespace(prefix).await.unwrap();
    (common::k8s::example_backend_in(&ns), Api::namespaced(client, &ns))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_manifest_applies_and_reads_back_typed() {
    let (slab, api) = example_in("crd-example").await;
    let created = api.create(&PostParams::default(), &slab).await.unwrap();
    assert_eq!(created.spec, slab.spec, "the server keeps every field (no pruning)");
    assert_eq!(created.spec.http_port(), 3000);
    assert_eq!(created.plugin_labels()["team"], "docs");
    assert!(created.status.is_none(), "status is the operator's to write");
}

/// What the sweeper relies on to end only the backend it judged: a merge
/// patch carrying `metadata.uid` is refused (422, naming the field) by an
/// object of the same name with another uid (a key's next backend).
#[tokio::test(flavor = "multi_thread")]
async fn a_termination_patch_with_another_uid_is_refused() {
    let (slab, api) = example_in("crd-uid").await;
    let created = api.create(&PostParams::default(), &slab).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    let request = spawner::lifecycle::TerminationRequest { reason: spawner::lifecycle::Reason::Idle, message: "idle".into() };
    let mut patch = spawner::k8s::cluster::termination_patch(&request);
    patch["metadata"]["uid"] = serde_json::json!("00000000-0000-0000-0000-000000000000");
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(e)) => assert!(e.code == 422 && e.message.contains("metadata.uid"), "{e:?}"),
        other => panic!("a patch for another uid was not refused: {other:?}"),
    }
    assert!(spawner::k8s::cluster::termination_requested(&api.get(&name).await.unwrap()).is_none(), "and changed nothing");
    patch["metadata"]["uid"] = serde_json::json!(created.metadata.uid);
    let patched = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(spawner::k8s::cluster::termination_requested(&patched), Some(request));
}

/// What makes a backend what it is cannot be edited on a live one (the
/// proxy routes by `httpPort`, the Pod was probed there and made from the
/// template), and the refusal says why; its grace period and lifetime may
/// change, and labels and annotations are not the spec's.
#[tokio::test(flavor = "multi_thread")]
async fn a_backends_identity_cannot_change_but_its_limits_may() {
    let (slab, api) = example_in("crd-immutable").await;
    let created = api.create(&PostParams::default(), &slab).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    let refused = [
        ("httpPort", serde_json::json!({"spec": {"httpPort": 9999}})),
        ("key", serde_json::json!({"spec": {"key": "doc-43"}})),
        ("key", serde_json::json!({"spec": {"key": null}})),
        ("owner", serde_json::json!({"spec": {"owner": "mallory"}})),
        ("service", serde_json::json!({"spec": {"service": false}})),
        ("template", serde_json::json!({"spec": {"template": {"containers": [{"name": "app", "image": "example.invalid/other:1"}]}}})),
    ];
    for (field, patch) in refused {
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {e:?}");
                assert!(e.message.contains(&format!("{field} cannot change")), "{field}: {}", e.message);
            }
            other => panic!("{field} changed on a live backend: {other:?}"),
        }
    }
    assert_eq!(api.get(&name).await.unwrap().spec, created.spec, "nothing changed");
    // With a Service, the name must be a Service's too: refused at once.
    let mut dotted = slab.clone();
    dotted.metadata.name = Some("doc-42.notes".into());
    match api.create(&PostParams::default(), &dotted).await {
        Err(kube::Error::Api(e)) => assert!(e.code == 422 && e.message.contains("needs a name that is also a Service name"), "{e:?}"),
        other => panic!("a backend whose Service could not exist was accepted: {other:?}"),
    }
    dotted.spec.service = Some(false);
    api.create(&PostParams::default(), &dotted).await.expect("without a Service, any object name");
    let patch =
        serde_json::json!({"spec": {"gracePeriodSeconds": 900, "lifetimeLimitSeconds": 7200}, "metadata": {"labels": {"tier": "b"}}});
    let patched = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!((patched.spec.grace_period_seconds, patched.spec.lifetime_limit_seconds), (Some(900), Some(7200)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_bad_specs_and_says_which_field() {
    let (plane, client) = installed().await;
    let ns = plane.namespace("crd-invalid").await.unwrap();
    let resource = ApiResource::erase::<SessionLivedBackend>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let container = serde_json::json!([{"name": "app", "image": "example.invalid/app:1"}]);
    let cases = [
        ("httpPort", serde_json::json!({"template": {"containers": container}, "httpPort": 0})),
        ("httpPort", serde_json::json!({"template": {"containers": container}, "httpPort": 70000})),
        ("gracePeriodSeconds", serde_json::json!({"template": {"containers": container}, "gracePeriodSeconds": -1})),
        // As the REST API refuses it, in both modes.
        ("gracePeriodSeconds", serde_json::json!({"template": {"containers": container}, "gracePeriodSeconds": 0})),
        ("containers", serde_json::json!({"template": {"containers": []}})),
        ("key", serde_json::json!({"template": {"containers": container}, "key": ""})),
        // As the REST API refuses them.
        ("key", serde_json::json!({"template": {"containers": container}, "key": "doc 7"})),
        ("key", serde_json::json!({"template": {"containers": container}, "key": "doc\u{a0}7"})),
        ("owner", serde_json::json!({"template": {"containers": container}, "owner": "alice\r\nx-evil: 1"})),
        ("owner", serde_json::json!({"template": {"containers": container}, "owner": ""})),
        ("lifetimeLimitSeconds", serde_json::json!({"template": {"containers": container}, "lifetimeLimitSeconds": 0})),
        ("template", serde_json::json!({"httpPort": 8080})),
        // Beyond the field's type: stored, it would stop every typed watch
        // of backends (the list fails whole), so it is refused.
        ("gracePeriodSeconds", serde_json::json!({"template": {"containers": container}, "gracePeriodSeconds": 5_000_000_000u64})),
        (
            "containerPort",
            serde_json::json!({"template": {"containers": [{"name": "app", "image": "example.invalid/app:1", "ports": [{"containerPort": 3_000_000_000u64}]}]}}),
        ),
    ];
    for (i, (field, spec)) in cases.into_iter().enumerate() {
        let mut obj = DynamicObject::new(&format!("bad-{i}"), &resource);
        obj.data = serde_json::json!({ "spec": spec });
        let err = api.create(&PostParams::default(), &obj).await.expect_err(&format!("case {i} ({field}) must be refused"));
        let kube::Error::Api(status) = err else { panic!("case {i}: not an API error: {err}") };
        assert_eq!(status.code, 422, "case {i}: {status:?}");
        assert!(status.message.contains(field), "case {i}: the message names {field}: {}", status.message);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_slab_shows_the_status_columns() {
    let (plane, client) = installed().await;
    let ns = plane.namespace("crd-table").await.unwrap();

    // `kubectl get slab` finds the resource by its short name.
    // Discovery follows an established CRD within moments, not at once.
    let mut resources = None;
    for _ in 0..300 {
        match client.list_api_group_resources("spawner.dev/v1").await {
            Ok(r) => {
                resources = Some(r);
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => panic!("discovery: {e}"),
        }
    }
    let resources = resources.expect("spawner.dev/v1 never appeared in discovery");
    let r = resources.resources.iter().find(|r| r.name == "sessionlivedbackends").unwrap();
    assert_eq!(r.short_names.as_deref(), Some(&["slab".to_string()][..]));

    let slab = common::k8s::example_backend_in(&ns);
    let api: Api<SessionLivedBackend> = Api::namespaced(client.clone(), &ns);
    let created = api.create(&PostParams::default(), &slab).await.unwrap();

    // Status goes through the status subresource; a spec sent with it is ignored.
    let now = Timestamp::now();
    let mut status = Status::new(now);
    status.phase = Phase::Ready;
    status.node = Some("node-a".into());
    status.ready_at = Some(now);
    let mut object_status = SessionLivedBackendStatus { url: Some("https://spawner.example/p/notes-doc-42/".into()), ..Default::default() };
    object_status.record(&status, created.metadata.generation, now);
    let patch = serde_json::json!({ "status": object_status, "spec": { "httpPort": 9999 } });
    let name = created.metadata.name.clone().unwrap();
    let patched = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(patched.spec.http_port(), 3000, "the status subresource does not change the spec");
    assert_eq!(patched.status.as_ref().and_then(SessionLivedBackendStatus::lifecycle), Some(status));

    // What kubectl asks for: a Table.
    let request = http::Request::get(format!("/apis/spawner.dev/v1/namespaces/{ns}/sessionlivedbackends"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
    let table: serde_json::Value = serde_json::from_str(&client.request_text(request).await.unwrap()).unwrap();
    let columns: Vec<&str> = table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Phase", "Ready", "Reason", "Waiting", "Node", "Owner", "Key", "URL", "Age"]);
    let cells = table["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(
        cells[..9],
        [
            serde_json::json!("notes-doc-42"),
            serde_json::json!("ready"),
            serde_json::json!("True"),
            serde_json::Value::Null,
            serde_json::json!("Ready"),
            serde_json::json!("node-a"),
            serde_json::json!("alice"),
            serde_json::json!("doc-42"),
            serde_json::json!("https://spawner.example/p/notes-doc-42/"),
        ]
    );
}

/// deploy/Dockerfile cannot be built here (no container engine), so what
/// can drift is checked: the builder's Rust is the pinned toolchain, the
/// binaries it copies are the ones cargo builds, its user is the one the
/// manifests run as, and the build context leaves out `target/`.
#[test]
fn the_image_recipe_agrees_with_the_toolchain_the_binaries_and_the_manifests() {
    let root = deploy("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let dockerfile = read("deploy/Dockerfile");
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain.lines().find_map(|l| l.strip_prefix("channel = ")).unwrap().trim_matches('"');
    let minor = channel.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(dockerfile.contains(&format!("rust:{minor}-")), "the builder image is Rust {minor} (rust-toolchain.toml)");

    let manifest = read("host/Cargo.toml");
    for bin in ["spawner", "spawner-demo-backend"] {
        assert!(manifest.contains(&format!("name = \"{bin}\"")), "{bin} is a binary of host/");
        assert!(dockerfile.contains(&format!("target/release/{bin}")), "the image has {bin}");
    }

    let users: Vec<&str> = dockerfile.lines().filter_map(|l| l.strip_prefix("USER ")).collect();
    assert_eq!(users.len(), 2, "both images name their user");
    for file in ["deploy/operator/02-deployment.yaml", "deploy/proxy/02-deployment.yaml"] {
        let text = read(file);
        let run_as = text.lines().find_map(|l| l.trim().strip_prefix("runAsUser: ")).unwrap();
        assert!(users.iter().all(|u| u.split(':').next() == Some(run_as)), "{file} runs as {run_as}, the images as {users:?}");
        assert!(text.contains("image: SPAWNER_IMAGE"), "{file}");
    }
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target"), "the build context leaves out target/");
}
