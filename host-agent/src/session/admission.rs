//! Which announcements a VM's listener takes, and when it dials instead: a pure machine over a
//! virtual clock, fed by [`super::listener`].
//!
//! - **Rate.** Connections on a VM's listening socket are taken at most
//!   [`ANNOUNCEMENTS_PER_SECOND`] a second after a burst of [`ANNOUNCEMENT_BURST`]; the others
//!   are closed unread. A guest that floods its own listener costs only its own task's time.
//! - **Boot ids.** The boot ids of this VM's sessions are kept, oldest first; the newest is the
//!   current boot. An announcement from any older boot (a guest agent that was mid-dial when
//!   the VM was reset, replayed bytes) is refused: it must never take the place of the current
//!   session. The current boot (a guest agent that restarted) and a boot never seen are taken.
//! - **Held for a reset.** Once the host closed the session to reset the guest
//!   ([`Admission::closed_for_reset`]), an announcement from the boot it had is refused for
//!   [`RESET_HOLD`]: the guest agent redials at once, and answering it would send the guest a
//!   Hello while it is being reset. A new boot is taken at once; after the hold the old boot is
//!   taken again (the reset failed and the guest runs on).
//! - **Dialing** (guest agents of protocol 1, which never announce): only a VM that has not
//!   connected to its listener since it started (a guest that connects speaks protocol 2, even
//!   when what it sends is not a valid announcement: dialing it too would only add a second
//!   reason of failure to its first), and only while the host is not keeping quiet
//!   ([`Admission::quiet`]: a reset or reboot under way), is dialed, `dial_after` (the host
//!   agent's configuration) after the listener started, and again after a dialed session ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::machine::TokenBucket;

/// Announcements taken per second from one VM, after the burst.
pub const ANNOUNCEMENTS_PER_SECOND: u32 = 2;
/// Announcements taken from one VM at once.
pub const ANNOUNCEMENT_BURST: u32 = 8;
/// How long the boot a reset was issued for is refused (see the module documentation).
pub const RESET_HOLD: Duration = Duration::from_secs(10);
/// Boot ids remembered per VM.
const BOOTS_KEPT: usize = 32;

/// What to do with a guest's Hello on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It becomes the VM's session.
    Admit,
    /// Its boot is older than the current session's: closed, the session untouched.
    OlderBoot,
    /// The boot a reset was just issued for: closed (see [`RESET_HOLD`]).
    BeingReset,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Admission {
    bucket: TokenBucket,
    /// Boot ids of this VM's sessions, oldest first; the last is the current boot.
    boots: VecDeque<[u8; 16]>,
    quiet: bool,
    announced: bool,
    /// A connection arrived on the listener: the guest announces itself (protocol 2).
    called_in: bool,
    dial_at: Option<Instant>,
    /// The boot being reset, and until when its announcements are refused.
    held: Option<([u8; 16], Instant)>,
}

impl Admission {
    /// A listener that started at `now`; `dial_after`: when to dial a guest agent that does
    /// not announce itself, if its transport can be dialed at all.
    pub fn new(now: Instant, dial_after: Option<Duration>) -> Self {
        // No `dial_after`: no first dial time, and the listener, having no endpoint to dial,
        // never asks for another.
        Admission {
            bucket: TokenBucket::new(ANNOUNCEMENTS_PER_SECOND, ANNOUNCEMENT_BURST, now),
            boots: VecDeque::new(),
            quiet: false,
            announced: false,
            called_in: false,
            dial_at: dial_after.map(|d| now + d),
            held: None,
        }
    }

    /// A connection arrived at `now`: whether to read it (`false`: close it unread).
    pub fn connection(&mut self, now: Instant) -> bool {
        self.called_in = true;
        self.bucket.take(now)
    }

    /// The guest's Hello on an announced connection at `now`, with its boot id.
    pub fn hello(&mut self, boot_id: [u8; 16], now: Instant) -> Verdict {
        if self.is_older(boot_id) {
            return Verdict::OlderBoot;
        }
        if let Some((held, until)) = self.held {
            if held == boot_id && now < until {
                return Verdict::BeingReset;
            }
            self.held = None;
        }
        self.announced = true;
        self.quiet = false;
        self.dial_at = None;
        self.record(boot_id);
        Verdict::Admit
    }

    /// A session the host dialed said Hello with `boot_id`.
    pub fn record(&mut self, boot_id: [u8; 16]) {
        if self.boots.back() == Some(&boot_id) {
            return;
        }
        self.boots.retain(|b| *b != boot_id);
        if self.boots.len() == BOOTS_KEPT {
            self.boots.pop_front();
        }
        self.boots.push_back(boot_id);
    }

    fn is_older(&self, boot_id: [u8; 16]) -> bool {
        self.boots.back() != Some(&boot_id) && self.boots.contains(&boot_id)
    }

    /// The guest is being reset or rebooted: no dial until it announces itself.
    pub fn quiet(&mut self) {
        self.quiet = true;
        self.dial_at = None;
    }

    /// The host closed the session at `now` to reset the guest: keep quiet, and refuse the
    /// current boot's announcements for [`RESET_HOLD`].
    pub fn closed_for_reset(&mut self, now: Instant) {
        self.quiet();
        if let Some(boot) = self.boots.back() {
            self.held = Some((*boot, now + RESET_HOLD));
        }
    }

    /// Whether the host keeps quiet towards the guest.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// When to dial the guest agent, if ever (see the module documentation).
    pub fn next_dial(&self) -> Option<Instant> {
        if self.quiet || self.announced || self.called_in {
            return None;
        }
        self.dial_at
    }

    /// A dial failed, or a dialed session ended, at `now`: dial again after `pause`.
    pub fn dial_again(&mut self, now: Instant, pause: Duration) {
        if !self.quiet && !self.announced {
            self.dial_at = Some(now + pause);
        }
    }

    /// A dial is under way: no other until [`Admission::dial_again`].
    pub fn dialing(&mut self) {
        self.dial_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn boot(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn a_new_boot_and_the_current_boot_are_admitted() {
        let mut a = Admission::new(Instant::now(), None);
        assert_eq!(a.hello(boot(1), Instant::now()), Verdict::Admit);
        assert_eq!(
            a.hello(boot(1), Instant::now()),
            Verdict::Admit,
            "a guest agent that restarted"
        );
        assert_eq!(
            a.hello(boot(2), Instant::now()),
            Verdict::Admit,
            "the next boot"
        );
    }

    #[test]
    fn an_announcement_from_an_older_boot_is_refused() {
        let mut a = Admission::new(Instant::now(), None);
        a.hello(boot(1), Instant::now());
        a.hello(boot(2), Instant::now());
        assert_eq!(a.hello(boot(1), Instant::now()), Verdict::OlderBoot);
        assert_eq!(
            a.hello(boot(2), Instant::now()),
            Verdict::Admit,
            "the current boot is untouched"
        );
    }

    #[test]
    fn the_boot_being_reset_is_refused_for_the_hold_and_a_new_boot_at_once() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, None);
        a.hello(boot(1), t0);
        a.closed_for_reset(t0);
        assert_eq!(a.hello(boot(1), t0), Verdict::BeingReset);
        assert_eq!(a.hello(boot(2), t0), Verdict::Admit, "the reset's new boot");

        let mut failed = Admission::new(t0, None);
        failed.hello(boot(1), t0);
        failed.closed_for_reset(t0);
        assert_eq!(
            failed.hello(boot(1), t0 + RESET_HOLD),
            Verdict::Admit,
            "the reset failed"
        );
    }

    #[test]
    fn a_flood_of_connections_is_cut_to_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, None);
        let taken = (0..100).filter(|_| a.connection(t0)).count();
        assert_eq!(taken, ANNOUNCEMENT_BURST as usize);
        let later = t0 + Duration::from_secs(1);
        let taken = (0..100).filter(|_| a.connection(later)).count();
        assert_eq!(taken, ANNOUNCEMENTS_PER_SECOND as usize);
    }

    #[test]
    fn a_guest_that_never_announces_is_dialed_after_the_wait() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, Some(WAIT));
        assert_eq!(a.next_dial(), Some(t0 + WAIT));
        a.dialing();
        assert_eq!(a.next_dial(), None);
        a.dial_again(t0 + WAIT, Duration::from_secs(1));
        assert_eq!(a.next_dial(), Some(t0 + WAIT + Duration::from_secs(1)));
    }

    #[test]
    fn no_dial_once_the_guest_connected_even_with_no_valid_announcement() {
        let t0 = Instant::now();
        let mut a = Admission::new(t0, Some(WAIT));
        assert!(a.connection(t0));
        assert_eq!(a.next_dial(), None);
        a.dial_again(t0, Duration::ZERO);
        assert_eq!(a.next_dial(), None);
    }

    #[test]
    fn no_dial_once_the_guest_announced_itself_nor_while_quiet() {
        let t0 = Instant::now();
        let mut announced = Admission::new(t0, Some(WAIT));
        announced.hello(boot(1), Instant::now());
        announced.dial_again(t0, Duration::ZERO);
        assert_eq!(announced.next_dial(), None);

        let mut quiet = Admission::new(t0, Some(WAIT));
        quiet.quiet();
        quiet.dial_again(t0, Duration::ZERO);
        assert_eq!(quiet.next_dial(), None);
        assert!(quiet.is_quiet());
        quiet.hello(boot(1), Instant::now());
        assert!(!quiet.is_quiet(), "an announcement ends the quiet");
    }
}
