//! A real Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager (garbage collection, namespaces), kube-scheduler
//! and kwok (a fake kubelet that moves Pods through their phases on fake
//! Nodes), built from their Go modules by `deploy/testenv/build.sh`.
//!
//! - [`ControlPlane::start`] generates a CA, serving and client
//!   certificates, a service-account key and an admin kubeconfig in a
//!   temporary directory, starts every component on free loopback ports and
//!   waits for `/readyz`;
//! - [`shared`] gives every test of a test binary one control plane, and
//!   [`ControlPlane::namespace`] gives each test its own namespace (a
//!   namespace costs milliseconds, a control plane seconds);
//! - [`ControlPlane::client`] is an admin client, [`ControlPlane::client_as`]
//!   one with a chosen user and groups (for RBAC tests);
//! - [`ControlPlane::add_node`] adds a kwok-managed Node shaped by the test;
//! - [`ControlPlane::stop_api_server`] and [`ControlPlane::start_api_server`]
//!   take the API server away and bring it back, as a control-plane upgrade
//!   does, to show that clients ride it out;
//! - [`ControlPlane::apply_yaml_dir`]-style CRD installation:
//!   [`ControlPlane::install_crds`].
//!
//! Cleanup does not depend on the test finishing well: a small reaper
//! process holds the other end of a pipe from the test process; when the
//! test process exits for any reason (success, panic, abort, SIGKILL), the
//! pipe closes and the reaper kills every component's process group and
//! removes the temporary directory. Dropping an owned [`ControlPlane`] does
//! the same at once.

mod components;
mod node;
mod pki;

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{CertificateParams, KeyPair};

use components::Component;
pub use node::FakeNode;

/// Annotation that makes kwok manage a Node.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// How long components may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Directories of the control planes running in this process: where
/// [`logs_of_running`] reads their components' logs.
static RUNNING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The last `lines` lines of `component`'s log (`kwok`, `kube-scheduler`,
/// ...) in every control plane running in this process, for a test's
/// failure message: a wait that timed out on something kwok or the
/// scheduler should have done says what they logged.
pub fn logs_of_running(component: &str, lines: usize) -> String {
    let dirs = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).clone();
    dirs.iter()
        .map(|dir| format!("--- {component} log of {} (last {lines} lines):\n{}", dir.display(), tail(&log_in(dir, component), lines)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running control plane.
pub struct ControlPlane {
    dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Admin kubeconfig (JSON, which kubectl and kube-rs read as YAML).
    pub kubeconfig: PathBuf,
    ca: (CertificateParams, String),
    ca_key_pem: String,
    children: Mutex<Vec<Component>>,
    reaper: Mutex<Option<(Child, ChildStdin)>>,
    /// The API server's port while it is stopped (bound, not listening:
    /// clients are refused, and no other socket can take the port).
    api_port_held: Mutex<Option<socket2::Socket>>,
    /// Time from start to a ready API server.
    pub started_in: Duration,
}

/// The directory holding the binaries: `$SPAWNER_TESTENV_BIN`, or what
/// `deploy/testenv/build.sh` prints (it builds on first use, then hits its
/// cache).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("SPAWNER_TESTENV_BIN") {
            return Ok(PathBuf::from(d));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({}); its output above says which step", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().map(|l| PathBuf::from(l.trim())).ok_or_else(|| "build.sh printed nothing".into())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// One control plane for the whole test binary, started on first use.
/// Tests isolate themselves with [`ControlPlane::namespace`].
pub async fn shared() -> &'static ControlPlane {
    static PLANE: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
    // Each #[tokio::test] has its own runtime; start on a dedicated thread so
    // nothing of the plane is tied to the first test's runtime.
    PLANE
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(ControlPlane::start(&[
                    FakeNode::new("node-a").label("zone", "a"),
                    FakeNode::new("node-b").label("zone", "b"),
                ]))
            })
            .await
            .expect("start thread")
            .expect("control plane starts")
        })
        .await
}

/// `N` distinct free ports: each listener is held until all are bound, so
/// the kernel cannot hand out one port twice.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    /// and kwok, and adds `nodes`.
    pub async fn start(nodes: &[FakeNode]) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let bin = bin_dir()?;
        let tmp = tempfile::Builder::new().prefix("spawner-testenv-").tempdir()?;
        let dir = tmp.keep();

        // The reaper first, so that anything started later is cleaned up
        // even if this function fails half-way.
        let mut reaper = Command::new("sh")
            .arg("-c")
            .arg(r#"dir="$1"; groups=""; while read -r pid; do groups="$groups -$pid"; done; [ -n "$groups" ] && kill -KILL $groups 2>/dev/null; rm -rf -- "$dir""#)
            .arg("spawner-testenv-reaper")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the reaper")?;
        let stdin = reaper.stdin.take().expect("piped");

        let (ca_params, ca_key, ca_pem) = pki::ca()?;
        let [etcd_client, etcd_peer, api_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let mut plane = ControlPlane {
            dir: dir.clone(),
            server: server.clone(),
            kubeconfig: dir.join("admin.kubeconfig"),
            ca: (ca_params, ca_pem),
            ca_key_pem: ca_key.serialize_pem(),
            children: Mutex::new(Vec::new()),
            reaper: Mutex::new(Some((reaper, stdin))),
            api_port_held: Mutex::new(None),
            started_in: Duration::ZERO,
        };
        // Its `stop` (on drop too, should this function fail) takes it out.
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());

        // Certificates and keys.
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        write(&pki.join("ca.crt"), &plane.ca.1)?;
        let (serving_cert, serving_key) = plane.sign("kube-apiserver", &[], true)?;
        write(&pki.join("apiserver.crt"), &serving_cert)?;
        write(&pki.join("apiserver.key"), &serving_key)?;
        let sa = KeyPair::generate()?;
        write(&pki.join("sa.key"), &sa.serialize_pem())?;
        write(&pki.join("sa.pub"), &sa.public_key_pem())?;
        let admin = plane.kubeconfig_for(pki::ADMIN, &[pki::ADMIN_GROUP])?;
        write(&plane.kubeconfig, &admin)?;

        // etcd.
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        plane.spawn(
            &bin.join("etcd"),
            &[
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{etcd_peer}"),
                // Tests do not need durability; fsync dominates on busy disks.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            "etcd",
        )?;

        // kube-apiserver.
        let p = |f: &str| pki.join(f).display().to_string();
        plane.spawn(
            &bin.join("kube-apiserver"),
            &[
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
                "--cert-dir",
                &dir.join("apiserver-certs").display().to_string(),
                "--tls-cert-file",
                &p("apiserver.crt"),
                "--tls-private-key-file",
                &p("apiserver.key"),
                "--client-ca-file",
                &p("ca.crt"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                &p("sa.pub"),
                "--service-account-signing-key-file",
                &p("sa.key"),
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--authorization-mode",
                "RBAC",
                "--allow-privileged=true",
                // No node lifecycle controller runs (kwok nodes send no
                // heartbeats), so nothing would lift the not-ready taint this
                // plugin adds to new Nodes.
                "--disable-admission-plugins",
                "ServiceAccount,TaintNodesByCondition",
                "--profiling=false",
                "-v",
                "1",
            ],
            "kube-apiserver",
        )?;
        plane.wait_ready().await.context("waiting for kube-apiserver /readyz")?;

        let kc = plane.kubeconfig.display().to_string();
        plane.spawn(
            &bin.join("kube-controller-manager"),
            &[
                "--kubeconfig",
                &kc,
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "0",
                "--service-account-private-key-file",
                &p("sa.key"),
                "--root-ca-file",
                &p("ca.crt"),
                "--use-service-account-credentials=false",
                // No cloud, no node IPAM: kwok nodes need neither.
                "--controllers",
                "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "-v",
                "1",
            ],
            "kube-controller-manager",
        )?;
        plane.spawn(
            &bin.join("kube-scheduler"),
            &["--kubeconfig", &kc, "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "0", "-v", "1"],
            "kube-scheduler",
        )?;
        let stages = bin.parent().map(|d| d.join("stages")).context("bin dir has a parent")?;
        let mut stage_files: Vec<String> = std::fs::read_dir(&stages)
            .with_context(|| format!("kwok stages in {} (run deploy/testenv/build.sh)", stages.display()))?
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        stage_files.sort();
        let stage_list = stage_files.join(",");
        plane.spawn(
            &bin.join("kwok"),
            &[
                "--config",
                &stage_list,
                "--kubeconfig",
                &kc,
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector",
                &format!("{KWOK_NODE_ANNOTATION}=fake"),
                // No --server-address: kwok's metrics and debug server is
                // of no use here, and the port picked for it was free only
                // until kwok bound it, long after; had another process
                // taken it by then, kwok exited, and Pods bound to its
                // Nodes never ran (a suspect for a CI failure, 2026-12-02).
            ],
            "kwok",
        )?;

        for n in nodes {
            plane.add_node(n).await?;
        }
        plane.started_in = started.elapsed();
        Ok(plane)
    }

    /// The log file of a component (`etcd`, `kube-apiserver`, ...).
    pub fn log(&self, component: &str) -> String {
        log_in(&self.dir, component)
    }

    /// The temporary directory (removed at the end).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client().await?;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("kube-apiserver not ready after {START_TIMEOUT:?}; its log:\n{}", tail(&self.log("kube-apiserver"), 40))
                }
                _ => {
                    if let Some(status) = self.exited() {
                        bail!("{status}; logs:\n{}\n{}", tail(&self.log("etcd"), 20), tail(&self.log("kube-apiserver"), 40));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// An admin client (group `system:masters`).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        self.client_from(&std::fs::read_to_string(&self.kubeconfig)?).await
    }

    /// A client authenticated as `user` in `groups` (a client certificate
    /// signed by the cluster CA), for RBAC tests.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        self.client_from(&self.kubeconfig_for(user, groups)?).await
    }

    async fn client_from(&self, kubeconfig: &str) -> anyhow::Result<kube::Client> {
        let kc: Kubeconfig = serde_json::from_str(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates a namespace `{prefix}-{random}` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let suffix: String = (0..6).map(|_| (b'a' + rand::random_range(0..26u8)) as char).collect();
        let name = format!("{prefix}-{suffix}");
        let ns = Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(self.client().await?).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Applies every CustomResourceDefinition in the YAML files of `dir`
    /// (server-side apply) and waits until each is Established.
    pub async fn install_crds(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::api::{Patch, PatchParams};
        let api = Api::<CustomResourceDefinition>::all(self.client().await?);
        let mut names = Vec::new();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            for doc in text.split("\n---").filter(|d| d.contains("kind: CustomResourceDefinition")) {
                let crd: CustomResourceDefinition =
                    yaml_to_json(doc).and_then(|v| Ok(serde_json::from_value(v)?)).with_context(|| format!("parsing {}", f.display()))?;
                let name = crd.metadata.name.clone().context("CRD without a name")?;
                api.patch(&name, &PatchParams::apply("spawner-testenv").force(), &Patch::Apply(&crd)).await?;
                names.push(name);
            }
        }
        for name in &names {
            let cond = kube::runtime::conditions::is_crd_established();
            tokio::time::timeout(Duration::from_secs(30), kube::runtime::wait::await_condition(api.clone(), name, cond))
                .await
                .with_context(|| format!("CRD {name} not established"))??;
        }
        Ok(names)
    }

    /// Kills every component and removes the directory now.
    pub fn stop(&self) {
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d != &self.dir);
        if let Some((mut reaper, stdin)) = self.reaper.lock().expect("reaper lock").take() {
            drop(stdin);
            let _ = reaper.wait();
        }
        self.wait_for_components();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The log of `component` in a control plane's directory `dir` (empty if
/// there is none yet).
fn log_in(dir: &Path, component: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{component}.log"))).unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn yaml_to_json(doc: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_saphyr::from_str(doc)?)
}
