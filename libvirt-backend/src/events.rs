//! libvirt's event loop and the callbacks the `virt` crate does not wrap: the one place of this
//! workspace with `unsafe`.
//!
//! - [`ensure_event_loop`] registers libvirt's default event implementation (once per process,
//!   before the first connection is opened) and runs `virEventRunDefaultImpl` on the thread
//!   `appmon-libvirt-events`. Every callback below runs on that thread.
//! - `register_domain_events` registers LIFECYCLE, REBOOT, WATCHDOG and METADATA_CHANGE
//!   callbacks with `virConnectDomainEventRegisterAny`; `DomainEventRegistration` deregisters
//!   them on drop.
//! - `watch_close` registers a `virConnectRegisterCloseCallback`: how a remote connection
//!   learns that libvirtd went away (end of file, keepalive timeout).
//!
//! The callbacks never block (they push into an unbounded channel through `EventSink`) and
//! never unwind into libvirt (each body runs under `catch_unwind`). Their opaque data is a
//! `Box` that libvirt owns from a successful registration on and frees through the free
//! callback we pass; a failed registration leaves it to us.
//!
//! The mapping from libvirt's event and detail codes to [`DomainEvent`] is plain code:
//! [`lifecycle_event`].

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

use crate::{
    BackendEvent, DomainEvent, DomainRef, LibvirtError, PausedReason, RunningReason, ShutOffReason,
    StartedReason, METADATA_URI,
};

/// Why the event machinery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the libvirt event loop could not be started: {0}")]
    EventLoop(String),
    #[error("registering for {event} events failed")]
    Register {
        event: &'static str,
        #[source]
        source: LibvirtError,
    },
    #[error("registering the connection close callback failed")]
    CloseCallback(#[source] LibvirtError),
}

/// The name of the thread that runs libvirt's event loop.
pub const EVENT_THREAD_NAME: &str = "appmon-libvirt-events";

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers libvirt's default event implementation and starts the thread that runs it, once
/// per process. Must run before any connection is opened: a connection only uses the event
/// loop (for its socket, keepalive and event dispatch) when one was registered before it.
///
/// Also turns off libvirt's default error handler, which would print every error, expected
/// ones such as "no metadata" included, to stderr; errors reach our logs through their
/// `Result`s.
pub fn ensure_event_loop() -> Result<(), EventError> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl().map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name(EVENT_THREAD_NAME.into())
                .spawn(|| loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::error!(error = %e, "libvirt event loop iteration failed");
                        // Not a busy loop should the failure repeat.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(EventError::EventLoop)
}

/// Where the callbacks of one connection put their events.
///
/// It starts closed: events are held back until [`EventSink::open`] sends the `Connected` that
/// must come first on the channel and then everything held, in order. So callbacks can be
/// registered before the connection is announced without losing or reordering events.
#[derive(Debug)]
pub(crate) struct EventSink {
    tx: UnboundedSender<BackendEvent>,
    held: Mutex<Option<Vec<BackendEvent>>>,
}

impl EventSink {
    pub(crate) fn held(tx: UnboundedSender<BackendEvent>) -> Arc<Self> {
        Arc::new(EventSink {
            tx,
            held: Mutex::new(Some(Vec::new())),
        })
    }

    /// Delivers `event`, or holds it while the sink is closed. Never blocks for long: the lock
    /// is only held to push into a vector or an unbounded channel.
    pub(crate) fn deliver(&self, event: BackendEvent) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(events) => events.push(event),
            // The receiver may be gone (the host agent is shutting down): nothing to do then.
            None => {
                let _ = self.tx.send(event);
            }
        }
    }

    /// Sends `first`, then every event held so far, and lets later events through directly.
    pub(crate) fn open(&self, first: BackendEvent) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.tx.send(first);
        for event in held.take().unwrap_or_default() {
            let _ = self.tx.send(event);
        }
    }
}

/// Maps a LIFECYCLE callback's event and detail codes.
///
/// `None` for codes this libvirt's headers do not know (newer daemons may send them).
pub fn lifecycle_event(event: c_int, detail: c_int) -> Option<DomainEvent> {
    let Ok(event) = sys::virDomainEventType::try_from(event) else {
        return None;
    };
    let detail = detail as u32;
    Some(match event {
        sys::VIR_DOMAIN_EVENT_DEFINED => DomainEvent::Defined,
        sys::VIR_DOMAIN_EVENT_UNDEFINED => DomainEvent::Undefined,
        sys::VIR_DOMAIN_EVENT_STARTED => DomainEvent::Started(match detail {
            sys::VIR_DOMAIN_EVENT_STARTED_BOOTED => StartedReason::Booted,
            sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED => StartedReason::Migrated,
            sys::VIR_DOMAIN_EVENT_STARTED_RESTORED => StartedReason::Restored,
            sys::VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT => StartedReason::FromSnapshot,
            sys::VIR_DOMAIN_EVENT_STARTED_WAKEUP => StartedReason::Wakeup,
            _ => StartedReason::Other,
        }),
        sys::VIR_DOMAIN_EVENT_SUSPENDED => DomainEvent::Suspended(match detail {
            sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => PausedReason::User,
            // Post-copy: the source is paused while the destination runs; leaving as well.
            sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED | sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY => {
                PausedReason::Migrating
            }
            _ => PausedReason::Other,
        }),
        sys::VIR_DOMAIN_EVENT_RESUMED => DomainEvent::Resumed(match detail {
            sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED => RunningReason::Unpaused,
            // Post-copy: the destination runs while memory is still being pulled: arrived.
            sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED | sys::VIR_DOMAIN_EVENT_RESUMED_POSTCOPY => {
                RunningReason::Migrated
            }
            // `virsh restore` ends with this detail (MIGRATION.md), as does a snapshot revert.
            sys::VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT => RunningReason::Restored,
            _ => RunningReason::Other,
        }),
        sys::VIR_DOMAIN_EVENT_STOPPED => DomainEvent::Stopped(match detail {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => ShutOffReason::Shutdown,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => ShutOffReason::Destroyed,
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => ShutOffReason::Crashed,
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => ShutOffReason::Migrated,
            sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => ShutOffReason::Saved,
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => ShutOffReason::Failed,
            _ => ShutOffReason::Other,
        }),
        // Finished, finished after guest request, finished after host request: all finished.
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => DomainEvent::ShutdownFinished,
        // A guest suspended to RAM or disk sends no heartbeats and must not be reset for it.
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => DomainEvent::Suspended(PausedReason::Other),
        sys::VIR_DOMAIN_EVENT_CRASHED => DomainEvent::Crashed,
        _ => return None,
    })
}

/// Whether a METADATA_CHANGE callback is about our element. Title and description changes are
/// not; an element change without a namespace URI might be.
pub fn metadata_change_is_ours(kind: c_int, nsuri: Option<&[u8]>) -> bool {
    kind == sys::VIR_DOMAIN_METADATA_ELEMENT as c_int
        && nsuri.is_none_or(|uri| uri == METADATA_URI.as_bytes())
}

/// Describes a close callback's reason code.
pub fn close_reason(reason: c_int) -> &'static str {
    match u32::try_from(reason) {
        Ok(sys::VIR_CONNECT_CLOSE_REASON_ERROR) => "connection error",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_EOF) => "libvirtd closed the connection",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE) => "libvirtd stopped answering keepalives",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_CLIENT) => "the connection was closed by this process",
        _ => "connection closed for an unknown reason",
    }
}

/// What every domain event callback gets as its opaque pointer.
struct CallbackData {
    sink: Arc<EventSink>,
}

/// The domain event callbacks registered on one connection; deregistered on drop.
#[derive(Debug)]
pub(crate) struct DomainEventRegistration {
    conn: Connect,
    callback_ids: Vec<c_int>,
}

type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type WatchdogCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *mut c_void);
type MetadataCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *const c_char, *mut c_void);

/// Registers the LIFECYCLE, REBOOT, WATCHDOG and METADATA_CHANGE callbacks of `conn`, all of
/// them delivering into `sink`. On failure, those registered so far are deregistered again.
pub(crate) fn register_domain_events(
    conn: &Connect,
    sink: &Arc<EventSink>,
) -> Result<DomainEventRegistration, EventError> {
    // SAFETY: libvirt calls a callback registered for an event ID through the function type of
    // that ID (VIR_DOMAIN_EVENT_CALLBACK in libvirt-domain.h is this very cast). Each callback
    // below is registered with the ID whose type it has, and fn pointers all have one size.
    let callbacks: [(sys::virDomainEventID, &'static str, GenericCallback); 4] = unsafe {
        [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                "lifecycle",
                std::mem::transmute::<LifecycleCallback, GenericCallback>(lifecycle_callback),
            ),
            (sys::VIR_DOMAIN_EVENT_ID_REBOOT, "reboot", reboot_callback),
            (
                sys::VIR_DOMAIN_EVENT_ID_WATCHDOG,
                "watchdog",
                std::mem::transmute::<WatchdogCallback, GenericCallback>(watchdog_callback),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
                "metadata change",
                std::mem::transmute::<MetadataCallback, GenericCallback>(metadata_callback),
            ),
        ]
    };
    let mut registration = DomainEventRegistration {
        conn: conn.clone(),
        callback_ids: Vec::with_capacity(callbacks.len()),
    };
    for (id, event, callback) in callbacks {
        let data = Box::into_raw(Box::new(CallbackData { sink: sink.clone() }));
        // SAFETY: the connection pointer is valid while `registration.conn` holds its
        // reference; a null domain asks for events of every domain; `data` is a valid
        // CallbackData that libvirt owns from here on and frees with `free_callback_data`.
        let ret = unsafe {
            sys::virConnectDomainEventRegisterAny(
                registration.conn.as_ptr(),
                std::ptr::null_mut(),
                id as c_int,
                Some(callback),
                data.cast(),
                Some(free_callback_data),
            )
        };
        if ret < 0 {
            let source = LibvirtError::last();
            // SAFETY: a failed registration does not take ownership of the opaque data and
            // never calls its free callback, so this is the only owner of the box.
            drop(unsafe { Box::from_raw(data) });
            return Err(EventError::Register { event, source });
        }
        registration.callback_ids.push(ret);
    }
    Ok(registration)
}

impl Drop for DomainEventRegistration {
    fn drop(&mut self) {
        for id in self.callback_ids.drain(..) {
            // SAFETY: the connection pointer is valid while `self.conn` holds its reference and
            // `id` came from a successful registration on it. libvirt frees the opaque data once
            // no dispatch uses it any more, also when deregistering from another thread.
            let ret = unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), id) };
            if ret < 0 {
                // On a dead remote connection the daemon cannot be told, but the local
                // callback is gone (and its data freed) all the same.
                tracing::debug!(
                    callback_id = id,
                    error = %virt::error::Error::last_error(),
                    "deregistering a domain event callback reported an error"
                );
            }
        }
    }
}

unsafe extern "C" fn free_callback_data(opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt calls this exactly once per successful registration, with the opaque
        // pointer we passed, which came from Box::into_raw of a CallbackData.
        drop(unsafe { Box::from_raw(opaque.cast::<CallbackData>()) });
    }));
}

/// Reads the identity of the domain a callback is about and delivers `event` for it.
///
/// # Safety
/// `dom` must be null or a domain pointer valid for the duration of the call, and `opaque` the
/// pointer registered with a CallbackData that libvirt has not freed yet: both hold within a
/// domain event callback.
unsafe fn deliver(dom: sys::virDomainPtr, opaque: *mut c_void, event: DomainEvent) {
    // SAFETY: per this function's contract.
    let Some(domain) = (unsafe { domain_ref(dom) }) else {
        return;
    };
    // SAFETY: per this function's contract, `opaque` points to a live CallbackData, which is
    // only ever read.
    let data = unsafe { &*opaque.cast::<CallbackData>() };
    data.sink.deliver(BackendEvent::Domain { domain, event });
}

/// # Safety
/// `dom` must be null or a valid domain pointer.
unsafe fn domain_ref(dom: sys::virDomainPtr) -> Option<DomainRef> {
    if dom.is_null() {
        return None;
    }
    // SAFETY: `dom` is valid. virDomainGetName returns a pointer into the domain object (no
    // call to libvirtd), valid while `dom` is, or null.
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return None;
    }
    // SAFETY: a non-null name is a NUL-terminated string owned by `dom`; we copy it at once.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let mut uuid = [0u8; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid and the buffer has the VIR_UUID_STRING_BUFLEN bytes the call
    // writes at most (a NUL-terminated string); no call to libvirtd is made.
    let ret = unsafe { sys::virDomainGetUUIDString(dom, uuid.as_mut_ptr().cast::<c_char>()) };
    if ret < 0 {
        return None;
    }
    let uuid = CStr::from_bytes_until_nul(&uuid)
        .ok()?
        .to_string_lossy()
        .into_owned();
    Some(DomainRef { uuid, name })
}

unsafe extern "C" fn lifecycle_callback(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let _ = catch_unwind(AssertUnwindSafe(|| match lifecycle_event(event, detail) {
        // SAFETY: libvirt passes the domain of the event and our registered opaque pointer.
        Some(mapped) => unsafe { deliver(dom, opaque, mapped) },
        None => tracing::debug!(event, detail, "ignoring an unknown lifecycle event"),
    }));
    0
}

unsafe extern "C" fn reboot_callback(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt passes the domain of the event and our registered opaque pointer.
        unsafe { deliver(dom, opaque, DomainEvent::Rebooted) }
    }));
}

unsafe extern "C" fn watchdog_callback(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _action: c_int,
    opaque: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt passes the domain of the event and our registered opaque pointer.
        unsafe { deliver(dom, opaque, DomainEvent::Watchdog) }
    }));
}

unsafe extern "C" fn metadata_callback(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    kind: c_int,
    nsuri: *const c_char,
    opaque: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let nsuri = if nsuri.is_null() {
            None
        } else {
            // SAFETY: a non-null nsuri is a NUL-terminated string valid during the callback.
            Some(unsafe { CStr::from_ptr(nsuri) }.to_bytes())
        };
        if metadata_change_is_ours(kind, nsuri) {
            // SAFETY: libvirt passes the domain of the event and our registered opaque pointer.
            unsafe { deliver(dom, opaque, DomainEvent::MetadataChanged) }
        }
    }));
}

/// What the close callback calls, with a description of the reason.
pub(crate) type OnClose = Box<dyn Fn(&'static str) + Send + Sync>;

struct CloseData {
    on_close: OnClose,
}

/// A registered close callback; unregistered on drop.
#[derive(Debug)]
pub(crate) struct CloseWatch {
    conn: Connect,
}

/// Calls `on_close` (on the event loop thread; it must not block) when `conn` closes for any
/// reason but our own closing of it: libvirtd exited, or stopped answering keepalives.
///
/// Only remote connections (every `qemu:///system` connection of a client, and `*+unix://`)
/// ever call it. Drivers that run inside this process, such as `test:///`, accept the
/// registration and never call the callback nor free its data: a few bytes per connection stay
/// allocated there, which we take over freeing data libvirt may still use.
pub(crate) fn watch_close(conn: &Connect, on_close: OnClose) -> Result<CloseWatch, EventError> {
    let data = Box::into_raw(Box::new(CloseData { on_close }));
    // SAFETY: the connection pointer is valid while the caller's `conn` holds its reference;
    // `data` is a valid CloseData that libvirt owns from here on and frees with
    // `free_close_data` (after the callback ran once, or when it is unregistered).
    let ret = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_callback),
            data.cast(),
            Some(free_close_data),
        )
    };
    if ret < 0 {
        let source = LibvirtError::last();
        // SAFETY: a failed registration takes no ownership and never calls the free callback.
        drop(unsafe { Box::from_raw(data) });
        return Err(EventError::CloseCallback(source));
    }
    Ok(CloseWatch { conn: conn.clone() })
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        // SAFETY: the connection pointer is valid while `self.conn` holds its reference. If the
        // callback already ran, libvirt unregistered it itself and this call only reports an
        // error; otherwise libvirt frees the opaque data through `free_close_data`.
        let ret = unsafe {
            sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(close_callback))
        };
        if ret < 0 {
            tracing::trace!(
                error = %virt::error::Error::last_error(),
                "unregistering the close callback reported an error"
            );
        }
    }
}

unsafe extern "C" fn close_callback(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt passes the opaque pointer we registered, a CloseData it frees only
        // after this callback returned; it is only read.
        let data = unsafe { &*opaque.cast::<CloseData>() };
        (data.on_close)(close_reason(reason));
    }));
}

unsafe extern "C" fn free_close_data(opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt calls this once, with the pointer we registered, which came from
        // Box::into_raw of a CloseData.
        drop(unsafe { Box::from_raw(opaque.cast::<CloseData>()) });
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent as E;

    #[test]
    fn lifecycle_codes_map_to_domain_events() {
        use sys::*;
        let cases: &[(u32, u32, Option<DomainEvent>)] = &[
            (
                VIR_DOMAIN_EVENT_DEFINED,
                VIR_DOMAIN_EVENT_DEFINED_ADDED,
                Some(E::Defined),
            ),
            (
                VIR_DOMAIN_EVENT_DEFINED,
                VIR_DOMAIN_EVENT_DEFINED_UPDATED,
                Some(E::Defined),
            ),
            (
                VIR_DOMAIN_EVENT_UNDEFINED,
                VIR_DOMAIN_EVENT_UNDEFINED_REMOVED,
                Some(E::Undefined),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_BOOTED,
                Some(E::Started(StartedReason::Booted)),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_MIGRATED,
                Some(E::Started(StartedReason::Migrated)),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_RESTORED,
                Some(E::Started(StartedReason::Restored)),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT,
                Some(E::Started(StartedReason::FromSnapshot)),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_WAKEUP,
                Some(E::Started(StartedReason::Wakeup)),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                VIR_DOMAIN_EVENT_STARTED_RECREATED,
                Some(E::Started(StartedReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_SUSPENDED,
                VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
                Some(E::Suspended(PausedReason::User)),
            ),
            (
                VIR_DOMAIN_EVENT_SUSPENDED,
                VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
                Some(E::Suspended(PausedReason::Migrating)),
            ),
            (
                VIR_DOMAIN_EVENT_SUSPENDED,
                VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
                Some(E::Suspended(PausedReason::Migrating)),
            ),
            (
                VIR_DOMAIN_EVENT_SUSPENDED,
                VIR_DOMAIN_EVENT_SUSPENDED_IOERROR,
                Some(E::Suspended(PausedReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_SUSPENDED,
                VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG,
                Some(E::Suspended(PausedReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_RESUMED,
                VIR_DOMAIN_EVENT_RESUMED_UNPAUSED,
                Some(E::Resumed(RunningReason::Unpaused)),
            ),
            (
                VIR_DOMAIN_EVENT_RESUMED,
                VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
                Some(E::Resumed(RunningReason::Migrated)),
            ),
            (
                VIR_DOMAIN_EVENT_RESUMED,
                VIR_DOMAIN_EVENT_RESUMED_POSTCOPY,
                Some(E::Resumed(RunningReason::Migrated)),
            ),
            (
                VIR_DOMAIN_EVENT_RESUMED,
                VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT,
                Some(E::Resumed(RunningReason::Restored)),
            ),
            (
                VIR_DOMAIN_EVENT_RESUMED,
                VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED,
                Some(E::Resumed(RunningReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
                Some(E::Stopped(ShutOffReason::Shutdown)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
                Some(E::Stopped(ShutOffReason::Destroyed)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                Some(E::Stopped(ShutOffReason::Crashed)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
                Some(E::Stopped(ShutOffReason::Migrated)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_SAVED,
                Some(E::Stopped(ShutOffReason::Saved)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_FAILED,
                Some(E::Stopped(ShutOffReason::Failed)),
            ),
            (
                VIR_DOMAIN_EVENT_STOPPED,
                VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT,
                Some(E::Stopped(ShutOffReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_SHUTDOWN,
                VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
                Some(E::ShutdownFinished),
            ),
            (
                VIR_DOMAIN_EVENT_SHUTDOWN,
                VIR_DOMAIN_EVENT_SHUTDOWN_GUEST,
                Some(E::ShutdownFinished),
            ),
            (
                VIR_DOMAIN_EVENT_SHUTDOWN,
                VIR_DOMAIN_EVENT_SHUTDOWN_HOST,
                Some(E::ShutdownFinished),
            ),
            (
                VIR_DOMAIN_EVENT_PMSUSPENDED,
                VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY,
                Some(E::Suspended(PausedReason::Other)),
            ),
            (
                VIR_DOMAIN_EVENT_CRASHED,
                VIR_DOMAIN_EVENT_CRASHED_PANICKED,
                Some(E::Crashed),
            ),
            (
                VIR_DOMAIN_EVENT_STARTED,
                99,
                Some(E::Started(StartedReason::Other)),
            ),
            (42, 0, None),
        ];
        for &(event, detail, expected) in cases {
            assert_eq!(
                lifecycle_event(event as c_int, detail as c_int),
                expected,
                "event {event} detail {detail}"
            );
        }
        assert_eq!(lifecycle_event(-1, 0), None);
    }

    #[test]
    fn only_our_metadata_element_counts() {
        let element = sys::VIR_DOMAIN_METADATA_ELEMENT as c_int;
        let cases: &[(c_int, Option<&[u8]>, bool)] = &[
            (element, Some(METADATA_URI.as_bytes()), true),
            (element, None, true),
            (element, Some(b"https://example.com/other"), false),
            (sys::VIR_DOMAIN_METADATA_TITLE as c_int, None, false),
            (sys::VIR_DOMAIN_METADATA_DESCRIPTION as c_int, None, false),
        ];
        for &(kind, uri, expected) in cases {
            assert_eq!(
                metadata_change_is_ours(kind, uri),
                expected,
                "{kind} {uri:?}"
            );
        }
    }

    #[test]
    fn close_reasons_are_described() {
        assert_eq!(
            close_reason(sys::VIR_CONNECT_CLOSE_REASON_EOF as c_int),
            "libvirtd closed the connection"
        );
        assert!(close_reason(-7).contains("unknown"));
    }

    #[test]
    fn a_closed_sink_holds_events_until_connected_goes_first() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = EventSink::held(tx);
        let domain = DomainRef {
            uuid: "u".into(),
            name: "n".into(),
        };
        let event = |event| BackendEvent::Domain {
            domain: domain.clone(),
            event,
        };
        sink.deliver(event(E::Defined));
        assert!(rx.try_recv().is_err());
        sink.open(BackendEvent::Connected);
        sink.deliver(event(E::Undefined));
        let received: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            received,
            vec![
                BackendEvent::Connected,
                event(E::Defined),
                event(E::Undefined)
            ]
        );
    }
}
