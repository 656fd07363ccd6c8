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

fn unix_us_now() -> u64 {
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
