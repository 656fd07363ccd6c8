//! MON's background alarms (its `alarm_view`) as a pure machine: thresholds on chosen counters
//! of chosen VMs, judged on every value that arrives, with hysteresis so that a value hovering
//! at a threshold raises one alarm, not one per sample.
//!
//! # Rules
//!
//! A [`Threshold`] has `alarm_below` and/or `alarm_above` and a `hysteresis` band (absolute, in
//! the counter's units). From normal, a value above `alarm_above` raises the *above* alarm and
//! a value below `alarm_below` the *below* alarm. An above alarm clears when a value comes back
//! to `alarm_above - hysteresis` or lower; a below alarm when a value comes back to
//! `alarm_below + hysteresis` or higher. A value that jumps from one side to the other clears
//! the one alarm and raises the other. The two bands may not overlap (checked when a threshold
//! is made), so normal exists between them.
//!
//! [`Threshold`] and its checks live with the configuration ([`crate::config`]), which reads
//! them from host.toml. An [`AlarmView`] holds [`AlarmRule`]s (a domain glob, an entity, a counter, a threshold) and
//! the state of each (domain, entity, counter) a rule matched; [`AlarmView::value`] judges one
//! value. It does no I/O and reads no clock: the supervisor feeds it every value it stores and
//! logs and records what it returns.

use std::collections::HashMap;

use crate::config::glob_match;
pub use crate::config::{Threshold, ThresholdError};

/// Which alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Below,
    Above,
}

/// What a value changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Raised {
        side: Side,
        value: f64,
        threshold: f64,
    },
    Cleared {
        side: Side,
        value: f64,
    },
}

/// One counter's alarm: its threshold and which side, if any, is raised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarm {
    threshold: Threshold,
    raised: Option<Side>,
}

impl Alarm {
    pub fn new(threshold: Threshold) -> Alarm {
        Alarm {
            threshold,
            raised: None,
        }
    }

    pub fn raised(&self) -> Option<Side> {
        self.raised
    }

    /// Judges one value; returns what changed, in order (a clear before a raise).
    pub fn check(&mut self, value: f64) -> Vec<Transition> {
        let mut out = Vec::new();
        if !value.is_finite() {
            return out;
        }
        let t = self.threshold;
        let cleared = match self.raised {
            Some(Side::Above) => t.above.is_none_or(|a| value <= a - t.hysteresis),
            Some(Side::Below) => t.below.is_none_or(|b| value >= b + t.hysteresis),
            None => false,
        };
        if let (true, Some(side)) = (cleared, self.raised) {
            out.push(Transition::Cleared { side, value });
            self.raised = None;
        }
        if self.raised.is_none() {
            let raise = match (t.above, t.below) {
                (Some(a), _) if value > a => Some((Side::Above, a)),
                (_, Some(b)) if value < b => Some((Side::Below, b)),
                _ => None,
            };
            if let Some((side, threshold)) = raise {
                out.push(Transition::Raised {
                    side,
                    value,
                    threshold,
                });
                self.raised = Some(side);
            }
        }
        out
    }
}

/// Thresholds on a counter of the domains a glob matches.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    /// A glob (`*`, `?`) of domain names.
    pub domain: String,
    pub entity: String,
    pub counter: String,
    pub threshold: Threshold,
}

/// Every rule and the state of every (domain, entity, counter) one matched.
#[derive(Debug, Clone, Default)]
pub struct AlarmView {
    rules: Vec<AlarmRule>,
    alarms: HashMap<(String, String, String), Alarm>,
}

impl AlarmView {
    pub fn new(rules: Vec<AlarmRule>) -> AlarmView {
        AlarmView {
            rules,
            alarms: HashMap::new(),
        }
    }

    /// Replaces the rules (a reload): states of counters a rule still covers are kept, under
    /// the new threshold; the others are forgotten.
    pub fn set_rules(&mut self, rules: Vec<AlarmRule>) {
        self.rules = rules;
        let mut alarms = std::mem::take(&mut self.alarms);
        alarms.retain(|(d, e, c), alarm| match self.threshold(d, e, c) {
            Some(t) => {
                alarm.threshold = t;
                true
            }
            None => false,
        });
        self.alarms = alarms;
    }

    /// Whether any rule is set (no rule: values need not be looked at).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule's threshold on this counter of this domain, if one matches.
    pub fn threshold(&self, domain: &str, entity: &str, counter: &str) -> Option<Threshold> {
        self.rules
            .iter()
            .find(|r| r.entity == entity && r.counter == counter && glob_match(&r.domain, domain))
            .map(|r| r.threshold)
    }

    /// Judges one value of a counter; returns what changed.
    pub fn value(
        &mut self,
        domain: &str,
        entity: &str,
        counter: &str,
        value: f64,
    ) -> Vec<Transition> {
        let Some(threshold) = self.threshold(domain, entity, counter) else {
            return Vec::new();
        };
        let key = (domain.to_owned(), entity.to_owned(), counter.to_owned());
        let alarm = self
            .alarms
            .entry(key)
            .or_insert_with(|| Alarm::new(threshold));
        if alarm.threshold != threshold {
            // The rule changed: judge afresh from the raised side it had.
            alarm.threshold = threshold;
        }
        alarm.check(value)
    }

    /// The raised alarms, as (domain, entity, counter, side).
    pub fn raised(&self) -> impl Iterator<Item = (&str, &str, &str, Side)> {
        self.alarms.iter().filter_map(|((d, e, c), a)| {
            a.raised
                .map(|side| (d.as_str(), e.as_str(), c.as_str(), side))
        })
    }

    /// Forgets a domain's alarm states (it went away).
    pub fn forget(&mut self, domain: &str) {
        self.alarms.retain(|(d, _, _), _| d != domain);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn above(a: f64, h: f64) -> Alarm {
        Alarm::new(Threshold::new(None, Some(a), h).expect("valid"))
    }

    #[test]
    fn crossing_raises_and_coming_back_past_the_band_clears() {
        let mut alarm = above(10.0, 2.0);

        let got: Vec<Vec<Transition>> = [5.0, 11.0, 12.0, 9.0, 8.0, 7.0]
            .into_iter()
            .map(|v| alarm.check(v))
            .collect();

        assert_eq!(
            got,
            [
                vec![],
                vec![Transition::Raised {
                    side: Side::Above,
                    value: 11.0,
                    threshold: 10.0
                }],
                vec![],
                vec![],
                vec![Transition::Cleared {
                    side: Side::Above,
                    value: 8.0
                }],
                vec![],
            ]
        );
    }

    #[test]
    fn a_jump_across_clears_one_side_and_raises_the_other() {
        let mut alarm = Alarm::new(Threshold::new(Some(0.0), Some(10.0), 1.0).expect("valid"));

        alarm.check(20.0);
        let got = alarm.check(-5.0);

        assert_eq!(
            got,
            [
                Transition::Cleared {
                    side: Side::Above,
                    value: -5.0
                },
                Transition::Raised {
                    side: Side::Below,
                    value: -5.0,
                    threshold: 0.0
                }
            ]
        );
        assert_eq!(alarm.raised(), Some(Side::Below));
    }

    #[test]
    fn bad_thresholds_are_refused_saying_why() {
        assert_eq!(Threshold::new(None, None, 0.0), Err(ThresholdError::Empty));
        assert_eq!(
            Threshold::new(Some(5.0), Some(6.0), 1.0),
            Err(ThresholdError::Overlap {
                below: 5.0,
                above: 6.0
            })
        );
        assert!(matches!(
            Threshold::new(None, Some(1.0), -1.0),
            Err(ThresholdError::BadHysteresis(_))
        ));
        assert_eq!(
            Threshold::new(None, Some(f64::NAN), 0.0),
            Err(ThresholdError::NotANumber)
        );
    }

    #[test]
    fn the_view_applies_rules_by_domain_glob_and_keeps_states_apart() {
        let t = Threshold::new(None, Some(10.0), 1.0).expect("valid");
        let mut view = AlarmView::new(vec![AlarmRule {
            domain: "web-*".into(),
            entity: "Demo".into(),
            counter: "requests".into(),
            threshold: t,
        }]);

        let web1 = view.value("web-1", "Demo", "requests", 11.0);
        let web2 = view.value("web-2", "Demo", "requests", 5.0);
        let db = view.value("db", "Demo", "requests", 50.0);
        let other = view.value("web-1", "Demo", "other", 50.0);

        assert_eq!(web1.len(), 1);
        assert!(web2.is_empty() && db.is_empty() && other.is_empty());
        let raised: Vec<_> = view.raised().collect();
        assert_eq!(raised, [("web-1", "Demo", "requests", Side::Above)]);
        view.forget("web-1");
        assert_eq!(view.raised().count(), 0);
    }

    proptest! {
        /// A value hovering within the band at a threshold raises at most once, and raises and
        /// clears always alternate.
        #[test]
        fn hovering_raises_once_and_transitions_alternate(
            values in prop::collection::vec(9.0f64..11.0, 1..200),
            wild in prop::collection::vec(-100.0f64..100.0, 0..200),
        ) {
            let mut alarm = above(10.0, 1.5);
            alarm.check(12.0);
            let hovering: usize = values.iter().map(|v| alarm.check(*v).len()).sum();
            prop_assert_eq!(hovering, 0, "within the band nothing changes");

            let mut alarm = Alarm::new(Threshold::new(Some(-10.0), Some(10.0), 2.0).expect("valid"));
            let mut raised: Option<Side> = None;
            for v in wild {
                for t in alarm.check(v) {
                    match t {
                        Transition::Raised { side, .. } => {
                            prop_assert_eq!(raised, None);
                            raised = Some(side);
                        }
                        Transition::Cleared { side, .. } => {
                            prop_assert_eq!(raised, Some(side));
                            raised = None;
                        }
                    }
                }
                prop_assert_eq!(raised, alarm.raised());
            }
        }
    }
}
