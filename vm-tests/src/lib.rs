//! Test harness for tests that boot real QEMU guests under libvirt (the nested-VM rig).
//!
//! In the manner of Cloud Hypervisor's `test_infra` and crosvm's `e2e_tests`: each test owns a
//! [`TestVm`] with its own directory, libvirt domain and vhost-device-vsock process, and everything
//! is stopped and removed when the `TestVm` drops, also when the test panics. Waits are bounded
//! and say what they waited for; a failed wait shows the guest console.
//!
//! Modules:
//! - [`rig`]: where the rig's kernel, guest image and vhost-device-vsock are, and the check that
//!   they are there ([`Rig::require`]), which fails (never skips) naming the set-up command.
//! - [`vm`]: [`TestVm`] and its [`VmConfig`]: domain lifecycle, console, vsock.
//! - [`host_agent`]: [`HostAgent`], the real `appmon-host` daemon for one test (its own
//!   host.toml, state directory, control socket and log), and `appmonctl` with its JSON read
//!   into `appmon-control`'s [`VmView`].
//! - [`hosts`]: [`TwoHosts`], two more libvirtds on this machine, each in its own mount
//!   namespace, for live migration between them.
//! - [`cluster`]: [`Cluster`], a one-node Pacemaker cluster, and [`TwoNodeCluster`], two
//!   cluster nodes with a libvirtd each, for failover.
//! - [`node`]: [`node::Node`], a "machine" of such a cluster: network, mount and UTS namespaces
//!   and a cgroup of its own, killed whole at once.
//! - [`demo`]: commands to the demo application in the guest ([`TestVm::demo_command`]).
//! - [`domain_xml`]: the libvirt domain XML template (pure, unit-tested).
//! - [`hybrid`]: host → guest connections through vhost-device-vsock's hybrid-vsock Unix socket
//!   (`CONNECT <port>\n` / `OK <port>\n`).
//! - [`initrd`]: a test's own guest files, appended to the rig's image as an extra cpio archive.
//! - [`console`]: reading the guest's serial console log: the [`markers`] the guest's /init
//!   (`scripts/guest/init`) prints, tails, marks.
//! - [`virsh`]: bounded `virsh -c qemu:///system` invocations.
//! - [`wait`]: bounded polling helpers, and [`hold_for`] for "nothing happens for this long".
//! - [`sweep`]: removal of domains, processes (vhost-device-vsock, appmon-host) and directories
//!   left by test processes that died; the `appmon-test-sweep` program runs it for the scripts.
//!
//! The host side never opens AF_VSOCK: this machine's own /dev/vsock belongs to the
//! infrastructure. Only the guest-only programs `vsock-echo` and `appmon-demo` do, inside the
//! guest; they live in their own crate (`appmon-guest-programs`) so that their static build
//! does not link what this harness links.
//!
//! The VM tests themselves (`tests/`) compile only with the `vm` feature; `scripts/test` runs
//! them with `cargo nextest run -p appmon-vm-tests --features vm`.

pub mod cluster;
pub mod console;
pub mod demo;
pub mod domain_xml;
pub mod host_agent;
pub mod hosts;
pub mod hybrid;
pub mod initrd;
pub mod node;
pub mod rig;
pub mod sweep;
pub mod virsh;
pub mod vm;
pub mod wait;

pub use cluster::{Cluster, ClusterNode, TwoNodeCluster};
pub use console::{markers, ConsoleMark};
pub use demo::{DemoError, DEMO_COMMAND_TIMEOUT};
pub use domain_xml::{OnReboot, WatchdogAction};
pub use host_agent::{
    enable_args, policy_matches, test_host_config, test_policy, unix_ms_now, Config, CtlError,
    Defaults, HistoryEntry, HostAgent, HostBins, PolicyView, ResetMethod, Status, VmView,
};
pub use hosts::{LibvirtHost, Migration, TwoHosts, VsockMigration};
pub use hybrid::{hybrid_connect, hybrid_connect_timeout, HybridConnectError};
pub use initrd::GuestFile;
pub use rig::Rig;
pub use virsh::{DomainState, VirshError};
pub use vm::{BootTimes, TestVm, VmConfig, VsockBackend, BASE_CMDLINE, DEFAULT_BOOT_TIMEOUT};
pub use wait::{hold_for, wait_for, wait_until, HoldBroken, WaitTimeout};

/// Prefix of every domain (and nothing else) the harness creates; the sweeper only ever touches
/// domains with this prefix.
pub const DOMAIN_PREFIX: &str = "appmon-t-";

pub use appmon_guest_programs::{DEMO_CONTROL_PORT, VSOCK_ECHO_PORT};

/// Guest port the guest agent listens on (DESIGN.md, Transport).
pub const GUEST_AGENT_PORT: u32 = 5315;
