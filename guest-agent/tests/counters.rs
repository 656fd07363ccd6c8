//! Counters end to end in the real daemon: a test host that takes counters gets the schema,
//! then values of the standard counters and of custom counters written into a real named pipe;
//! reloads, new sessions and bad input on the pipe.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appmon_wire::{
    Capabilities, CounterSchema, CounterValues, Frame, GuestMsg, Hello, HostMsg, Tag,
};
use common::{bounded, Agent, Host, WAIT};

/// The standard counters' pace in these tests.
const PACE_MS: u64 = 200;

/// A ccad.conf whose blocks feed from a pipe in `dir`.
fn apache_conf(dir: &Path) -> String {
    include_str!("seed/apache.ccad.conf").replace("/tmp/cca", &pipe_path(dir).to_string_lossy())
}

fn plants_conf(dir: &Path) -> String {
    include_str!("seed/plants.ccad.conf").replace("/my-pipe", &pipe_path(dir).to_string_lossy())
}

fn pipe_path(dir: &Path) -> PathBuf {
    dir.join("cca")
}

/// An agent and the directory of its ccad.conf and pipe.
struct Rig {
    /// First, so that it stops before its directory goes.
    agent: Agent,
    ccad: tempfile::TempDir,
}

impl Rig {
    /// An agent reading the ccad.conf `ccad` writes (into its directory, before it starts).
    fn start(ccad: impl FnOnce(&Path) -> String) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("ccad.conf");
        std::fs::write(&conf, ccad(dir.path())).expect("write ccad.conf");
        let agent = Agent::start(&format!(
            "[counters]\npace_ms = {PACE_MS}\nccad_conf = \"{}\"\n",
            conf.display()
        ));
        Rig { agent, ccad: dir }
    }

    fn dir(&self) -> &Path {
        self.ccad.path()
    }

    fn pipe(&self) -> PathBuf {
        pipe_path(self.dir())
    }

    async fn stop(self) {
        self.agent.stop().await;
    }
}

/// A host that announces counters and completes the handshake.
async fn counters_host(agent: &Agent) -> Host {
    let mut host = agent.connect_host().await;
    let hello = Hello::new(
        "appmon-host test",
        [7; 16],
        Capabilities::HEARTBEAT | Capabilities::COUNTERS,
    );
    host.send(Frame::event(HostMsg::Hello(hello))).await;
    assert!(matches!(host.recv().await.msg, GuestMsg::Hello(_)));
    assert!(matches!(host.recv().await.msg, GuestMsg::State(_)));
    host
}

/// Frames until `pick` takes one, failing after [`WAIT`].
async fn recv_until<T>(
    host: &mut Host,
    what: &str,
    mut pick: impl FnMut(&GuestMsg) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let frame = host.recv().await;
        if matches!(
            frame.msg,
            GuestMsg::CounterSchema(_) | GuestMsg::CounterValues(_)
        ) {
            assert_eq!(
                frame.tag,
                Tag::Event,
                "counter frames are events: {frame:?}"
            );
        }
        if let Some(found) = pick(&frame.msg) {
            return found;
        }
    }
}

/// The next complete schema (all its parts).
async fn schema(host: &mut Host) -> Vec<CounterSchema> {
    let mut parts = Vec::new();
    loop {
        let part = recv_until(host, "a counter schema", |m| match m {
            GuestMsg::CounterSchema(s) => Some(s.clone()),
            _ => None,
        })
        .await;
        let complete = part.complete;
        parts.push(part);
        if complete {
            return parts;
        }
    }
}

/// The id of `entity`/`counter` in a schema.
fn id_of(parts: &[CounterSchema], entity: &str, counter: &str) -> u32 {
    parts
        .iter()
        .flat_map(|p| &p.entities)
        .filter(|e| e.name.as_str() == entity)
        .flat_map(|e| &e.counters)
        .find(|c| c.name.as_str() == counter)
        .unwrap_or_else(|| panic!("no {entity}/{counter} in {parts:?}"))
        .id
}

/// The next values frame of `generation` that has a value for `id`.
async fn value_of(host: &mut Host, generation: u32, id: u32) -> (CounterValues, f64) {
    recv_until(host, &format!("a value of counter {id}"), |m| match m {
        GuestMsg::CounterValues(v) if v.generation == generation => v
            .values
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, value)| (v.clone(), *value)),
        _ => None,
    })
    .await
}

/// Writes `text` into the pipe as a shell's `echo ... > pipe` does (open, write, close).
async fn feed(pipe: &Path, text: &str) {
    let (pipe, text) = (pipe.to_owned(), text.to_owned());
    bounded(tokio::task::spawn_blocking(move || {
        std::fs::write(&pipe, text).expect("write into the pipe")
    }))
    .await
    .expect("writer thread");
}

async fn wait_for_fifo(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + WAIT;
    while !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        assert!(Instant::now() < deadline, "no FIFO at {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_host_that_takes_counters_gets_the_schema_then_standard_values() {
    let rig = Rig::start(apache_conf);
    let mut host = counters_host(&rig.agent).await;
    let parts = schema(&mut host).await;
    let generation = parts[0].generation;
    let entities: Vec<&str> = parts
        .iter()
        .flat_map(|p| &p.entities)
        .map(|e| e.name.as_str())
        .collect();
    for want in [
        "CPU",
        "CPU#0",
        "File System",
        "Memory",
        "Scheduler",
        "Apache",
    ] {
        assert!(entities.contains(&want), "{want} in {entities:?}");
    }
    let total = parts
        .iter()
        .flat_map(|p| &p.entities)
        .flat_map(|e| &e.counters)
        .find(|c| c.name.as_str() == "Total hits")
        .expect("the Apache counter");
    assert_eq!(
        (
            total.description.as_str(),
            total.units.as_str(),
            total.kind.as_str(),
            total.pace_ms
        ),
        ("Total number of hits", "#", "MAX", 1000)
    );
    let cpu_total = id_of(&parts, "CPU", "CPU Total");
    // A rate needs two samples: the value comes with the second one, a pace later.
    let (_, busy) = value_of(&mut host, generation, cpu_total).await;
    assert!((0.0..=100.0).contains(&busy), "{busy}");
    let memory = id_of(&parts, "Memory", "Total");
    let (_, bytes) = value_of(&mut host, generation, memory).await;
    assert!(bytes > 0.0);
    rig.stop().await;
}

#[tokio::test]
async fn a_custom_counter_written_into_the_pipe_reaches_the_host() {
    let rig = Rig::start(apache_conf);
    let pipe = rig.pipe();
    wait_for_fifo(&pipe).await;
    let mut host = counters_host(&rig.agent).await;
    let parts = schema(&mut host).await;
    let busy = id_of(&parts, "Apache", "Active requests");
    let idle = id_of(&parts, "Apache", "Idle servers");
    // The seed's echo lines, one open and close each.
    for line in [
        "Total_Accesses = 31\n",
        "BusyWorkers = 6\n",
        "IdleWorkers : 34\n",
        ".\n",
    ] {
        feed(&pipe, line).await;
    }
    let (values, six) = value_of(&mut host, parts[0].generation, busy).await;
    assert_eq!(six, 6.0);
    assert!(values.values.contains(&(idle, 34.0)), "{values:?}");
    assert_eq!(
        values.values.len(),
        3,
        "only the set's counters: {values:?}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_host_without_the_counters_capability_gets_no_counter_frames() {
    let rig = Rig::start(apache_conf);
    let pipe = rig.pipe();
    wait_for_fifo(&pipe).await;
    let mut host = rig.agent.connect_host().await;
    host.handshake().await;
    feed(&pipe, "BusyWorkers = 6\n.\n").await;
    // Several standard paces pass; still nothing but the Pong.
    tokio::time::sleep(Duration::from_millis(4 * PACE_MS)).await;
    host.expect_nothing_pending(1).await;
    rig.stop().await;
}

#[tokio::test]
async fn every_new_session_gets_the_schema_again() {
    let rig = Rig::start(apache_conf);
    let mut first = counters_host(&rig.agent).await;
    let before = schema(&mut first).await;
    drop(first);
    let mut second = counters_host(&rig.agent).await;
    let again = schema(&mut second).await;
    assert_eq!(again[0].generation, before[0].generation);
    assert_eq!(
        id_of(&again, "Apache", "Total hits"),
        id_of(&before, "Apache", "Total hits")
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_reload_with_a_changed_ccad_conf_sends_a_new_generation() {
    let rig = Rig::start(apache_conf);
    let mut host = counters_host(&rig.agent).await;
    let before = schema(&mut host).await;
    std::fs::write(rig.dir().join("ccad.conf"), plants_conf(rig.dir())).expect("rewrite");
    rig.agent.handle.reload().await;
    let after = schema(&mut host).await;
    assert!(after[0].generation != before[0].generation);
    let entities: Vec<&str> = after
        .iter()
        .flat_map(|p| &p.entities)
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        entities.ends_with(&["Plants", "Delicious Fruits!!!", "Vegetables"]),
        "{entities:?}"
    );
    assert!(!entities.contains(&"Apache"));
    let pears = id_of(&after, "Delicious Fruits!!!", "pears");
    feed(&rig.pipe(), "pears = 12\n.\n").await;
    let (_, twelve) = value_of(&mut host, after[0].generation, pears).await;
    assert_eq!(twelve, 12.0);
    rig.stop().await;
}

#[tokio::test]
async fn a_broken_ccad_conf_on_reload_keeps_the_last_good_one() {
    let rig = Rig::start(apache_conf);
    let pipe = rig.pipe();
    wait_for_fifo(&pipe).await;
    let mut host = counters_host(&rig.agent).await;
    let parts = schema(&mut host).await;
    std::fs::write(
        rig.dir().join("ccad.conf"),
        "counters Broken {\n counter x {\n",
    )
    .expect("rewrite");
    rig.agent.handle.reload().await;
    feed(&pipe, "BusyWorkers = 9\n.\n").await;
    let busy = id_of(&parts, "Apache", "Active requests");
    // Values of the old generation, and no schema in between.
    let found = recv_until(
        &mut host,
        "the value after the failed reload",
        |m| match m {
            GuestMsg::CounterSchema(s) => panic!("a schema after a failed reload: {s:?}"),
            GuestMsg::CounterValues(v) => {
                v.values.iter().find(|(i, _)| *i == busy).map(|_| v.clone())
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(found.generation, parts[0].generation);
    assert!(found.values.contains(&(busy, 9.0)));
    rig.stop().await;
}

#[tokio::test]
async fn garbage_and_endless_lines_in_the_pipe_are_skipped_and_values_still_arrive() {
    let rig = Rig::start(apache_conf);
    let pipe = rig.pipe();
    wait_for_fifo(&pipe).await;
    let mut host = counters_host(&rig.agent).await;
    let parts = schema(&mut host).await;
    let busy = id_of(&parts, "Apache", "Active requests");
    let mut garbage: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
    garbage.retain(|b| *b != b'\n' && *b != 0x0c);
    garbage.extend_from_slice(b"\nBusyWorkers = 5\n.\n");
    let writer = pipe.clone();
    bounded(tokio::task::spawn_blocking(move || {
        std::fs::write(&writer, garbage).expect("write garbage")
    }))
    .await
    .expect("writer");
    let (_, five) = value_of(&mut host, parts[0].generation, busy).await;
    assert_eq!(five, 5.0);
    // The session is alive and well.
    host.send(Frame::request(77, HostMsg::Ping)).await;
    recv_until(&mut host, "the Pong", |m| {
        matches!(m, GuestMsg::Pong).then_some(())
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn a_regular_file_at_the_pipe_path_leaves_the_other_counters_working() {
    let rig = Rig::start(|dir| {
        std::fs::write(pipe_path(dir), "not a pipe").expect("regular file");
        apache_conf(dir)
    });
    let mut host = counters_host(&rig.agent).await;
    let parts = schema(&mut host).await;
    let cpu_total = id_of(&parts, "CPU", "CPU Total");
    value_of(&mut host, parts[0].generation, cpu_total).await;
    assert_eq!(
        std::fs::read_to_string(rig.pipe()).expect("still the file"),
        "not a pipe",
        "the agent leaves a file it did not make alone"
    );
    // Once the path is free, a reload makes the pipe and reads it.
    std::fs::remove_file(rig.pipe()).expect("remove");
    rig.agent.handle.reload().await;
    wait_for_fifo(&rig.pipe()).await;
    feed(&rig.pipe(), "IdleWorkers = 3\n.\n").await;
    let idle = id_of(&parts, "Apache", "Idle servers");
    let (_, three) = value_of(&mut host, parts[0].generation, idle).await;
    assert_eq!(three, 3.0);
    rig.stop().await;
}

#[tokio::test]
async fn counters_off_announces_no_capability() {
    let agent = Agent::start("[counters]\nenabled = false\n");
    let mut host = agent.connect_host().await;
    let (hello, _) = host.handshake().await;
    assert!(!hello.capabilities.contains(Capabilities::COUNTERS));
    assert!(hello.capabilities.contains(Capabilities::HEARTBEAT));
    agent.stop().await;
}
