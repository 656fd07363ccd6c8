//! The standard counters: CCA's list for Linux (seed 003), read from /proc and /sys.
//!
//! Entities, in the order the schema lists them: `CPU` (all CPUs together), `CPU#0`, `CPU#1`, …
//! (each CPU), `File System`, `Memory`, `Scheduler`, `Volume <dev>` (each disk and each mounted
//! block device) and `Terminal <if>` (each network interface but `lo`). What each counter means
//! and in which units is [`DEFS`] and the table in the crate's README. Counters the kernel does
//! not offer (`High Total` on a 64-bit kernel, `CPU I/O Wait` on a kernel older than 2.5.41)
//! are not in the schema at all; a counter whose value is a rate is in the schema from the
//! first sample and has a value from the second on.
//!
//! Three steps, two of them pure: [`read`] is the thin shell that reads the files (and stats
//! every open file descriptor, and every mounted volume with statvfs) into a [`Snapshot`];
//! [`Snapshot::parse`] turns the raw texts into numbers (with the `procfs-core` parsers, which
//! do no I/O); [`readings`] turns two snapshots into the values of one interval. The tests feed
//! the pure steps text captured from /proc.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use procfs_core::net::InterfaceDeviceStatus;
use procfs_core::{
    DiskStats, ExplicitSystemInfo, FromBufRead, FromBufReadSI, FromRead, KernelStats, LoadAverage,
    Meminfo, MountEntry, VmStat,
};

/// One standard counter: its name in its entity, units and description.
#[derive(Debug, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub units: &'static str,
    pub description: &'static str,
}

macro_rules! defs {
    ($($id:ident = $name:literal, $units:literal, $desc:literal;)*) => {
        $(pub static $id: Def = Def { name: $name, units: $units, description: $desc };)*
        /// Every standard counter, for the README's table and its test.
        pub static DEFS: &[&Def] = &[$(&$id),*];
    };
}

defs! {
    CPU_IOWAIT = "CPU I/O Wait", "%", "Idle while I/O was outstanding, in percent of the interval";
    CPU_IDLE = "CPU Idle", "%", "Idle, in percent of the interval";
    CPU_IRQ = "CPU Irq", "%", "Servicing hardware interrupts, in percent of the interval";
    CPU_NICE = "CPU Nice", "%", "Running niced (low priority) user code, in percent of the interval";
    CPU_SOFTIRQ = "CPU Soft Irq", "%", "Servicing soft interrupts, in percent of the interval";
    CPU_SYSTEM = "CPU System", "%", "Running kernel code, in percent of the interval";
    CPU_TOTAL = "CPU Total", "%", "Busy (user, nice, system, irq and soft irq), in percent of the interval";
    CPU_USER = "CPU User", "%", "Running user code, in percent of the interval";

    FILES_ALLOCATED = "Allocated File Handles", "#", "File handles the kernel has allocated";
    FILES_BLOCK = "Block Devices", "#", "Open file descriptors on block devices, all processes";
    FILES_BLOCK_UNIQUE = "Block Devices Unique", "#", "Distinct block devices open in any process";
    FILES_CHAR = "Character Devices", "#", "Open file descriptors on character devices, all processes";
    FILES_CHAR_UNIQUE = "Character Devices Unique", "#", "Distinct character devices open in any process";
    FILES_DIR = "Directories", "#", "Open file descriptors on directories, all processes";
    FILES_DIR_UNIQUE = "Directories Unique", "#", "Distinct directories open in any process";
    FILES_FIFO = "Fifos", "#", "Open file descriptors on pipes and FIFOs, all processes";
    FILES_FIFO_UNIQUE = "Fifos Unique", "#", "Distinct pipes and FIFOs open in any process";
    FILES_FREE = "Free File Handles", "#", "File handles that can still be opened: the maximum less those in use";
    FILES_REGULAR = "Regular Files", "#", "Open file descriptors on regular files, all processes";
    FILES_REGULAR_UNIQUE = "Regular Files Unique", "#", "Distinct regular files open in any process";
    FILES_SOCKET = "Sockets", "#", "Open file descriptors on sockets, all processes";
    FILES_SOCKET_UNIQUE = "Sockets Unique", "#", "Distinct sockets open in any process";
    FILES_USED = "Used File Handles", "#", "File handles in use";

    MEM_ACTIVE = "Active", "bytes", "Memory used recently, not reclaimed unless necessary";
    MEM_BUFFERS = "Buffers", "bytes", "Memory in block device buffers";
    MEM_CACHED = "Cached", "bytes", "Memory in the page cache (without swap cache)";
    MEM_FREE = "Free", "bytes", "Memory not used at all";
    MEM_HIGH_FREE = "High Free", "bytes", "Free high memory (32-bit kernels)";
    MEM_HIGH_TOTAL = "High Total", "bytes", "High memory (32-bit kernels)";
    MEM_HIGH_USED = "High Used", "bytes", "High memory in use (32-bit kernels)";
    MEM_INACTIVE = "Inactive", "bytes", "Memory not used recently, first to be reclaimed";
    MEM_LOW_FREE = "Low Free", "bytes", "Free low memory (32-bit kernels)";
    MEM_LOW_TOTAL = "Low Total", "bytes", "Low memory (32-bit kernels)";
    MEM_LOW_USED = "Low Used", "bytes", "Low memory in use (32-bit kernels)";
    MEM_SWAP_CACHED = "Swap Cached", "bytes", "Swapped-in memory still also in swap";
    MEM_SWAP_FREE = "Swap Free", "bytes", "Swap space not used";
    MEM_SWAP_IN = "Swap Pages IN", "pages/s", "Pages swapped in, per second";
    MEM_SWAP_OUT = "Swap Pages OUT", "pages/s", "Pages swapped out, per second";
    MEM_SWAP_TOTAL = "Swap Total", "bytes", "Swap space";
    MEM_SWAP_USED = "Swap Used", "bytes", "Swap space in use";
    MEM_TOTAL = "Total", "bytes", "Usable memory";
    MEM_USED = "Used", "bytes", "Memory in use: total less free, buffers, page cache and reclaimable slab";

    SCHED_CTXT = "Context switches", "/s", "Context switches, per second";
    SCHED_INTR = "Interrupts", "/s", "Interrupts serviced, per second";
    SCHED_LOAD1 = "Jobs for 1 min", "jobs", "Load average over 1 minute: runnable and uninterruptible tasks";
    SCHED_LOAD15 = "Jobs for 15 min", "jobs", "Load average over 15 minutes: runnable and uninterruptible tasks";
    SCHED_LOAD5 = "Jobs for 5 min", "jobs", "Load average over 5 minutes: runnable and uninterruptible tasks";
    SCHED_PAGES_IN = "Pages IN", "KiB/s", "Data paged in from disk, KiB per second";
    SCHED_PAGES_OUT = "Pages OUT", "KiB/s", "Data paged out to disk, KiB per second";
    SCHED_FORKS = "Process startups", "/s", "Processes and threads created, per second";
    SCHED_BLOCKED = "Processes blocked", "#", "Tasks blocked waiting for I/O";
    SCHED_RUNNING = "Processes running", "#", "Tasks running or runnable";

    VOL_BYTES_READ = "Bytes Read", "bytes/s", "Bytes read, per second";
    VOL_BYTES_WRITTEN = "Bytes Written", "bytes/s", "Bytes written, per second";
    VOL_READS = "Disk Reads", "/s", "Reads completed, per second";
    VOL_SECTORS_READ = "Disk Sectors Read", "sectors/s", "512-byte sectors read, per second";
    VOL_SECTORS_WRITTEN = "Disk Sectors Written", "sectors/s", "512-byte sectors written, per second";
    VOL_WRITES = "Disk Writes", "/s", "Writes completed, per second";
    VOL_FREE_FILES = "Free Files", "#", "Inodes free on the mounted file system";
    VOL_FREE_SPACE = "Free Space", "bytes", "Space available to unprivileged users on the mounted file system";
    VOL_READ_TIME = "Time Spent in Reads", "ms/s", "Milliseconds spent reading, per second";
    VOL_WRITE_TIME = "Time Spent in Writes", "ms/s", "Milliseconds spent writing, per second";
    VOL_TOTAL_FILES = "Total Files", "#", "Inodes of the mounted file system";
    VOL_TOTAL_SPACE = "Total Space", "bytes", "Size of the mounted file system";
    VOL_USED_FILES = "Used Files", "#", "Inodes in use on the mounted file system";
    VOL_USED_SPACE = "Used Space", "bytes", "Space in use on the mounted file system";

    NET_RX_BYTES = "Recvd bytes", "bytes/s", "Bytes received, per second";
    NET_RX_PACKETS = "Recvd packets", "packets/s", "Packets received, per second";
    NET_TX_BYTES = "Sent bytes", "bytes/s", "Bytes sent, per second";
    NET_TX_PACKETS = "Sent packets", "packets/s", "Packets sent, per second";
}

/// The entity of all CPUs together.
pub const CPU: &str = "CPU";
pub const FILE_SYSTEM: &str = "File System";
pub const MEMORY: &str = "Memory";
pub const SCHEDULER: &str = "Scheduler";

/// Whether `name` is, or could be, an entity of the standard counters: a custom entity must not
/// take such a name.
pub fn is_standard_entity(name: &str) -> bool {
    matches!(name, CPU | FILE_SYSTEM | MEMORY | SCHEDULER)
        || name.starts_with("CPU#")
        || name.starts_with("Volume ")
        || name.starts_with("Terminal ")
}

/// The most open file descriptors one sample looks at; a system with more gets no file
/// descriptor counts rather than wrong ones.
pub const MAX_FDS_SCANNED: usize = 200_000;

/// One entity's counters in one sample: every counter the kernel offers, with its value where
/// this sample has one.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityReading {
    pub name: String,
    pub counters: Vec<(&'static Def, Option<f64>)>,
}

/// The raw texts of one sample, as read from /proc; `None` for a file that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Texts {
    pub stat: Option<String>,
    pub meminfo: Option<String>,
    pub vmstat: Option<String>,
    pub loadavg: Option<String>,
    pub diskstats: Option<String>,
    pub net_dev: Option<String>,
    pub file_nr: Option<String>,
}

/// CPU time by state, in ticks; the states a kernel does not report are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: Option<u64>,
    pub irq: Option<u64>,
    pub softirq: Option<u64>,
    pub steal: Option<u64>,
}

impl From<&procfs_core::CpuTime> for CpuTicks {
    fn from(t: &procfs_core::CpuTime) -> Self {
        CpuTicks {
            user: t.user,
            nice: t.nice,
            system: t.system,
            idle: t.idle,
            iowait: t.iowait,
            irq: t.irq,
            softirq: t.softirq,
            steal: t.steal,
        }
    }
}

/// /proc/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub total: CpuTicks,
    pub cpus: Vec<CpuTicks>,
    pub ctxt: u64,
    pub forks: u64,
    pub running: Option<u32>,
    pub blocked: Option<u32>,
    /// The first number of the `intr` line: interrupts since boot.
    pub interrupts: Option<u64>,
}

/// The /proc/meminfo fields the counters use, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
    pub buffers: u64,
    pub cached: u64,
    pub swap_cached: u64,
    pub active: u64,
    pub inactive: u64,
    pub s_reclaimable: Option<u64>,
    pub high_total: Option<u64>,
    pub high_free: Option<u64>,
    pub low_total: Option<u64>,
    pub low_free: Option<u64>,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// The /proc/vmstat fields the counters use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paging {
    pub pgpgin: Option<u64>,
    pub pgpgout: Option<u64>,
    pub pswpin: Option<u64>,
    pub pswpout: Option<u64>,
}

/// One line of /proc/diskstats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIo {
    pub name: String,
    pub reads: u64,
    pub writes: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub ms_reading: u64,
    pub ms_writing: u64,
}

/// One interface of /proc/net/dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetIo {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// /proc/sys/fs/file-nr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileNr {
    pub allocated: u64,
    pub unused: u64,
    pub max: u64,
}

/// The kinds of file an open file descriptor can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FdKind {
    Block,
    Char,
    Dir,
    Fifo,
    Regular,
    Socket,
}

/// Open file descriptors of all processes by kind: how many, and how many distinct files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdCensus {
    open: BTreeMap<FdKind, u64>,
    seen: HashSet<(FdKind, u64, u64)>,
}

impl FdCensus {
    /// Counts one descriptor on the file `(dev, ino)`.
    pub fn add(&mut self, kind: FdKind, dev: u64, ino: u64) {
        *self.open.entry(kind).or_default() += 1;
        self.seen.insert((kind, dev, ino));
    }

    pub fn open(&self, kind: FdKind) -> u64 {
        self.open.get(&kind).copied().unwrap_or(0)
    }

    pub fn unique(&self, kind: FdKind) -> u64 {
        self.seen.iter().filter(|(k, _, _)| *k == kind).count() as u64
    }
}

/// statvfs of a mounted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    /// Available to unprivileged users (`df`'s "Avail").
    pub avail_bytes: u64,
    /// Total less free (`df`'s "Used").
    pub used_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
}

/// A volume: a disk or a mounted block device, by its kernel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Where it is mounted (the first mount point), if it is.
    pub mount_point: Option<String>,
    pub space: Option<Space>,
}

/// One sample of everything the standard counters are made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub taken: Instant,
    pub stat: Option<Stat>,
    pub memory: Option<Memory>,
    pub paging: Paging,
    pub load: Option<[f64; 3]>,
    pub disks: Vec<DiskIo>,
    pub nets: Vec<NetIo>,
    pub file_nr: Option<FileNr>,
    pub fds: Option<FdCensus>,
    pub volumes: Vec<Volume>,
}

impl Snapshot {
    /// Parses the raw texts; a text that does not parse is as absent as one not read.
    pub fn parse(taken: Instant, texts: &Texts) -> Snapshot {
        fn text(t: &Option<String>) -> Option<&[u8]> {
            t.as_deref().map(str::as_bytes)
        }
        // The counters use ratios of ticks, never seconds: the tick rate does not matter.
        let system = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: cfg!(target_endian = "little"),
        };
        let stat = text(&texts.stat).and_then(|t| {
            let k = KernelStats::from_buf_read(t, &system).ok()?;
            Some(Stat {
                total: CpuTicks::from(&k.total),
                cpus: k.cpu_time.iter().map(CpuTicks::from).collect(),
                ctxt: k.ctxt,
                forks: k.processes,
                running: k.procs_running,
                blocked: k.procs_blocked,
                interrupts: texts.stat.as_deref().and_then(interrupts),
            })
        });
        let memory = text(&texts.meminfo).and_then(|t| {
            let m = Meminfo::from_buf_read(t).ok()?;
            Some(Memory {
                total: m.mem_total,
                free: m.mem_free,
                buffers: m.buffers,
                cached: m.cached,
                swap_cached: m.swap_cached,
                active: m.active,
                inactive: m.inactive,
                s_reclaimable: m.s_reclaimable,
                high_total: m.high_total,
                high_free: m.high_free,
                low_total: m.low_total,
                low_free: m.low_free,
                swap_total: m.swap_total,
                swap_free: m.swap_free,
            })
        });
        let paging = text(&texts.vmstat)
            .and_then(|t| VmStat::from_buf_read(t).ok())
            .map(|v| {
                let get = |k: &str| v.0.get(k).and_then(|&n| u64::try_from(n).ok());
                Paging {
                    pgpgin: get("pgpgin"),
                    pgpgout: get("pgpgout"),
                    pswpin: get("pswpin"),
                    pswpout: get("pswpout"),
                }
            })
            .unwrap_or_default();
        let load = text(&texts.loadavg)
            .and_then(|t| LoadAverage::from_read(t).ok())
            .map(|l| [l.one, l.five, l.fifteen].map(|v| round3(f64::from(v))));
        let disks = text(&texts.diskstats)
            .and_then(|t| DiskStats::from_buf_read(t).ok())
            .map(|d| {
                d.0.into_iter()
                    .map(|d| DiskIo {
                        name: d.name,
                        reads: d.reads,
                        writes: d.writes,
                        sectors_read: d.sectors_read,
                        sectors_written: d.sectors_written,
                        ms_reading: d.time_reading,
                        ms_writing: d.time_writing,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut nets: Vec<NetIo> = text(&texts.net_dev)
            .and_then(|t| InterfaceDeviceStatus::from_buf_read(t).ok())
            .map(|n| {
                n.0.into_values()
                    .filter(|d| d.name != "lo")
                    .map(|d| NetIo {
                        name: d.name,
                        rx_bytes: d.recv_bytes,
                        rx_packets: d.recv_packets,
                        tx_bytes: d.sent_bytes,
                        tx_packets: d.sent_packets,
                    })
                    .collect()
            })
            .unwrap_or_default();
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            taken,
            stat,
            memory,
            paging,
            load,
            disks,
            nets,
            file_nr: texts.file_nr.as_deref().and_then(file_nr),
            fds: None,
            volumes: Vec::new(),
        }
    }
}

/// Load averages come as `f32`: keep the kernel's two decimals, not the float's noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn interrupts(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("intr "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn file_nr(text: &str) -> Option<FileNr> {
    let mut n = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some(FileNr {
        allocated: n.next()??,
        unused: n.next()??,
        max: n.next()??,
    })
}

/// The volumes: every mounted block device (named by its kernel name, which `canonical` finds
/// for a mount source such as `/dev/mapper/root`) and every disk of `/sys/block` but loop, RAM
/// (ram, zram), floppy and optical drives that are not mounted. Network and virtual file systems are not
/// volumes (and are never statvfs'd: a hung NFS server would hang the agent). Sorted by name.
pub fn select_volumes(
    mounts: &[MountEntry],
    disks: &[String],
    canonical: impl Fn(&str) -> Option<String>,
) -> Vec<Volume> {
    let mut volumes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_spec.starts_with("/dev/")) {
        let resolved = canonical(&m.fs_spec).unwrap_or_else(|| m.fs_spec.clone());
        let Some(name) = resolved.rsplit('/').next().filter(|n| !n.is_empty()) else {
            continue;
        };
        volumes
            .entry(name.to_owned())
            .or_insert_with(|| Some(m.fs_file.clone()));
    }
    for disk in disks {
        let virtual_disk = ["loop", "ram", "zram", "fd", "sr"]
            .iter()
            .any(|p| disk.starts_with(p));
        if !virtual_disk {
            volumes.entry(disk.clone()).or_insert(None);
        }
    }
    volumes
        .into_iter()
        .map(|(name, mount_point)| Volume {
            name,
            mount_point,
            space: None,
        })
        .collect()
}

/// The counters of the interval from `prev` to `cur` (rates need both; without `prev` they are
/// listed without values).
pub fn readings(prev: Option<&Snapshot>, cur: &Snapshot) -> Vec<EntityReading> {
    let secs = prev
        .map(|p| cur.taken.saturating_duration_since(p.taken).as_secs_f64())
        .filter(|s| *s > 0.0);
    let rate = |old: Option<u64>, new: u64| -> Option<f64> {
        let (old, secs) = (old?, secs?);
        // A counter that went back was reset (an interface re-created): no rate this time.
        (new >= old).then(|| round3((new - old) as f64 / secs))
    };
    let mut out = Vec::new();

    if let Some(stat) = &cur.stat {
        let old = prev.and_then(|p| p.stat.as_ref());
        out.push(cpu_reading(CPU.into(), old.map(|o| &o.total), &stat.total));
        for (i, ticks) in stat.cpus.iter().enumerate() {
            let old = old.and_then(|o| o.cpus.get(i));
            out.push(cpu_reading(format!("CPU#{i}"), old, ticks));
        }
    }

    let mut files = Vec::new();
    if let Some(nr) = cur.file_nr {
        let used = nr.allocated.saturating_sub(nr.unused);
        files.push((&FILES_ALLOCATED, Some(nr.allocated as f64)));
        files.push((&FILES_FREE, Some(nr.max.saturating_sub(used) as f64)));
        files.push((&FILES_USED, Some(used as f64)));
    }
    if let Some(fds) = &cur.fds {
        for (kind, open, unique) in [
            (FdKind::Block, &FILES_BLOCK, &FILES_BLOCK_UNIQUE),
            (FdKind::Char, &FILES_CHAR, &FILES_CHAR_UNIQUE),
            (FdKind::Dir, &FILES_DIR, &FILES_DIR_UNIQUE),
            (FdKind::Fifo, &FILES_FIFO, &FILES_FIFO_UNIQUE),
            (FdKind::Regular, &FILES_REGULAR, &FILES_REGULAR_UNIQUE),
            (FdKind::Socket, &FILES_SOCKET, &FILES_SOCKET_UNIQUE),
        ] {
            files.push((open, Some(fds.open(kind) as f64)));
            files.push((unique, Some(fds.unique(kind) as f64)));
        }
    }
    if !files.is_empty() {
        files.sort_by_key(|(def, _)| def.name);
        out.push(EntityReading {
            name: FILE_SYSTEM.into(),
            counters: files,
        });
    }

    if let Some(m) = &cur.memory {
        let old = prev.map(|p| p.paging);
        let b = |v: u64| Some(v as f64);
        let mut c = vec![
            (&MEM_ACTIVE, b(m.active)),
            (&MEM_BUFFERS, b(m.buffers)),
            (&MEM_CACHED, b(m.cached)),
            (&MEM_FREE, b(m.free)),
        ];
        if let (Some(total), Some(free)) = (m.high_total, m.high_free) {
            c.push((&MEM_HIGH_FREE, b(free)));
            c.push((&MEM_HIGH_TOTAL, b(total)));
            c.push((&MEM_HIGH_USED, b(total.saturating_sub(free))));
        }
        c.push((&MEM_INACTIVE, b(m.inactive)));
        if let (Some(total), Some(free)) = (m.low_total, m.low_free) {
            c.push((&MEM_LOW_FREE, b(free)));
            c.push((&MEM_LOW_TOTAL, b(total)));
            c.push((&MEM_LOW_USED, b(total.saturating_sub(free))));
        }
        c.push((&MEM_SWAP_CACHED, b(m.swap_cached)));
        c.push((&MEM_SWAP_FREE, b(m.swap_free)));
        if let Some(new) = cur.paging.pswpin {
            c.push((&MEM_SWAP_IN, rate(old.and_then(|o| o.pswpin), new)));
        }
        if let Some(new) = cur.paging.pswpout {
            c.push((&MEM_SWAP_OUT, rate(old.and_then(|o| o.pswpout), new)));
        }
        c.push((&MEM_SWAP_TOTAL, b(m.swap_total)));
        c.push((&MEM_SWAP_USED, b(m.swap_total.saturating_sub(m.swap_free))));
        c.push((&MEM_TOTAL, b(m.total)));
        let cache = m.buffers + m.cached + m.s_reclaimable.unwrap_or(0);
        c.push((&MEM_USED, b(m.total.saturating_sub(m.free + cache))));
        out.push(EntityReading {
            name: MEMORY.into(),
            counters: c,
        });
    }

    let mut sched = Vec::new();
    if let Some(stat) = &cur.stat {
        let old = prev.and_then(|p| p.stat.as_ref());
        sched.push((&SCHED_CTXT, rate(old.map(|o| o.ctxt), stat.ctxt)));
        if let Some(new) = stat.interrupts {
            sched.push((&SCHED_INTR, rate(old.and_then(|o| o.interrupts), new)));
        }
    }
    if let Some([one, five, fifteen]) = cur.load {
        sched.push((&SCHED_LOAD1, Some(one)));
        sched.push((&SCHED_LOAD15, Some(fifteen)));
        sched.push((&SCHED_LOAD5, Some(five)));
    }
    let old_paging = prev.map(|p| p.paging);
    if let Some(new) = cur.paging.pgpgin {
        sched.push((
            &SCHED_PAGES_IN,
            rate(old_paging.and_then(|o| o.pgpgin), new),
        ));
    }
    if let Some(new) = cur.paging.pgpgout {
        sched.push((
            &SCHED_PAGES_OUT,
            rate(old_paging.and_then(|o| o.pgpgout), new),
        ));
    }
    if let Some(stat) = &cur.stat {
        let old = prev.and_then(|p| p.stat.as_ref());
        sched.push((&SCHED_FORKS, rate(old.map(|o| o.forks), stat.forks)));
        if let Some(n) = stat.blocked {
            sched.push((&SCHED_BLOCKED, Some(f64::from(n))));
        }
        if let Some(n) = stat.running {
            sched.push((&SCHED_RUNNING, Some(f64::from(n))));
        }
    }
    if !sched.is_empty() {
        out.push(EntityReading {
            name: SCHEDULER.into(),
            counters: sched,
        });
    }

    for volume in &cur.volumes {
        let mut c = Vec::new();
        if let Some(io) = cur.disks.iter().find(|d| d.name == volume.name) {
            let old = prev.and_then(|p| p.disks.iter().find(|d| d.name == volume.name));
            let r = |f: fn(&DiskIo) -> u64| rate(old.map(f), f(io));
            c.push((&VOL_BYTES_READ, r(|d| d.sectors_read).map(|s| s * 512.0)));
            c.push((
                &VOL_BYTES_WRITTEN,
                r(|d| d.sectors_written).map(|s| s * 512.0),
            ));
            c.push((&VOL_READS, r(|d| d.reads)));
            c.push((&VOL_SECTORS_READ, r(|d| d.sectors_read)));
            c.push((&VOL_SECTORS_WRITTEN, r(|d| d.sectors_written)));
            c.push((&VOL_WRITES, r(|d| d.writes)));
            c.push((&VOL_READ_TIME, r(|d| d.ms_reading)));
            c.push((&VOL_WRITE_TIME, r(|d| d.ms_writing)));
        }
        if let Some(s) = volume.space {
            let f = |v: u64| Some(v as f64);
            c.push((&VOL_FREE_FILES, f(s.free_files)));
            c.push((&VOL_FREE_SPACE, f(s.avail_bytes)));
            c.push((&VOL_TOTAL_FILES, f(s.total_files)));
            c.push((&VOL_TOTAL_SPACE, f(s.total_bytes)));
            c.push((
                &VOL_USED_FILES,
                f(s.total_files.saturating_sub(s.free_files)),
            ));
            c.push((&VOL_USED_SPACE, f(s.used_bytes)));
        }
        if !c.is_empty() {
            c.sort_by_key(|(def, _)| def.name);
            out.push(EntityReading {
                name: format!("Volume {}", volume.name),
                counters: c,
            });
        }
    }

    for net in &cur.nets {
        let old = prev.and_then(|p| p.nets.iter().find(|n| n.name == net.name));
        let r = |f: fn(&NetIo) -> u64| rate(old.map(f), f(net));
        out.push(EntityReading {
            name: format!("Terminal {}", net.name),
            counters: vec![
                (&NET_RX_BYTES, r(|n| n.rx_bytes)),
                (&NET_RX_PACKETS, r(|n| n.rx_packets)),
                (&NET_TX_BYTES, r(|n| n.tx_bytes)),
                (&NET_TX_PACKETS, r(|n| n.tx_packets)),
            ],
        });
    }
    out
}

fn cpu_reading(name: String, old: Option<&CpuTicks>, new: &CpuTicks) -> EntityReading {
    // Percent of all ticks of the interval; a state the kernel does not report is absent.
    let total = |t: &CpuTicks| {
        t.user
            + t.nice
            + t.system
            + t.idle
            + t.iowait.unwrap_or(0)
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0)
    };
    let span = old
        .map(|o| total(new).saturating_sub(total(o)))
        .filter(|s| *s > 0);
    let pct = |f: &dyn Fn(&CpuTicks) -> Option<u64>| -> Option<f64> {
        let (o, span) = (old?, span?);
        let d = f(new)?.checked_sub(f(o)?)?;
        Some(round3(d as f64 * 100.0 / span as f64))
    };
    let busy = |t: &CpuTicks| {
        Some(t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0))
    };
    let mut c = Vec::new();
    if new.iowait.is_some() {
        c.push((&CPU_IOWAIT, pct(&|t| t.iowait)));
    }
    c.push((&CPU_IDLE, pct(&|t| Some(t.idle))));
    if new.irq.is_some() {
        c.push((&CPU_IRQ, pct(&|t| t.irq)));
    }
    c.push((&CPU_NICE, pct(&|t| Some(t.nice))));
    if new.softirq.is_some() {
        c.push((&CPU_SOFTIRQ, pct(&|t| t.softirq)));
    }
    c.push((&CPU_SYSTEM, pct(&|t| Some(t.system))));
    c.push((&CPU_TOTAL, pct(&busy)));
    c.push((&CPU_USER, pct(&|t| Some(t.user))));
    EntityReading { name, counters: c }
}

// ---- the shell: reading the files ---------------------------------------------------------------

/// Reads one sample from the running kernel. Never blocks on the network: only /proc, /sys
/// and statvfs of block-device file systems.
pub fn read(taken: Instant) -> Snapshot {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let texts = Texts {
        stat: read("/proc/stat"),
        meminfo: read("/proc/meminfo"),
        vmstat: read("/proc/vmstat"),
        loadavg: read("/proc/loadavg"),
        diskstats: read("/proc/diskstats"),
        net_dev: read("/proc/net/dev"),
        file_nr: read("/proc/sys/fs/file-nr"),
    };
    let mut snapshot = Snapshot::parse(taken, &texts);
    snapshot.fds = fd_census(Path::new("/proc"));
    let mounts = read("/proc/self/mounts")
        .and_then(|t| Vec::<MountEntry>::from_buf_read(t.as_bytes()).ok())
        .unwrap_or_default();
    let disks: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let canonical = |spec: &str| {
        std::fs::canonicalize(spec)
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
    };
    snapshot.volumes = select_volumes(&mounts, &disks, canonical);
    for volume in &mut snapshot.volumes {
        volume.space = volume.mount_point.as_deref().and_then(space);
    }
    snapshot
}

fn space(mount_point: &str) -> Option<Space> {
    let s = nix::sys::statvfs::statvfs(mount_point).ok()?;
    let frsize = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    Some(Space {
        total_bytes: blocks * frsize,
        avail_bytes: s.blocks_available() as u64 * frsize,
        used_bytes: blocks.saturating_sub(s.blocks_free() as u64) * frsize,
        total_files: s.files() as u64,
        free_files: s.files_free() as u64,
    })
}

/// Stats every open file descriptor of every process; `None` past [`MAX_FDS_SCANNED`].
fn fd_census(proc: &Path) -> Option<FdCensus> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut census = FdCensus::default();
    let mut scanned = 0usize;
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        // A process that ended since the listing has no fd directory: skip it.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            scanned += 1;
            if scanned > MAX_FDS_SCANNED {
                return None;
            }
            // Follows the link: the open file's own type and identity.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let t = meta.file_type();
            let kind = if t.is_file() {
                FdKind::Regular
            } else if t.is_dir() {
                FdKind::Dir
            } else if t.is_socket() {
                FdKind::Socket
            } else if t.is_fifo() {
                FdKind::Fifo
            } else if t.is_char_device() {
                FdKind::Char
            } else if t.is_block_device() {
                FdKind::Block
            } else {
                continue;
            };
            census.add(kind, meta.dev(), meta.ino());
        }
    }
    Some(census)
}

#[cfg(test)]
mod tests;
