//! Process monitors' executor: looks for the processes in `/proc`, or the one a pid file names,
//! and watches the ones it found so that their end is noticed at once.
//!
//! The watch is a pidfd per process (`pidfd_open(2)`, Linux 5.3): it turns readable when the
//! process exits, whoever its parent is, and cannot be fooled by a pid the kernel hands out
//! again. The alternatives fit worse: waiting on the pid works only for the agent's own
//! children (an application started before the agent, or by a start script that daemonizes, is
//! not one); the netlink proc connector needs CAP_NET_ADMIN and a kernel built with
//! CONFIG_PROC_EVENTS, and reports every process of the system. Debian's kernels and the test
//! guest's (Debian 6.1) have pidfd; where it fails, the monitor still notices at its interval.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::debug;

use super::config::{Owner, ProcessTarget};

/// A process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub name: String,
}

/// Looks for `target`'s processes: `Ok` with them when there are enough, `Err` with why not.
pub fn check(target: &ProcessTarget) -> Result<Vec<Found>, String> {
    check_in(Path::new("/proc"), target)
}

/// [`check`] on another `/proc` (tests).
pub fn check_in(proc: &Path, target: &ProcessTarget) -> Result<Vec<Found>, String> {
    match target {
        ProcessTarget::Name {
            name,
            owner,
            instances,
        } => {
            let found = scan(proc, name, owner.as_ref());
            let want = usize::try_from(*instances).unwrap_or(usize::MAX);
            if found.len() >= want {
                Ok(found)
            } else {
                Err(format!(
                    "{} of {instances} instance{} of `{name}`{} running",
                    found.len(),
                    if *instances == 1 { "" } else { "s" },
                    owned_by(owner.as_ref()),
                ))
            }
        }
        ProcessTarget::PidFile { path, owner } => {
            let pid = read_pid_file(path)?;
            match stat(proc, pid) {
                Some(p) if owner_matches(proc, pid, owner.as_ref()) => {
                    Ok(vec![Found { pid, name: p.name }])
                }
                Some(_) => Err(format!(
                    "pid {pid} from {} is not{}",
                    path.display(),
                    owned_by(owner.as_ref())
                )),
                None => Err(format!(
                    "pid {pid} from {} is not running (a stale pid file)",
                    path.display()
                )),
            }
        }
    }
}

/// The pid a pid file holds: its first line, a positive number. Anything else is the file's
/// fault, said so.
pub fn read_pid_file(path: &Path) -> Result<u32, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("pid file {} does not exist", path.display()))
        }
        Err(e) => return Err(format!("pid file {}: {e}", path.display())),
    };
    let text = String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned();
    let first = text.lines().next().unwrap_or("").trim();
    match first.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "pid file {}: {:?} is not a pid",
            path.display(),
            first.chars().take(32).collect::<String>()
        )),
    }
}

fn owned_by(owner: Option<&Owner>) -> String {
    owner.map_or(String::new(), |o| format!(" owned by {}", o.name))
}

/// What `/proc/<pid>/stat` says that matters here.
struct Stat {
    name: String,
}

/// A live (not zombie) process's `comm`.
fn stat(proc: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let state = text.get(close + 1..)?.split_whitespace().next()?;
    (state != "Z" && state != "X").then_some(Stat { name })
}

fn owner_matches(proc: &Path, pid: u32, owner: Option<&Owner>) -> bool {
    let Some(uid) = owner.and_then(|o| o.uid) else {
        return true;
    };
    let status =
        std::fs::read_to_string(proc.join(pid.to_string()).join("status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok())
        == Some(uid)
}

/// The program name a process runs as: the file name of `argv[0]`.
fn program_name(proc: &Path, pid: u32) -> Option<String> {
    let cmdline = std::fs::read(proc.join(pid.to_string()).join("cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let argv0 = String::from_utf8_lossy(argv0);
    Some(argv0.rsplit('/').next()?.to_owned())
}

fn scan(proc: &Path, name: &str, owner: Option<&Owner>) -> Vec<Found> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let stat = stat(proc, pid)?;
            // `comm` is the executable's (or script's) file name cut to 15 bytes; argv[0] is
            // what the program calls itself.
            let matches = stat.name == name
                || (name.len() > 15
                    && name.as_bytes().starts_with(stat.name.as_bytes())
                    && stat.name.len() == 15)
                || program_name(proc, pid).as_deref() == Some(name);
            (matches && owner_matches(proc, pid, owner)).then_some(Found {
                pid,
                name: stat.name,
            })
        })
        .collect();
    found.sort_by_key(|f| f.pid);
    found
}

/// A pidfd: readable once the process has ended.
#[derive(Debug)]
struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Watches processes; [`Watch::ended`] returns when the first of them ends.
#[derive(Debug)]
pub struct Watch {
    fds: Vec<(Found, AsyncFd<PidFd>)>,
}

impl Watch {
    /// Opens a pidfd for each process. A process that ended meanwhile makes [`Watch::ended`]
    /// return at once; where pidfds are not available, `None`.
    // `AsyncFd::with_interest` and `new` are deprecated in tokio 1.54 because an arbitrary
    // `AsRawFd` may close or swap its descriptor under the reactor; their replacement is an
    // `unsafe fn`. `PidFd` owns its `OwnedFd` and never lets go of it, so the safe constructors
    // are sound here, and the crate keeps no unsafe code of its own.
    #[allow(deprecated)]
    pub fn open(processes: &[Found]) -> Option<Watch> {
        let mut fds = Vec::new();
        for p in processes {
            let pid = rustix::process::Pid::from_raw(i32::try_from(p.pid).ok()?)?;
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                Ok(fd) => match AsyncFd::with_interest(PidFd(fd), Interest::READABLE) {
                    Ok(fd) => fds.push((p.clone(), fd)),
                    Err(e) => {
                        debug!(pid = p.pid, error = %e, "cannot poll a pidfd");
                        return None;
                    }
                },
                Err(rustix::io::Errno::SRCH) => {
                    return Some(Watch {
                        fds: vec![(p.clone(), AsyncFd::new(PidFd(ended_fd()?)).ok()?)],
                    })
                }
                Err(e) => {
                    debug!(pid = p.pid, error = %e, "pidfd_open failed; checking at the interval only");
                    return None;
                }
            }
        }
        Some(Watch { fds })
    }

    /// The first watched process to end.
    pub async fn ended(&self) -> Found {
        let waits = self.fds.iter().map(|(found, fd)| {
            Box::pin(async move {
                let _ = fd.readable().await;
                found.clone()
            })
        });
        if self.fds.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await.0
    }
}

/// A file descriptor that is readable at once (the read end of a pipe whose write end is
/// closed): stands for a process that ended before its pidfd could be opened.
fn ended_fd() -> Option<OwnedFd> {
    let (read, write) = nix::unistd::pipe().ok()?;
    drop(write);
    Some(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn name(name: &str, instances: u32) -> ProcessTarget {
        ProcessTarget::Name {
            name: name.into(),
            owner: None,
            instances,
        }
    }

    fn pid_file(path: PathBuf) -> ProcessTarget {
        ProcessTarget::PidFile { path, owner: None }
    }

    fn spawn_sleep() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep")
    }

    #[test]
    fn a_running_process_is_found_by_name_and_owner() {
        let mut child = spawn_sleep();
        let me = nix::unistd::getuid().as_raw();
        let target = ProcessTarget::Name {
            name: "sleep".into(),
            owner: Some(Owner {
                name: me.to_string(),
                uid: Some(me),
            }),
            instances: 1,
        };
        let found = check(&target).expect("found");
        assert!(found.iter().any(|f| f.pid == child.id()), "{found:?}");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn too_few_instances_is_a_failure_that_says_how_many() {
        let err = check(&name("appmon-no-such-process", 2)).expect_err("none");
        assert_eq!(err, "0 of 2 instances of `appmon-no-such-process` running");
    }

    #[test]
    fn another_owner_does_not_count() {
        let mut child = spawn_sleep();
        let target = ProcessTarget::Name {
            name: "sleep".into(),
            owner: Some(Owner {
                name: "nobody-here".into(),
                uid: Some(4_000_000_000),
            }),
            instances: 1,
        };
        let err = check(&target).expect_err("wrong owner");
        assert!(err.contains("owned by nobody-here"), "{err}");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_pid_file_with_garbage_is_a_failure_not_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (content, want) in [
            (&b"hello\n"[..], "\"hello\" is not a pid"),
            (b"", "\"\" is not a pid"),
            (b"-5", "\"-5\" is not a pid"),
            (b"0", "\"0\" is not a pid"),
            (b"99999999999999999999", "is not a pid"),
            (b"\xff\xfe\x00garbage", "is not a pid"),
        ] {
            let path = dir.path().join("app.pid");
            std::fs::write(&path, content).expect("write");
            let err = check(&pid_file(path)).expect_err("garbage");
            assert!(err.contains(want), "{content:?}: {err}");
        }
        let err = check(&pid_file(dir.path().join("absent.pid"))).expect_err("missing");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_stale_pid_is_a_failure() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = spawn_sleep();
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        let path = dir.path().join("app.pid");
        std::fs::write(&path, format!("{pid}\n")).expect("write");
        let err = check(&pid_file(path)).expect_err("stale");
        assert!(err.contains("not running (a stale pid file)"), "{err}");
    }

    #[test]
    fn a_live_pid_file_passes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = spawn_sleep();
        let path = dir.path().join("app.pid");
        std::fs::write(&path, format!("{}\n", child.id())).expect("write");
        let found = check(&pid_file(path)).expect("live");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].name, "sleep");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[tokio::test]
    async fn the_watch_notices_the_end_of_a_process_at_once() {
        let mut child = spawn_sleep();
        let found = vec![Found {
            pid: child.id(),
            name: "sleep".into(),
        }];
        let watch = Watch::open(&found).expect("pidfd works here");
        let killed = std::time::Instant::now();
        let _ = child.kill();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), watch.ended())
            .await
            .expect("noticed");
        assert_eq!(ended.pid, child.id());
        assert!(killed.elapsed() < std::time::Duration::from_secs(1));
        let _ = child.wait();
    }

    #[tokio::test]
    async fn a_process_gone_before_the_watch_opens_is_noticed_too() {
        let mut child = spawn_sleep();
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        let watch = Watch::open(&[Found {
            pid,
            name: "sleep".into(),
        }])
        .expect("watch");
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.ended())
            .await
            .expect("at once");
    }
}
