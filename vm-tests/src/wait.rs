//! Bounded polling. VM tests never sleep for a fixed time: they poll a condition until a deadline
//! and, when it passes, say what they were waiting for.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

/// First poll interval; grows to [`MAX_POLL`] so cheap conditions answer fast and slow ones do
/// not spin.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// A bounded wait ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// The bound that ran out.
    pub timeout: Duration,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1?} waiting for {}",
            self.timeout, self.what
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Polls `cond` until it returns `Some`, at most for `timeout`. Returns the value.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T, WaitTimeout> {
    let start = Instant::now();
    let mut poll = FIRST_POLL;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(WaitTimeout {
                what: what.to_owned(),
                timeout,
            });
        }
        thread::sleep(poll.min(timeout - elapsed));
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Polls `cond` until it is true, at most for `timeout`. Returns how long it took.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, WaitTimeout> {
    let start = Instant::now();
    wait_for(timeout, what, || cond().then_some(()))?;
    Ok(start.elapsed())
}

/// How often [`hold_for`] checks.
const HOLD_POLL: Duration = Duration::from_millis(200);

/// A condition that had to hold for a while did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldBroken {
    /// What had to hold, as the caller described it.
    pub what: String,
    /// How long it held before it broke.
    pub after: Duration,
    /// What the check reported.
    pub violation: String,
}

impl fmt::Display for HoldBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stopped holding after {:.1?}: {}",
            self.what, self.after, self.violation
        )
    }
}

impl std::error::Error for HoldBroken {}

/// Checks `check` again and again for the whole of `duration` (and once more at its end): for
/// "nothing happens for this long", where the waiting is the test. Returns how many checks ran,
/// or the first violation `check` reported.
pub fn hold_for(
    duration: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<u32, HoldBroken> {
    let start = Instant::now();
    let mut checks = 0;
    loop {
        let elapsed = start.elapsed();
        checks += 1;
        if let Err(violation) = check() {
            return Err(HoldBroken {
                what: what.to_owned(),
                after: elapsed,
                violation,
            });
        }
        if elapsed >= duration {
            return Ok(checks);
        }
        thread::sleep(HOLD_POLL.min(duration - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_condition_holds() {
        let mut calls = 0;
        let took = wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls == 3
        })
        .expect("condition holds on the third call");
        assert_eq!(calls, 3);
        assert!(took < Duration::from_secs(5));
    }

    #[test]
    fn wait_until_times_out_naming_what_it_waited_for() {
        let err = wait_until(Duration::from_millis(30), "never", || false).unwrap_err();
        assert_eq!(err.what, "never");
        assert!(err.to_string().contains("waiting for never"), "{err}");
    }

    #[test]
    fn wait_for_returns_the_value() {
        let v = wait_for(Duration::from_secs(1), "value", || Some(7)).expect("immediate");
        assert_eq!(v, 7);
    }

    #[test]
    fn hold_for_checks_until_the_end() {
        let start = Instant::now();
        let checks = hold_for(Duration::from_millis(300), "quiet", || Ok(())).expect("holds");
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(checks >= 2, "{checks}");
    }

    #[test]
    fn hold_for_reports_the_first_violation() {
        let mut calls = 0;
        let err = hold_for(Duration::from_secs(30), "quiet", || {
            calls += 1;
            if calls == 2 {
                Err("noise".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.violation, "noise");
        assert!(err.to_string().contains("quiet stopped holding"), "{err}");
    }
}
