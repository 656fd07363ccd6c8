//! Everything of appmon that touches libvirt.
//!
//! The host agent sees the [`Hypervisor`] trait and the plain types of this module, never the
//! `virt` crate: domains, their state, lifecycle events, the monitoring policy stored in each
//! domain's metadata, reset and power-cycle.
//!
//! # Modules
//!
//! - [`spec`]: the `<appmon:monitor>` metadata element: policy overrides and how to reach the
//!   guest agent; parsing and writing it.
//! - [`domxml`]: what the host agent reads from a domain's XML (vsock CID, channel sockets).
//! - [`libvirt`]: [`LibvirtHypervisor`], the implementation over the `virt` crate, with the
//!   event loop thread and reconnection.
//! - [`events`]: the one place with `unsafe`: registering lifecycle, reboot and metadata-change
//!   callbacks through `virt::sys`, which the `virt` crate does not wrap.
//! - [`error`]: [`LibvirtError`], libvirt's own error (code, origin, message) in plain types.
//! - `testing` (cargo feature `testing`, for the tests and benchmarks of this and other
//!   crates): a private libvirtd serving only the test driver, test-driver domains, and a
//!   second connection that drives them and records their events.
//!
//! # Threads
//!
//! libvirt calls block. The trait's methods are synchronous and must be called off the async
//! runtime (a blocking pool or a dedicated thread). Events arrive on a channel fed by one named
//! event-loop thread.

use std::fmt;
use std::path::PathBuf;

pub mod domxml;
pub mod error;
pub mod events;
pub mod libvirt;
pub mod spec;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

// The domain vocabulary is the control schema's (one definition for the backend, the host
// agent and every reader of its history); this crate produces it.
pub use appmon_control::{
    DomainEvent, DomainState, PausedReason, RunningReason, ShutOffReason, StartedReason,
};
pub use error::LibvirtError;
pub use libvirt::{ConnectOptions, LibvirtHypervisor, DEFAULT_URI};
pub use spec::{
    MonitorSpec, ResetMethod, SpecError, Transport, DEFAULT_CHANNEL_NAME, METADATA_KEY,
    METADATA_URI,
};

/// A domain's identity. The UUID is what stays the same across a migration (and what the host
/// agent keys its state by); the name is what operators type and logs show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainRef {
    pub uuid: String,
    pub name: String,
}

impl fmt::Display for DomainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What the host agent needs to know of one domain.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub domain: DomainRef,
    pub state: DomainState,
    /// The `<appmon:monitor>` element: `Ok(None)` when there is none (the domain is never
    /// touched), `Err` when it is there but broken (logged; the domain is left alone).
    pub spec: Result<Option<MonitorSpec>, SpecError>,
    /// `<devices><vsock><cid address=.../>` of the live XML, read only for a spec whose
    /// kernel-vsock transport names no CID of its own. `None` for every other domain, and when
    /// the XML has no usable CID (logged with the domain's name).
    pub vsock_cid: Option<u32>,
}

/// What the backend reports on its event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    Domain {
        domain: DomainRef,
        event: DomainEvent,
    },
    /// The connection to libvirtd is (again) up and callbacks are registered. After a
    /// reconnect, events may have been missed: re-read every domain with
    /// [`Hypervisor::list_domains`].
    Connected,
    /// The connection to libvirtd was lost; the backend keeps trying to reconnect.
    Disconnected { reason: String },
}

/// How a libvirt call failed. Every variant names the domain it was about, where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("libvirt at {uri} is not reachable")]
    Connect {
        uri: String,
        #[source]
        source: LibvirtError,
    },
    #[error("no connection to libvirt (it went away; reconnecting)")]
    NotConnected,
    #[error("domain {domain} not found")]
    NoSuchDomain { domain: String },
    #[error("{operation} of domain {domain} failed")]
    Operation {
        operation: &'static str,
        domain: String,
        #[source]
        source: LibvirtError,
    },
    #[error("domain {domain} has an XML description appmon cannot read")]
    DomainXml {
        domain: String,
        #[source]
        source: quick_xml::Error,
    },
    #[error("domain {domain} has a device description appmon cannot read")]
    DomainDevices {
        domain: String,
        #[source]
        source: domxml::DomXmlError,
    },
    #[error("{operation} of domain {domain} refused: the domain is transient and would be gone after a destroy")]
    Transient {
        operation: &'static str,
        domain: String,
    },
    #[error("{operation} of domain {domain} refused: the domain is not running")]
    NotRunning {
        operation: &'static str,
        domain: String,
    },
    #[error("following the events of libvirt at {uri} failed")]
    Events {
        uri: String,
        #[source]
        source: events::EventError,
    },
    #[error("starting the libvirt connection thread failed")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// The host agent's view of the hypervisor. Methods block; call them off the async runtime.
pub trait Hypervisor: Send + Sync + 'static {
    /// Every domain libvirt knows, running or not, with its monitoring spec.
    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError>;

    /// One domain, looked up by UUID or, failing that, by name.
    fn domain(&self, uuid_or_name: &str) -> Result<DomainInfo, BackendError>;

    /// Resets the guest in place (virDomainReset): like pressing the reset button.
    fn reset(&self, domain: &DomainRef) -> Result<(), BackendError>;

    /// Destroys the domain and starts it again: the robust reset where an in-place reset does
    /// not bring the guest back.
    fn power_cycle(&self, domain: &DomainRef) -> Result<(), BackendError>;

    /// Writes (`Some`) or removes (`None`) the `<appmon:monitor>` element, in the live and
    /// the persistent definition as far as the domain has them.
    fn set_spec(&self, domain: &DomainRef, spec: Option<&MonitorSpec>) -> Result<(), BackendError>;

    /// The live domain XML, for a domain's channel socket paths and for diagnostics.
    fn domain_xml(&self, domain: &DomainRef) -> Result<String, BackendError>;

    /// The host-side Unix socket of the domain's virtio-serial channel `target_name` (such as
    /// [`DEFAULT_CHANNEL_NAME`]) from the live XML: where libvirt generated one for a channel
    /// without `path=`, only the live XML has it. `None` when there is no such channel.
    fn channel_socket_path(
        &self,
        domain: &DomainRef,
        target_name: &str,
    ) -> Result<Option<PathBuf>, BackendError> {
        let xml = self.domain_xml(domain)?;
        domxml::channel_socket_path(&xml, target_name).map_err(|e| match e {
            domxml::DomXmlError::Xml(source) => BackendError::DomainXml {
                domain: domain.name.clone(),
                source,
            },
            source => BackendError::DomainDevices {
                domain: domain.name.clone(),
                source,
            },
        })
    }
}
