//! [`Node`]: one "machine" of a multi-node test on this one machine: network, mount and UTS
//! namespaces of its own, and a cgroup that holds every process of the node, so that the test
//! can kill the whole node at once (`cgroup.kill`: SIGKILL to all of it in one step, daemonised
//! children included), as a power loss would.
//!
//! The namespaces are held by one process ("the holder", `unshare --net --mount --uts
//! --propagation private`, then `sleep infinity`) that first mounts the node's private state:
//! a tmpfs over `/run` and over `/dev/shm` (corosync's and libvirt's pid files and sockets,
//! libqb's ring buffers), and bind mounts of the node's own directories over system paths
//! (`/etc/corosync`, `/var/lib/pacemaker`, ...). None of it is seen outside the node. Every
//! process started in the node ([`Place::command`]: `nsenter -t <holder> -n -m -u`) first moves
//! itself into the node's cgroup.
//!
//! Nothing of a node outlives its processes: the namespaces go with the last of them, and with
//! the network namespace its end of a veth pair (the pair goes with either end). The cgroup is
//! named `appmon-t-<pid>-<n>-<node>` after the test directory `<pid>-<n>` it belongs to; the
//! sweep kills and removes the cgroups of test processes that are gone ([`leftover_cgroups`]).
//! Dropping a [`Node`] kills it, reaps what it started and removes the cgroup, also while a
//! test panics.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sweep::pid_alive;
use crate::wait::{wait_for, wait_until};

/// Prefix of a node cgroup's name: `appmon-t-<pid>-<n>-<node>`.
pub const CGROUP_PREFIX: &str = "appmon-t-";
/// Bound for the holder to set up the namespaces.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for the kernel to have killed every process of a node after `cgroup.kill`.
const KILL_TIMEOUT: Duration = Duration::from_secs(20);
/// Deepest cgroup the sweep looks at (test processes run a few levels down at most).
const SWEEP_DEPTH: usize = 8;
/// The file the holder touches once the node's mounts are in place.
const READY_FILE: &str = "ready";

/// How to start a process inside a node (or inside another process's mount namespace): the
/// namespaces to enter and the cgroup to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pid: u32,
    all: bool,
    cgroup_procs: Option<PathBuf>,
}

impl Place {
    /// Only the mount namespace of `pid` (a two-host harness's libvirtd), no cgroup.
    pub fn mount_ns_of(pid: u32) -> Place {
        Place {
            pid,
            all: false,
            cgroup_procs: None,
        }
    }

    /// The pid whose namespaces are entered.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `program` run in this place: `nsenter` (which execs it, so the child's pid is the
    /// program's), through `sh` into the cgroup when there is one. Add the arguments.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.pid.to_string()).arg("-m");
        if self.all {
            c.args(["-n", "-u"]);
        }
        c.arg("--");
        if let Some(procs) = &self.cgroup_procs {
            c.args(["/bin/sh", "-c", r#"echo 0 > "$0" && exec "$@""#])
                .arg(procs);
        }
        c.arg(program);
        c
    }
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // <id> <parent> <dev> <root> <mount point> <options> ... - <fstype> <source> <options>
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's own cgroup v2 directory: nodes are made beneath it, so that whatever limits
/// the test run has, its nodes have too.
fn own_cgroup(root: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// The owner pid in a node cgroup's name `appmon-t-<pid>-<n>-<node>`.
pub fn cgroup_owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(CGROUP_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let n = parts.next()?;
    let node = parts.next()?;
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (number(pid) && number(n) && !node.is_empty())
        .then(|| pid.parse().ok())
        .flatten()
}

/// The node cgroups (anywhere in the cgroup v2 hierarchy, a few levels deep) whose test process
/// is gone, and with `dir_name` given only those of that test directory.
pub fn leftover_cgroups(dir_name: Option<&str>) -> Vec<PathBuf> {
    let Some(root) = cgroup2_root() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = vec![(root, 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = match dir_name {
                Some(d) => name
                    .strip_prefix(CGROUP_PREFIX)
                    .and_then(|r| r.strip_prefix(d))
                    .is_some_and(|r| r.starts_with('-')),
                None => cgroup_owner_pid(&name).is_some_and(|pid| !pid_alive(pid)),
            };
            if ours && cgroup_owner_pid(&name).is_some() {
                found.push(path);
            } else if depth < SWEEP_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Kills every process in the cgroup `cg`, waits until it is empty and removes it.
pub fn kill_cgroup(cg: &Path) -> Result<(), String> {
    if !cg.exists() {
        return Ok(());
    }
    if let Err(e) = fs::write(cg.join("cgroup.kill"), "1") {
        return Err(format!("cannot write {}/cgroup.kill: {e}", cg.display()));
    }
    wait_until(
        KILL_TIMEOUT,
        &format!("the processes of {} to die", cg.display()),
        || !populated(cg),
    )
    .map_err(|e| e.to_string())?;
    fs::remove_dir(cg).map_err(|e| format!("cannot remove {}: {e}", cg.display()))
}

fn populated(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// One node. See the module documentation.
#[derive(Debug)]
pub struct Node {
    name: String,
    dir: PathBuf,
    cgroup: PathBuf,
    holder: Option<Child>,
    /// Processes started with [`Node::spawn`]: reaped once the node is killed.
    children: Vec<Child>,
    killed_at: Option<Instant>,
}

impl Node {
    /// Creates the node `name` (also its host name) with its state in `dir` (which must exist)
    /// and its cgroup named after `dir`'s test directory `test_dir_name`. `binds` are (the
    /// node's own directory, the path it is mounted over inside the node); targets under `/run`
    /// are created in the node's tmpfs.
    pub fn create(
        name: &str,
        dir: &Path,
        test_dir_name: &str,
        binds: &[(PathBuf, PathBuf)],
    ) -> Result<Node, String> {
        let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
        let parent = own_cgroup(&root).unwrap_or(root);
        let cgroup = parent.join(format!("{CGROUP_PREFIX}{test_dir_name}-{name}"));
        fs::create_dir(&cgroup).map_err(|e| format!("cannot create {}: {e}", cgroup.display()))?;
        let mut node = Node {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            cgroup,
            holder: None,
            children: Vec::new(),
            killed_at: None,
        };
        node.launch_holder(binds)?;
        Ok(node)
    }

    fn launch_holder(&mut self, binds: &[(PathBuf, PathBuf)]) -> Result<(), String> {
        let script = r#"set -e
echo 0 > "$1/cgroup.procs"
mount -t tmpfs -o mode=0755 appmon-node-run /run
mkdir -p /run/lock
mount -t tmpfs -o mode=1777 appmon-node-shm /dev/shm
hostname "$2"
ip link set lo up
ready=$3
shift 3
while [ $# -ge 2 ]; do
  mkdir -p "$2"
  mount --bind "$1" "$2"
  shift 2
done
touch "$ready"
exec sleep infinity
"#;
        let log = self.dir.join("holder.log");
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let ready = self.dir.join(READY_FILE);
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&self.cgroup)
        .arg(&self.name)
        .arg(&ready);
        for (own, over) in binds {
            cmd.arg(own).arg(over);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        self.holder = Some(child);
        let waited = wait_for(
            SETUP_TIMEOUT,
            &format!("node {} to set up its namespaces", self.name),
            || {
                if ready.exists() {
                    return Some(Ok(()));
                }
                match self.holder.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(Err(format!("exited: {status}"))),
                    _ => None,
                }
            },
        );
        let waited = match waited {
            Ok(r) => r,
            Err(t) => Err(t.to_string()),
        };
        waited.map_err(|e| {
            format!(
                "node {}: namespace setup failed ({e}): {}",
                self.name,
                fs::read_to_string(&log).unwrap_or_default().trim()
            )
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The holder's pid: its namespaces are the node's.
    pub fn pid(&self) -> u32 {
        self.holder.as_ref().map_or(0, Child::id)
    }

    /// Where processes of this node start.
    pub fn place(&self) -> Place {
        Place {
            pid: self.pid(),
            all: true,
            cgroup_procs: Some(self.cgroup.join("cgroup.procs")),
        }
    }

    /// Whether `pid` is a process of this node (in its cgroup).
    pub fn holds(&self, pid: u32) -> bool {
        fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .is_ok_and(|t| t.lines().any(|l| l.trim() == pid.to_string()))
    }

    /// Starts `program ARGS` in the node with stdout and stderr to `log`; the node reaps it.
    pub fn spawn(&mut self, program: &str, args: &[&str], log: &Path) -> Result<u32, String> {
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = self
            .place()
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("node {}: cannot start {program}: {e}", self.name))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Whether a process [`Node::spawn`] started has exited (and how).
    pub fn exited(&mut self, pid: u32) -> Option<String> {
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Kills every process of the node at once and waits until they are gone; returns when
    /// the kill was sent. The namespaces and the node's network link go with them.
    pub fn kill(&mut self) -> Result<Instant, String> {
        if let Some(at) = self.killed_at {
            return Ok(at);
        }
        let at = Instant::now();
        fs::write(self.cgroup.join("cgroup.kill"), "1")
            .map_err(|e| format!("cannot write {}/cgroup.kill: {e}", self.cgroup.display()))?;
        self.killed_at = Some(at);
        wait_until(
            KILL_TIMEOUT,
            &format!("the processes of node {} to die", self.name),
            || !populated(&self.cgroup),
        )
        .map_err(|e| e.to_string())?;
        for child in self.holder.iter_mut().chain(self.children.iter_mut()) {
            let _ = child.wait();
        }
        Ok(at)
    }

    /// Whether the node was killed.
    pub fn is_dead(&self) -> bool {
        self.killed_at.is_some() || !self.holder.as_ref().is_some_and(|h| pid_alive(h.id()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // No panics here (see TestVm's Drop).
        if let Err(e) = self.kill() {
            eprintln!("node {}: cleanup: {e}", self.name);
            return;
        }
        if let Err(e) = fs::remove_dir(&self.cgroup) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "node {}: cleanup: cannot remove {}: {e}",
                    self.name,
                    self.cgroup.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_owner_pid_parses_node_cgroup_names() {
        assert_eq!(cgroup_owner_pid("appmon-t-1234-5-node1"), Some(1234));
        for name in [
            "appmon-t-1234-5",
            "appmon-t-x-5-node1",
            "appmon-t-1234--node1",
            "appmon-t-1234-5-",
            "system.slice",
            "appmon-x-1234-5-node1",
        ] {
            assert_eq!(cgroup_owner_pid(name), None, "{name}");
        }
    }

    #[test]
    fn place_commands_enter_the_namespaces_and_the_cgroup() {
        let p = Place {
            pid: 42,
            all: true,
            cgroup_procs: Some(PathBuf::from("/cg/cgroup.procs")),
        };
        let c = p.command("corosync");
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(c.get_program(), "nsenter");
        assert_eq!(
            args.join(" "),
            r#"-t 42 -m -n -u -- /bin/sh -c echo 0 > "$0" && exec "$@" /cg/cgroup.procs corosync"#
        );
        let m = Place::mount_ns_of(7).command("appmon-host");
        let args: Vec<_> = m.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args.join(" "), "-t 7 -m -- appmon-host");
    }
}
