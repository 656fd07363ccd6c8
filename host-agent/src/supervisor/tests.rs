//! The supervisor's own paths that no policy test reaches: what it records and carries out
//! when it starts, stops or restarts a session. libvirt is libvirt's test driver in this
//! process; the domains here exist only in the supervisor (their resets fail in libvirt,
//! which these tests do not wait for).

use std::path::Path;

use appmon_control::{Decision, GuestEvent, ResetCause};
use appmon_libvirt_backend::{LibvirtHypervisor, MonitorSpec, RunningReason, SpecError, Transport};

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
