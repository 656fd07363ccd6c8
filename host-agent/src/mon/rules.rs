//! The alarm view's rules: host.toml's `[[mon.alarm]]` and the ones set at run time
//! (`appmonctl alarm-set` / `alarm-remove`), which are kept in `<state_dir>/mon/alarm-rules.json`
//! (written atomically: temp file, fsync, rename) and so survive a restart.
//!
//! A run-time rule overrides the host.toml rule with the same key (domain glob, entity,
//! counter), and comes first: the alarm view takes the first rule that matches a counter, so a
//! run-time rule also wins over a host.toml rule whose glob overlaps its own. [`in_force`] is
//! that merge, pure; [`RunTimeRules`] is the file's thin shell.

use std::io::Write;
use std::path::{Path, PathBuf};

use appmon_control::{AlarmRuleSpec, AlarmRuleView, AlarmRulesFile, RuleOrigin, SCHEMA_VERSION};

use super::alarms::AlarmRule;
use crate::config::threshold_of;

/// The file's name under the state directory.
pub const FILE: &str = "mon/alarm-rules.json";

/// The rules in force: the run-time ones, then host.toml's that no run-time rule replaces.
pub fn in_force(host_toml: &[AlarmRuleSpec], run_time: &[AlarmRuleSpec]) -> Vec<AlarmRuleView> {
    let replaced = |r: &AlarmRuleSpec| run_time.iter().any(|t| t.key() == r.key());
    run_time
        .iter()
        .map(|r| (RuleOrigin::RunTime, r))
        .chain(
            host_toml
                .iter()
                .filter(|r| !replaced(r))
                .map(|r| (RuleOrigin::HostToml, r)),
        )
        .map(|(origin, rule)| AlarmRuleView {
            origin,
            rule: rule.clone(),
        })
        .collect()
}

/// The alarm view's rules of `views` (host.toml's were checked when it was read, run-time ones
/// when they were set; one that fails the check anyway is left out).
pub fn alarm_rules(views: &[AlarmRuleView]) -> Vec<AlarmRule> {
    views
        .iter()
        .filter_map(|v| {
            threshold_of(&v.rule).ok().map(|threshold| AlarmRule {
                domain: v.rule.domain.clone(),
                entity: v.rule.entity.clone(),
                counter: v.rule.counter.clone(),
                threshold,
            })
        })
        .collect()
}

/// Why a run-time rule was not set or removed.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("alarm rule {entity:?} / {counter:?} on {domain:?}: {source}")]
    Invalid {
        domain: String,
        entity: String,
        counter: String,
        source: crate::config::ThresholdError,
    },
    #[error("alarm rule: {0}")]
    Empty(&'static str),
    #[error("no run-time alarm rule on {domain:?} {entity:?} / {counter:?} (run-time rules: {known}; host.toml's are changed in host.toml)")]
    Unknown {
        domain: String,
        entity: String,
        counter: String,
        known: String,
    },
    #[error("cannot write {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// The run-time rules and the file that keeps them.
#[derive(Debug)]
pub struct RunTimeRules {
    file: PathBuf,
    rules: Vec<AlarmRuleSpec>,
}

impl RunTimeRules {
    /// Reads the rules kept under `state_dir`: none when there is no file; a file that cannot
    /// be read or holds a bad rule is reported and its good rules kept (the file itself is left
    /// as it is until the next change writes it).
    pub fn load(state_dir: &Path) -> (RunTimeRules, Vec<String>) {
        let file = state_dir.join(FILE);
        let mut problems = Vec::new();
        let rules = match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                problems.push(format!("{}: {e}", file.display()));
                Vec::new()
            }
            Ok(bytes) => match serde_json::from_slice::<AlarmRulesFile>(&bytes) {
                Ok(doc) => doc
                    .rules
                    .into_iter()
                    .filter(|r| match check(r) {
                        Ok(()) => true,
                        Err(e) => {
                            problems.push(format!("{}: {e}", file.display()));
                            false
                        }
                    })
                    .collect(),
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    Vec::new()
                }
            },
        };
        (RunTimeRules { file, rules }, problems)
    }

    pub fn rules(&self) -> &[AlarmRuleSpec] {
        &self.rules
    }

    /// Sets `rule`, replacing the run-time rule with its key; written before it takes effect.
    pub fn set(&mut self, rule: AlarmRuleSpec) -> Result<(), RuleError> {
        check(&rule)?;
        let mut rules = self.rules.clone();
        match rules.iter_mut().find(|r| r.key() == rule.key()) {
            Some(r) => *r = rule,
            None => rules.push(rule),
        }
        self.write(rules)
    }

    /// Removes the run-time rule with this key.
    pub fn remove(&mut self, domain: &str, entity: &str, counter: &str) -> Result<(), RuleError> {
        let key = (domain, entity, counter);
        if !self.rules.iter().any(|r| r.key() == key) {
            let known: Vec<String> = self
                .rules
                .iter()
                .map(|r| format!("{:?} {:?} / {:?}", r.domain, r.entity, r.counter))
                .collect();
            return Err(RuleError::Unknown {
                domain: domain.into(),
                entity: entity.into(),
                counter: counter.into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let rules = self
            .rules
            .iter()
            .filter(|r| r.key() != key)
            .cloned()
            .collect();
        self.write(rules)
    }

    fn write(&mut self, rules: Vec<AlarmRuleSpec>) -> Result<(), RuleError> {
        let doc = AlarmRulesFile {
            schema_version: SCHEMA_VERSION,
            rules,
        };
        let tmp = self.file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let bytes = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)?;
            if let Some(dir) = self.file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| RuleError::Write {
            file: self.file.clone(),
            source,
        })?;
        self.rules = doc.rules;
        Ok(())
    }
}

fn check(rule: &AlarmRuleSpec) -> Result<(), RuleError> {
    if rule.domain.is_empty() {
        return Err(RuleError::Empty(
            "the domain glob is empty (use * for every domain)",
        ));
    }
    if rule.entity.is_empty() || rule.counter.is_empty() {
        return Err(RuleError::Empty("the entity and the counter must be named"));
    }
    threshold_of(rule)
        .map(|_| ())
        .map_err(|source| RuleError::Invalid {
            domain: rule.domain.clone(),
            entity: rule.entity.clone(),
            counter: rule.counter.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(domain: &str, counter: &str, above: f64) -> AlarmRuleSpec {
        AlarmRuleSpec {
            domain: domain.into(),
            entity: "Demo".into(),
            counter: counter.into(),
            alarm_below: None,
            alarm_above: Some(above),
            hysteresis: 0.0,
        }
    }

    #[test]
    fn run_time_rules_come_first_and_replace_host_toml_rules_with_their_key() {
        let toml = [rule("*", "a", 1.0), rule("*", "b", 2.0)];
        let run = [rule("*", "b", 20.0), rule("web-*", "a", 10.0)];

        let got: Vec<(RuleOrigin, String, f64)> = in_force(&toml, &run)
            .into_iter()
            .map(|v| (v.origin, v.rule.counter, v.rule.alarm_above.unwrap_or(0.0)))
            .collect();

        assert_eq!(
            got,
            [
                (RuleOrigin::RunTime, "b".into(), 20.0),
                (RuleOrigin::RunTime, "a".into(), 10.0),
                (RuleOrigin::HostToml, "a".into(), 1.0),
            ]
        );
    }

    #[test]
    fn set_and_remove_persist_and_a_bad_rule_is_refused_without_a_write() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut rules, problems) = RunTimeRules::load(dir.path());
        assert!(problems.is_empty() && rules.rules().is_empty());

        rules.set(rule("*", "a", 1.0)).expect("set");
        rules.set(rule("*", "a", 5.0)).expect("replace");
        rules.set(rule("*", "b", 2.0)).expect("set");
        let mut bad = rule("*", "c", 1.0);
        bad.alarm_below = Some(2.0);
        let refused = rules.set(bad).expect_err("overlapping bands");
        rules.remove("*", "b", "b").expect_err("no such rule");
        rules.remove("*", "Demo", "b").expect("remove");

        assert!(refused.to_string().contains("overlap"), "{refused}");
        let (again, problems) = RunTimeRules::load(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(again.rules(), [rule("*", "a", 5.0)]);
        assert!(!dir.path().join("mon/alarm-rules.json.tmp").exists());
    }

    #[test]
    fn a_broken_file_is_reported_and_its_good_rules_kept() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("mon")).expect("mkdir");
        let file = dir.path().join(FILE);
        std::fs::write(&file, "{not json").expect("write");
        let (none, garbage) = RunTimeRules::load(dir.path());
        let mut bad = rule("*", "c", 1.0);
        bad.alarm_above = None;
        let doc = AlarmRulesFile {
            schema_version: SCHEMA_VERSION,
            rules: vec![rule("*", "a", 1.0), bad],
        };
        std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("write");
        let (good, one_bad) = RunTimeRules::load(dir.path());

        assert!(none.rules().is_empty());
        assert_eq!(garbage.len(), 1);
        assert!(garbage[0].contains("alarm-rules.json"), "{garbage:?}");
        assert_eq!(good.rules(), [rule("*", "a", 1.0)]);
        assert_eq!(one_bad.len(), 1, "{one_bad:?}");
        assert!(one_bad[0].contains("neither"), "{one_bad:?}");
    }
}
