//! A control plane to try Spawner's Kubernetes mode by hand, without a
//! cluster: the tests' etcd, kube-apiserver, controller-manager, scheduler
//! and kwok, with two fake Nodes, until Ctrl-C.
//!
//! ```sh
//! cargo run -p spawner-testenv --example control-plane
//! ```
//!
//! It prints an admin kubeconfig, and one for each of deploy/'s service
//! accounts (`spawner-operator`, `spawner-proxy` in namespace `spawner`), so
//! that `spawner operator` and `spawner proxy` can be run on this machine
//! with the rights the manifests give them and no more (each holds the
//! admin's certificate, impersonating the account: fine for a throwaway
//! cluster, never a way to hand out rights). kwok's Pods run
//! nothing: a backend's Pod becomes Running and Ready, but nothing answers
//! at its IP. Ctrl-C (or SIGTERM) stops every component and removes the
//! directory, kubeconfigs included.

use spawner_testenv::{ControlPlane, FakeNode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plane = ControlPlane::start(&[FakeNode::new("node-a").label("zone", "a"), FakeNode::new("node-b").label("zone", "b")]).await?;
    let mut kubeconfigs = vec![("admin", plane.kubeconfig.clone())];
    for account in ["spawner-operator", "spawner-proxy"] {
        // What the API server makes of a Pod's service account token.
        let user = format!("system:serviceaccount:spawner:{account}");
        let groups = ["system:serviceaccounts", "system:serviceaccounts:spawner", "system:authenticated"];
        let path = plane.dir().join(format!("{account}.kubeconfig"));
        std::fs::write(&path, plane.kubeconfig_for(&user, &groups)?)?;
        kubeconfigs.push((account, path));
    }
    println!("Control plane at {} (started in {:.1?}), Nodes node-a and node-b.", plane.server, plane.started_in);
    for (who, path) in &kubeconfigs {
        println!("  {who:<16} export KUBECONFIG={}", path.display());
    }
    println!("Ctrl-C stops it and removes {}.", plane.dir().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    plane.stop();
    Ok(())
}
