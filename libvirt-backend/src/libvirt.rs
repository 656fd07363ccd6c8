//! [`LibvirtHypervisor`]: the [`Hypervisor`] over the `virt` crate, with reconnection.
//!
//! # Connection life
//!
//! [`LibvirtHypervisor::open`] starts libvirt's event loop (once per process), connects,
//! registers the close callback and the domain event callbacks, and sends
//! [`BackendEvent::Connected`] as the first event of its channel. The thread
//! `appmon-libvirt-conn` then waits for news of a lost connection, from the close callback
//! (libvirtd exited, keepalive timed out) or from a method whose call failed on a dead
//! connection. It drops that connection, sends [`BackendEvent::Disconnected`], and tries to
//! connect again, 0.5 s after the loss and then with the wait doubling up to 10 s; once it
//! succeeds it registers the callbacks again and sends `Connected`. Meanwhile every method
//! returns [`BackendError::NotConnected`].
//!
//! Each connection carries a generation number, so that news about a connection already
//! replaced is ignored.
//!
//! # Locks
//!
//! No lock is held across a libvirt call: a method clones the current `Connect` (a reference
//! count) under the lock and calls libvirt without it.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use virt::connect::Connect;
use virt::domain::{Domain, DomainStateReason};
use virt::domain::{DomainStateEnum, DomainStateReasonEnum};
use virt::enumutil::Enum;
use virt::sys;

use crate::domxml;
use crate::events::{self, CloseWatch, DomainEventRegistration, EventSink};
use crate::{
    BackendError, BackendEvent, DomainInfo, DomainRef, DomainState, Hypervisor, LibvirtError,
    MonitorSpec, PausedReason, RunningReason, ShutOffReason, Transport, METADATA_KEY, METADATA_URI,
};

/// The URI the host agent connects to unless configured otherwise.
pub const DEFAULT_URI: &str = "qemu:///system";

/// The name of the thread that watches the connection and reconnects.
pub const CONNECTION_THREAD_NAME: &str = "appmon-libvirt-conn";

/// How the connection is kept and recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// virConnectSetKeepAlive: a keepalive message after this much silence (whole seconds)...
    pub keepalive_interval: Duration,
    /// ...and the connection counts as dead after this many unanswered ones.
    pub keepalive_count: u32,
    /// The wait before the first reconnection attempt; it doubles after each failure...
    pub reconnect_min: Duration,
    /// ...up to this.
    pub reconnect_max: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// The libvirt implementation of [`Hypervisor`]. Share it through an `Arc`; its methods block.
/// Dropping it stops the reconnection thread and closes the connection.
#[derive(Debug)]
pub struct LibvirtHypervisor {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    uri: String,
    options: ConnectOptions,
    events: UnboundedSender<BackendEvent>,
    control: Sender<Control>,
    slot: Mutex<Option<Live>>,
    generations: AtomicU64,
    /// Set when the hypervisor is dropped: a reconnection that completes afterwards is
    /// dropped again instead of installed.
    shutdown: AtomicBool,
}

/// An open connection with its callbacks. Field order is drop order: callbacks go before the
/// connection reference.
#[derive(Debug)]
struct Live {
    generation: u64,
    _domain_events: DomainEventRegistration,
    _close: CloseWatch,
    conn: Connect,
}

#[derive(Debug)]
enum Control {
    Lost { generation: u64, reason: String },
    Shutdown,
}

impl LibvirtHypervisor {
    /// Connects to `uri` (such as [`DEFAULT_URI`]) with the default [`ConnectOptions`].
    ///
    /// The first event on the returned channel is [`BackendEvent::Connected`]. The channel
    /// stays open while this value lives, across reconnections.
    pub fn open(
        uri: &str,
    ) -> Result<(LibvirtHypervisor, UnboundedReceiver<BackendEvent>), BackendError> {
        Self::open_with(uri, ConnectOptions::default())
    }

    /// Connects to `uri` with explicit keepalive and reconnection settings.
    pub fn open_with(
        uri: &str,
        options: ConnectOptions,
    ) -> Result<(LibvirtHypervisor, UnboundedReceiver<BackendEvent>), BackendError> {
        events::ensure_event_loop().map_err(|source| BackendError::Events {
            uri: uri.to_string(),
            source,
        })?;
        let (events, receiver) = unbounded_channel();
        let (control, control_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            uri: uri.to_string(),
            options,
            events,
            control,
            slot: Mutex::new(None),
            generations: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        });
        let (live, sink) = shared.connect()?;
        *shared.slot() = Some(live);
        sink.open(BackendEvent::Connected);
        tracing::info!(uri, "connected to libvirt");
        let supervisor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(CONNECTION_THREAD_NAME.into())
                .spawn(move || shared.supervise(control_rx))
                .map_err(|source| BackendError::Thread { source })?
        };
        Ok((
            LibvirtHypervisor {
                shared,
                supervisor: Some(supervisor),
            },
            receiver,
        ))
    }

    /// The URI this hypervisor connects to.
    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.slot().is_some()
    }

    /// The current connection, for tests that drive the (test driver's) hypervisor themselves.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn connection(&self) -> Result<Connect, BackendError> {
        Ok(self.shared.current()?.0)
    }
}

impl Drop for LibvirtHypervisor {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _ = self.shared.control.send(Control::Shutdown);
        if let Some(supervisor) = self.supervisor.take() {
            // The thread normally waits on its channel and ends at once. It may instead be
            // inside virConnectOpen to a libvirtd that accepted the socket but does not answer;
            // then it is left to finish on its own (it drops what it connects).
            let deadline = Instant::now() + SUPERVISOR_JOIN_WAIT;
            while !supervisor.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if supervisor.is_finished() {
                let _ = supervisor.join();
            } else {
                tracing::warn!(uri = %self.shared.uri, "libvirt connection thread is stuck in a call; leaving it behind");
            }
        }
        let live = self.shared.slot().take();
        drop(live);
    }
}

/// How long dropping a [`LibvirtHypervisor`] waits for its connection thread.
const SUPERVISOR_JOIN_WAIT: Duration = Duration::from_secs(2);

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Option<Live>> {
        // The slot is consistent at every point a panic could leave it.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a connection and registers its callbacks. Events are held back in the returned
    /// sink until it is opened with `Connected`.
    fn connect(self: &Arc<Self>) -> Result<(Live, Arc<EventSink>), BackendError> {
        let uri = &self.uri;
        let connect_error = |source| BackendError::Connect {
            uri: uri.clone(),
            source,
        };
        // The `virt` crate panics on a NUL inside a URI.
        if let Err(nul) = CString::new(uri.as_str()) {
            return Err(connect_error(LibvirtError::invalid_argument(format!(
                "the URI has a NUL byte at {}",
                nul.nul_position()
            ))));
        }
        let conn =
            Connect::open(Some(uri)).map_err(|e| connect_error(LibvirtError::from_virt(&e)))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let interval = i32::try_from(self.options.keepalive_interval.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        if let Err(e) = conn.set_keep_alive(interval, self.options.keepalive_count) {
            // Drivers that run in this process (test:///) have no keepalive, nor need one.
            tracing::debug!(uri, error = %e, "libvirt connection without keepalive");
        }
        let control = self.control.clone();
        let close = events::watch_close(
            &conn,
            Box::new(move |reason| {
                let _ = control.send(Control::Lost {
                    generation,
                    reason: reason.to_string(),
                });
            }),
        )
        .map_err(|source| BackendError::Events {
            uri: uri.clone(),
            source,
        })?;
        let sink = EventSink::held(self.events.clone());
        let domain_events = events::register_domain_events(&conn, &sink).map_err(|source| {
            BackendError::Events {
                uri: uri.clone(),
                source,
            }
        })?;
        // Closed before the close callback was in place: it would never be called.
        if !conn.is_alive().unwrap_or(false) {
            return Err(BackendError::NotConnected);
        }
        Ok((
            Live {
                generation,
                _domain_events: domain_events,
                _close: close,
                conn,
            },
            sink,
        ))
    }

    fn current(&self) -> Result<(Connect, u64), BackendError> {
        self.slot()
            .as_ref()
            .map(|live| (live.conn.clone(), live.generation))
            .ok_or(BackendError::NotConnected)
    }

    /// Reports that connection `generation` is dead, to the reconnection thread.
    fn lost(&self, generation: u64, reason: String) {
        let _ = self.control.send(Control::Lost { generation, reason });
    }

    fn supervise(self: &Arc<Self>, control: Receiver<Control>) {
        loop {
            let (generation, reason) = match control.recv() {
                Ok(Control::Lost { generation, reason }) => (generation, reason),
                Ok(Control::Shutdown) | Err(_) => return,
            };
            let dead = {
                let mut slot = self.slot();
                match slot.as_ref() {
                    Some(live) if live.generation == generation => slot.take(),
                    _ => None,
                }
            };
            let Some(dead) = dead else {
                continue;
            };
            tracing::warn!(uri = %self.uri, %reason, "lost the connection to libvirt; reconnecting");
            drop(dead);
            let _ = self.events.send(BackendEvent::Disconnected { reason });
            if !self.reconnect(&control) {
                return;
            }
        }
    }

    /// Tries to connect until it succeeds (true) or the hypervisor is dropped (false).
    fn reconnect(self: &Arc<Self>, control: &Receiver<Control>) -> bool {
        let mut delay = self.options.reconnect_min;
        let mut attempts = 0u32;
        loop {
            let deadline = Instant::now() + delay;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match control.recv_timeout(deadline - now) {
                    Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => return false,
                    // About the connection already dropped.
                    Ok(Control::Lost { .. }) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            attempts += 1;
            match self.connect() {
                Ok(_) if self.shutdown.load(Ordering::SeqCst) => return false,
                Ok((live, sink)) => {
                    *self.slot() = Some(live);
                    sink.open(BackendEvent::Connected);
                    tracing::info!(uri = %self.uri, attempts, "reconnected to libvirt");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(
                        uri = %self.uri,
                        attempts,
                        error = %ErrorChain(&e),
                        retry_in = ?delay.saturating_mul(2).min(self.options.reconnect_max),
                        "reconnecting to libvirt failed"
                    );
                    delay = delay.saturating_mul(2).min(self.options.reconnect_max);
                }
            }
        }
    }

    /// Turns a failed libvirt call about `domain` into our error; reports a dead connection.
    fn fail(
        &self,
        conn: &Connect,
        generation: u64,
        operation: &'static str,
        domain: &str,
        source: virt::error::Error,
    ) -> BackendError {
        if error_code(&source) == sys::VIR_ERR_NO_DOMAIN {
            return BackendError::NoSuchDomain {
                domain: domain.to_string(),
            };
        }
        if connection_failed(conn, &source) {
            tracing::warn!(%domain, operation, error = %source, "libvirt call failed on a dead connection");
            self.lost(
                generation,
                format!("{operation} of domain {domain} failed: {source}"),
            );
            return BackendError::NotConnected;
        }
        BackendError::Operation {
            operation,
            domain: domain.to_string(),
            source: LibvirtError::from_virt(&source),
        }
    }

    /// The domain a [`DomainRef`] names: by UUID, which survives renames; by name when the
    /// UUID is not one.
    fn lookup(
        &self,
        conn: &Connect,
        generation: u64,
        domain: &DomainRef,
    ) -> Result<Domain, BackendError> {
        let result = if looks_like_uuid(&domain.uuid) {
            conn.lookup_domain_by_uuid_string(&domain.uuid)
        } else {
            conn.lookup_domain_by_name(&domain.name)
        };
        result.map_err(|e| self.fail(conn, generation, "lookup", &domain.name, e))
    }

    fn read_info(
        &self,
        conn: &Connect,
        generation: u64,
        dom: &Domain,
    ) -> Result<DomainInfo, BackendError> {
        let fail = |operation, name: &str, e| self.fail(conn, generation, operation, name, e);
        let name = dom.name().map_err(|e| fail("read name", "?", e))?;
        let uuid = dom.uuid_string().map_err(|e| fail("read UUID", &name, e))?;
        let state = read_state(dom).map_err(|e| fail("read state", &name, e))?;
        let spec = match dom.metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(METADATA_URI),
            0,
        ) {
            Ok(xml) => match MonitorSpec::from_xml(&xml) {
                Ok(spec) => Ok(Some(spec)),
                Err(e) => {
                    tracing::warn!(domain = %name, error = %e, "domain has a broken appmon metadata element; leaving it alone");
                    Err(e)
                }
            },
            Err(e) if error_code(&e) == sys::VIR_ERR_NO_DOMAIN_METADATA => Ok(None),
            Err(e) => return Err(fail("read metadata", &name, e)),
        };
        // Only a kernel-vsock spec without its own CID needs the one in the domain XML; the
        // XML is the largest thing libvirt hands out per domain, and most domains are not that.
        let needs_cid = matches!(
            &spec,
            Ok(Some(MonitorSpec {
                transport: Transport::Vsock { cid: None, .. },
                ..
            }))
        );
        let vsock_cid = if needs_cid {
            let xml = dom.xml_desc(0).map_err(|e| fail("read XML", &name, e))?;
            match domxml::vsock_cid(&xml) {
                Ok(cid) => cid,
                Err(e) => {
                    tracing::warn!(domain = %name, error = %ErrorChain(&e), "cannot read the vsock CID from the domain XML");
                    None
                }
            }
        } else {
            None
        };
        Ok(DomainInfo {
            domain: DomainRef { uuid, name },
            state,
            spec,
            vsock_cid,
        })
    }
}

impl Hypervisor for LibvirtHypervisor {
    /// virConnectListAllDomains, then per domain virDomainGetState, virDomainGetMetadata and,
    /// for a kernel-vsock spec that leaves the CID to the domain, virDomainGetXMLDesc. A domain that vanishes meanwhile is left out; one that cannot be
    /// read for another reason is logged and left out; a lost connection fails the listing.
    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| shared.fail(&conn, generation, "listing", "(all)", e))?;
        let mut infos = Vec::with_capacity(domains.len());
        for dom in &domains {
            match shared.read_info(&conn, generation, dom) {
                Ok(info) => infos.push(info),
                Err(BackendError::NoSuchDomain { domain }) => {
                    tracing::debug!(%domain, "domain vanished while being listed");
                }
                Err(BackendError::NotConnected) => return Err(BackendError::NotConnected),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot read a domain; leaving it out of the listing");
                }
            }
        }
        Ok(infos)
    }

    /// virDomainLookupByUUIDString (when the argument looks like a UUID), else
    /// virDomainLookupByName; then as [`Hypervisor::list_domains`] for one domain.
    fn domain(&self, uuid_or_name: &str) -> Result<DomainInfo, BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let no_such = || BackendError::NoSuchDomain {
            domain: uuid_or_name.to_string(),
        };
        if uuid_or_name.contains('\0') || uuid_or_name.is_empty() {
            return Err(no_such());
        }
        let by_uuid = if looks_like_uuid(uuid_or_name) {
            match conn.lookup_domain_by_uuid_string(uuid_or_name) {
                Ok(dom) => Some(dom),
                Err(e) if error_code(&e) == sys::VIR_ERR_NO_DOMAIN => None,
                Err(e) => return Err(shared.fail(&conn, generation, "lookup", uuid_or_name, e)),
            }
        } else {
            None
        };
        let dom = match by_uuid {
            Some(dom) => dom,
            None => conn
                .lookup_domain_by_name(uuid_or_name)
                .map_err(|e| shared.fail(&conn, generation, "lookup", uuid_or_name, e))?,
        };
        shared
            .read_info(&conn, generation, &dom)
            .map_err(|e| match e {
                BackendError::NoSuchDomain { .. } => no_such(),
                e => e,
            })
    }

    /// virDomainReset.
    fn reset(&self, domain: &DomainRef) -> Result<(), BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let dom = shared.lookup(&conn, generation, domain)?;
        dom.reset()
            .map_err(|e| shared.fail(&conn, generation, "reset", &domain.name, e))
    }

    /// virDomainIsPersistent and virDomainIsActive, then virDomainDestroy and virDomainCreate.
    /// Refuses a transient domain (destroying it would undefine it, and nothing could start it
    /// again) and a domain that is not running (an operator may have stopped it on purpose).
    fn power_cycle(&self, domain: &DomainRef) -> Result<(), BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let fail = |operation, e| shared.fail(&conn, generation, operation, &domain.name, e);
        let dom = shared.lookup(&conn, generation, domain)?;
        if !dom.is_persistent().map_err(|e| fail("power-cycle", e))? {
            return Err(BackendError::Transient {
                operation: "power-cycle",
                domain: domain.name.clone(),
            });
        }
        if !dom.is_active().map_err(|e| fail("power-cycle", e))? {
            return Err(BackendError::NotRunning {
                operation: "power-cycle",
                domain: domain.name.clone(),
            });
        }
        match dom.destroy() {
            Ok(()) => {}
            // It stopped by itself between the check and the destroy: start it all the same.
            Err(e)
                if error_code(&e) == sys::VIR_ERR_OPERATION_INVALID
                    && dom.is_active().ok() == Some(false) => {}
            Err(e) => return Err(fail("power-cycle (destroy)", e)),
        }
        dom.create().map_err(|e| fail("power-cycle (start)", e))
    }

    /// virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT, key `appmon`, our namespace), with
    /// AFFECT_CONFIG for a persistent domain and AFFECT_LIVE for a running one.
    fn set_spec(&self, domain: &DomainRef, spec: Option<&MonitorSpec>) -> Result<(), BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let fail = |operation, e| shared.fail(&conn, generation, operation, &domain.name, e);
        let xml = spec.map(MonitorSpec::to_metadata_xml);
        if let Some(Err(nul)) = xml.as_deref().map(CString::new) {
            // A path with a NUL in it; the `virt` crate would panic on it.
            return Err(BackendError::Operation {
                operation: "set metadata",
                domain: domain.name.clone(),
                source: LibvirtError::invalid_argument(format!(
                    "the metadata has a NUL byte at {}",
                    nul.nul_position()
                )),
            });
        }
        let dom = shared.lookup(&conn, generation, domain)?;
        let mut retried = false;
        loop {
            let persistent = dom.is_persistent().map_err(|e| fail("set metadata", e))?;
            let active = dom.is_active().map_err(|e| fail("set metadata", e))?;
            let flags = metadata_flags(persistent, active);
            if flags == 0 {
                // Transient and not running: gone.
                return Err(BackendError::NoSuchDomain {
                    domain: domain.name.clone(),
                });
            }
            match dom.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                xml.as_deref(),
                Some(METADATA_KEY),
                Some(METADATA_URI),
                flags,
            ) {
                Ok(()) => return Ok(()),
                // Started or stopped between the checks and the call: once more, with the
                // flags of its new state.
                Err(e) if !retried && error_code(&e) == sys::VIR_ERR_OPERATION_INVALID => {
                    retried = true;
                }
                Err(e) => return Err(fail("set metadata", e)),
            }
        }
    }

    /// virDomainGetXMLDesc without flags: the live XML of a running domain.
    fn domain_xml(&self, domain: &DomainRef) -> Result<String, BackendError> {
        let shared = &self.shared;
        let (conn, generation) = shared.current()?;
        let dom = shared.lookup(&conn, generation, domain)?;
        dom.xml_desc(0)
            .map_err(|e| shared.fail(&conn, generation, "read XML", &domain.name, e))
    }
}

/// virDomainModificationImpact flags for changing the metadata of a domain that is
/// `persistent` and/or `active`.
pub fn metadata_flags(persistent: bool, active: bool) -> u32 {
    let mut flags = 0;
    if persistent {
        flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
    }
    if active {
        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
    }
    flags
}

/// Maps virDomainGetState's state and reason codes.
pub fn domain_state(state: u32, reason: i32) -> DomainState {
    let reason = reason as u32;
    match state {
        sys::VIR_DOMAIN_RUNNING => DomainState::Running(match reason {
            sys::VIR_DOMAIN_RUNNING_BOOTED => RunningReason::Booted,
            // Post-copy: running here while memory is still being pulled from the source.
            sys::VIR_DOMAIN_RUNNING_MIGRATED | sys::VIR_DOMAIN_RUNNING_POSTCOPY => {
                RunningReason::Migrated
            }
            sys::VIR_DOMAIN_RUNNING_RESTORED | sys::VIR_DOMAIN_RUNNING_FROM_SNAPSHOT => {
                RunningReason::Restored
            }
            sys::VIR_DOMAIN_RUNNING_UNPAUSED => RunningReason::Unpaused,
            _ => RunningReason::Other,
        }),
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused(match reason {
            sys::VIR_DOMAIN_PAUSED_USER => PausedReason::User,
            sys::VIR_DOMAIN_PAUSED_MIGRATION | sys::VIR_DOMAIN_PAUSED_POSTCOPY => {
                PausedReason::Migrating
            }
            sys::VIR_DOMAIN_PAUSED_SAVE => PausedReason::Saving,
            sys::VIR_DOMAIN_PAUSED_STARTING_UP => PausedReason::StartingUp,
            _ => PausedReason::Other,
        }),
        sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff(match reason {
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => ShutOffReason::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => ShutOffReason::Destroyed,
            sys::VIR_DOMAIN_SHUTOFF_CRASHED => ShutOffReason::Crashed,
            sys::VIR_DOMAIN_SHUTOFF_MIGRATED => ShutOffReason::Migrated,
            sys::VIR_DOMAIN_SHUTOFF_SAVED => ShutOffReason::Saved,
            sys::VIR_DOMAIN_SHUTOFF_FAILED => ShutOffReason::Failed,
            _ => ShutOffReason::Other,
        }),
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        // Shutting down, blocked, PM-suspended, no state.
        _ => DomainState::Other,
    }
}

/// virDomainGetState through the `virt` crate, which drops the call's error (0.5.0 returns an
/// out-of-range state instead): recover it from libvirt's per-thread last error.
fn read_state(dom: &Domain) -> Result<DomainState, virt::error::Error> {
    let (state, reason) = dom.state()?;
    let state = raw_state(state);
    if state == u32::MAX {
        // virDomainGetState failed and left its error for this thread.
        return Err(virt::error::Error::last_error());
    }
    Ok(domain_state(state, raw_reason(reason)))
}

fn raw_state(state: DomainStateEnum) -> u32 {
    state.to_raw()
}

fn raw_reason(reason: DomainStateReasonEnum) -> i32 {
    let raw = match reason {
        Enum::Unknown(raw) => return raw,
        Enum::Known(known) => match known {
            DomainStateReason::NoState(r) => r.to_raw(),
            DomainStateReason::Running(r) => r.to_raw(),
            DomainStateReason::Blocked(r) => r.to_raw(),
            DomainStateReason::Paused(r) => r.to_raw(),
            DomainStateReason::Shutdown(r) => r.to_raw(),
            DomainStateReason::Shutoff(r) => r.to_raw(),
            DomainStateReason::Crashed(r) => r.to_raw(),
            DomainStateReason::PMSuspended(r) => r.to_raw(),
        },
    };
    i32::try_from(raw).unwrap_or(-1)
}

fn error_code(e: &virt::error::Error) -> u32 {
    e.code().to_raw()
}

/// Whether a failed call failed because the connection is gone, rather than for the domain.
fn connection_failed(conn: &Connect, e: &virt::error::Error) -> bool {
    matches!(
        error_code(e),
        sys::VIR_ERR_NO_CONNECT | sys::VIR_ERR_INVALID_CONN
    ) || !conn.is_alive().unwrap_or(false)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` or the same 32 hex digits without dashes, as
/// virDomainLookupByUUIDString accepts them.
pub fn looks_like_uuid(text: &str) -> bool {
    let hex = text.bytes().filter(u8::is_ascii_hexdigit).count();
    let dashes = text.bytes().filter(|&b| b == b'-').count();
    hex == 32 && hex + dashes == text.len()
}

/// Displays an error with its chain of sources, for logs.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
