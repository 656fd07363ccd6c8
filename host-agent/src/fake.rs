//! An in-memory [`Hypervisor`] for tests and benchmarks: domains with states and specs, a log
//! of every reset and power-cycle with the instant it was issued, and events sent like the
//! real backend sends them. Not used by the daemon.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use appmon_libvirt_backend::{
    BackendError, BackendEvent, DomainEvent, DomainInfo, DomainRef, DomainState, Hypervisor,
    MonitorSpec, RunningReason, ShutOffReason, StartedReason,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A call that changed a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub at: Instant,
    pub domain: String,
    /// `reset`, `power-cycle` or `set-spec`.
    pub op: &'static str,
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<String, DomainInfo>,
    calls: Vec<Call>,
    refuse_resets: bool,
    connected: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FakeHypervisor {
    state: Mutex<State>,
    events: UnboundedSender<BackendEvent>,
    calls_changed: tokio::sync::Notify,
}

impl FakeHypervisor {
    /// A hypervisor with no domains; the first event is `Connected`, as with the real one.
    pub fn new() -> (Arc<FakeHypervisor>, UnboundedReceiver<BackendEvent>) {
        let (events, rx) = unbounded_channel();
        let _ = events.send(BackendEvent::Connected);
        let hv = FakeHypervisor {
            state: Mutex::new(State {
                connected: true,
                ..State::default()
            }),
            events,
            calls_changed: tokio::sync::Notify::new(),
        };
        (Arc::new(hv), rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a running domain (no event: call before the supervisor lists, or send one).
    pub fn add(&self, name: &str, spec: Option<MonitorSpec>) -> DomainRef {
        let domain = DomainRef {
            uuid: format!("00000000-0000-4000-8000-{:012x}", fxhash(name)),
            name: name.to_string(),
        };
        self.lock().domains.insert(
            domain.uuid.clone(),
            DomainInfo {
                domain: domain.clone(),
                state: DomainState::Running(RunningReason::Booted),
                spec: Ok(spec),
                vsock_cid: None,
            },
        );
        domain
    }

    /// Replaces a domain's spec result (for broken metadata).
    pub fn set_spec_result(
        &self,
        domain: &DomainRef,
        spec: Result<Option<MonitorSpec>, appmon_libvirt_backend::SpecError>,
    ) {
        if let Some(d) = self.lock().domains.get_mut(&domain.uuid) {
            d.spec = spec;
        }
    }

    /// Changes a domain's state and sends the matching event.
    pub fn event(&self, domain: &DomainRef, event: DomainEvent) {
        {
            let mut s = self.lock();
            if let Some(d) = s.domains.get_mut(&domain.uuid) {
                match event {
                    DomainEvent::Started(_) => {
                        d.state = DomainState::Running(RunningReason::Booted)
                    }
                    DomainEvent::Resumed(r) => d.state = DomainState::Running(r),
                    DomainEvent::Suspended(r) => d.state = DomainState::Paused(r),
                    DomainEvent::Stopped(r) => d.state = DomainState::ShutOff(r),
                    _ => {}
                }
            }
        }
        self.send(domain, event);
    }

    fn send(&self, domain: &DomainRef, event: DomainEvent) {
        let _ = self.events.send(BackendEvent::Domain {
            domain: domain.clone(),
            event,
        });
    }

    /// Removes a domain without an event (as an `--undefinesource` migration does).
    pub fn remove(&self, domain: &DomainRef) {
        self.lock().domains.remove(&domain.uuid);
    }

    /// Makes libvirt refuse (or accept again) resets and power-cycles.
    pub fn refuse_resets(&self, refuse: bool) {
        self.lock().refuse_resets = refuse;
    }

    /// Simulates libvirtd going away (`false`) and coming back (`true`).
    pub fn set_connected(&self, up: bool) {
        self.lock().connected = up;
        let _ = self.events.send(if up {
            BackendEvent::Connected
        } else {
            BackendEvent::Disconnected {
                reason: "test".into(),
            }
        });
    }

    /// Every reset, power-cycle and metadata write so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Resets and power-cycles of one domain.
    pub fn resets_of(&self, name: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.domain == name && c.op != "set-spec")
            .collect()
    }

    /// Waits until `pred` holds for the call log, or `limit` passes.
    pub async fn wait_calls(
        &self,
        limit: std::time::Duration,
        pred: impl Fn(&[Call]) -> bool,
    ) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.calls_changed.notified();
            let calls = self.calls();
            if pred(&calls) {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.calls();
            }
        }
    }

    fn record(&self, domain: &DomainRef, op: &'static str) -> Result<DomainRef, BackendError> {
        let mut s = self.lock();
        if !s.connected {
            return Err(BackendError::NotConnected);
        }
        let Some(d) = s.domains.get(&domain.uuid) else {
            return Err(BackendError::NoSuchDomain {
                domain: domain.name.clone(),
            });
        };
        let d = d.domain.clone();
        if op != "set-spec" && s.refuse_resets {
            s.calls.push(Call {
                at: Instant::now(),
                domain: d.name.clone(),
                op: "refused",
            });
            drop(s);
            self.calls_changed.notify_waiters();
            return Err(BackendError::NotRunning {
                operation: op,
                domain: d.name,
            });
        }
        s.calls.push(Call {
            at: Instant::now(),
            domain: d.name.clone(),
            op,
        });
        drop(s);
        self.calls_changed.notify_waiters();
        Ok(d)
    }
}

fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) & 0xffff_ffff_ffff
}

impl Hypervisor for FakeHypervisor {
    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError> {
        let s = self.lock();
        if !s.connected {
            return Err(BackendError::NotConnected);
        }
        Ok(s.domains.values().cloned().collect())
    }

    fn domain(&self, uuid_or_name: &str) -> Result<DomainInfo, BackendError> {
        let s = self.lock();
        if !s.connected {
            return Err(BackendError::NotConnected);
        }
        s.domains
            .get(uuid_or_name)
            .or_else(|| s.domains.values().find(|d| d.domain.name == uuid_or_name))
            .cloned()
            .ok_or_else(|| BackendError::NoSuchDomain {
                domain: uuid_or_name.to_string(),
            })
    }

    fn reset(&self, domain: &DomainRef) -> Result<(), BackendError> {
        let d = self.record(domain, "reset")?;
        self.send(&d, DomainEvent::Rebooted);
        Ok(())
    }

    fn power_cycle(&self, domain: &DomainRef) -> Result<(), BackendError> {
        let d = self.record(domain, "power-cycle")?;
        self.event(&d, DomainEvent::Stopped(ShutOffReason::Destroyed));
        self.event(&d, DomainEvent::Started(StartedReason::Booted));
        Ok(())
    }

    fn set_spec(&self, domain: &DomainRef, spec: Option<&MonitorSpec>) -> Result<(), BackendError> {
        let d = self.record(domain, "set-spec")?;
        if let Some(info) = self.lock().domains.get_mut(&d.uuid) {
            info.spec = Ok(spec.cloned());
        }
        self.send(&d, DomainEvent::MetadataChanged);
        Ok(())
    }

    fn domain_xml(&self, domain: &DomainRef) -> Result<String, BackendError> {
        Ok(format!("<domain><name>{}</name></domain>", domain.name))
    }
}
