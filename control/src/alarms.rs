//! MON's alarm view as the control socket shows and edits it: a rule ([`AlarmRuleSpec`], the
//! same type host.toml's `[[mon.alarm]]` is read into and `<state_dir>/mon/alarm-rules.json`
//! holds), where a rule comes from ([`RuleOrigin`]), the alarms raised now ([`RaisedAlarm`]),
//! and `appmonctl alarms`' answer ([`AlarmsView`], [`AlarmsDocument`]).
//!
//! The thresholds' checks (one band at least, bands that do not overlap, a finite hysteresis)
//! are the host agent's (`appmon_host_agent::config::Threshold`); this crate only carries the
//! numbers.

use serde::{Deserialize, Serialize};

use crate::history::AlarmSide;
use crate::SCHEMA_VERSION;

/// Thresholds on a counter of the domains `domain` (a glob: `*`, `?`) matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRuleSpec {
    #[serde(default = "all_domains")]
    pub domain: String,
    pub entity: String,
    pub counter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_above: Option<f64>,
    /// The band a value must come back through before a raised alarm clears (absolute, in the
    /// counter's units).
    #[serde(default)]
    pub hysteresis: f64,
}

fn all_domains() -> String {
    "*".into()
}

impl AlarmRuleSpec {
    /// What names the rule: a run-time rule with the same key replaces this one.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.domain, &self.entity, &self.counter)
    }
}

/// Where a rule in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    /// `[[mon.alarm]]` in host.toml.
    HostToml,
    /// `appmonctl alarm-set`, kept in `<state_dir>/mon/alarm-rules.json`.
    RunTime,
}

/// A rule in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRuleView {
    pub origin: RuleOrigin,
    pub rule: AlarmRuleSpec,
}

/// An alarm that stands now. `entity` and `counter` are the guest's names, escaped by the host
/// agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaisedAlarm {
    pub domain: String,
    pub entity: String,
    pub counter: String,
    pub side: AlarmSide,
    /// The threshold the value crossed.
    pub threshold: f64,
}

/// The alarm view: the rules in force (run-time rules first, they take precedence) and the
/// alarms raised, of every domain or of the one asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmsView {
    /// The domain asked for, `None` for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub rules: Vec<AlarmRuleView>,
    /// Sorted by domain, entity, counter.
    pub raised: Vec<RaisedAlarm>,
}

/// What `appmonctl --json alarms [DOMAIN]` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmsDocument {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub alarms: AlarmsView,
}

impl AlarmsDocument {
    pub fn new(alarms: AlarmsView) -> Self {
        AlarmsDocument {
            schema_version: SCHEMA_VERSION,
            alarms,
        }
    }
}

/// `<state_dir>/mon/alarm-rules.json`: the rules set at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRulesFile {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub rules: Vec<AlarmRuleSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_with_the_default_domain_and_refuses_unknown_fields() {
        let rule: AlarmRuleSpec =
            serde_json::from_str(r#"{"entity":"CPU","counter":"CPU Total","alarm_above":90}"#)
                .expect("rule");
        assert_eq!(rule.domain, "*");
        assert_eq!((rule.alarm_below, rule.alarm_above), (None, Some(90.0)));
        assert_eq!(rule.hysteresis, 0.0);
        let unknown = serde_json::from_str::<AlarmRuleSpec>(
            r#"{"entity":"CPU","counter":"c","alarm_abov":90}"#,
        )
        .expect_err("a misspelt field");
        assert!(unknown.to_string().contains("alarm_abov"), "{unknown}");
    }

    #[test]
    fn a_rule_view_is_the_rule_with_its_origin() {
        let view = AlarmRuleView {
            origin: RuleOrigin::RunTime,
            rule: AlarmRuleSpec {
                domain: "web-*".into(),
                entity: "Demo".into(),
                counter: "requests".into(),
                alarm_below: Some(1.0),
                alarm_above: None,
                hysteresis: 0.5,
            },
        };
        let json = serde_json::to_string(&view).expect("json");
        assert_eq!(
            json,
            r#"{"origin":"run_time","rule":{"domain":"web-*","entity":"Demo","counter":"requests","alarm_below":1.0,"hysteresis":0.5}}"#
        );
        assert_eq!(
            serde_json::from_str::<AlarmRuleView>(&json).ok(),
            Some(view)
        );
    }
}
