//! A VM's connection trouble, as a pure machine on a virtual clock: the latest reason its guest
//! agent could not be connected, how often that same reason came in a row, and which failures
//! are worth a log line and a history entry.
//!
//! The rule, in this one place: a failure whose kind ([`ConnectFailureKind`]) differs from the
//! latest one's is a *change* and is reported (one log line, one `connect_failed` history
//! entry); a failure of the latest kind is a repeat, only counted (`appmonctl show` gives the
//! count and the latest details). The kind, not the text: a real vhost-user-vsock backend
//! drops a refused dial as a broken pipe, a reset or a close at random, and a hostile guest
//! can make every text new. A guest that changes the kind on every retry would still make a
//! line per retry, so changes are reported at most [`CHANGES_PER_WINDOW`] times per
//! [`WINDOW`] per VM; the others are counted as held back, and the next reported change says
//! how many were. A session (the guest's Hello) ends the trouble: the next failure is a change
//! again.

use std::collections::VecDeque;
use std::time::Duration;

use appmon_control::ConnectFailure;
#[cfg(doc)]
use appmon_control::ConnectFailureKind;

/// Reported changes of reason per VM, at most this many per [`WINDOW`].
pub const CHANGES_PER_WINDOW: usize = 6;
/// The window of [`CHANGES_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(60);

/// The latest reason and its repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub reason: ConnectFailure,
    /// When it first occurred in this run of repeats.
    pub first: Duration,
    /// When it last occurred.
    pub last: Duration,
    /// How many times in a row, the first included.
    pub times: u64,
}

/// What to do about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A change of reason: log it and record it; `held_back` changes before it were not.
    Report { held_back: u64 },
    /// The latest reason again: counted.
    Repeat,
    /// A change, but too many this minute: counted as held back.
    HeldBack,
}

/// One VM's connection trouble.
#[derive(Debug, Default)]
pub struct Trouble {
    latest: Option<Latest>,
    /// When the reported changes of the last [`WINDOW`] were reported, oldest first.
    reported: VecDeque<Duration>,
    held_back: u64,
}

impl Trouble {
    /// A failure for `reason` at `now`.
    pub fn failed(&mut self, reason: ConnectFailure, now: Duration) -> Verdict {
        if let Some(latest) = self
            .latest
            .as_mut()
            .filter(|l| l.reason.kind == reason.kind)
        {
            latest.reason = reason;
            latest.last = now;
            latest.times += 1;
            return Verdict::Repeat;
        }
        self.latest = Some(Latest {
            reason,
            first: now,
            last: now,
            times: 1,
        });
        while self
            .reported
            .front()
            .is_some_and(|at| now.saturating_sub(*at) >= WINDOW)
        {
            self.reported.pop_front();
        }
        if self.reported.len() >= CHANGES_PER_WINDOW {
            self.held_back += 1;
            return Verdict::HeldBack;
        }
        self.reported.push_back(now);
        Verdict::Report {
            held_back: std::mem::take(&mut self.held_back),
        }
    }

    /// A session came up: no trouble now. The rate of reports keeps its memory.
    pub fn connected(&mut self) {
        self.latest = None;
    }

    /// The latest reason, while there is trouble.
    pub fn latest(&self) -> Option<&Latest> {
        self.latest.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use appmon_control::ConnectFailureKind as Kind;

    const KINDS: [Kind; 4] = [
        Kind::DialRefused,
        Kind::DialBadReply,
        Kind::NotAFrame,
        Kind::ClosedEarly,
    ];

    fn failure(kind: Kind, detail: &str) -> ConnectFailure {
        ConnectFailure::new(kind, detail)
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_repeated_kind_is_reported_once_and_counted_with_its_latest_details() {
        let mut t = Trouble::default();
        assert_eq!(
            t.failed(failure(Kind::DialRefused, "broken pipe"), s(1)),
            Verdict::Report { held_back: 0 }
        );
        for i in 2..=10 {
            let detail = if i % 2 == 0 { "reset" } else { "closed" };
            assert_eq!(
                t.failed(failure(Kind::DialRefused, detail), s(i)),
                Verdict::Repeat
            );
        }
        let latest = t.latest().unwrap();
        assert_eq!((latest.first, latest.last, latest.times), (s(1), s(10), 10));
        assert_eq!(latest.reason, failure(Kind::DialRefused, "reset"));
        assert_eq!(
            t.failed(failure(Kind::DialBadReply, "NOPE"), s(11)),
            Verdict::Report { held_back: 0 }
        );
        assert_eq!(t.latest().unwrap().times, 1);
        assert_eq!(t.latest().unwrap().first, s(11));
    }

    #[test]
    fn a_session_ends_the_trouble_and_the_same_kind_is_news_again() {
        let mut t = Trouble::default();
        t.failed(failure(Kind::DialRefused, "x"), s(1));
        t.connected();
        assert!(t.latest().is_none());
        assert_eq!(
            t.failed(failure(Kind::DialRefused, "x"), s(2)),
            Verdict::Report { held_back: 0 }
        );
    }

    #[test]
    fn changes_beyond_six_a_minute_are_held_back_and_counted_in_the_next_report() {
        let mut t = Trouble::default();
        let kind = |i: u64| KINDS[i as usize % 2];
        for i in 0..6 {
            assert_eq!(
                t.failed(failure(kind(i), &format!("{i}")), s(i)),
                Verdict::Report { held_back: 0 }
            );
        }
        for i in 6..20 {
            assert_eq!(
                t.failed(failure(kind(i), &format!("{i}")), s(i)),
                Verdict::HeldBack
            );
        }
        // The latest reason is still the latest one seen, reported or not.
        assert_eq!(t.latest().unwrap().reason, failure(kind(19), "19"));
        // A minute after the first report, one slot is free again.
        assert_eq!(
            t.failed(failure(kind(20), "60"), s(60)),
            Verdict::Report { held_back: 14 }
        );
        assert_eq!(t.failed(failure(kind(21), "61"), s(60)), Verdict::HeldBack);
    }

    proptest! {
        /// Whatever the sequence of failures and times: never more than six reports in any
        /// minute; every failure is reported, repeated or held back, and each held-back one is
        /// counted in a later report or still pending; a report is always a change of kind, a
        /// repeat never is.
        #[test]
        fn reports_are_changes_and_bounded(
            steps in proptest::collection::vec((0usize..4, 0u8..3, 0u64..20_000), 1..400)
        ) {
            let mut t = Trouble::default();
            let mut now = Duration::ZERO;
            let mut reports: Vec<Duration> = Vec::new();
            let mut previous: Option<Kind> = None;
            let (mut held, mut accounted) = (0u64, 0u64);
            for (kind, detail, step_ms) in steps {
                now += Duration::from_millis(step_ms);
                let kind = KINDS[kind];
                match t.failed(failure(kind, &detail.to_string()), now) {
                    Verdict::Report { held_back } => {
                        prop_assert_ne!(previous, Some(kind));
                        accounted += held_back;
                        reports.push(now);
                    }
                    Verdict::Repeat => prop_assert_eq!(previous, Some(kind)),
                    Verdict::HeldBack => {
                        prop_assert_ne!(previous, Some(kind));
                        held += 1;
                    }
                }
                previous = Some(kind);
            }
            prop_assert_eq!(held, accounted + t.held_back);
            for (i, at) in reports.iter().enumerate() {
                let in_window = reports[i..].iter().take_while(|r| **r < *at + WINDOW).count();
                prop_assert!(in_window <= CHANGES_PER_WINDOW);
            }
        }
    }
}
