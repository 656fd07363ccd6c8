//! The state directory: per-VM reset history and alarm, so that a restart neither forgets resets
//! nor resets anything on its own.
//!
//! One JSON file per domain UUID (`<uuid>.json`), written atomically (temp file, fsync, rename)
//! on every change by one writer thread, so the supervisor never waits for the disk. Timestamps
//! are wall-clock milliseconds since the Unix epoch; the supervisor maps them to and from its
//! monotonic clock. A file that cannot be read is logged, kept aside as
//! `<uuid>.json.broken-<unix ms>` and taken as empty for that VM only.

use appmon_wire::report::error_chain;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use appmon_control::ResetMethod;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot create state directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list state directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is not a valid state file (kept as {kept})")]
    Parse {
        file: PathBuf,
        kept: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {file}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the state writer thread")]
    Thread(#[source] std::io::Error),
}

/// What survives a restart for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub uuid: String,
    pub name: String,
    pub resets: Vec<ResetEntry>,
    pub alarm: Option<AlarmEntry>,
    /// The VM's event history as `show` had it, oldest first (at most `history_len` entries).
    /// Files written before it was kept have none.
    #[serde(default)]
    pub history: Vec<appmon_control::HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetEntry {
    pub unix_ms: u64,
    pub method: ResetMethod,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmEntry {
    pub unix_ms: u64,
    pub reason: String,
    /// The cluster took this give-up's escalation ([`crate::policy::ClusterTook`]). Files
    /// written before it was kept have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_took: Option<ClusterTookEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTookEntry {
    /// The guest's boot id when the cluster took over (as the kernel prints it), if one was known.
    pub boot_id: Option<String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the directory.
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        std::fs::create_dir_all(dir).map_err(|source| PersistError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file_for(&self, uuid: &str) -> PathBuf {
        // UUIDs are hex and dashes; anything else is replaced so a name never leaves the dir.
        let safe: String = uuid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Reads every record. Unreadable files are reported (and kept aside), not fatal.
    pub fn load_all(&self) -> Result<(HashMap<String, VmRecord>, Vec<PersistError>), PersistError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| PersistError::List {
            dir: self.dir.clone(),
            source,
        })?;
        let mut records = HashMap::new();
        let mut problems = Vec::new();
        for entry in entries.flatten() {
            let file = entry.path();
            if file.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.load_file(&file) {
                Ok(record) => {
                    records.insert(record.uuid.clone(), record);
                }
                Err(e) => problems.push(e),
            }
        }
        Ok((records, problems))
    }

    fn load_file(&self, file: &Path) -> Result<VmRecord, PersistError> {
        let bytes = std::fs::read(file).map_err(|source| PersistError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| {
            let kept = format!("{}.broken-{}", file.display(), unix_ms_now());
            // Keep the evidence; the next save replaces the original.
            let kept = match std::fs::rename(file, &kept) {
                Ok(()) => kept,
                Err(e) => format!("nowhere: {e}"),
            };
            PersistError::Parse {
                file: file.to_path_buf(),
                kept,
                source,
            }
        })
    }

    /// Writes one record atomically.
    pub fn save(&self, record: &VmRecord) -> Result<(), PersistError> {
        let file = self.file_for(&record.uuid);
        let tmp = file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            Ok(())
        };
        write().map_err(|source| PersistError::Write { file, source })
    }

    /// Starts the writer thread. Dropping the returned [`Writer`] flushes and joins it.
    pub fn writer(&self) -> Result<Writer, PersistError> {
        let (tx, rx) = mpsc::channel::<VmRecord>();
        let dir = self.clone();
        let handle = std::thread::Builder::new()
            .name("appmon-state".into())
            .spawn(move || {
                while let Ok(mut record) = rx.recv() {
                    // Only the newest record of a VM matters; skip superseded ones.
                    let mut newer = Vec::new();
                    while let Ok(r) = rx.try_recv() {
                        newer.push(r);
                    }
                    newer.insert(0, record.clone());
                    let mut latest: Vec<VmRecord> = Vec::new();
                    for r in newer {
                        match latest.iter_mut().find(|l| l.uuid == r.uuid) {
                            Some(l) => *l = r,
                            None => latest.push(r),
                        }
                    }
                    for r in latest.drain(..) {
                        record = r;
                        if let Err(e) = dir.save(&record) {
                            tracing::error!(domain = %record.name, error = %error_chain(&e), "state not saved");
                        }
                    }
                }
            })
            .map_err(PersistError::Thread)?;
        Ok(Writer {
            tx: Some(tx),
            handle: Some(handle),
        })
    }
}

/// Sends records to the writer thread.
#[derive(Debug)]
pub struct Writer {
    tx: Option<mpsc::Sender<VmRecord>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn save(&self, record: VmRecord) {
        if let Some(tx) = &self.tx {
            // The thread only ends when the sender is dropped.
            let _ = tx.send(record);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: &str) -> VmRecord {
        VmRecord {
            uuid: uuid.into(),
            name: "vm1".into(),
            resets: vec![ResetEntry {
                unix_ms: 1_700_000_000_000,
                method: ResetMethod::Reset,
                reason: "heartbeats stopped".into(),
            }],
            alarm: Some(AlarmEntry {
                unix_ms: 1_700_000_001_000,
                reason: "gave up".into(),
                cluster_took: Some(ClusterTookEntry {
                    boot_id: Some("6ad2a5c3-6c5b-4c2e-9b0e-2f1b5d0c9a11".into()),
                }),
            }),
            history: vec![appmon_control::HistoryEntry::new(
                1_700_000_000_000,
                appmon_control::Level::Warn,
                appmon_control::HistoryKind::Operator(appmon_control::OperatorAction::Clear),
            )],
        }
    }

    #[test]
    fn a_record_written_before_histories_were_kept_still_loads() {
        let old = r#"{"uuid":"u","name":"vm1","resets":[],"alarm":{"unix_ms":1,"reason":"r"}}"#;
        let record: VmRecord = serde_json::from_str(old).expect("old record");
        assert!(record.history.is_empty());
        assert_eq!(record.alarm.and_then(|a| a.cluster_took), None);
    }

    #[test]
    fn records_survive_a_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::open(tmp.path()).expect("open");
        {
            let w = dir.writer().expect("writer");
            w.save(record("u-1"));
            w.save(record("u-2"));
        }
        let (records, problems) = dir.load_all().expect("load");
        assert!(problems.is_empty());
        assert_eq!(records.len(), 2);
        assert_eq!(records["u-1"], record("u-1"));
    }

    #[test]
    fn broken_file_is_kept_aside_and_others_still_load() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::open(tmp.path()).expect("open");
        dir.save(&record("good")).expect("save");
        std::fs::write(tmp.path().join("bad.json"), b"{not json").expect("write");
        let (records, problems) = dir.load_all().expect("load");
        assert_eq!(records.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("bad.json"));
        let kept = std::fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".broken-"));
        assert!(kept, "broken file kept");
    }

    #[test]
    fn odd_uuids_stay_inside_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::open(tmp.path()).expect("open");
        assert_eq!(dir.file_for("../../etc/passwd").parent(), Some(tmp.path()));
    }
}
