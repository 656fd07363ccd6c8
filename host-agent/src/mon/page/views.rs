//! The MON page's saved views: a view is a named set of charts, each chart one or more counters
//! of one or more VMs over the last minutes. One JSON file a view in `<state_dir>/views/`,
//! written atomically (a temp file of its own, fsync, rename), so two browsers saving the same
//! view at once leave one of the two whole (the last rename wins) and never a mix.
//!
//! A file that cannot be read or parsed is listed with its error and the others still load.
//! A view naming a VM or counter that no longer exists is still a valid view: the page shows
//! that chart's counter as gone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The longest view name, chart title or counter part, in bytes.
pub const MAX_TEXT: usize = 128;
/// The most charts a view holds.
pub const MAX_CHARTS: usize = 32;
/// The most counters a chart draws.
pub const MAX_SERIES: usize = 16;
/// The longest time span a chart shows, in minutes (the counter history is no longer).
pub const MAX_MINUTES: u32 = 60;
/// The largest view file read.
const MAX_FILE: u64 = 256 * 1024;

/// A saved view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    pub name: String,
    pub charts: Vec<Chart>,
}

/// One chart of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chart {
    pub title: String,
    /// The time span shown, the last `minutes` up to now.
    pub minutes: u32,
    pub counters: Vec<CounterRef>,
}

/// A counter of a VM: its domain name, entity and counter name as the guest names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterRef {
    pub domain: String,
    pub entity: String,
    pub counter: String,
}

/// Why a view was refused or could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view name {0:?}: 1 to {MAX_TEXT} bytes of letters, digits, space, `_`, `-` and `.`, not starting with `.`")]
    BadName(String),
    #[error("view {view:?}: {what}")]
    Invalid { view: String, what: String },
    #[error("view {0:?} does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a view: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Checks a view name: it becomes a file name, so only harmless characters.
pub fn check_name(name: &str) -> Result<(), ViewError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TEXT
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ViewError::BadName(name.chars().take(MAX_TEXT).collect()))
    }
}

impl View {
    /// Checks the bounds of every part.
    pub fn check(&self) -> Result<(), ViewError> {
        check_name(&self.name)?;
        let invalid = |what: String| ViewError::Invalid {
            view: self.name.clone(),
            what,
        };
        if self.charts.len() > MAX_CHARTS {
            return Err(invalid(format!(
                "{} charts; at most {MAX_CHARTS}",
                self.charts.len()
            )));
        }
        for (i, chart) in self.charts.iter().enumerate() {
            let n = i + 1;
            if chart.title.len() > MAX_TEXT {
                return Err(invalid(format!(
                    "chart {n}: the title is longer than {MAX_TEXT} bytes"
                )));
            }
            if !(1..=MAX_MINUTES).contains(&chart.minutes) {
                return Err(invalid(format!(
                    "chart {n}: {} minutes; 1 to {MAX_MINUTES}",
                    chart.minutes
                )));
            }
            if chart.counters.is_empty() || chart.counters.len() > MAX_SERIES {
                return Err(invalid(format!(
                    "chart {n}: {} counters; 1 to {MAX_SERIES}",
                    chart.counters.len()
                )));
            }
            for c in &chart.counters {
                for part in [&c.domain, &c.entity, &c.counter] {
                    if part.is_empty() || part.len() > MAX_TEXT {
                        return Err(invalid(format!(
                            "chart {n}: a counter's domain, entity and counter name are 1 to {MAX_TEXT} bytes"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What listing the views found: the views, and the files that could not be read.
#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub views: Vec<View>,
    pub broken: Vec<Broken>,
}

/// A view file that could not be read, and why.
#[derive(Debug, Serialize)]
pub struct Broken {
    pub file: String,
    pub error: String,
}

/// The views' directory.
#[derive(Debug, Clone)]
pub struct ViewStore {
    dir: PathBuf,
}

static TEMP_SERIAL: AtomicU64 = AtomicU64::new(0);

impl ViewStore {
    /// The store in `dir` (made on the first save).
    pub fn new(dir: PathBuf) -> ViewStore {
        ViewStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every view, by name; a file that cannot be read is listed in `broken`.
    pub fn list(&self) -> Result<Listing, ViewError> {
        let io = |source| ViewError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = Listing::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let path = entry.map_err(io)?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if file.starts_with('.') || !file.ends_with(".json") {
                continue; // temp files and what is not ours
            }
            match read(&path) {
                Ok(view) => out.views.push(view),
                Err(e) => out.broken.push(Broken {
                    file: file.to_owned(),
                    error: e.to_string(),
                }),
            }
        }
        out.views.sort_by(|a, b| a.name.cmp(&b.name));
        out.broken.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// Writes `view` whole, replacing one of the same name.
    pub fn save(&self, view: &View) -> Result<(), ViewError> {
        view.check()?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ViewError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let file = self.file(&view.name);
        // A temp file of this write alone: concurrent saves never write into one file.
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            view.name,
            std::process::id(),
            TEMP_SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_json::to_vec_pretty(view).expect("a view serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ViewError::Io {
                path: file.clone(),
                source: e,
            }
        })
    }

    /// Removes the view `name`.
    pub fn delete(&self, name: &str) -> Result<(), ViewError> {
        check_name(name)?;
        let file = self.file(name);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ViewError::NotFound(name.to_owned()))
            }
            Err(source) => Err(ViewError::Io { path: file, source }),
        }
    }
}

fn read(path: &Path) -> Result<View, ViewError> {
    let io = |source| ViewError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(ViewError::Parse {
            path: path.to_owned(),
            message: format!("{len} bytes; at most {MAX_FILE}"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let view: View = serde_json::from_slice(&bytes).map_err(|e| ViewError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    view.check().map_err(|e| ViewError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != view.name {
        return Err(ViewError::Parse {
            path: path.to_owned(),
            message: format!("it names view {:?}, not {stem:?}", view.name),
        });
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, counter: &str) -> View {
        View {
            name: name.into(),
            charts: vec![Chart {
                title: "load".into(),
                minutes: 5,
                counters: vec![CounterRef {
                    domain: "web".into(),
                    entity: "CPU".into(),
                    counter: counter.into(),
                }],
            }],
        }
    }

    #[test]
    fn views_survive_a_round_trip_and_a_broken_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ViewStore::new(dir.path().join("views"));
        assert!(store.list().expect("empty").views.is_empty());

        store.save(&view("b", "CPU Total")).expect("save b");
        store.save(&view("a", "CPU Total")).expect("save a");
        store.save(&view("a", "CPU User")).expect("save a again");
        std::fs::write(store.dir().join("c.json"), b"{\"name\": \"c\", ").expect("write");

        let listing = store.list().expect("list");
        assert_eq!(
            listing.views,
            vec![view("a", "CPU User"), view("b", "CPU Total")]
        );
        assert_eq!(listing.broken.len(), 1, "{listing:?}");
        assert_eq!(listing.broken[0].file, "c.json");
        assert!(
            listing.broken[0].error.contains("not a view"),
            "{listing:?}"
        );
        store.delete("b").expect("delete");
        assert!(matches!(store.delete("b"), Err(ViewError::NotFound(_))));
        assert_eq!(
            store.list().expect("list").views,
            vec![view("a", "CPU User")]
        );
    }

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", "a\0b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["CPU of web", "v-1_2.3"] {
            check_name(good).expect(good);
        }
    }

    #[test]
    fn out_of_bounds_views_are_refused_with_the_reason() {
        let mut v = view("v", "CPU Total");
        v.charts[0].minutes = 0;
        let e = v.check().expect_err("0 minutes").to_string();
        assert!(e.contains("chart 1: 0 minutes"), "{e}");
        let mut v = view("v", "");
        let e = v.check().expect_err("empty counter").to_string();
        assert!(e.contains("chart 1"), "{e}");
        v.charts[0].counters.clear();
        assert!(v.check().is_err());
    }

    #[test]
    fn concurrent_saves_of_one_view_leave_one_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ViewStore::new(dir.path().to_owned());
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = &store;
                s.spawn(move || {
                    for j in 0..20 {
                        store
                            .save(&view("same", &format!("c{i}-{j}")))
                            .expect("save");
                    }
                });
            }
        });
        let listing = store.list().expect("list");
        assert_eq!(listing.views.len(), 1, "{listing:?}");
        assert!(listing.broken.is_empty(), "{listing:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    }
}
