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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::rig::Rig;
use crate::virsh::run_bounded;
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
        // A fresh CIB: no resources of an earlier run, no 20 s DC election, no fencing.
        if let Ok(entries) = fs::read_dir(CIB_DIR) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let cib = Path::new(CIB_DIR).join("cib.xml");
        let empty = tool("cibadmin", &["--empty"]).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&cib, empty).unwrap_or_else(|e| panic!("{}: {e}", cib.display()));
        for (name, value) in [("stonith-enabled", "false"), ("dc-deadtime", "2s")] {
            let mut cmd = Command::new("crm_attribute");
            cmd.env("CIB_file", &cib)
                .args(["-t", "crm_config", "-n", name, "-v", value]);
            let out =
                run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("crm_attribute: {e:?}"));
            assert!(out.status.success(), "crm_attribute {name}: {}", out.stderr);
        }
        tool("chown", &["-R", "hacluster:haclient", CIB_DIR]).unwrap_or_else(|e| panic!("{e}"));
        tool("chmod", &["600", &cib.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
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
        let xml = format!(
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
        );
        self.add_primitive(id, &xml, timeout)
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
