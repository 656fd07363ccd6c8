//! The supervisor's own paths that no policy test reaches: what it records and carries out
//! when it starts, stops or restarts a session. libvirt is libvirt's test driver in this
//! process; the domains here exist only in the supervisor (their resets fail in libvirt,
//! which these tests do not wait for).

use std::path::Path;

use appmon_control::{Decision, GuestEvent, HistoryEntry, ResetCause};
use appmon_libvirt_backend::{
    LibvirtHypervisor, MonitorSpec, PausedReason, RunningReason, SpecError, Transport,
};
use appmon_wire::AppStatus;

use super::*;
use crate::persist::StateDir;
use crate::policy::Pending;

/// A supervisor on `test:///default`: failure interval 1 s, no minimum uptime.
fn supervisor(dir: &Path) -> Supervisor {
    let (hv, _events) = LibvirtHypervisor::open("test:///default").expect("test driver");
    let mut config = Config {
        uri: "test:///default".into(),
        state_dir: dir.join("state"),
        ..Config::default()
    };
    config.defaults.failure_interval = Duration::from_secs(1);
    config.defaults.min_uptime = Duration::ZERO;
    let writer = StateDir::open(&config.state_dir)
        .and_then(|s| s.writer())
        .expect("state dir");
    Supervisor::new(config, Arc::new(hv), writer, HashMap::new(), [1; 16])
}

fn domain(transport: Transport) -> DomainInfo {
    DomainInfo {
        domain: DomainRef {
            uuid: "5f0b6c1e-2d40-4c44-9d3a-000000000001".into(),
            name: "vm".into(),
        },
        state: DomainState::Running(RunningReason::Booted),
        spec: Ok::<_, SpecError>(Some(MonitorSpec::with_transport(transport))),
        vsock_cid: None,
    }
}

fn hybrid(dir: &Path, name: &str) -> Transport {
    Transport::HybridVsock {
        path: dir.join(name),
        port: 5315,
    }
}

/// Kernel vsock without a CID in the spec or the domain: no endpoint (and no AF_VSOCK).
fn vsock_without_cid() -> Transport {
    Transport::Vsock {
        cid: None,
        port: 5315,
    }
}

fn unreachable_entries(sup: &Supervisor, id: VmId) -> usize {
    sup.vms[&id]
        .history
        .iter()
        .filter(|h| matches!(h.guest(), Some(GuestEvent::Unreachable { .. })))
        .count()
}

#[tokio::test]
async fn unreachable_guest_agent_is_recorded_once_per_episode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(dir.path());
    let now = sup.clock.now();

    // Every lookup of the domain looks at its session again.
    for _ in 0..3 {
        sup.upsert(domain(vsock_without_cid()), 0, now);
    }
    let id = sup.by_uuid["5f0b6c1e-2d40-4c44-9d3a-000000000001"];
    assert_eq!(unreachable_entries(&sup, id), 1);
    // Reachable for a while (a session to a hybrid socket), then unreachable again: a new
    // episode, recorded again.
    sup.upsert(domain(hybrid(dir.path(), "a.vsock")), 0, now);
    assert!(sup.vms[&id].session.is_some());
    sup.upsert(domain(vsock_without_cid()), 0, now);
    sup.upsert(domain(vsock_without_cid()), 0, now);

    assert_eq!(unreachable_entries(&sup, id), 2);
    assert!(sup.vms[&id].session.is_none());
}

#[tokio::test]
async fn session_restart_carries_out_what_the_closed_channel_decides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(dir.path());
    let t0 = sup.clock.now();
    sup.upsert(domain(hybrid(dir.path(), "a.vsock")), 0, t0);
    let id = sup.by_uuid["5f0b6c1e-2d40-4c44-9d3a-000000000001"];
    sup.feed(id, Input::Enable, t0);
    // The metadata now names another socket; the restart comes two seconds on, past the
    // failure interval, before the heap's timer for that deadline has fired.
    let moved = domain(hybrid(dir.path(), "b.vsock"));
    sup.vms.get_mut(&id).expect("vm").spec = moved.spec;

    sup.sync_session(id, t0 + Duration::from_secs(2));

    let vm = &sup.vms[&id];
    assert!(
        vm.history.iter().any(|h| matches!(
            h.decision(),
            Some(Decision::Reset {
                cause: ResetCause::HeartbeatsStopped,
                ..
            })
        )),
        "the reset the machine decided is in the history"
    );
    assert!(matches!(vm.machine.pending(), Pending::Resetting { .. }));
    assert_eq!(
        vm.session.as_ref().map(|s| s.endpoint.clone()),
        Some(format!(
            "hybrid vsock {} port 5315",
            dir.path().join("b.vsock").display()
        ))
    );
}

#[tokio::test]
async fn a_policy_decision_in_the_history_is_written_out_like_any_other_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(dir.path());
    let now = sup.clock.now();
    sup.upsert(domain(hybrid(dir.path(), "a.vsock")), 0, now);
    let id = sup.by_uuid["5f0b6c1e-2d40-4c44-9d3a-000000000001"];
    sup.flush_histories(true);
    assert_eq!(sup.history_flush_at, None);

    // The policy's own note ("application enabled monitoring") schedules the write.
    sup.feed(id, Input::Enable, now);

    assert!(sup.vms[&id].history_unsaved);
    assert_eq!(sup.history_flush_at, Some(now + vm::HISTORY_FLUSH));
}

const UUID: &str = "5f0b6c1e-2d40-4c44-9d3a-000000000001";

fn decisions(history: &History) -> Vec<Decision> {
    decisions_of(history.iter())
}

fn decisions_of<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Vec<Decision> {
    entries
        .into_iter()
        .filter_map(|h| h.decision().cloned())
        .collect()
}

fn resets(history: &History) -> usize {
    decisions(history)
        .iter()
        .filter(|d| matches!(d, Decision::Reset { .. }))
        .count()
}

/// A supervisor watching an enabled guest that falls silent at `t0` (a hybrid socket that
/// nobody serves: the guest side is the machine's inputs).
fn enabled_guest(dir: &Path) -> (Supervisor, VmId, Duration) {
    let mut sup = supervisor(dir);
    let t0 = sup.clock.now();
    sup.upsert(domain(hybrid(dir, "a.vsock")), 0, t0);
    let id = sup.by_uuid[UUID];
    sup.feed(id, Input::Enable, t0);
    (sup, id, t0)
}

/// Two host agents think they own one VM for a moment: the source, from `Suspended(Migrated)`
/// until `Stopped(Migrated)` (1.3-2.1 s, MIGRATION.md), and the destination from
/// `Resumed(Migrated)` on. The source, whose libvirt no longer runs the guest, never resets it
/// however long the silence, and drops it on `Stopped(Migrated)`; the destination takes it up
/// Gray, so its failure clock waits for the guest's Enable. The same silence without the
/// migration is reset (the control).
#[tokio::test]
async fn of_two_owners_of_a_migrating_vm_neither_resets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let silence = Duration::from_secs(10); // ten failure intervals

    let (mut control, id, t0) = enabled_guest(dir.path());
    control.feed(id, Input::Tick, t0 + silence);
    assert_eq!(resets(&control.vms[&id].history), 1, "the control resets");

    let source_dir = tempfile::tempdir().expect("tempdir");
    let (mut source, id, t0) = enabled_guest(source_dir.path());
    let vm_ref = source.vms[&id].domain.clone();
    source.on_domain_event(
        vm_ref.clone(),
        DomainEvent::Suspended(PausedReason::Migrating),
        t0 + Duration::from_millis(500),
    );
    source.feed(id, Input::Tick, t0 + silence);
    assert_eq!(resets(&source.vms[&id].history), 0);
    source.on_domain_event(
        vm_ref.clone(),
        DomainEvent::Stopped(ShutOffReason::Migrated),
        t0 + silence,
    );
    assert!(source.vms.is_empty(), "the source dropped it");
    let kept = &source.persisted[UUID];
    assert!(
        !kept
            .history
            .iter()
            .any(|h| matches!(h.decision(), Some(Decision::Reset { .. }))),
        "{:?}",
        kept.history
    );
    let left = Decision::Left {
        why: "migrated away".into(),
    };
    assert_eq!(decisions_of(&kept.history).last(), Some(&left));
    // Written to the state directory at once (dropping the supervisor flushes its writer).
    drop(source);
    let file = source_dir.path().join(format!("state/{UUID}.json"));
    let text = std::fs::read_to_string(&file).expect("the state file");
    assert!(text.contains("migrated away"), "{text}");

    let mut dest = supervisor(dir.path());
    let t0 = dest.clock.now();
    let mut arriving = domain(hybrid(dir.path(), "b.vsock"));
    arriving.state = DomainState::Paused(PausedReason::StartingUp);
    dest.upsert(arriving, 0, t0);
    let id = dest.by_uuid[UUID];
    dest.on_domain_event(vm_ref, DomainEvent::Resumed(RunningReason::Migrated), t0);
    assert!(
        decisions(&dest.vms[&id].history).contains(&Decision::ArrivedByMigration),
        "{:?}",
        dest.vms[&id].history
    );
    assert_eq!(
        dest.vms[&id].machine.status(t0 + silence),
        Some(AppStatus::Gray)
    );
    dest.feed(id, Input::Tick, t0 + silence);
    assert_eq!(resets(&dest.vms[&id].history), 0);
    assert!(dest.vms[&id].session.is_some(), "it serves the guest");
}

/// A domain that arrives by migration without monitoring metadata is left alone: no session,
/// no status, no decision, however long it runs.
#[tokio::test]
async fn a_domain_arriving_without_metadata_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = supervisor(dir.path());
    let t0 = sup.clock.now();
    let mut arriving = domain(hybrid(dir.path(), "a.vsock"));
    arriving.state = DomainState::Paused(PausedReason::StartingUp);
    arriving.spec = Ok(None);
    let vm_ref = arriving.domain.clone();
    sup.upsert(arriving, 0, t0);
    let id = sup.by_uuid[UUID];
    sup.on_domain_event(vm_ref, DomainEvent::Resumed(RunningReason::Migrated), t0);
    sup.feed(id, Input::Tick, t0 + Duration::from_secs(10));

    let vm = &sup.vms[&id];
    assert!(vm.session.is_none());
    assert_eq!(vm.machine.status(t0 + Duration::from_secs(10)), None);
    assert_eq!(decisions(&vm.history), Vec::<Decision>::new());
}
