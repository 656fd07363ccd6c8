//! The supervisor's clock: monotonic, with a wall-clock mapping for the history and the state
//! files.

use std::time::Duration;

use tokio::time::Instant;

/// How far the monotonic clock starts after zero, so that resets loaded from the state
/// directory (in the past) still have a place on it.
const CLOCK_OFFSET: Duration = Duration::from_secs(400 * 24 * 3600);

/// Monotonic time as a [`Duration`] on the policy's scale, and its wall-clock time. The mapping
/// is kept in microseconds, so that a history timestamp is the decision's wall time truncated
/// to the millisecond, not up to two milliseconds early.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall_origin_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            origin: Instant::now(),
            wall_origin_us: unix_us_now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.mono(Instant::now())
    }

    pub fn mono(&self, at: Instant) -> Duration {
        CLOCK_OFFSET + at.saturating_duration_since(self.origin)
    }

    pub fn instant(&self, mono: Duration) -> Instant {
        self.origin + mono.saturating_sub(CLOCK_OFFSET)
    }

    pub fn wall_ms(&self, mono: Duration) -> u64 {
        let us = mono.as_micros() as i128 - CLOCK_OFFSET.as_micros() as i128
            + i128::from(self.wall_origin_us);
        (us.max(0) / 1000) as u64
    }

    /// `None` when the time is too far in the past for the clock.
    pub fn from_wall_ms(&self, unix_ms: u64) -> Option<Duration> {
        let delta = i128::from(unix_ms) * 1000 - i128::from(self.wall_origin_us);
        let mono = CLOCK_OFFSET.as_micros() as i128 + delta;
        (mono >= 0).then(|| Duration::from_micros(mono as u64))
    }
}

/// Notices that the supervisor's loop was not scheduled: it woke more than `bound` after the
/// moment it had planned to wake at the latest. Pure: the loop tells it when it planned to wake
/// and when it woke, on the monotonic clock. It also watches the wall clock against the
/// monotonic one, to say when the wall clock moved (decisions never use it).
#[derive(Debug, Clone)]
pub struct PauseWatch {
    bound: Duration,
    planned: Option<Duration>,
    /// Wall minus monotonic time, in microseconds, when last looked at.
    wall_offset_us: Option<i128>,
}

/// What [`PauseWatch::woke`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wake {
    /// The loop was not scheduled for this long (it woke this much after it planned to).
    pub paused: Option<Duration>,
    /// The wall clock moved by this many milliseconds against the monotonic clock since the
    /// last wake (positive: forward).
    pub wall_jump_ms: Option<i64>,
}

/// A wall-clock move smaller than this is ordinary (NTP slewing, rounding).
const WALL_JUMP: Duration = Duration::from_secs(1);

impl PauseWatch {
    pub fn new(bound: Duration) -> Self {
        PauseWatch {
            bound,
            planned: None,
            wall_offset_us: None,
        }
    }

    pub fn set_bound(&mut self, bound: Duration) {
        self.bound = bound;
    }

    /// The latest the loop sleeps before it looks again: with nothing due, it still wakes this
    /// often, so that a pause is seen by a timer that fired late.
    pub fn period(&self) -> Duration {
        self.bound / 2
    }

    /// The loop will wake at `at` at the latest.
    pub fn plan(&mut self, at: Duration) {
        self.planned = Some(at);
    }

    /// The loop woke at `now` (monotonic); `wall_us` is the wall clock then.
    pub fn woke(&mut self, now: Duration, wall_us: u64) -> Wake {
        let paused = self
            .planned
            .take()
            .map(|at| now.saturating_sub(at))
            .filter(|late| *late > self.bound);
        let offset = i128::from(wall_us) - now.as_micros() as i128;
        let wall_jump_ms = self
            .wall_offset_us
            .replace(offset)
            .map(|before| offset - before)
            .filter(|d| d.unsigned_abs() >= WALL_JUMP.as_micros())
            .map(|d| (d / 1000) as i64);
        Wake {
            paused,
            wall_jump_ms,
        }
    }
}

/// The wall clock now, in microseconds since the epoch.
pub fn unix_us_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_of_a_moment_is_its_millisecond_not_earlier() {
        let clock = Clock::new();
        std::thread::sleep(Duration::from_millis(3));
        let before = unix_us_now();
        let at = Instant::now();
        let after = unix_us_now();

        let wall = clock.wall_ms(clock.mono(at));

        assert!(
            wall >= before / 1000 && wall <= after / 1000 + 1,
            "{wall} outside [{before} us, {after} us]"
        );
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_loop_that_wakes_when_it_planned_saw_no_pause() {
        let mut watch = PauseWatch::new(secs(1.0));
        watch.plan(secs(10.0));

        assert_eq!(watch.woke(secs(10.9), 0).paused, None);
        // Woken early by a message: no plan was late.
        watch.plan(secs(20.0));
        assert_eq!(watch.woke(secs(11.0), 0).paused, None);
    }

    #[test]
    fn a_loop_that_wakes_far_past_its_plan_was_paused_for_the_lateness() {
        let mut watch = PauseWatch::new(secs(1.0));
        watch.plan(secs(10.0));

        let wake = watch.woke(secs(22.5), 0);

        assert_eq!(wake.paused, Some(secs(12.5)));
        // Seen once: the next wake without a plan is no pause.
        assert_eq!(watch.woke(secs(30.0), 0).paused, None);
    }

    #[test]
    fn a_wall_clock_jump_is_seen_and_a_steady_one_is_not() {
        let mut watch = PauseWatch::new(secs(1.0));
        let wall0 = 1_000_000_000_000u64;
        assert_eq!(watch.woke(secs(10.0), wall0).wall_jump_ms, None);
        assert_eq!(watch.woke(secs(11.0), wall0 + 1_000_000).wall_jump_ms, None);

        let back = watch.woke(secs(12.0), wall0 + 2_000_000 - 3_600_000_000);
        let forward = watch.woke(secs(13.0), wall0 + 3_000_000 + 5_000_000);

        assert_eq!(back.wall_jump_ms, Some(-3_600_000));
        assert_eq!(forward.wall_jump_ms, Some(3_600_000 + 5_000));
    }

    #[test]
    fn wall_times_map_back_to_the_clock() {
        let clock = Clock::new();
        let mono = clock.now() + Duration::from_millis(1234);

        let back = clock
            .from_wall_ms(clock.wall_ms(mono))
            .expect("on the clock");

        assert!(
            back <= mono && mono - back < Duration::from_millis(1),
            "{back:?} {mono:?}"
        );
        assert_eq!(clock.from_wall_ms(0), None);
    }
}
