//! The control plane's processes: each component started with its output
//! appended to its log and its process group handed to the reaper, and
//! kube-apiserver stopped and started again on demand (the components
//! that talk to it restarted after it).

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

use super::ControlPlane;

/// A component's process and how it was started (to start it again).
pub(crate) struct Component {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// `None` while stopped on purpose ([`ControlPlane::stop_api_server`]).
    child: Option<Child>,
}

impl Component {
    /// Kills its process (SIGKILL) and reaps it; `false` if none was
    /// running.
    fn kill(&mut self) -> std::io::Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(false) };
        child.kill()?;
        child.wait()?;
        Ok(true)
    }
}

/// The component named `name`.
fn named<'a>(children: &'a mut [Component], name: &str) -> anyhow::Result<&'a mut Component> {
    children.iter_mut().find(|c| c.name == name).with_context(|| format!("no {name}"))
}

impl ControlPlane {
    /// Starts component `name` and remembers how, to start it again.
    pub(crate) fn spawn(&self, program: &Path, args: &[&str], name: &str) -> anyhow::Result<()> {
        let child = self.start_process(program, args, name)?;
        let args = args.iter().map(|a| a.to_string()).collect();
        self.children.lock().expect("children lock").push(Component {
            name: name.into(),
            program: program.into(),
            args,
            child: Some(child),
        });
        Ok(())
    }

    /// Starts a component's process, its output appended to its log, and
    /// hands it to the reaper.
    fn start_process(&self, program: &Path, args: &[impl AsRef<std::ffi::OsStr>], name: &str) -> anyhow::Result<Child> {
        let log = std::fs::File::options().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        if let Some((_, stdin)) = self.reaper.lock().expect("reaper lock").as_mut() {
            writeln!(stdin, "{}", child.id())?;
            stdin.flush()?;
        }
        Ok(child)
    }

    /// Kills kube-apiserver (SIGKILL, as a crashed or upgraded control
    /// plane node goes), leaving etcd and everything else running: clients
    /// are refused until [`ControlPlane::start_api_server`]. Its port is
    /// held meanwhile, so that nothing else (another control plane
    /// starting, a connection's local port) takes it. Its process group
    /// stays on the reaper's list: harmless, as Linux hands out process
    /// ids in order and comes back to one only after millions.
    pub fn stop_api_server(&self) -> anyhow::Result<()> {
        let mut children = self.children.lock().expect("children lock");
        anyhow::ensure!(named(&mut children, "kube-apiserver")?.kill()?, "kube-apiserver is already stopped");
        let addr: std::net::SocketAddr = self.server.trim_start_matches("https://").parse().context("the API server's address")?;
        let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        held.set_reuse_address(true)?;
        held.bind(&addr.into()).with_context(|| format!("holding {addr}, the stopped API server's"))?;
        *self.api_port_held.lock().expect("port lock") = Some(held);
        Ok(())
    }

    /// Starts kube-apiserver again, on the same address, certificates and
    /// etcd (so with every object as it was), waits for `/readyz`, and
    /// then restarts kube-controller-manager, kube-scheduler and kwok, as
    /// a control-plane upgrade restarts its components: left running, they
    /// would retry on client-go's backoff (up to a minute, jittered), and a
    /// test's next Pod would wait that long to be scheduled or run.
    pub async fn start_api_server(&self) -> anyhow::Result<()> {
        {
            let mut children = self.children.lock().expect("children lock");
            let c = named(&mut children, "kube-apiserver")?;
            anyhow::ensure!(c.child.is_none(), "kube-apiserver is running");
            // Let go of the port just before the server binds it.
            drop(self.api_port_held.lock().expect("port lock").take());
            c.child = Some(self.start_process(&c.program, &c.args, &c.name)?);
        }
        self.wait_ready().await.context("waiting for the restarted kube-apiserver's /readyz")?;
        let mut children = self.children.lock().expect("children lock");
        for name in ["kube-controller-manager", "kube-scheduler", "kwok"] {
            let c = named(&mut children, name)?;
            c.kill()?;
            c.child = Some(self.start_process(&c.program, &c.args, &c.name)?);
        }
        Ok(())
    }

    /// Process ids of the components.
    pub fn pids(&self) -> Vec<u32> {
        self.children.lock().expect("children lock").iter().filter_map(|c| c.child.as_ref().map(Child::id)).collect()
    }

    pub(crate) fn exited(&self) -> Option<String> {
        let mut children = self.children.lock().expect("children lock");
        for c in children.iter_mut() {
            if let Some(child) = c.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(format!("{} (pid {}) exited with {status}", c.name, child.id()));
            }
        }
        None
    }

    /// Waits for every running component to end (once the reaper has
    /// killed them).
    pub(crate) fn wait_for_components(&self) {
        for c in self.children.lock().expect("children lock").iter_mut() {
            if let Some(child) = c.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}
