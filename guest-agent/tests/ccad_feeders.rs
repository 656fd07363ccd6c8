//! The seed's feeder scripts (tests/seed/*.sh, copied from seed 003 unchanged) against the real
//! `appmon-guest` binary: their values reach a test host that takes counters.
//!
//! The scripts name fixed paths (`/etc/ccad.conf`, `/tmp/cca`, `/usr/bin/curl`,
//! `/usr/bin/mysql`), so each test runs the agent and one script in a mount namespace of its
//! own (`unshare --mount`, root): a private tmpfs on /tmp, and overlays on /etc and /usr/bin
//! that add the seed's ccad.conf and a stand-in `curl` or `mysql` printing what Apache's
//! `server-status?auto` or `mysql -e 'show status'` print. Nothing outside the namespace
//! changes. Everything else (the agent's sockets, its log) lives in a directory of the test.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appmon_wire::{Capabilities, CounterSchema, Frame, GuestMsg, Hello, HostMsg};
use common::{wait_until, Host, WAIT};

const AGENT: &str = env!("CARGO_BIN_EXE_appmon-guest");
/// A feeder loops once per pace (1 s); a few of its rounds fit here.
const FEED_WAIT: Duration = Duration::from_secs(15);

/// Apache's `server-status?auto`, a hit more each call.
const FAKE_CURL: &str = r#"#!/bin/bash
n=$(cat "$HITS" 2>/dev/null || echo 30)
n=$((n + 1))
echo "$n" >"$HITS"
printf 'Total Accesses: %s\nTotal kBytes: 22241\nCPULoad: .0157\nUptime: 88\nReqPerSec: .352273\nBytesPerSec: 258.909\nBusyWorkers: 6\nIdleWorkers: 34\nScoreboard: ____KW_____....\n' "$n"
"#;

/// `mysql -e 'show status'` writing to a pipe: tab-separated, a header line first.
const FAKE_MYSQL: &str = "#!/bin/bash\nprintf 'Variable_name\\tValue\\nAborted_clients\\t0\\nQuestions\\t1234\\nThreads_connected\\t3\\nUptime\\t100\\n'\n";

/// A ccad.conf for the MySQL feeder (the seed shows none).
const MYSQL_CONF: &str = "counters MySQL\n   {\n   pace = 1000\n   pipe = /tmp/cca\n   \
    counter Threads_connected: desc = \"Open connections\", units = \"#\"\n   \
    counter Questions: desc = \"Statements executed\", units = \"#\"\n   }\n";

/// The namespace's set-up, then the agent and the feeder. `$W` is the test's directory.
const NAMESPACE: &str = r#"set -eu
mount --make-rprivate /
mount -t tmpfs tmpfs /tmp
mkdir -p "$W/etc-up" "$W/etc-work" "$W/bin-up" "$W/bin-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$W/bin-up,workdir=$W/bin-work" /usr/bin
cp "$W/ccad.conf" /etc/ccad.conf
install -m 0755 "$W/curl" /usr/bin/curl
install -m 0755 "$W/mysql" /usr/bin/mysql
"$AGENT" --config "$W/guest.toml" &
for _ in $(seq 100); do [ -p /tmp/cca ] && break; sleep 0.1; done
[ -p /tmp/cca ] || { echo "the agent made no /tmp/cca"; exit 9; }
echo "FEEDER-STARTS"
exec bash "$W/feeder.sh"
"#;

/// One namespace with the agent and a feeder; its process group is killed on drop.
struct Namespace {
    child: Child,
    dir: tempfile::TempDir,
}

impl Namespace {
    fn start(ccad_conf: &str, feeder: &str) -> Namespace {
        // Not under /tmp: the namespace mounts its own /tmp over it.
        let dir = tempfile::Builder::new()
            .prefix("ccad-feeder-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let w = dir.path();
        let write = |name: &str, text: &str| std::fs::write(w.join(name), text).expect("write");
        write("ccad.conf", ccad_conf);
        write("feeder.sh", feeder);
        write("curl", FAKE_CURL);
        write("mysql", FAKE_MYSQL);
        write("ns.sh", NAMESPACE);
        write(
            "guest.toml",
            &format!(
                "vsock = false\nhost_unix_socket = \"{}\"\nsocket = \"{}\"\nlog_level = \"debug\"\n\
                 [counters]\npace_ms = 1000\n",
                w.join("host.sock").display(),
                w.join("app.sock").display()
            ),
        );
        let log = std::fs::File::create(w.join("ns.log")).expect("log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash"])
            .arg(w.join("ns.sh"))
            .env("W", w)
            .env("AGENT", AGENT)
            .env("HITS", w.join("hits"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start unshare (util-linux) as root");
        let ns = Namespace { child, dir };
        let sock = ns.dir.path().join("host.sock");
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if started.elapsed() > WAIT {
                ns.fail("the agent in the namespace did not listen");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ns
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ns.log")).unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        panic!("{why}\n--- namespace log ---\n{}", self.log())
    }

    async fn host(&self) -> Watcher {
        let mut host = Host::connect(&self.dir.path().join("host.sock")).await;
        let hello = Hello::new(
            "appmon-host test",
            [7; 16],
            Capabilities::HEARTBEAT | Capabilities::COUNTERS,
        );
        host.send(Frame::event(HostMsg::Hello(hello))).await;
        Watcher {
            host,
            schema: Vec::new(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The group holds unshare's bash, the agent and the feeder with its children: all ours.
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A counter a test waits for: its entity, its name, and which value will do.
type Want<'a> = (&'a str, &'a str, fn(f64) -> bool);

/// A test host that takes counters, and the schema it was sent.
struct Watcher {
    host: Host,
    schema: Vec<CounterSchema>,
}

impl Watcher {
    /// Waits until, in the current generation, a value for each `(entity, counter)` that
    /// `want` accepts has arrived; returns them.
    async fn wait_for(&mut self, ns: &Namespace, want: &[Want<'_>]) -> Vec<f64> {
        let deadline = Instant::now() + FEED_WAIT;
        let mut seen: Vec<Option<f64>> = vec![None; want.len()];
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = futures::StreamExt::next(&mut self.host.framed);
            let frame = match tokio::time::timeout(left, next).await {
                Ok(Some(Ok(Ok(frame)))) => frame,
                Ok(other) => ns.fail(&format!("the session ended: {other:?}")),
                Err(_) => ns.fail(&format!(
                    "no values for all of {:?} in time; seen {seen:?}; frames: {frames:?}",
                    want.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>()
                )),
            };
            frames.push(match &frame.msg {
                GuestMsg::CounterSchema(s) => {
                    format!("schema {} {}", s.generation, s.counter_count())
                }
                GuestMsg::CounterValues(v) => format!("values {} {}", v.generation, v.values.len()),
                other => format!("{other:?}").chars().take(40).collect(),
            });
            match frame.msg {
                GuestMsg::CounterSchema(part) => {
                    if self
                        .schema
                        .first()
                        .is_some_and(|s| s.generation != part.generation)
                    {
                        self.schema.clear();
                        seen.fill(None);
                    }
                    self.schema.push(part);
                }
                GuestMsg::CounterValues(v)
                    if self
                        .schema
                        .first()
                        .is_some_and(|s| s.generation == v.generation) =>
                {
                    for (i, (entity, counter, ok)) in want.iter().enumerate() {
                        let id = self
                            .schema
                            .iter()
                            .flat_map(|p| &p.entities)
                            .filter(|e| e.name.as_str() == *entity)
                            .flat_map(|e| &e.counters)
                            .find(|c| c.name.as_str() == *counter)
                            .map(|c| c.id);
                        if let Some((_, value)) = v.values.iter().find(|(vid, _)| Some(*vid) == id)
                        {
                            if ok(*value) {
                                seen[i] = Some(*value);
                            }
                        }
                    }
                    if seen.iter().all(Option::is_some) {
                        return seen.into_iter().flatten().collect();
                    }
                }
                _ => {}
            }
        }
    }
}

fn seed(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/seed")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_seeds_loop_feeds_apache_counters_through_the_pipe() {
    let ns = Namespace::start(&seed("apache.ccad.conf"), &seed("feed-loop.sh"));
    let mut host = ns.host().await;
    let values = host
        .wait_for(
            &ns,
            &[
                ("Apache", "Total hits", |v| v > 31.0),
                ("Apache", "Total bytes", |v| v == 22241.0),
                ("Apache", "Active requests", |v| v == 6.0),
                ("Apache", "Idle servers", |v| v == 34.0),
            ],
        )
        .await;
    assert!(values[0] > 31.0, "{values:?}");
    assert!(ns.log().contains("FEEDER-STARTS"));
}

#[tokio::test]
async fn the_seeds_apache_script_runs_unchanged_against_the_agent() {
    let ns = Namespace::start(&seed("apache.ccad.conf"), &seed("apache-feeder.sh"));
    let mut host = ns.host().await;
    // Two rounds of the script: the hit count grows from one set to the next.
    let first = host
        .wait_for(&ns, &[("Apache", "Total hits", |v| v >= 31.0)])
        .await;
    let later = host
        .wait_for(&ns, &[("Apache", "Total hits", |v| v >= 33.0)])
        .await;
    assert!(later[0] > first[0], "{first:?} then {later:?}");
}

#[tokio::test]
async fn the_seeds_mysql_script_runs_unchanged_against_the_agent() {
    let ns = Namespace::start(MYSQL_CONF, &seed("mysql-feeder.sh"));
    let mut host = ns.host().await;
    host.wait_for(
        &ns,
        &[
            ("MySQL", "Threads_connected", |v| v == 3.0),
            ("MySQL", "Questions", |v| v == 1234.0),
        ],
    )
    .await;
}

/// `appmon-guest` as a plain child process, for what it logs.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_broken_ccad_conf_on_sighup_is_logged_with_its_place_and_the_last_good_one_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("ccad.conf");
    let pipe = dir.path().join("cca");
    std::fs::write(
        &conf,
        seed("plants.ccad.conf").replace("/my-pipe", &pipe.to_string_lossy()),
    )
    .expect("write");
    let config = dir.path().join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "{}[counters]\nccad_conf = \"{}\"\n",
            common::test_config(dir.path(), ""),
            conf.display()
        ),
    )
    .expect("write");
    let log = dir.path().join("agent.log");
    let child = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start appmon-guest");
    let agent = Agent { child, dir };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(WAIT, "the pipe", || pipe.exists());
    std::fs::write(
        &conf,
        "counters Plants {\n  pace = 2000\n  counter tree: units = #\n}\n",
    )
    .expect("break it");
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_until(WAIT, "the reload's verdict", || {
        read_log().contains("keeping the last good custom counters")
    });
    let text = read_log();
    let place = format!("{}:3:26: expected a value for `units`", conf.display());
    assert!(text.contains(&place), "{place} in:\n{text}");
    assert!(agent.dir.path().exists());
}
