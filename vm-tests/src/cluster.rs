//! [`Cluster`]: a one-node Pacemaker cluster for one test, as ../shared's recipe brings it up on
//! a machine without systemd: corosync on 127.0.0.1 (`corosync -f`) and `pacemakerd`, started
//! by hand, with a fresh CIB that does not wait the default 20 s DC election and runs resources
//! without fencing (one node, test only).
//!
//! Corosync and Pacemaker keep their configuration and state at fixed system paths
//! (`/etc/corosync`, `/var/lib/pacemaker`) and their IPC under fixed names, so one cluster at a
//! time runs on a machine: the Pacemaker tests form their own nextest group of one, and
//! [`Cluster::start`] refuses to start beside a corosync or pacemakerd it did not start.
//! Dropping it deletes the resources it added (their domains stop), stops pacemakerd and
//! corosync by their pids (SIGTERM, a bounded wait, SIGKILL) and puts back the corosync.conf it
//! replaced; also while a test panics.
//!
//! [`TwoNodeCluster`]: two nodes for failover tests, each a [`Node`] (network, mount and UTS
//! namespaces and a cgroup of its own) running corosync, pacemakerd, a libvirtd and a
//! vhost-device-vsock; nothing of it runs in the machine's own namespaces, so it neither sees
//! nor disturbs a [`Cluster`]. A test kills a node whole ([`TwoNodeCluster::kill_node`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::hosts::LibvirtHost;
use crate::node::Node;
use crate::rig::Rig;
use crate::sweep::{VHOST_USER_SOCKET, VSOCK_UDS};
use crate::virsh::run_bounded;
use crate::vm::{next_instance, sweep_once, TestVm, GUEST_CID};
use crate::wait::{wait_for, wait_until};

/// From corosync's start to the node online with a DC (measured ~5 s in the recipe).
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for one Pacemaker command line tool.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for pacemakerd to stop (it stops its resources first) and for corosync.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

const COROSYNC_CONF: &str = "/etc/corosync/corosync.conf";
const CIB_DIR: &str = "/var/lib/pacemaker/cib";

/// The one-node cluster. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    node: String,
    corosync: Option<Child>,
    pacemakerd: Option<Child>,
    /// The corosync.conf that was there before, put back on drop.
    saved_conf: Option<Vec<u8>>,
    resources: Vec<String>,
}

/// A resource's line in `crm_mon`: its role and node, if it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    pub role: String,
    pub pending: Option<String>,
    pub failed: bool,
    pub nodes: Vec<String>,
}

fn tool(program: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_bounded(cmd, TOOL_TIMEOUT)
        .map_err(|e| format!("{program} {}: {e:?}", args.join(" ")))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            out.stderr.trim(),
            out.stdout.trim()
        ))
    }
}

/// Writes `cib.xml` into `cib_dir`: an empty configuration that does not wait the default 20 s
/// for the first DC election and runs resources without fencing (tests only).
fn write_fresh_cib(cib_dir: &Path) -> Result<(), String> {
    let cib = cib_dir.join("cib.xml");
    let empty = tool("cibadmin", &["--empty"])?;
    fs::write(&cib, empty).map_err(|e| format!("{}: {e}", cib.display()))?;
    for (name, value) in [("stonith-enabled", "false"), ("dc-deadtime", "2s")] {
        let mut cmd = Command::new("crm_attribute");
        cmd.env("CIB_file", &cib)
            .args(["-t", "crm_config", "-n", name, "-v", value]);
        let out = run_bounded(cmd, TOOL_TIMEOUT).map_err(|e| format!("crm_attribute: {e:?}"))?;
        if !out.status.success() {
            return Err(format!("crm_attribute {name}: {}", out.stderr));
        }
    }
    tool(
        "chown",
        &["-R", "hacluster:haclient", &cib_dir.to_string_lossy()],
    )?;
    tool("chmod", &["600", &cib.to_string_lossy()])?;
    Ok(())
}

/// The `ocf:heartbeat:VirtualDomain` primitive `id` for the domain XML file `config` on
/// qemu:///system (force_stop: the test guests have no ACPI), with a 5 s monitor.
fn virtual_domain_xml(id: &str, config: &Path) -> String {
    format!(
        r#"<primitive id="{id}" class="ocf" provider="heartbeat" type="VirtualDomain">
  <instance_attributes id="{id}-ia">
    <nvpair id="{id}-config" name="config" value="{}"/>
    <nvpair id="{id}-hv" name="hypervisor" value="qemu:///system"/>
    <nvpair id="{id}-fs" name="force_stop" value="true"/>
  </instance_attributes>
  <operations>
    <op id="{id}-start" name="start" interval="0" timeout="120s"/>
    <op id="{id}-stop" name="stop" interval="0" timeout="120s"/>
    <op id="{id}-monitor" name="monitor" interval="5s" timeout="30s"/>
  </operations>
</primitive>"#,
        config.display()
    )
}

/// The resource `id` in `crm_mon --output-as=xml` output.
fn parse_resource(xml: &str, id: &str) -> Option<ResourceState> {
    let start = xml.find(&format!("<resource id=\"{id}\""))?;
    let rest = &xml[start..];
    let head_end = rest.find('>')?;
    let head = &rest[..head_end];
    let attr = |name: &str| {
        let key = format!(" {name}=\"");
        let at = head.find(&key)? + key.len();
        let len = head[at..].find('"')?;
        Some(head[at..at + len].to_string())
    };
    let body_end = if head.ends_with('/') {
        0
    } else {
        rest.find("</resource>").unwrap_or(0)
    };
    let nodes = rest[..body_end]
        .split("<node name=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_string))
        .collect();
    Some(ResourceState {
        role: attr("role").unwrap_or_default(),
        pending: attr("pending").filter(|p| p != "Monitoring"),
        failed: attr("failed").as_deref() == Some("true"),
        nodes,
    })
}

fn pidof(name: &str) -> Option<String> {
    let out = Command::new("pidof").arg(name).output().ok()?;
    let pids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!pids.is_empty()).then_some(pids)
}

fn stop_child(child: &mut Child, what: &str) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < STOP_TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cluster: {what} (pid {pid}) still alive after {STOP_TIMEOUT:?}: SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

impl Cluster {
    /// Starts corosync and pacemakerd and waits until this node is online and the DC.
    pub fn start() -> Cluster {
        let rig = Rig::require();
        for daemon in ["corosync", "pacemakerd"] {
            if let Some(pids) = pidof(daemon) {
                panic!("a {daemon} this test did not start is running (pid {pids}): refusing to start a cluster beside it");
            }
        }
        let dir = rig
            .tests_dir()
            .join(format!("cluster-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let node = tool("uname", &["-n"])
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_string();
        let mut cluster = Cluster {
            dir,
            node,
            corosync: None,
            pacemakerd: None,
            saved_conf: fs::read(COROSYNC_CONF).ok(),
            resources: Vec::new(),
        };
        cluster.configure();
        cluster.launch();
        cluster
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn configure(&self) {
        let log = self.dir.join("corosync.log");
        let conf = format!(
            "# appmon vm-tests: one node on loopback\n\
             totem {{\n  version: 2\n  cluster_name: appmontest\n  transport: knet\n  crypto_cipher: none\n  crypto_hash: none\n  token: 3000\n}}\n\
             logging {{\n  to_stderr: yes\n  to_logfile: yes\n  logfile: {}\n  to_syslog: no\n  timestamp: on\n}}\n\
             quorum {{\n  provider: corosync_votequorum\n}}\n\
             nodelist {{\n  node {{\n    name: {}\n    nodeid: 1\n    ring0_addr: 127.0.0.1\n  }}\n}}\n",
            log.display(),
            self.node
        );
        fs::write(COROSYNC_CONF, conf).unwrap_or_else(|e| panic!("{COROSYNC_CONF}: {e}"));
        // A fresh CIB: no resources of an earlier run.
        if let Ok(entries) = fs::read_dir(CIB_DIR) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        write_fresh_cib(Path::new(CIB_DIR)).unwrap_or_else(|e| panic!("{e}"));
    }

    fn spawn(&self, program: &str, args: &[&str]) -> Child {
        let log = self.dir.join(format!("{program}.stdout"));
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    fn launch(&mut self) {
        let t0 = Instant::now();
        self.corosync = Some(self.spawn("corosync", &["-f"]));
        if let Err(e) = wait_until(CLUSTER_READY_TIMEOUT, "corosync quorate", || {
            tool("corosync-quorumtool", &["-s"]).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("Quorate:") && l.contains("Yes"))
            })
        }) {
            panic!("{e}\n{}", self.diagnostics());
        }
        self.pacemakerd = Some(self.spawn("pacemakerd", &[]));
        let online = format!("Online: [ {} ]", self.node);
        let dc = format!("Current DC: {}", self.node);
        if let Err(e) = wait_until(CLUSTER_READY_TIMEOUT, "the node online and the DC", || {
            tool("crm_mon", &["-1"]).is_ok_and(|s| s.contains(&online) && s.contains(&dc))
        }) {
            panic!("{e}\n{}", self.diagnostics());
        }
        println!(
            "cluster: node {} online and DC {} ms after corosync started",
            self.node,
            t0.elapsed().as_millis()
        );
    }

    /// Adds an `ocf:heartbeat:VirtualDomain` resource `id` for the domain XML file `config` on
    /// qemu:///system (force_stop: the test guests have no ACPI) with a 5 s monitor, and waits
    /// until it is started here.
    pub fn add_virtual_domain(&mut self, id: &str, config: &Path, timeout: Duration) -> Duration {
        self.add_primitive(id, &virtual_domain_xml(id, config), timeout)
    }

    /// Adds the `<primitive>` `xml` (whose id is `id`) to the resources and waits until it is
    /// started here; the resource is deleted when the cluster is dropped.
    pub fn add_primitive(&mut self, id: &str, xml: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        tool("cibadmin", &["--create", "-o", "resources", "-X", xml])
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
        self.resources.push(id.to_string());
        self.wait_started(id, timeout);
        t0.elapsed()
    }

    /// Sets the resource's `target-role` meta attribute (`Started`, `Stopped`), as an operator
    /// stops and starts a resource.
    pub fn set_target_role(&self, id: &str, role: &str) -> Result<(), String> {
        tool(
            "crm_resource",
            &[
                "--resource",
                id,
                "--set-parameter",
                "target-role",
                "--meta",
                "--parameter-value",
                role,
            ],
        )
        .map(|_| ())
    }

    /// Waits until `id` is stopped with nothing under way.
    pub fn wait_stopped(&self, id: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let res = wait_until(timeout, &format!("resource {id} stopped"), || {
            self.resource(id)
                .is_some_and(|r| r.role == "Stopped" && r.pending.is_none())
        });
        if let Err(e) = res {
            panic!("{e}\n{}", self.diagnostics());
        }
        t0.elapsed()
    }

    /// The failed operations `crm_mon` lists ("Failed Resource Actions"), empty when none.
    pub fn failed_actions(&self) -> String {
        let mon = tool("crm_mon", &["-1"]).unwrap_or_else(|e| e);
        mon.split_once("Failed Resource Actions:")
            .map(|(_, rest)| rest.trim().to_string())
            .unwrap_or_default()
    }

    /// Waits until `id` is started on this node with nothing under way.
    pub fn wait_started(&self, id: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let res = wait_for(timeout, &format!("resource {id} started"), || {
            self.resource(id)
                .filter(|r| {
                    r.role == "Started"
                        && r.pending.is_none()
                        && !r.failed
                        && r.nodes.iter().any(|n| n == &self.node)
                })
                .map(|_| ())
        });
        if let Err(e) = res {
            panic!("{e}\n{}", self.diagnostics());
        }
        t0.elapsed()
    }

    /// The resource's state in `crm_mon`, `None` when the cluster has no such resource or does
    /// not answer.
    pub fn resource(&self, id: &str) -> Option<ResourceState> {
        let xml = tool("crm_mon", &["-1", "--output-as=xml"]).ok()?;
        parse_resource(&xml, id)
    }

    /// The resource's fail count on this node (0 when none is recorded).
    pub fn fail_count(&self, id: &str) -> u32 {
        let out =
            tool("crm_failcount", &["--query", "-r", id, "-N", &self.node]).unwrap_or_default();
        out.split("value=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `crm_mon -1 --failcounts` and the tail of the Pacemaker log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mon = tool("crm_mon", &["-1", "--failcounts"]).unwrap_or_else(|e| e);
        let log = fs::read_to_string("/var/log/pacemaker/pacemaker.log").unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- crm_mon ---\n{mon}\n--- pacemaker.log (tail) ---\n{}\n--- corosync stdout ---\n{}",
            tail.join("\n"),
            fs::read_to_string(self.dir.join("corosync.stdout")).unwrap_or_default()
        )
    }

    fn remove_resources(&mut self) {
        for id in std::mem::take(&mut self.resources) {
            if let Err(e) = self.set_target_role(&id, "Stopped") {
                eprintln!("cluster: stopping {id}: {e}");
            }
            let stopped = wait_until(STOP_TIMEOUT, &format!("{id} stopped"), || {
                self.resource(&id)
                    .is_none_or(|r| r.role == "Stopped" && r.pending.is_none())
            });
            if let Err(e) = stopped {
                eprintln!("cluster: {e}");
            }
            if let Err(e) = tool(
                "cibadmin",
                &[
                    "--delete",
                    "-o",
                    "resources",
                    "-X",
                    &format!("<primitive id=\"{id}\"/>"),
                ],
            ) {
                eprintln!("cluster: deleting {id}: {e}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.pacemakerd.is_some() {
            self.remove_resources();
        }
        if let Some(mut child) = self.pacemakerd.take() {
            stop_child(&mut child, "pacemakerd");
        }
        if let Some(mut child) = self.corosync.take() {
            stop_child(&mut child, "corosync");
        }
        match &self.saved_conf {
            Some(conf) => {
                if let Err(e) = fs::write(COROSYNC_CONF, conf) {
                    eprintln!("cluster: cannot put back {COROSYNC_CONF}: {e}");
                }
            }
            None => {
                let _ = fs::remove_file(COROSYNC_CONF);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// --- two nodes --------------------------------------------------------------------------------

/// The nodes of a [`TwoNodeCluster`]: name and address on their link (inside their network
/// namespaces only).
const TWO_NODES: [(&str, &str); 2] = [("node1", "10.213.77.1"), ("node2", "10.213.77.2")];
/// The node's own directories (in its directory) and the system paths they are mounted over
/// inside the node. (`/run` is a tmpfs of the node's own.)
const NODE_STATE: [(&str, &str); 4] = [
    ("corosync", "/etc/corosync"),
    ("corosync-lib", "/var/lib/corosync"),
    ("pacemaker", "/var/lib/pacemaker"),
    ("pacemaker-log", "/var/log/pacemaker"),
];
/// The node's vsock backend directory (in its directory), mounted over the cluster's
/// [`TwoNodeCluster::vsock_dir`].
const NODE_VSOCK: &str = "vsock";
/// Bound for a node's vhost-device-vsock to create its socket.
const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One node of a [`TwoNodeCluster`]: its namespaces and cgroup ([`Node`]), its libvirtd, and
/// corosync, pacemakerd and a vhost-device-vsock started in it.
#[derive(Debug)]
pub struct ClusterNode {
    libvirt: LibvirtHost,
    node: Node,
}

impl ClusterNode {
    /// `node1` or `node2`: its host name and its name in the cluster.
    pub fn name(&self) -> &str {
        self.node.name()
    }

    /// Its libvirtd; its URI reaches the daemon from outside the node and inside it.
    pub fn libvirt(&self) -> &LibvirtHost {
        &self.libvirt
    }

    /// Whether the node was killed.
    pub fn is_dead(&self) -> bool {
        self.node.is_dead()
    }

    /// Runs a tool (`crm_mon`, `corosync-quorumtool`) inside the node, bounded.
    pub fn tool(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.node.place().command(program);
        cmd.args(args);
        let out = run_bounded(cmd, TOOL_TIMEOUT)
            .map_err(|e| format!("{}: {program} {}: {e:?}", self.name(), args.join(" ")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "{}: {program} {} failed ({}): {}{}",
                self.name(),
                args.join(" "),
                out.status,
                out.stderr.trim(),
                out.stdout.trim()
            ))
        }
    }

    /// The resource's state as this node's `crm_mon` shows it.
    pub fn resource(&self, id: &str) -> Option<ResourceState> {
        let xml = self.tool("crm_mon", &["-1", "--output-as=xml"]).ok()?;
        parse_resource(&xml, id)
    }

    /// The pid of the QEMU of `domain` on this node, from its libvirtd's pid file.
    pub fn qemu_pid(&self, domain: &str) -> Option<u32> {
        let file = self
            .libvirt
            .outside(Path::new(&format!("/run/libvirt/qemu/{domain}.pid")));
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Whether `pid` is a process of this node (killed with it).
    pub fn holds(&self, pid: u32) -> bool {
        self.node.holds(pid)
    }

    fn dir(&self) -> &Path {
        self.node.dir()
    }

    fn pacemaker_log(&self) -> PathBuf {
        self.dir().join("pacemaker-log/pacemaker.log")
    }

    fn logs(&self) -> Vec<(String, PathBuf)> {
        let n = self.name();
        vec![
            (format!("corosync-{n}"), self.dir().join("corosync.log")),
            (format!("pacemaker-{n}"), self.pacemaker_log()),
            (format!("libvirtd-{n}"), self.libvirt.log_path()),
            (
                format!("vhost-device-vsock-{n}"),
                self.dir().join("vhost-device-vsock.log"),
            ),
        ]
    }

    fn start_daemon(&mut self, program: &str, args: &[&str]) -> Result<u32, String> {
        self.start_daemon_at(program, program, args)
    }
}

/// A two-node Pacemaker cluster on this machine, for failover tests. Each node ([`ClusterNode`])
/// is a [`Node`] (network, mount and UTS namespaces and a cgroup of its own) with corosync
/// (knet over a veth pair between the two namespaces, `two_node: 1`), pacemakerd, its own
/// libvirtd ([`LibvirtHost::start_in`]) and a vhost-device-vsock at the same path on both nodes
/// ([`TwoNodeCluster::vsock_dir`]), so that one domain XML file serves the guest on either node.
/// The CIB is pre-written as [`Cluster`]'s: no 20 s DC election and no fencing.
///
/// Nothing runs in the machine's own namespaces: this cluster neither sees nor disturbs a
/// [`Cluster`], the rig's libvirtd or another test's daemons. Everything lives in
/// `<rig>/run/t/<pid>-<n>/` (`node1/`, `node2/`: each node's state, libvirt directories and
/// logs). Dropping it kills both nodes (every process at once) and removes the directory, also
/// while a test panics; the sweep kills the nodes of a test process that is gone.
#[derive(Debug)]
pub struct TwoNodeCluster {
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
}

impl TwoNodeCluster {
    /// Starts both nodes and waits until each is online in the cluster, with a DC.
    pub fn start() -> TwoNodeCluster {
        let rig = Rig::require();
        sweep_once(&rig);
        let pid = std::process::id();
        let dir_name = format!("{pid}-{}", next_instance());
        let dir = rig.tests_dir().join(&dir_name);
        let mut cluster = TwoNodeCluster {
            dir,
            nodes: Vec::new(),
        };
        let t0 = Instant::now();
        if let Err(e) = cluster.build(&rig, &dir_name) {
            panic!("two-node cluster: {e}\n{}", cluster.diagnostics());
        }
        let libvirt = t0.elapsed();
        if let Err(e) = cluster.launch() {
            panic!("two-node cluster: {e}\n{}", cluster.diagnostics());
        }
        println!(
            "two-node cluster: nodes and libvirtds up after {} ms, both nodes online with a DC {} ms after corosync started",
            libvirt.as_millis(),
            (t0.elapsed() - libvirt).as_millis()
        );
        cluster
    }

    /// The nodes' namespaces, directories, libvirtds and vsock backends.
    fn build(&mut self, rig: &Rig, dir_name: &str) -> Result<(), String> {
        let vsock_dir = self.vsock_dir();
        fs::create_dir_all(&vsock_dir).map_err(|e| format!("{}: {e}", vsock_dir.display()))?;
        for (i, (name, _)) in TWO_NODES.iter().enumerate() {
            let node_dir = self.dir.join(name);
            let mut binds = Vec::new();
            for (own, over) in NODE_STATE {
                binds.push((node_dir.join(own), PathBuf::from(over)));
            }
            binds.push((node_dir.join(NODE_VSOCK), vsock_dir.clone()));
            for (own, _) in &binds {
                fs::create_dir_all(own).map_err(|e| format!("{}: {e}", own.display()))?;
            }
            self.prepare_state(&node_dir, name)?;
            let node = Node::create(name, &node_dir, dir_name, &binds)?;
            let uuid = format!("5e1f9a4e-6d1c-4a8e-9c1d-{:010x}{i:02x}", std::process::id());
            // The node (and its cgroup) is dropped, and so killed, if its libvirtd fails.
            let libvirt =
                LibvirtHost::start_in(name, node_dir.join("libvirt"), &uuid, node.place())?;
            let mut member = ClusterNode { libvirt, node };
            let inside = |f: &str| vsock_dir.join(f).to_string_lossy().into_owned();
            let backend = rig.vhost_device_vsock.to_string_lossy().into_owned();
            member.start_daemon_at(
                &backend,
                "vhost-device-vsock",
                &[
                    "--guest-cid",
                    &GUEST_CID.to_string(),
                    "--socket",
                    &inside(VHOST_USER_SOCKET),
                    "--uds-path",
                    &inside(VSOCK_UDS),
                ],
            )?;
            let outside = node_dir.join(NODE_VSOCK).join(VHOST_USER_SOCKET);
            wait_until(
                BACKEND_READY_TIMEOUT,
                &format!("{name}: vhost-device-vsock to create its socket"),
                || outside.exists(),
            )
            .map_err(|e| e.to_string())?;
            self.nodes.push(member);
        }
        // The link: a veth pair made with one end in each node's network namespace, so that it
        // never exists in the machine's own; it goes when either node does.
        let (p1, p2) = (self.nodes[0].node.pid(), self.nodes[1].node.pid());
        tool(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &p1.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &p2.to_string(),
            ],
        )?;
        for (member, (_, addr)) in self.nodes.iter().zip(TWO_NODES) {
            member.tool("ip", &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            member.tool("ip", &["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The node's corosync.conf and a fresh CIB in its directories.
    fn prepare_state(&self, node_dir: &Path, name: &str) -> Result<(), String> {
        let mut nodelist = String::new();
        for (id, (n, addr)) in TWO_NODES.iter().enumerate() {
            nodelist.push_str(&format!(
                "  node {{\n    name: {n}\n    nodeid: {}\n    ring0_addr: {addr}\n  }}\n",
                id + 1
            ));
        }
        let conf = format!(
            "# appmon vm-tests: node {name} of a two-node cluster\n\
             totem {{\n  version: 2\n  cluster_name: appmontest2\n  transport: knet\n  crypto_cipher: none\n  crypto_hash: none\n  token: 3000\n}}\n\
             logging {{\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n  timestamp: on\n}}\n\
             quorum {{\n  provider: corosync_votequorum\n  two_node: 1\n}}\n\
             nodelist {{\n{nodelist}}}\n"
        );
        let conf_path = node_dir.join("corosync/corosync.conf");
        fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let pcmk = node_dir.join("pacemaker");
        for sub in ["cib", "pengine", "blackbox", "cores", "bundles"] {
            let d = pcmk.join(sub);
            fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        write_fresh_cib(&pcmk.join("cib"))?;
        for d in [pcmk, node_dir.join("pacemaker-log")] {
            tool("chown", &["-R", "hacluster:haclient", &d.to_string_lossy()])?;
        }
        Ok(())
    }

    /// Corosync on both nodes until quorate (two_node waits for both), then pacemakerd until
    /// both nodes are online and one is the DC.
    fn launch(&mut self) -> Result<(), String> {
        for member in &mut self.nodes {
            member.start_daemon("corosync", &["-f"])?;
        }
        for member in &self.nodes {
            wait_until(
                CLUSTER_READY_TIMEOUT,
                &format!("{}: corosync quorate", member.name()),
                || {
                    member.tool("corosync-quorumtool", &["-s"]).is_ok_and(|s| {
                        s.lines()
                            .any(|l| l.starts_with("Quorate:") && l.contains("Yes"))
                    })
                },
            )
            .map_err(|e| e.to_string())?;
        }
        for member in &mut self.nodes {
            member.start_daemon("pacemakerd", &[])?;
        }
        let online = format!("Online: [ {} {} ]", TWO_NODES[0].0, TWO_NODES[1].0);
        for member in &self.nodes {
            wait_until(
                CLUSTER_READY_TIMEOUT,
                &format!("{}: both nodes online and a DC", member.name()),
                || {
                    member
                        .tool("crm_mon", &["-1"])
                        .is_ok_and(|s| s.contains(&online) && s.contains("Current DC: node"))
                },
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// `<rig>/run/t/<pid>-<n>`: the nodes' directories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes, `node1` first.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node `name`.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The other node.
    pub fn other(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name() != name)
            .unwrap_or_else(|| panic!("no node other than {name}"))
    }

    /// The directory where each node's vhost-device-vsock has its sockets: the same path on
    /// both nodes, a directory of each node's own (outside the nodes it is empty). One guest's
    /// vsock: [`crate::VmConfig::vsock_served_in`].
    pub fn vsock_dir(&self) -> PathBuf {
        self.dir.join(NODE_VSOCK)
    }

    /// A node that was not killed, to ask the cluster.
    fn live(&self) -> Result<&ClusterNode, String> {
        self.nodes
            .iter()
            .find(|n| !n.is_dead())
            .ok_or_else(|| "no node is alive".to_string())
    }

    /// Adds the `ocf:heartbeat:VirtualDomain` resource `id` for the domain XML file `config`
    /// (a path both nodes see) and waits until it is started; returns the node it runs on and
    /// how long that took.
    pub fn add_virtual_domain(
        &self,
        id: &str,
        config: &Path,
        timeout: Duration,
    ) -> (String, Duration) {
        let t0 = Instant::now();
        let xml = virtual_domain_xml(id, config);
        self.live()
            .and_then(|n| n.tool("cibadmin", &["--create", "-o", "resources", "-X", &xml]))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
        let node = self.wait_started(id, None, timeout);
        (node, t0.elapsed())
    }

    /// Waits until `id` is started (on `on`, if given) with nothing under way, as a live node's
    /// `crm_mon` shows it; returns the node.
    pub fn wait_started(&self, id: &str, on: Option<&str>, timeout: Duration) -> String {
        let res = wait_for(timeout, &format!("resource {id} started"), || {
            let r = self.live().ok()?.resource(id)?;
            let node = r.nodes.first()?.clone();
            (r.role == "Started"
                && r.pending.is_none()
                && !r.failed
                && r.nodes.len() == 1
                && on.is_none_or(|o| o == node))
            .then_some(node)
        });
        res.unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// The resource as a live node's `crm_mon` shows it.
    pub fn resource(&self, id: &str) -> Option<ResourceState> {
        self.live().ok()?.resource(id)
    }

    /// Kills every process of node `name` at once (corosync, pacemakerd and its children,
    /// libvirtd, QEMU, vhost-device-vsock, and a host agent started there), as a power loss
    /// would; returns when the kill was sent, once all of them are gone.
    pub fn kill_node(&mut self, name: &str) -> Instant {
        let member = self
            .nodes
            .iter_mut()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        member
            .node
            .kill()
            .unwrap_or_else(|e| panic!("killing node {name}: {e}"))
    }

    /// Attaches the nodes' logs (corosync, Pacemaker, libvirtd, QEMU's of the guest) to the
    /// guest's failure diagnostics.
    pub fn attach_logs(&self, vm: &TestVm) {
        for member in &self.nodes {
            for (label, path) in member.logs() {
                vm.attach_log(&label, &path);
            }
            vm.attach_log(
                &format!("qemu-{}", member.name()),
                &member.libvirt.qemu_log_path(vm.name()),
            );
        }
    }

    /// `crm_mon` of a live node and the tails of both nodes' Pacemaker and corosync logs.
    pub fn diagnostics(&self) -> String {
        let mon = self
            .live()
            .and_then(|n| n.tool("crm_mon", &["-1", "--failcounts"]))
            .unwrap_or_else(|e| e);
        let mut text = format!("--- crm_mon ---\n{mon}\n");
        for member in &self.nodes {
            for (label, path) in member.logs() {
                let log = fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                text.push_str(&format!("--- {label} (tail) ---\n{tail}\n"));
            }
        }
        text
    }

    fn keep_logs(&self) {
        let dest = Rig::from_env()
            .kept_logs_dir()
            .join(self.dir.file_name().unwrap_or_default());
        if fs::create_dir_all(&dest).is_err() {
            return;
        }
        for member in &self.nodes {
            for (label, path) in member.logs() {
                let _ = fs::copy(&path, dest.join(format!("{label}.log")));
            }
            if let Ok(entries) = fs::read_dir(member.libvirt.dir().join("log/qemu")) {
                for e in entries.flatten() {
                    let name = format!("{}-{}", member.name(), e.file_name().to_string_lossy());
                    let _ = fs::copy(e.path(), dest.join(name));
                }
            }
        }
        eprintln!("two-node cluster: logs kept in {}", dest.display());
    }
}

impl ClusterNode {
    fn start_daemon_at(
        &mut self,
        program: &str,
        label: &str,
        args: &[&str],
    ) -> Result<u32, String> {
        let log = self.dir().join(format!("{label}.log"));
        let pid = self.node.spawn(program, args, &log)?;
        if let Some(status) = self.node.exited(pid) {
            return Err(format!("{}: {label} exited at once: {status}", self.name()));
        }
        Ok(pid)
    }
}

impl Drop for TwoNodeCluster {
    fn drop(&mut self) {
        // No panics here (see TestVm's Drop).
        if thread::panicking() || std::env::var_os("APPMON_VM_KEEP_LOGS").is_some() {
            self.keep_logs();
        }
        let mut clean = true;
        for mut member in self.nodes.drain(..) {
            if let Err(e) = member.node.kill() {
                eprintln!("two-node cluster: cleanup: {e}");
                clean = false;
            }
        }
        if !clean {
            // Keep the directory for the next sweep.
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "two-node cluster: cleanup: cannot remove {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}
