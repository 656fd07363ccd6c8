use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn captured(which: &str) -> Texts {
    let read = |file: &str| {
        let path = format!(
            "{}/src/counters/standard/testdata/{which}/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    };
    Texts {
        stat: read("stat"),
        meminfo: read("meminfo"),
        vmstat: read("vmstat"),
        loadavg: read("loadavg"),
        diskstats: read("diskstats"),
        net_dev: read("net_dev"),
        file_nr: read("file-nr"),
    }
}

/// Two snapshots `secs` apart.
fn pair(a: &Texts, b: &Texts, secs: u64) -> (Snapshot, Snapshot) {
    let t0 = Instant::now();
    (
        Snapshot::parse(t0, a),
        Snapshot::parse(t0 + Duration::from_secs(secs), b),
    )
}

/// entity -> counter -> value.
fn table(readings: &[EntityReading]) -> HashMap<String, HashMap<&'static str, Option<f64>>> {
    readings
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.counters.iter().map(|(d, v)| (d.name, *v)).collect(),
            )
        })
        .collect()
}

fn value(t: &HashMap<String, HashMap<&'static str, Option<f64>>>, e: &str, c: &str) -> Option<f64> {
    *t.get(e)
        .unwrap_or_else(|| panic!("no entity {e}"))
        .get(c)
        .unwrap_or_else(|| panic!("no counter {c} in {e}"))
}

fn stat_text(cpu: &str, ctxt: u64, forks: u64, intr: u64) -> String {
    format!(
        "cpu  {cpu}\ncpu0 {cpu}\nintr {intr} 1 2 3\nctxt {ctxt}\nbtime 1700000000\nprocesses {forks}\nprocs_running 3\nprocs_blocked 1\n"
    )
}

fn stat_only(text: String) -> Texts {
    Texts {
        stat: Some(text),
        ..Texts::default()
    }
}

#[test]
fn captured_proc_text_yields_every_group_with_values_from_the_second_sample() {
    let (a, b) = pair(&captured("first"), &captured("second"), 1);
    let readings = readings(Some(&a), &b);
    let names: Vec<&str> = readings.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CPU",
            "CPU#0",
            "CPU#1",
            "File System",
            "Memory",
            "Scheduler",
            "Terminal eth0",
            "Terminal ifb0",
            "Terminal ifb1"
        ]
    );
    for entity in &readings {
        for (def, v) in &entity.counters {
            assert!(v.is_some(), "{} {} has no value", entity.name, def.name);
            assert!(DEFS.contains(def), "{} is in DEFS", def.name);
        }
    }
    let t = table(&readings);
    // A 64-bit kernel reports no high or low memory: those counters are absent, not zero.
    assert!(!t["Memory"].contains_key("High Total"));
    assert!(!t["Memory"].contains_key("Low Free"));
    assert_eq!(value(&t, "Memory", "Total"), Some(24_683_568.0 * 1024.0));
    assert_eq!(
        value(&t, "File System", "Allocated File Handles"),
        Some(1188.0)
    );
}

#[test]
fn the_first_sample_lists_rates_without_values() {
    let now = Snapshot::parse(Instant::now(), &captured("first"));
    let t = table(&readings(None, &now));
    assert_eq!(value(&t, "CPU", "CPU Total"), None);
    assert_eq!(value(&t, "Scheduler", "Context switches"), None);
    assert_eq!(value(&t, "Terminal eth0", "Sent bytes"), None);
    assert!(
        value(&t, "Memory", "Free").is_some(),
        "levels need one sample"
    );
    assert!(value(&t, "Scheduler", "Jobs for 1 min").is_some());
}

#[test]
fn cpu_percentages_are_shares_of_the_interval() {
    // user nice system idle iowait irq softirq steal guest guest_nice
    let a = stat_only(stat_text("100 0 100 100 0 0 0 0 0 0", 0, 0, 0));
    let b = stat_only(stat_text("150 10 120 110 4 2 2 2 50 0", 0, 0, 0));
    let (a, b) = pair(&a, &b, 1);
    let t = table(&readings(Some(&a), &b));
    // 100 ticks passed: 50 user, 10 nice, 20 system, 10 idle, 4 iowait, 2 irq, 2 soft, 2 steal.
    for (counter, want) in [
        ("CPU User", 50.0),
        ("CPU Nice", 10.0),
        ("CPU System", 20.0),
        ("CPU Idle", 10.0),
        ("CPU I/O Wait", 4.0),
        ("CPU Irq", 2.0),
        ("CPU Soft Irq", 2.0),
        ("CPU Total", 84.0),
    ] {
        assert_eq!(value(&t, "CPU", counter), Some(want), "{counter}");
        assert_eq!(
            value(&t, "CPU#0", counter),
            Some(want),
            "{counter} of CPU#0"
        );
    }
}

#[test]
fn a_kernel_without_iowait_irq_and_softirq_offers_no_such_counters() {
    let a = stat_only(stat_text("100 0 100 100", 0, 0, 0));
    let b = stat_only(stat_text("150 0 120 130", 0, 0, 0));
    let (a, b) = pair(&a, &b, 1);
    let t = table(&readings(Some(&a), &b));
    let mut names: Vec<&str> = t["CPU"].keys().copied().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "CPU Idle",
            "CPU Nice",
            "CPU System",
            "CPU Total",
            "CPU User"
        ]
    );
    assert_eq!(value(&t, "CPU", "CPU Total"), Some(70.0));
}

#[test]
fn scheduler_rates_are_per_second_and_levels_are_as_read() {
    let a = stat_only(stat_text("1 0 0 0", 1000, 50, 7000));
    let b = stat_only(stat_text("2 0 0 0", 3000, 54, 9000));
    let (a, b) = pair(&a, &b, 2);
    let t = table(&readings(Some(&a), &b));
    assert_eq!(value(&t, "Scheduler", "Context switches"), Some(1000.0));
    assert_eq!(value(&t, "Scheduler", "Process startups"), Some(2.0));
    assert_eq!(value(&t, "Scheduler", "Interrupts"), Some(1000.0));
    assert_eq!(value(&t, "Scheduler", "Processes running"), Some(3.0));
    assert_eq!(value(&t, "Scheduler", "Processes blocked"), Some(1.0));
}

#[test]
fn a_counter_that_went_back_has_no_rate_that_interval() {
    let a = stat_only(stat_text("1 0 0 0", 5000, 50, 0));
    let b = stat_only(stat_text("2 0 0 0", 10, 60, 0));
    let (a, b) = pair(&a, &b, 1);
    let t = table(&readings(Some(&a), &b));
    assert_eq!(value(&t, "Scheduler", "Context switches"), None);
    assert_eq!(value(&t, "Scheduler", "Process startups"), Some(10.0));
}

#[test]
fn memory_in_bytes_with_high_and_low_where_the_kernel_has_them() {
    let meminfo = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 200 kB\n\
                   SwapCached: 0 kB\nActive: 300 kB\nInactive: 400 kB\nHighTotal: 600 kB\n\
                   HighFree: 60 kB\nLowTotal: 400 kB\nLowFree: 40 kB\nSwapTotal: 512 kB\n\
                   SwapFree: 500 kB\nSReclaimable: 30 kB\nDirty: 0 kB\nWriteback: 0 kB\n\
                   Mapped: 0 kB\nSlab: 40 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\n\
                   VmallocUsed: 0 kB\nVmallocChunk: 0 kB\n";
    let vmstat = |i: u64, o: u64| format!("pgpgin {i}\npgpgout {o}\npswpin {i}\npswpout {o}\n");
    let a = Texts {
        meminfo: Some(meminfo.into()),
        vmstat: Some(vmstat(100, 100)),
        ..Texts::default()
    };
    let b = Texts {
        meminfo: Some(meminfo.into()),
        vmstat: Some(vmstat(300, 110)),
        ..Texts::default()
    };
    let (a, b) = pair(&a, &b, 2);
    let t = table(&readings(Some(&a), &b));
    let kib = |v: f64| Some(v * 1024.0);
    assert_eq!(value(&t, "Memory", "High Used"), kib(540.0));
    assert_eq!(value(&t, "Memory", "Low Used"), kib(360.0));
    assert_eq!(value(&t, "Memory", "Swap Used"), kib(12.0));
    // Used is what `free` calls used: total less free, buffers, cache and reclaimable slab.
    assert_eq!(value(&t, "Memory", "Used"), kib(620.0));
    assert_eq!(value(&t, "Memory", "Swap Pages IN"), Some(100.0));
    assert_eq!(value(&t, "Memory", "Swap Pages OUT"), Some(5.0));
    assert_eq!(value(&t, "Scheduler", "Pages IN"), Some(100.0));
}

#[test]
fn file_handles_come_from_file_nr() {
    let texts = Texts {
        file_nr: Some("1500\t100\t10000\n".into()),
        ..Texts::default()
    };
    let now = Snapshot::parse(Instant::now(), &texts);
    let t = table(&readings(None, &now));
    assert_eq!(
        value(&t, "File System", "Allocated File Handles"),
        Some(1500.0)
    );
    assert_eq!(value(&t, "File System", "Used File Handles"), Some(1400.0));
    assert_eq!(value(&t, "File System", "Free File Handles"), Some(8600.0));
    assert!(
        !t["File System"].contains_key("Sockets"),
        "no census, no counts"
    );
}

#[test]
fn the_descriptor_census_counts_descriptors_and_distinct_files() {
    let mut census = FdCensus::default();
    census.add(FdKind::Socket, 9, 1);
    census.add(FdKind::Socket, 9, 1);
    census.add(FdKind::Socket, 9, 2);
    census.add(FdKind::Regular, 8, 1);
    let mut now = Snapshot::parse(Instant::now(), &Texts::default());
    now.fds = Some(census);
    let t = table(&readings(None, &now));
    assert_eq!(value(&t, "File System", "Sockets"), Some(3.0));
    assert_eq!(value(&t, "File System", "Sockets Unique"), Some(2.0));
    assert_eq!(value(&t, "File System", "Regular Files Unique"), Some(1.0));
    assert_eq!(value(&t, "File System", "Fifos"), Some(0.0));
}

#[test]
fn volumes_are_mounted_block_devices_and_real_disks() {
    let mounts = "/dev/vda1 / ext4 rw 0 0\n\
                  proc /proc proc rw 0 0\n\
                  server:/export /mnt/nfs nfs rw 0 0\n\
                  /dev/mapper/data /data xfs rw 0 0\n\
                  /dev/vda1 /bind ext4 rw 0 0\n";
    let mounts = Vec::<MountEntry>::from_buf_read(mounts.as_bytes()).expect("mounts parse");
    let disks: Vec<String> = ["vda", "loop0", "ram0", "sr0", "vdb"]
        .map(String::from)
        .into();
    let canonical = |spec: &str| match spec {
        "/dev/mapper/data" => Some("/dev/dm-0".to_owned()),
        other => Some(other.to_owned()),
    };
    let got: Vec<(String, Option<String>)> = select_volumes(&mounts, &disks, canonical)
        .into_iter()
        .map(|v| (v.name, v.mount_point))
        .collect();
    let want = [
        ("dm-0", Some("/data")),
        ("vda", None),
        ("vda1", Some("/")),
        ("vdb", None),
    ]
    .map(|(n, m)| (n.to_owned(), m.map(str::to_owned)));
    assert_eq!(got, want);
}

#[test]
fn volume_counters_come_from_diskstats_and_statvfs() {
    let line = |r: u64, w: u64| format!(" 254 0 vda {r} 0 {} 30 {w} 0 {} 40 0 0 0\n", r * 8, w * 8);
    let a = Texts {
        diskstats: Some(line(10, 20)),
        ..Texts::default()
    };
    let b = Texts {
        diskstats: Some(line(20, 60)),
        ..Texts::default()
    };
    let (a, mut b) = pair(&a, &b, 2);
    b.volumes = vec![
        Volume {
            name: "vda".into(),
            mount_point: Some("/".into()),
            space: Some(Space {
                total_bytes: 1000,
                avail_bytes: 300,
                used_bytes: 600,
                total_files: 50,
                free_files: 20,
            }),
        },
        Volume {
            name: "vdz".into(),
            mount_point: None,
            space: None,
        },
    ];
    let t = table(&readings(Some(&a), &b));
    assert_eq!(value(&t, "Volume vda", "Disk Reads"), Some(5.0));
    assert_eq!(value(&t, "Volume vda", "Disk Writes"), Some(20.0));
    assert_eq!(value(&t, "Volume vda", "Disk Sectors Written"), Some(160.0));
    assert_eq!(
        value(&t, "Volume vda", "Bytes Written"),
        Some(160.0 * 512.0)
    );
    assert_eq!(value(&t, "Volume vda", "Time Spent in Reads"), Some(0.0));
    assert_eq!(value(&t, "Volume vda", "Used Files"), Some(30.0));
    assert_eq!(value(&t, "Volume vda", "Free Space"), Some(300.0));
    assert!(
        !t.contains_key("Volume vdz"),
        "a volume with nothing to say is absent"
    );
}

#[test]
fn files_that_could_not_be_read_leave_their_counters_absent() {
    let now = Snapshot::parse(Instant::now(), &Texts::default());
    assert_eq!(readings(None, &now), []);
    let garbage = Texts {
        stat: Some("not /proc/stat at all".into()),
        meminfo: Some("MemTotal: lots".into()),
        ..Texts::default()
    };
    let now = Snapshot::parse(Instant::now(), &garbage);
    assert_eq!(readings(None, &now), []);
}

#[test]
fn standard_entity_names_are_recognised() {
    for name in [
        "CPU",
        "CPU#3",
        "File System",
        "Memory",
        "Scheduler",
        "Volume vda",
        "Terminal eth0",
    ] {
        assert!(is_standard_entity(name), "{name}");
    }
    for name in ["Apache", "CPUs", "Volumes", "Delicious Fruits!!!"] {
        assert!(!is_standard_entity(name), "{name}");
    }
}

#[test]
fn every_counter_name_is_unique_within_its_group_and_fits_the_wire() {
    use appmon_wire::text::{limits, Limit};
    for def in DEFS {
        assert!(def.name.len() <= limits::CounterName::MAX);
        assert!(def.units.len() <= limits::Units::MAX);
        assert!(def.description.len() <= limits::Description::MAX);
    }
}

#[test]
fn reading_this_machine_gives_cpu_memory_and_open_files() {
    let a = read(Instant::now());
    std::thread::sleep(Duration::from_millis(50));
    let b = read(Instant::now());
    let t = table(&readings(Some(&a), &b));
    assert!(value(&t, "Memory", "Total").is_some_and(|v| v > 0.0));
    assert!(value(&t, "File System", "Regular Files").is_some_and(|v| v > 0.0));
    assert!(t.contains_key("CPU#0"));
}

#[test]
fn the_readme_table_lists_every_standard_counter_with_its_units_and_meaning() {
    let readme = include_str!("../../../README.md");
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .filter(|cells: &Vec<&str>| cells.len() == 5)
        .collect();
    assert_eq!(rows.len(), DEFS.len(), "one row per counter");
    for def in DEFS {
        assert!(
            rows.iter()
                .any(|r| r[1] == def.name && r[2] == def.units && r[3] == def.description),
            "no README row for {} ({}, {})",
            def.name,
            def.units,
            def.description
        );
    }
}
