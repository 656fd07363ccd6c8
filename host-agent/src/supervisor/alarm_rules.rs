//! MON's alarm rules in the supervisor: `alarms [DOMAIN]`, `alarm-set`, `alarm-remove`
//! (the merge and the file: [`crate::mon::rules`]).

use appmon_control::{AlarmSide, AlarmsView, ErrorKind, RaisedAlarm, Response};
use appmon_wire::escape;

use super::Supervisor;
use crate::config::{glob_match, Config};
use crate::mon::alarms::{AlarmRule, Side};
use crate::mon::rules::{self, RunTimeRules};

/// The alarm view's rules in force: the run-time ones, then `config`'s they do not replace.
pub(super) fn in_force(config: &Config, run_time: &RunTimeRules) -> Vec<AlarmRule> {
    rules::alarm_rules(&rules::in_force(&config.mon.alarms, run_time.rules()))
}

impl Supervisor {
    /// `alarms [DOMAIN]`: the rules in force (those whose glob matches `domain` when named) and
    /// the raised alarms.
    pub(super) fn alarms_view(&self, domain: Option<String>) -> Response {
        let name = match &domain {
            Some(key) => match self.find(key).and_then(|id| self.vms.get(&id)) {
                Some(vm) => Some(vm.domain.name.clone()),
                None => return self.unknown(key),
            },
            None => None,
        };
        let rules = rules::in_force(&self.config.mon.alarms, self.run_time_rules.rules())
            .into_iter()
            .filter(|r| {
                name.as_deref()
                    .is_none_or(|n| glob_match(&r.rule.domain, n))
            })
            .collect();
        let mut raised: Vec<RaisedAlarm> = self
            .alarms
            .raised()
            .filter(|(d, ..)| name.as_deref().is_none_or(|n| n == *d))
            .map(|(d, e, c, side)| {
                let t = self.alarms.threshold(d, e, c);
                let (side, threshold) = match side {
                    Side::Below => (AlarmSide::Below, t.and_then(|t| t.below())),
                    Side::Above => (AlarmSide::Above, t.and_then(|t| t.above())),
                };
                RaisedAlarm {
                    domain: d.to_owned(),
                    entity: escape(e).into_owned(),
                    counter: escape(c).into_owned(),
                    side,
                    threshold: threshold.unwrap_or(f64::NAN),
                }
            })
            .collect();
        raised.sort_by(|a, b| {
            (&a.domain, &a.entity, &a.counter).cmp(&(&b.domain, &b.entity, &b.counter))
        });
        Response::Alarms {
            alarms: Box::new(AlarmsView {
                domain: name,
                rules,
                raised,
            }),
        }
    }

    /// After `alarm-set` or `alarm-remove`: the alarm view takes the rules in force (alarm
    /// states a rule still covers are kept); the answer says what was done or why not.
    pub(super) fn rules_changed(&mut self, done: Result<String, rules::RuleError>) -> Response {
        match done {
            Ok(message) => {
                self.alarms
                    .set_rules(in_force(&self.config, &self.run_time_rules));
                self.mon_epoch.bump();
                tracing::info!("{message}");
                Response::Done { message }
            }
            Err(e) => Response::Error {
                kind: match e {
                    rules::RuleError::Unknown { .. } => ErrorKind::UnknownRule,
                    rules::RuleError::Write { .. } => ErrorKind::StateWrite,
                    _ => ErrorKind::BadRequest,
                },
                message: e.to_string(),
            },
        }
    }
}
