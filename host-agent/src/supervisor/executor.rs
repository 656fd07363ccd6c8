//! The supervisor's blocking work: every libvirt call runs on the blocking pool and reports
//! back as an [`Internal`] message, so the supervisor itself never waits for libvirt.

use std::sync::Arc;

use appmon_control::{ResetMethod, Response};
use appmon_libvirt_backend::{BackendError, DomainInfo, DomainRef, Hypervisor, MonitorSpec};
use appmon_wire::report::error_chain;
use tokio::sync::{mpsc, oneshot};

use crate::session::{ChannelLookup, VmId};

/// Results of work the supervisor started.
#[derive(Debug)]
pub(super) enum Internal {
    Listing {
        seq: u64,
        result: Result<Vec<DomainInfo>, BackendError>,
    },
    Lookup {
        key: String,
        seq: u64,
        result: Result<DomainInfo, BackendError>,
    },
    ResetResult {
        vm: VmId,
        method: ResetMethod,
        result: Result<(), String>,
    },
    Escalated {
        vm: VmId,
        resource: String,
        result: Result<(), String>,
    },
    SpecWritten {
        domain: DomainRef,
        reply: oneshot::Sender<Response>,
        removed: bool,
        result: Result<(), String>,
    },
}

/// Starts libvirt calls off the runtime; their results come back on the supervisor's channel.
pub(super) struct Executor {
    hv: Arc<dyn Hypervisor>,
    tx: mpsc::UnboundedSender<Internal>,
}

impl Executor {
    pub(super) fn new(hv: Arc<dyn Hypervisor>, tx: mpsc::UnboundedSender<Internal>) -> Self {
        Executor { hv, tx }
    }

    fn spawn(&self, work: impl FnOnce(&dyn Hypervisor) -> Internal + Send + 'static) {
        let hv = self.hv.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            // The supervisor gone means shutdown: nobody wants the answer.
            let _ = tx.send(work(hv.as_ref()));
        });
    }

    /// Lists every domain; `seq` is the libvirt event sequence number when the call was issued.
    pub(super) fn list(&self, seq: u64) {
        self.spawn(move |hv| Internal::Listing {
            seq,
            result: hv.list_domains(),
        });
    }

    /// Looks one domain up by UUID or name.
    pub(super) fn lookup(&self, key: &str, seq: u64) {
        let key = key.to_string();
        self.spawn(move |hv| Internal::Lookup {
            result: hv.domain(&key),
            key,
            seq,
        });
    }

    /// Resets (or power-cycles) the domain, `after` from now: a reset decided on the guest's
    /// own request waits until its answer has reached the guest (see `ANSWER_SETTLE`).
    /// `cluster`: the domain's Pacemaker resource; the reset goes ahead only while the cluster
    /// has it started on this node with nothing under way (or no cluster answers).
    pub(super) fn reset(
        &self,
        vm: VmId,
        domain: DomainRef,
        method: ResetMethod,
        cluster: Option<String>,
        after: std::time::Duration,
    ) {
        if !after.is_zero() {
            let this = Executor {
                hv: self.hv.clone(),
                tx: self.tx.clone(),
            };
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                this.reset(vm, domain, method, cluster, std::time::Duration::ZERO);
            });
            return;
        }
        self.spawn(move |hv| {
            if let Some(resource) = &cluster {
                match crate::cluster::check_reset(resource, &domain.name) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(domain = %domain.name, %resource,
                        "no cluster answers: resetting in place as without one"),
                    Err(e) => {
                        return Internal::ResetResult {
                            vm,
                            method,
                            result: Err(format!("not reset: {}", error_chain(&e))),
                        }
                    }
                }
            }
            let result = match method {
                ResetMethod::Reset => hv.reset(&domain),
                ResetMethod::PowerCycle => hv.power_cycle(&domain),
            };
            Internal::ResetResult {
                vm,
                method,
                result: result.map_err(|e| error_chain(&e)),
            }
        });
    }

    /// Asks the cluster to recover `resource` (`crm_resource --fail` on this node), once its
    /// `config=` is known to define `domain`.
    pub(super) fn escalate(&self, vm: VmId, domain: String, resource: String) {
        self.spawn(move |_| Internal::Escalated {
            result: crate::cluster::fail_resource(&resource, &domain).map_err(|e| error_chain(&e)),
            vm,
            resource,
        });
    }

    /// Writes (`Some`) or removes (`None`) the domain's monitoring metadata; the answer goes to
    /// `reply` once the supervisor has seen the result.
    pub(super) fn set_spec(
        &self,
        domain: DomainRef,
        spec: Option<MonitorSpec>,
        reply: oneshot::Sender<Response>,
    ) {
        self.spawn(move |hv| Internal::SpecWritten {
            result: hv
                .set_spec(&domain, spec.as_ref())
                .map_err(|e| error_chain(&e)),
            domain,
            reply,
            removed: spec.is_none(),
        });
    }

    /// Finds the socket of the domain's virtio-serial channel `name` in its live XML, for a
    /// session task to call (blocking) at each connection attempt.
    pub(super) fn channel_lookup(&self, domain: DomainRef, name: String) -> ChannelLookup {
        let hv = self.hv.clone();
        Arc::new(move || {
            let xml = hv.domain_xml(&domain).map_err(|e| error_chain(&e))?;
            appmon_libvirt_backend::domxml::channel_socket_path(&xml, &name)
                .map_err(|e| error_chain(&e))
        })
    }
}
