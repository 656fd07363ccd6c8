//! The managed-application machine with a virtual clock and a simulated guest: cases, and
//! property tests over random guest behaviour.

use super::*;
use proptest::prelude::*;

const S: u64 = 1000;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn policy(max_restarts: u32, on_failure: OnFailure) -> AppPolicy {
    AppPolicy {
        max_restarts,
        restart_window: ms(600 * S),
        restart_delay: ms(S),
        poll_interval: ms(5 * S),
        on_failure,
        ..AppPolicy::from_spec(&ApplicationSpec::new(
            "db",
            vec!["/usr/sbin/mydb".into(), "--fg".into()],
        ))
    }
}

fn status(id: &str, state: ProcessState) -> ProcessStatus {
    ProcessStatus {
        id: Text::truncating(id),
        state,
        command: "/usr/sbin/mydb --fg".into(),
        user: "root".into(),
        started_unix_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
    }
}

/// The machine, a clock, and a guest that answers like the guest agent does.
struct Sim {
    m: AppMachine,
    now: Duration,
    log: Vec<(Duration, Action)>,
    /// The guest's process table.
    guest: Vec<ProcessStatus>,
    next_pid: u32,
    /// Launch answers the guest gives from now on (default: running).
    refuse_with: Option<ErrorCode>,
    fail_to_start: bool,
}

impl Sim {
    fn new(policy: AppPolicy) -> Sim {
        Sim {
            m: AppMachine::new(policy),
            now: Duration::ZERO,
            log: Vec::new(),
            guest: Vec::new(),
            next_pid: 100,
            refuse_with: None,
            fail_to_start: false,
        }
    }

    fn feed(&mut self, input: Input) {
        let actions = self.m.handle(input, self.now);
        for action in actions {
            self.log.push((self.now, action.clone()));
            self.guest_does(action);
        }
    }

    /// The guest agent's side of each action, answered at once.
    fn guest_does(&mut self, action: Action) {
        match action {
            Action::Launch(spec) => {
                let id = spec.id.as_str().to_owned();
                let answer = match self.refuse_with.clone() {
                    Some(code) => Err(WireError::new(code, "refused")),
                    None => {
                        let state = if self.fail_to_start {
                            ProcessState::FailedToStart {
                                reason: "user \"x\" does not exist".into(),
                            }
                        } else {
                            self.next_pid += 1;
                            ProcessState::Running { pid: self.next_pid }
                        };
                        let st = status(&id, state);
                        self.guest.push(st.clone());
                        Ok(st)
                    }
                };
                self.feed(Input::Launched { id, answer });
            }
            Action::Poll { id } => {
                let answer = self
                    .guest
                    .iter()
                    .find(|p| p.id.as_str() == id)
                    .cloned()
                    .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such process"));
                self.feed(Input::Polled { id, answer });
            }
            Action::Release { id } => self.guest.retain(|p| p.id.as_str() != id),
            Action::RequestReset { .. } | Action::Note(_) => {}
        }
    }

    fn session_up(&mut self, rebooted: bool) {
        let processes = self.guest.clone();
        self.feed(Input::SessionUp {
            processes,
            rebooted,
        });
    }

    /// The running process of ours dies in the guest; the guest tells the host if `event`.
    fn kill(&mut self, signal: i32, event: bool) {
        let Some(p) = self
            .guest
            .iter_mut()
            .find(|p| matches!(p.state, ProcessState::Running { .. }))
        else {
            return;
        };
        p.state = ProcessState::Killed { signal };
        let st = p.clone();
        if event {
            self.feed(Input::Event(st));
        }
    }

    /// Advances to `t` ms, ticking at every deadline on the way.
    fn run_to(&mut self, t: u64) {
        let target = ms(t);
        while let Some(d) = self.m.next_deadline().filter(|d| *d <= target) {
            self.now = d.max(self.now);
            self.feed(Input::Tick);
            if self.m.next_deadline() == Some(d) {
                break;
            }
        }
        self.now = target.max(self.now);
        self.feed(Input::Tick);
    }

    fn launches(&self) -> Vec<(Duration, String)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Launch(spec) => Some((*t, spec.id.as_str().to_owned())),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|(_, a)| f(a)).count()
    }

    fn notes(&self) -> Vec<Note> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Note(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn resets(&self) -> usize {
        self.count(|a| matches!(a, Action::RequestReset { .. }))
    }
}

#[test]
fn nothing_is_launched_before_a_session_and_once_when_it_comes() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.run_to(10 * S);
    assert!(sim.log.is_empty());
    sim.session_up(false);
    assert_eq!(sim.launches(), vec![(ms(10 * S), "db.1".to_string())]);
    let launch = match &sim.log[0].1 {
        Action::Launch(spec) => spec.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        launch.argv,
        vec![Text::truncating("/usr/sbin/mydb"), "--fg".into()]
    );
    assert_eq!(sim.m.running(), Some(("db.1", 101)));
    assert!(sim.notes().contains(&Note::Started {
        id: "db.1".into(),
        pid: 101
    }));
}

#[test]
fn a_running_process_is_polled_every_interval_while_a_session_is_up() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.session_up(false);
    sim.run_to(16 * S);
    let polls = |sim: &Sim| sim.count(|a| matches!(a, Action::Poll { .. }));
    assert_eq!(polls(&sim), 3, "at 5, 10 and 15 s");
    sim.feed(Input::SessionDown);
    sim.run_to(60 * S);
    assert_eq!(polls(&sim), 3, "no polls without a session");
    assert_eq!(
        sim.launches().len(),
        1,
        "a session loss is not a process loss"
    );
}

#[test]
fn an_end_is_released_and_restarted_after_the_delay_with_its_reason_code() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.session_up(false);
    sim.run_to(2 * S);
    sim.kill(9, true);
    assert!(sim.notes().contains(&Note::Ended {
        id: "db.1".into(),
        end: End::Killed(9)
    }));
    assert_eq!(End::Killed(9).reason_code(), Some(137));
    assert!(sim.guest.is_empty(), "released in the guest");
    sim.run_to(2 * S + 999);
    assert_eq!(sim.launches().len(), 1, "not before the restart delay");
    sim.run_to(3 * S);
    assert_eq!(sim.launches()[1], (ms(3 * S), "db.2".to_string()));
    assert!(sim.notes().contains(&Note::Restarting {
        attempt: 1,
        max: 3,
        after: ms(S)
    }));
}

#[test]
fn an_end_seen_by_a_poll_counts_the_same_as_an_event() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.session_up(false);
    sim.kill(15, false);
    sim.run_to(5 * S);
    assert!(sim.notes().contains(&Note::Ended {
        id: "db.1".into(),
        end: End::Killed(15)
    }));
    sim.run_to(6 * S);
    assert_eq!(sim.launches().len(), 2);
}

#[test]
fn restarts_stop_at_the_maximum_and_by_default_it_gives_up_without_a_reset() {
    let mut sim = Sim::new(policy(2, OnFailure::GiveUp));
    sim.session_up(false);
    for i in 0..3 {
        sim.run_to((10 + 10 * i) * S);
        sim.kill(9, true);
    }
    sim.run_to(200 * S);
    assert_eq!(sim.launches().len(), 3, "the first and two restarts");
    assert!(sim.m.gave_up());
    assert_eq!(sim.resets(), 0);
    sim.feed(Input::Clear);
    assert_eq!(
        sim.launches().len(),
        4,
        "an operator's clear launches again"
    );
}

#[test]
fn spent_restarts_with_on_failure_reset_ask_for_one_reset_and_start_afresh_after_the_reboot() {
    let mut sim = Sim::new(policy(2, OnFailure::Reset));
    sim.session_up(false);
    for i in 0..3 {
        sim.run_to((10 + 10 * i) * S);
        sim.kill(9, true);
    }
    sim.run_to(100 * S);
    assert_eq!(sim.resets(), 1);
    assert!(sim.notes().contains(&Note::Escalated));
    assert_eq!(sim.launches().len(), 3);
    // A session flap without a reboot launches nothing: the reset is still to come.
    sim.feed(Input::SessionDown);
    sim.session_up(false);
    assert_eq!(sim.launches().len(), 3);
    // The guest rebooted: an empty table, a fresh start with the whole budget.
    sim.feed(Input::SessionDown);
    sim.guest.clear();
    sim.session_up(true);
    assert_eq!(sim.launches().last().map(|l| l.1.as_str()), Some("db.4"));
    for i in 0..2 {
        sim.run_to((110 + 10 * i) * S);
        sim.kill(9, true);
    }
    sim.run_to(200 * S);
    assert_eq!(
        sim.resets(),
        1,
        "two restarts again before the next escalation"
    );
    assert_eq!(sim.launches().len(), 6);
}

#[test]
fn restarts_older_than_the_window_are_forgotten() {
    let mut p = policy(1, OnFailure::Reset);
    p.restart_window = ms(60 * S);
    let mut sim = Sim::new(p);
    sim.session_up(false);
    for t in [10, 100, 200, 300] {
        sim.run_to(t * S);
        sim.kill(9, true);
    }
    sim.run_to(400 * S);
    assert_eq!(
        sim.resets(),
        0,
        "one restart per minute never spends the budget"
    );
    assert_eq!(sim.launches().len(), 5);
}

#[test]
fn a_host_agent_restart_adopts_the_running_launch_and_numbers_on() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.guest = vec![
        status("db.7", ProcessState::Exited { code: 1 }),
        status("db.8", ProcessState::Running { pid: 4242 }),
        status("other.1", ProcessState::Exited { code: 0 }),
    ];
    sim.session_up(false);
    assert!(sim.launches().is_empty());
    assert_eq!(sim.m.running(), Some(("db.8", 4242)));
    assert!(sim.notes().contains(&Note::Adopted {
        id: "db.8".into(),
        pid: 4242
    }));
    let ids: Vec<&str> = sim.guest.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        ["db.8", "other.1"],
        "our old end released, others' left alone"
    );
    sim.kill(9, true);
    sim.run_to(10 * S);
    assert_eq!(sim.launches()[0].1, "db.9");
}

#[test]
fn a_process_missing_from_a_new_sessions_table_is_lost_and_restarted() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.session_up(false);
    sim.feed(Input::SessionDown);
    sim.guest.clear(); // the guest agent restarted: its processes died with it
    sim.run_to(5 * S);
    sim.session_up(false);
    assert!(sim.notes().contains(&Note::Ended {
        id: "db.1".into(),
        end: End::Lost
    }));
    sim.run_to(7 * S);
    assert_eq!(sim.launches().len(), 2);
}

#[test]
fn a_launch_lost_with_its_session_is_sent_again_without_counting() {
    // No restarts allowed and on-failure reset: counting this as an end would reset the VM.
    let mut m = AppMachine::new(policy(0, OnFailure::Reset));
    let up = || Input::SessionUp {
        processes: vec![],
        rebooted: false,
    };
    let first = m.handle(up(), ms(0));
    assert!(matches!(&first[..], [Action::Launch(spec)] if spec.id == "db.1"));
    // The session went down before the launch reached the guest: its table has no db.1.
    m.handle(Input::SessionDown, ms(S));
    let again = m.handle(up(), ms(2 * S));
    assert!(
        matches!(&again[..], [Action::Launch(spec)] if spec.id == "db.2"),
        "{again:?}"
    );
}

#[test]
fn a_refusal_for_policy_gives_up_at_once_and_one_for_room_is_retried_uncounted() {
    let mut sim = Sim::new(policy(3, OnFailure::Reset));
    sim.refuse_with = Some(ErrorCode::RateLimited);
    sim.session_up(false);
    sim.run_to(11 * S);
    assert_eq!(sim.launches().len(), 3, "at 0, 5 and 10 s");
    sim.refuse_with = None;
    sim.run_to(15 * S);
    assert!(sim.m.running().is_some());
    assert_eq!(sim.m.restarts_in_window(sim.now), 0);

    let mut sim = Sim::new(policy(3, OnFailure::Reset));
    sim.refuse_with = Some(ErrorCode::NotAllowed);
    sim.session_up(false);
    sim.run_to(100 * S);
    assert_eq!(sim.launches().len(), 1);
    assert!(sim.m.gave_up());
    assert_eq!(sim.resets(), 0, "no reset mends an allowlist");
}

#[test]
fn a_launch_that_fails_to_start_counts_as_an_end() {
    let mut sim = Sim::new(policy(1, OnFailure::GiveUp));
    sim.fail_to_start = true;
    sim.session_up(false);
    sim.run_to(10 * S);
    assert_eq!(sim.launches().len(), 2);
    assert!(sim.m.gave_up());
    assert!(sim.guest.is_empty(), "both released");
}

#[test]
fn events_for_other_processes_are_ignored() {
    let mut sim = Sim::new(policy(3, OnFailure::GiveUp));
    sim.session_up(false);
    sim.feed(Input::Event(status(
        "db.99",
        ProcessState::Exited { code: 1 },
    )));
    sim.feed(Input::Event(status(
        "web.1",
        ProcessState::Exited { code: 1 },
    )));
    assert_eq!(sim.m.running(), Some(("db.1", 101)));
    assert!(!sim.m.owns("web.1") && !sim.m.owns("db.x") && !sim.m.owns("dbx.1"));
    assert!(sim.m.owns("db.12"));
}

/// What can happen to the guest between two looks of the machine.
#[derive(Debug, Clone)]
enum Step {
    Wait(u64),
    Kill {
        event: bool,
    },
    SessionDown,
    SessionUp,
    /// The guest agent restarts: its processes die with it.
    AgentRestart,
    /// The guest reboots (by itself, or after a reset request).
    Reboot,
    RefuseLaunches(Option<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..120_000).prop_map(Step::Wait),
        3 => any::<bool>().prop_map(|event| Step::Kill { event }),
        1 => Just(Step::SessionDown),
        2 => Just(Step::SessionUp),
        1 => Just(Step::AgentRestart),
        1 => Just(Step::Reboot),
        1 => proptest::option::of(0u8..3).prop_map(Step::RefuseLaunches),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Never more than `max_restarts` restarts (starts after an end) in any window between two
    /// reset requests; never a reset unless configured and the restarts are spent; nothing
    /// sent while no session is up; never two of the application's processes running at once.
    #[test]
    fn restarts_and_resets_stay_within_the_policy(
        max_restarts in 0u32..4,
        reset in any::<bool>(),
        window_s in 10u64..300,
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let on_failure = if reset { OnFailure::Reset } else { OnFailure::GiveUp };
        let mut p = policy(max_restarts, on_failure);
        p.restart_window = ms(window_s * S);
        let window = p.restart_window;
        let mut sim = Sim::new(p);
        let mut session = false;
        for step in steps {
            let before = sim.log.len();
            match step {
                Step::Wait(ms_) => { let t = sim.now.as_millis() as u64 + ms_; sim.run_to(t) }
                Step::Kill { event } => sim.kill(9, event && session),
                Step::SessionDown => { session = false; sim.feed(Input::SessionDown) }
                Step::SessionUp => { session = true; sim.session_up(false) }
                Step::AgentRestart | Step::Reboot => {
                    let rebooted = matches!(step, Step::Reboot);
                    sim.feed(Input::SessionDown);
                    sim.guest.clear();
                    session = true;
                    sim.session_up(rebooted);
                }
                Step::RefuseLaunches(code) => {
                    sim.refuse_with = code.map(|c| match c {
                        0 => ErrorCode::RateLimited,
                        1 => ErrorCode::Internal,
                        _ => ErrorCode::NotAllowed,
                    });
                }
            }
            if !session {
                let sent = sim.log[before..].iter().any(|(_, a)| {
                    matches!(a, Action::Launch(_) | Action::Poll { .. } | Action::Release { .. })
                });
                prop_assert!(!sent, "sent without a session: {:?}", &sim.log[before..]);
            }
            let running = sim
                .guest
                .iter()
                .filter(|p| matches!(p.state, ProcessState::Running { .. }))
                .count();
            prop_assert!(running <= 1, "two running: {:?}", sim.guest);
        }

        // Between two reset requests: restarts decided within any window at most the
        // maximum, a start after the first only on a restart decided, and a reset request only
        // when the window holds the maximum.
        let mut decided: Vec<Duration> = Vec::new();
        let mut starts = 0usize;
        for (t, action) in &sim.log {
            let in_window = |decided: &[Duration]| {
                decided.iter().filter(|d| t.saturating_sub(**d) < window).count()
            };
            match action {
                Action::Note(Note::Restarting { .. }) => {
                    decided.push(*t);
                    prop_assert!(
                        in_window(&decided) <= max_restarts as usize,
                        "{} restarts within {window:?} at {t:?}; at most {max_restarts}",
                        in_window(&decided)
                    );
                }
                Action::RequestReset { .. } => {
                    prop_assert!(reset, "a reset without on-failure=reset");
                    prop_assert_eq!(
                        in_window(&decided),
                        max_restarts as usize,
                        "a reset at {:?} before the restarts were spent", t
                    );
                    decided.clear();
                    starts = 0;
                }
                Action::Note(Note::Started { .. })
                | Action::Note(Note::Ended { end: End::FailedToStart(_), .. }) => {
                    starts += 1;
                    prop_assert!(
                        starts <= decided.len() + 1,
                        "start {starts} at {t:?} with {} restarts decided", decided.len()
                    );
                }
                _ => {}
            }
        }
    }
}
