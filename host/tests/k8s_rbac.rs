//! deploy/operator/ and deploy/proxy/ against a real API server: every
//! manifest applies, and the operator and the proxy, each running as the
//! ServiceAccount those manifests bind, can do their whole job (place,
//! create, watch, record, delete; route, sweep, serve the REST API) and
//! nothing more.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::k8s::{deploy, until_status};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use spawner::config::ProxyConfig;
use spawner::k8s::controller::{Context, OperatorConfig};
use spawner::k8s::crd::SessionLivedBackend;
use spawner::k8s::leader::{self, LeaseSettings};
use spawner::k8s::peers::PeerOptions;
use spawner::k8s::plugins::{self as configmap, PluginConfigMap};
use spawner::k8s::serve::{self, ApiOptions, ProxyOptions, Replicas};
use spawner::lifecycle::{Phase, Reason};
use spawner::metrics::Metrics;
use spawner::plugins::{PluginKind, Runtime};
use spawner::token::TokenKey;
use spawner_testenv::shared;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:spawner:spawner-operator";
const PROXY_ACCOUNT: &str = "system:serviceaccount:spawner:spawner-proxy";
const SA_GROUPS: [&str; 3] = ["system:serviceaccounts", "system:serviceaccounts:spawner", "system:authenticated"];
/// The namespace backends run in (SPAWNER_NAMESPACE in the deployments).
const HOME: &str = "spawner-backends";

/// `kubectl apply -f FILE`: server-side apply of every document.
async fn apply_file(client: &kube::Client, path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut applied = Vec::new();
    for doc in text.split("\n---").filter(|d| d.lines().any(|l| l.starts_with("kind:"))) {
        let obj: DynamicObject = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let types = obj.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = obj.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("spawner-test").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{} {name} from {}: {e}", types.kind, path.display()));
        applied.push(format!("{}/{name}", types.kind));
    }
    applied
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_does_its_job_with_the_deployed_rbac_and_no_more() {
    let plane = shared().await;
    plane.install_crds(&deploy("crd")).await.unwrap();
    let admin = plane.client().await.unwrap();
    let rbac = apply_file(&admin, &deploy("operator/01-rbac.yaml")).await;
    assert_eq!(
        rbac,
        [
            "Namespace/spawner",
            "Namespace/spawner-backends",
            "ServiceAccount/spawner-operator",
            "ClusterRole/spawner-operator",
            "ClusterRoleBinding/spawner-operator",
            "Role/spawner-operator",
            "RoleBinding/spawner-operator",
            "Role/spawner-operator",
            "RoleBinding/spawner-operator",
            "Lease/spawner-operator"
        ]
    );
    assert_eq!(
        apply_file(&admin, &deploy("operator/02-deployment.yaml")).await,
        ["Deployment/spawner-operator", "PodDisruptionBudget/spawner-operator"]
    );
    assert_eq!(
        apply_file(&admin, &deploy("proxy/01-rbac.yaml")).await,
        [
            "ServiceAccount/spawner-proxy",
            "Role/spawner-proxy",
            "RoleBinding/spawner-proxy",
            "Role/spawner-proxy",
            "RoleBinding/spawner-proxy",
            "Lease/spawner-proxy-sweeper",
            "ValidatingAdmissionPolicy/spawner-proxy-only-terminates",
            "ValidatingAdmissionPolicyBinding/spawner-proxy-only-terminates"
        ]
    );
    assert_eq!(
        apply_file(&admin, &deploy("proxy/02-deployment.yaml")).await,
        ["Deployment/spawner-proxy", "Service/spawner-proxy", "PodDisruptionBudget/spawner-proxy"]
    );
    // Applies (enforcing it is the network plugin's job; there is none here).
    assert_eq!(
        apply_file(&admin, &deploy("proxy/03-network-policy.yaml")).await,
        ["NetworkPolicy/backends-from-spawner-proxy", "NetworkPolicy/spawner-ingress", "NetworkPolicy/backends-egress"]
    );
    // The Deployments' Pods are admitted in their namespace, which enforces
    // the `restricted` Pod Security Standard (a refused Pod would show only
    // in the ReplicaSet's events).
    let spawner_pods: Api<Pod> = Api::namespaced(admin.clone(), "spawner");
    let mut admitted = Vec::new();
    for _ in 0..300 {
        admitted = spawner_pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|p| p.labels().get("app.kubernetes.io/name").cloned())
            .collect();
        admitted.sort();
        if admitted.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admitted, ["spawner-operator", "spawner-operator", "spawner-proxy", "spawner-proxy"], "two replicas of each run");

    // The plugin ConfigMap both read (the default scheduler, configured).
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "spawner");
    let plugin_map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spawner-plugins"},
        "data": {"scheduler.json": "{\"max-per-owner\": 5}"}
    });
    maps.patch("spawner-plugins", &PatchParams::apply("spawner-test").force(), &Patch::Apply(&plugin_map)).await.unwrap();
    let at = PluginConfigMap { namespace: "spawner".into(), name: "spawner-plugins".into() };

    // The operator, as its ServiceAccount, serving the backends' namespace
    // as deployed.
    let operator = plane.client_as(SERVICE_ACCOUNT, &SA_GROUPS).await.unwrap();
    // The API server's authorizer follows new RoleBindings through its
    // cache: the first request may come before it has them.
    let as_operator: Api<ConfigMap> = Api::namespaced(operator.clone(), "spawner");
    for _ in 0..100 {
        match as_operator.get_opt("spawner-plugins").await {
            Err(kube::Error::Api(e)) if e.code == 403 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => break,
        }
    }
    let runtime = Arc::new(Runtime::new(common::patient(), None).unwrap());
    let (plugins, _watch) =
        configmap::load(operator.clone(), &at, runtime, Arc::new(Metrics::new()), &[PluginKind::Scheduler], "spawner-operator")
            .await
            .expect("the operator reads its plugin ConfigMap as its ServiceAccount");
    // What `spawner operator` checks at start: granted as deployed, and
    // refused without --namespace (its Pods are one namespace's).
    spawner::k8s::controller::check_rights(&operator, Some(HOME)).await.expect("the deployed rights pass the start check");
    let everywhere = spawner::k8s::controller::check_rights(&operator, None).await.unwrap_err();
    assert!(matches!(&everywhere, kube::Error::Api(e) if e.code == 403), "{everywhere}");
    let config = OperatorConfig { namespace: Some(HOME.into()), stop_timeout: Duration::ZERO, ..OperatorConfig::default() };
    let operator_lease = LeaseSettings {
        namespace: "spawner".into(),
        name: "spawner-operator".into(),
        identity: "operator-0".into(),
        duration_seconds: 15,
        grace_seconds: 5,
    };
    let operator_metrics = Arc::new(Metrics::new());
    let elected = tokio::spawn(leader::run_elected(
        Context::new(operator.clone(), plugins.clone(), operator_metrics.clone(), config.clone()),
        operator_lease.clone(),
        std::future::pending(),
    ));

    // Another namespace: the operator may only read backends there.
    let ns = plane.namespace("rbac").await.unwrap();
    let slabs: Api<SessionLivedBackend> = Api::namespaced(admin.clone(), HOME);
    let slab = common::k8s::example_backend_in(HOME);
    let name = slab.metadata.name.clone().unwrap();
    // A Service of its name that another backend controls (as one left by
    // a key's previous backend is): replacing it takes reading and deleting
    // Services, which the Role must allow.
    let mut previous = slab.clone();
    previous.metadata.name = Some("previous".into());
    previous.spec.key = Some("previous".into());
    previous.spec.service = None;
    let previous = slabs.create(&PostParams::default(), &previous).await.unwrap();
    let services = Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), HOME);
    let left_over: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend",
            "name": "previous", "uid": previous.metadata.uid, "controller": true}]},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "previous"}}
    }))
    .unwrap();
    services.create(&PostParams::default(), &left_over).await.unwrap();
    slabs.create(&PostParams::default(), &slab).await.unwrap();
    let ready = |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Ready));
    let ready = tokio::time::timeout(Duration::from_secs(60), await_condition(slabs.clone(), &name, ready)).await;
    assert!(ready.is_ok(), "never ready as the ServiceAccount: {:?}", slabs.get(&name).await.unwrap().status);

    assert!(!elected.is_finished(), "the election runs as the ServiceAccount: {:?}", elected.is_finished());
    let holder =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), "spawner").get("spawner-operator").await.unwrap();
    assert_eq!(holder.spec.unwrap().holder_identity.as_deref(), Some("operator-0"));

    // Its Events were recorded too (the role allows them).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), HOME);
    let mut recorded = false;
    for _ in 0..100 {
        let list = events.list(&Default::default()).await.unwrap();
        if list.items.iter().any(|e| e.reporting_controller.as_deref() == Some("spawner-operator") && e.reason.as_deref() == Some("Ready"))
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorded, "no Ready Event from the operator's ServiceAccount");

    // The Service is created before the Pod, so a ready backend has it:
    // its own, in place of the one left over.
    let uid = slabs.get(&name).await.unwrap().metadata.uid.unwrap();
    let service = services.get_opt(&name).await.unwrap().expect("the example asks for a Service; the operator may create it");
    assert_eq!(service.metadata.owner_references.unwrap()[0].uid, uid, "the backend's own Service");
    slabs.delete("previous", &DeleteParams::default()).await.unwrap();

    slabs.delete(&name, &DeleteParams::default()).await.unwrap();
    let deleted =
        tokio::time::timeout(Duration::from_secs(60), await_condition(slabs.clone(), &name, kube::runtime::conditions::is_deleted(&uid)))
            .await;
    assert!(deleted.is_ok(), "the finalizer was never removed as the ServiceAccount");
    assert!(Api::<Pod>::namespaced(admin.clone(), HOME).get_opt(&name).await.unwrap().is_none());
    // Nothing left behind: the garbage collector follows the Service's
    // owner reference (checking only after the delete raced with it).
    let collected = tokio::time::timeout(Duration::from_secs(60), await_condition(services, &name, |s: Option<&_>| s.is_none())).await;
    assert!(collected.is_ok(), "the Service outlived its backend");
    // Deletes are no failures: a reconcile still on its way when the
    // object went sees it gone, with the rights the operator has.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = operator_metrics.encode();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("spawner_reconcile_errors_total{")).collect();
    assert!(errors.is_empty(), "{errors:?}");

    // And no more than that.
    let forbidden = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
        Ok(_) => panic!("{what} is allowed; the ClusterRole grants too much"),
        Err(e) => panic!("{what}: {e}"),
    };
    forbidden(Api::<Secret>::all(operator.clone()).list(&Default::default()).await.map(|_| ()), "listing Secrets");
    forbidden(Api::<Secret>::namespaced(operator.clone(), HOME).get("any").await.map(|_| ()), "reading a Secret");
    let pod: Pod =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}))
            .unwrap();
    forbidden(
        Api::<Pod>::namespaced(operator.clone(), HOME).patch("x", &PatchParams::default(), &Patch::Merge(&pod)).await.map(|_| ()),
        "patching Pods",
    );
    forbidden(
        Api::<SessionLivedBackend>::namespaced(operator.clone(), HOME).create(&PostParams::default(), &slab).await.map(|_| ()),
        "creating backends",
    );
    // Outside the backends' namespace it changes nothing: no Pods in its
    // own namespace (where the token Secret is) or any other.
    for other in ["spawner", ns.as_str()] {
        let pods = Api::<Pod>::namespaced(operator.clone(), other);
        forbidden(pods.create(&PostParams::default(), &pod).await.map(|_| ()), &format!("creating a Pod in {other}"));
        forbidden(pods.delete("x", &DeleteParams::default()).await.map(|_| ()), &format!("deleting a Pod in {other}"));
        let backends = Api::<SessionLivedBackend>::namespaced(operator.clone(), other);
        forbidden(backends.delete("x", &DeleteParams::default()).await.map(|_| ()), &format!("deleting a backend in {other}"));
    }
    Api::<SessionLivedBackend>::namespaced(operator.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("placement reads every namespace's backends: they share the Nodes");

    // The proxy, as its ServiceAccount, in its namespace: it routes, its
    // sweeper's verdict (an annotation) gets an idle backend terminated,
    // and its REST API creates, terminates and replaces backends.
    let proxy_client = plane.client_as(PROXY_ACCOUNT, &SA_GROUPS).await.unwrap();
    const API_TOKEN: &str = "the-api-token-of-the-rbac-test";
    let proxy = serve::start(
        proxy_client.clone(),
        ProxyOptions {
            namespace: "spawner-backends".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tokens: Arc::new(TokenKey::random()),
            default_grace_seconds: 300,
            sweep_interval: Duration::from_millis(200),
            dry_run: false,
            proxy: ProxyConfig::default(),
            host_domain: None,
            api: Some(ApiOptions {
                api_token: API_TOKEN.into(),
                public_url: "http://proxy.test".into(),
                token_ttl_seconds: 600,
                limits: Default::default(),
            }),
            plugins: Some(at.clone()),
            // Sharing the sweeping: it competes for the sweeper Lease and
            // lists its fellow replicas before each sweep. The selector
            // matches no Pod: the deployed Deployment's kwok Pods match the
            // deployed one but answer nowhere, which would rightly stop
            // every sweep.
            replicas: Some(Replicas {
                peers: PeerOptions {
                    namespace: "spawner".into(),
                    selector: "app.kubernetes.io/name=spawner-proxy-in-this-test".into(),
                    identity: "proxy-0".into(),
                    token: "the-peer-token-of-the-rbac-test".into(),
                    listen: "127.0.0.1:0".parse().unwrap(),
                },
                lease: LeaseSettings {
                    namespace: "spawner".into(),
                    name: "spawner-proxy-sweeper".into(),
                    identity: "proxy-0".into(),
                    duration_seconds: 15,
                    grace_seconds: 5,
                },
            }),
            metrics_listen: None,
            stopping: Default::default(),
            plugin_limits: common::patient(),
        },
    )
    .await
    .expect("the proxy starts as its ServiceAccount, reading its plugin ConfigMap");
    let home: Api<SessionLivedBackend> = Api::namespaced(admin.clone(), HOME);
    let mut idle = slab.clone();
    idle.spec.grace_period_seconds = Some(1);
    home.create(&PostParams::default(), &idle).await.unwrap();
    let terminated = |o: Option<&SessionLivedBackend>| {
        o.and_then(|o| o.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Terminated) && s.reason == Some(Reason::Idle))
    };
    let swept = tokio::time::timeout(Duration::from_secs(60), await_condition(home.clone(), &name, terminated)).await;
    assert!(swept.is_ok(), "never swept as the proxy's ServiceAccount: {:?}", home.get(&name).await.unwrap().status);
    // The backends' namespace holds Pods to the `restricted` standard: a
    // backend asking for a privileged container fails, and says why.
    let mut privileged = slab.clone();
    privileged.metadata.name = Some("privileged".into());
    privileged.spec.template.containers[0].security_context =
        Some(serde_json::from_value(serde_json::json!({"privileged": true})).unwrap());
    home.create(&PostParams::default(), &privileged).await.unwrap();
    let failed = |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Failed));
    let refused = tokio::time::timeout(Duration::from_secs(60), await_condition(home.clone(), "privileged", failed)).await;
    let message = home.get("privileged").await.unwrap().status.and_then(|s| s.message).unwrap_or_default();
    assert!(refused.is_ok() && message.contains("PodSecurity"), "a privileged backend was not refused: {message}");

    let routed = format!("http://{}/p/{name}/", proxy.addr);
    // (Until its cache catches up: ready at kwok's address, or terminating.)
    until_status("the proxy sees it: an ended backend is gone", 410, &[502, 503], async || reqwest::get(&routed).await.unwrap()).await;

    // The REST API: create with a key, terminate, create again with that
    // key (which deletes the ended object), and read logs (the Pod's; kwok
    // serves none, but the answer must not be a permission error).
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: &str| http.request(method, format!("http://{}{path}", proxy.addr)).bearer_auth(API_TOKEN);
    let create = serde_json::json!({"template": "example.invalid/notes:1", "key": "rbac-doc"});
    let first: serde_json::Value = api(reqwest::Method::POST, "/api/v1/backends").json(&create).send().await.unwrap().json().await.unwrap();
    let keyed = first["backend"]["name"].as_str().unwrap_or_else(|| panic!("create as the proxy: {first}")).to_string();
    let logs = api(reqwest::Method::GET, &format!("/api/v1/backends/{keyed}/logs")).send().await.unwrap().text().await.unwrap();
    assert!(!logs.contains("Role") && !logs.contains("forbidden"), "reading logs as the proxy: {logs}");
    assert_eq!(api(reqwest::Method::DELETE, &format!("/api/v1/backends/{keyed}")).send().await.unwrap().status(), 202);
    let ended = |o: Option<&SessionLivedBackend>| o.and_then(|o| o.status.as_ref()).is_some_and(|s| s.phase == Some(Phase::Terminated));
    let stopped = tokio::time::timeout(Duration::from_secs(60), await_condition(home.clone(), &keyed, ended)).await;
    assert!(stopped.is_ok(), "terminate through the API as the proxy: {:?}", home.get(&keyed).await.unwrap().status);
    // (503 while the ended object takes longer to go than the API waits.)
    until_status("replacing the ended object as the proxy", 201, &[503], async || {
        api(reqwest::Method::POST, "/api/v1/backends").json(&create).send().await.unwrap()
    })
    .await;

    // Refused plugins in the ConfigMap (the proxy's idle plugin, the
    // operator's scheduler): each may record why on it.
    let wrong = base64::engine::general_purpose::STANDARD.encode(std::fs::read(spawner_test_plugins::FIXTURE_WRONG_WORLD).unwrap());
    let mut broken = plugin_map.clone();
    broken["binaryData"] = serde_json::json!({"idle.wasm": wrong, "scheduler.wasm": wrong});
    maps.patch("spawner-plugins", &PatchParams::apply("spawner-test").force(), &Patch::Apply(&broken)).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "spawner");
    let mut rejected_by = Vec::new();
    for _ in 0..300 {
        let list = events.list(&Default::default()).await.unwrap();
        rejected_by = ["spawner-proxy", "spawner-operator"]
            .into_iter()
            .filter(|who| {
                list.items.iter().any(|e| e.reporting_controller.as_deref() == Some(*who) && e.reason.as_deref() == Some("PluginRejected"))
            })
            .collect();
        if rejected_by.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rejected_by, ["spawner-proxy", "spawner-operator"], "a PluginRejected Event from each ServiceAccount");
    proxy.stop().await;

    let as_proxy = |ns: &str| Api::<SessionLivedBackend>::namespaced(proxy_client.clone(), ns);
    forbidden(
        Api::<ConfigMap>::namespaced(proxy_client.clone(), "spawner").get("another").await.map(|_| ()),
        "the proxy reading another ConfigMap",
    );
    let leases = |c: &kube::Client| Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.clone(), "spawner");
    let hijack = serde_json::json!({"spec": {"holderIdentity": "intruder"}});
    forbidden(
        leases(&proxy_client).patch("spawner-operator", &PatchParams::default(), &Patch::Merge(&hijack)).await.map(|_| ()),
        "the proxy taking the operator's Lease",
    );
    let lease: k8s_openapi::api::coordination::v1::Lease =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "pre-empted"}})).unwrap();
    forbidden(leases(&proxy_client).create(&PostParams::default(), &lease).await.map(|_| ()), "the proxy creating Leases");
    forbidden(
        Api::<ConfigMap>::namespaced(operator.clone(), "spawner").list(&Default::default()).await.map(|_| ()),
        "the operator listing ConfigMaps",
    );
    forbidden(
        Api::<Secret>::namespaced(proxy_client.clone(), "spawner-backends").list(&Default::default()).await.map(|_| ()),
        "the proxy listing Secrets",
    );
    let stranger: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stranger"}, "spec": {"containers": [{"name": "x", "image": "example.invalid/x:1"}]}
    }))
    .unwrap();
    forbidden(
        Api::<Pod>::namespaced(proxy_client.clone(), "spawner-backends").create(&PostParams::default(), &stranger).await.map(|_| ()),
        "the proxy creating Pods",
    );
    forbidden(
        Api::<Pod>::namespaced(proxy_client.clone(), "spawner-backends")
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({})))
            .await
            .map(|_| ()),
        "the proxy writing a Pod's status",
    );
    forbidden(as_proxy(&ns).list(&Default::default()).await.map(|_| ()), "the proxy reading another namespace");
    forbidden(
        Api::<Pod>::namespaced(proxy_client.clone(), "spawner-backends").delete(&name, &DeleteParams::default()).await.map(|_| ()),
        "the proxy deleting Pods",
    );
    forbidden(
        as_proxy("spawner-backends").patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({}))).await.map(|_| ()),
        "the proxy writing status",
    );

    // Its `patch` on backends asks for terminations, and does nothing else
    // (the ValidatingAdmissionPolicy beside its Role; the API server takes
    // a moment to load a new policy).
    let patch = |value: serde_json::Value| {
        let backends = as_proxy(HOME);
        let name = name.clone();
        async move { backends.patch(&name, &PatchParams::default(), &Patch::Merge(&value)).await.map(|_| ()) }
    };
    let mut longer = 1000;
    let mut changed_spec = Ok(());
    for _ in 0..100 {
        longer += 1;
        changed_spec = patch(serde_json::json!({"spec": {"gracePeriodSeconds": longer}})).await;
        if changed_spec.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    forbidden(changed_spec, "the proxy changing a backend's spec");
    forbidden(patch(serde_json::json!({"metadata": {"finalizers": null}})).await, "the proxy removing the operator's finalizer");
    forbidden(patch(serde_json::json!({"metadata": {"labels": {"team": "x"}}})).await, "the proxy labelling a backend");
    forbidden(patch(serde_json::json!({"metadata": {"annotations": {"other": "x"}}})).await, "the proxy setting another annotation");
    // The sweeper's request as it sends it: the annotation, and the uid
    // of the object judged.
    let mut asked = spawner::k8s::cluster::termination_patch(&spawner::lifecycle::TerminationRequest {
        reason: Reason::Requested,
        message: "test".into(),
    });
    asked["metadata"]["uid"] = serde_json::json!(slabs.get(&name).await.unwrap().metadata.uid);
    patch(asked).await.expect("the proxy asks for a termination");

    // The backends' namespace can be deleted with backends in it (`kubectl
    // delete ns`, a GitOps prune): its RoleBindings go at once, the
    // operator's with them, while each backend's finalizer still holds the
    // namespace. Here: the keyed backend recreated above, the failed one,
    // the swept one.
    // Whether the operator acts before or after the namespace's deletion
    // takes its RoleBinding is a race; here it is after, every time: it is
    // stopped, and started again once the binding is gone.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    assert!(!slabs.list(&Default::default()).await.unwrap().items.is_empty(), "backends are left to be deleted with the namespace");
    elected.abort();
    let _ = elected.await;
    namespaces.delete(HOME, &DeleteParams::default()).await.unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(admin.clone(), HOME);
    for _ in 0..100 {
        if bindings.get_opt("spawner-operator").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bindings.get_opt("spawner-operator").await.unwrap().is_none(), "the namespace's deletion takes the operator's RoleBinding");
    assert!(!slabs.list(&Default::default()).await.unwrap().items.is_empty(), "the backends' finalizers hold the namespace");
    let _restarted = tokio::spawn(leader::run_elected(
        Context::new(operator.clone(), plugins, Arc::new(Metrics::new()), config),
        operator_lease,
        std::future::pending(),
    ));
    let gone =
        tokio::time::timeout(Duration::from_secs(120), await_condition(namespaces.clone(), HOME, |n: Option<&Namespace>| n.is_none()))
            .await;
    let left = match slabs.list(&Default::default()).await {
        Ok(l) => l.items.iter().map(|s| format!("{} {:?}", s.name_any(), s.finalizers())).collect::<Vec<_>>(),
        Err(e) => vec![e.to_string()],
    };
    assert!(gone.is_ok(), "the namespace stayed Terminating, held by: {left:?}");
}
