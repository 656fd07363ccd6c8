//! Processes the host launches, end to end through the real daemon: a test host peer on the
//! Unix-socket host listener speaks the wire protocol, the daemon starts real processes.

mod common;

use std::time::{Duration, Instant};

use appmon_wire::{
    ErrorCode, Frame, GuestMsg, HostMsg, LaunchSpec, OutputChunk, OutputStream, ProcessState,
    ProcessStatus, Tag, Text,
};
use common::{bounded, Agent, Host, WAIT};

/// The allowlist most tests run with: any shell script, as root.
const SHELL: &str = r#"
[processes]
output_tail = 4096
stop_grace = 2
[[processes.allow]]
command = "/bin/sh"
args = ["-c", { regex = ".*" }]
"#;

fn spec(id: &str, argv: &[&str]) -> LaunchSpec {
    LaunchSpec {
        id: Text::new(id).expect("short id"),
        argv: argv.iter().map(|a| Text::new(*a).expect("short")).collect(),
        env: Vec::new(),
        cwd: None,
        user: None,
    }
}

fn sh(id: &str, script: &str) -> LaunchSpec {
    spec(id, &["/bin/sh", "-c", script])
}

/// Sends a request and returns its reply; fails on any other frame first.
async fn ask(host: &mut Host, id: u32, msg: HostMsg) -> GuestMsg {
    host.send(Frame::request(id, msg)).await;
    let frame = host.recv().await;
    assert_eq!(frame.tag, Tag::Reply(id), "{frame:?}");
    frame.msg
}

fn status(msg: GuestMsg) -> ProcessStatus {
    match msg {
        GuestMsg::Process(status) => status,
        other => panic!("expected a process status, got {other:?}"),
    }
}

fn error_code(msg: &GuestMsg) -> ErrorCode {
    match msg {
        GuestMsg::Error(e) => e.code.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn error_text(msg: &GuestMsg) -> String {
    match msg {
        GuestMsg::Error(e) => e.message.as_str().to_owned(),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn launch(host: &mut Host, req: u32, spec: LaunchSpec) -> ProcessStatus {
    status(ask(host, req, HostMsg::LaunchProcess(spec)).await)
}

fn pid_of(status: &ProcessStatus) -> u32 {
    match status.state {
        ProcessState::Running { pid } => pid,
        ref other => panic!("expected a running process, got {other:?}"),
    }
}

/// The next event frame, which must be a process event.
async fn process_event(host: &mut Host) -> ProcessStatus {
    let frame = host.recv().await;
    assert_eq!(frame.tag, Tag::Event, "{frame:?}");
    status(frame.msg)
}

async fn read(host: &mut Host, req: u32, id: &str, stream: OutputStream, from: u64) -> OutputChunk {
    let msg = HostMsg::ReadOutput {
        id: Text::new(id).expect("short"),
        stream,
        from,
    };
    match ask(host, req, msg).await {
        GuestMsg::Output(chunk) => chunk,
        other => panic!("expected output, got {other:?}"),
    }
}

async fn connected(agent: &Agent) -> Host {
    let mut host = agent.connect_host().await;
    host.handshake().await;
    host
}

fn alive(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, None).is_ok()
}

#[tokio::test]
async fn a_launched_command_runs_and_its_output_and_exit_code_reach_the_host() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;

    let started = launch(&mut host, 1, sh("job", "echo hi; echo oops >&2; exit 7")).await;
    assert!(pid_of(&started) > 0);
    assert_eq!(
        started.command.as_str(),
        "/bin/sh -c 'echo hi; echo oops >&2; exit 7'"
    );
    assert_eq!(started.user.as_str(), "root");
    assert!(started.started_unix_ms > 0);

    let ended = process_event(&mut host).await;
    assert_eq!(ended.state, ProcessState::Exited { code: 7 });
    assert_eq!((ended.stdout_bytes, ended.stderr_bytes), (3, 5));
    let out = read(&mut host, 2, "job", OutputStream::Stdout, 0).await;
    assert_eq!(
        (out.data.as_bytes(), out.offset, out.total, out.eof),
        (&b"hi\n"[..], 0, 3, true)
    );
    let err = read(&mut host, 3, "job", OutputStream::Stderr, 0).await;
    assert_eq!((err.data.as_bytes(), err.eof), (&b"oops\n"[..], true));

    // Kept until released, then forgotten.
    let polled = status(ask(&mut host, 4, HostMsg::PollProcess { id: "job".into() }).await);
    assert_eq!(polled.state, ProcessState::Exited { code: 7 });
    assert_eq!(
        ask(&mut host, 5, HostMsg::ReleaseProcess { id: "job".into() }).await,
        GuestMsg::Ack
    );
    let gone = ask(&mut host, 6, HostMsg::PollProcess { id: "job".into() }).await;
    assert_eq!(error_code(&gone), ErrorCode::NotFound);
    host.expect_nothing_pending(7).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_command_outside_the_allowlist_is_refused_and_nothing_runs() {
    let agent = Agent::start("[processes]\n[[processes.allow]]\ncommand = \"/bin/true\"\n");
    let marker = agent.dir.path().join("ran");
    let mut host = connected(&agent).await;
    let script = format!("touch {}", marker.display());
    let refused = ask(&mut host, 1, HostMsg::LaunchProcess(sh("evil", &script))).await;
    assert_eq!(error_code(&refused), ErrorCode::NotAllowed);
    assert!(
        error_text(&refused).contains("not on the guest's allowlist"),
        "{refused:?}"
    );
    // Arguments the entry does not take are refused as well.
    let refused = ask(
        &mut host,
        2,
        HostMsg::LaunchProcess(spec("t", &["/bin/true", "x"])),
    )
    .await;
    assert_eq!(error_code(&refused), ErrorCode::NotAllowed);

    host.expect_nothing_pending(3).await;
    assert!(!marker.exists(), "nothing ran");
    drop(host);
    let mut host = agent.connect_host().await;
    let (_, state) = host.handshake().await;
    assert!(
        state.processes.is_empty(),
        "a refusal leaves nothing in the table"
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_without_an_allowlist_launches_nothing() {
    let agent = Agent::start("");
    let mut host = connected(&agent).await;
    let refused = ask(
        &mut host,
        1,
        HostMsg::LaunchProcess(spec("a", &["/bin/true"])),
    )
    .await;
    assert_eq!(error_code(&refused), ErrorCode::NotAllowed);
    agent.stop().await;
}

#[tokio::test]
async fn requests_for_unknown_ids_are_not_found() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    let requests = [
        HostMsg::PollProcess { id: "nope".into() },
        HostMsg::SignalProcess {
            id: "nope".into(),
            signal: 15,
        },
        HostMsg::ReleaseProcess { id: "nope".into() },
        HostMsg::ReadOutput {
            id: "nope".into(),
            stream: OutputStream::Stdout,
            from: 0,
        },
    ];
    for (n, request) in requests.into_iter().enumerate() {
        let answer = ask(&mut host, n as u32 + 1, request).await;
        assert_eq!(error_code(&answer), ErrorCode::NotFound, "{answer:?}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn bad_launches_are_refused_with_a_reason() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    let mut relative = sh("r", "true");
    relative.cwd = Some("tmp".into());
    let many: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let mut absurd = vec!["/bin/sh", "-c", "true"];
    absurd.extend(many.iter().map(String::as_str));
    let cases = [
        (spec("e", &[]), ErrorCode::BadRequest, "argv is empty"),
        (relative, ErrorCode::BadRequest, "not an absolute path"),
        (spec("a", &absurd), ErrorCode::BadRequest, "at most 256"),
    ];
    for (n, (spec, code, needle)) in cases.into_iter().enumerate() {
        let answer = ask(&mut host, n as u32 + 1, HostMsg::LaunchProcess(spec)).await;
        assert_eq!(error_code(&answer), code, "{answer:?}");
        assert!(error_text(&answer).contains(needle), "{answer:?}");
    }
    // An id in use, whether its process runs or has ended.
    launch(&mut host, 10, sh("dup", "exit 0")).await;
    process_event(&mut host).await;
    let again = ask(&mut host, 11, HostMsg::LaunchProcess(sh("dup", "exit 0"))).await;
    assert_eq!(error_code(&again), ErrorCode::BadRequest);
    assert!(error_text(&again).contains("in use"), "{again:?}");
    agent.stop().await;
}

#[tokio::test]
async fn a_missing_user_a_missing_directory_and_a_missing_program_fail_to_start() {
    let agent = Agent::start(
        r#"
[processes]
[[processes.allow]]
command = "/bin/sh"
args = ["-c", { regex = ".*" }]
users = ["root", "no-such-user-here"]
cwd = ["/**"]
[[processes.allow]]
command = "/nonexistent/program"
"#,
    );
    let mut host = connected(&agent).await;
    let mut nobody = sh("u", "true");
    nobody.user = Some("no-such-user-here".into());
    let mut nowhere = sh("d", "true");
    nowhere.cwd = Some("/nonexistent/directory".into());
    let cases = [
        (nobody, "user \"no-such-user-here\" does not exist"),
        (nowhere, "working directory /nonexistent/directory"),
        (
            spec("p", &["/nonexistent/program"]),
            "cannot start /nonexistent/program",
        ),
    ];
    for (n, (spec, needle)) in cases.into_iter().enumerate() {
        let answer = launch(&mut host, n as u32 + 1, spec).await;
        match &answer.state {
            ProcessState::FailedToStart { reason } => {
                assert!(reason.as_str().contains(needle), "{reason}")
            }
            other => panic!("expected FailedToStart, got {other:?}"),
        }
        assert_eq!(answer.started_unix_ms, 0);
    }
    // They stay in the table, for a host that lost the answer, until released.
    let (_, state) = {
        drop(host);
        let mut host = agent.connect_host().await;
        host.handshake().await
    };
    assert_eq!(state.processes.len(), 3);
    agent.stop().await;
}

#[tokio::test]
async fn a_signal_ends_the_whole_process_group_and_the_end_is_kept_until_released() {
    let agent = Agent::start(SHELL);
    let marker = agent.dir.path().join("child-survived");
    let mut host = connected(&agent).await;
    // The shell's background child would touch the marker if it outlived the signal.
    let script = format!("(sleep 1; touch {}) & sleep 1000", marker.display());
    let started = launch(&mut host, 1, sh("long", &script)).await;
    let pid = pid_of(&started);

    let running = ask(&mut host, 2, HostMsg::ReleaseProcess { id: "long".into() }).await;
    assert_eq!(
        error_code(&running),
        ErrorCode::BadRequest,
        "a running process is not released"
    );

    let bad = ask(
        &mut host,
        3,
        HostMsg::SignalProcess {
            id: "long".into(),
            signal: 99,
        },
    )
    .await;
    assert_eq!(error_code(&bad), ErrorCode::BadRequest);

    let answer = status(
        ask(
            &mut host,
            4,
            HostMsg::SignalProcess {
                id: "long".into(),
                signal: 15,
            },
        )
        .await,
    );
    assert_eq!(
        answer.state,
        ProcessState::Running { pid },
        "the answer is the state when sent"
    );
    let ended = process_event(&mut host).await;
    assert_eq!(ended.state, ProcessState::Killed { signal: 15 });

    // Signalling an ended process sends nothing and tells how it ended.
    let again = status(
        ask(
            &mut host,
            5,
            HostMsg::SignalProcess {
                id: "long".into(),
                signal: 9,
            },
        )
        .await,
    );
    assert_eq!(again.state, ProcessState::Killed { signal: 15 });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !marker.exists(),
        "the group's other process got the signal too"
    );
    assert_eq!(
        ask(&mut host, 6, HostMsg::ReleaseProcess { id: "long".into() }).await,
        GuestMsg::Ack
    );
    agent.stop().await;
}

#[tokio::test]
async fn polls_in_flight_together_all_get_the_same_answer() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    launch(&mut host, 1, sh("p", "sleep 1000")).await;
    for id in 10..15 {
        host.send(Frame::request(id, HostMsg::PollProcess { id: "p".into() }))
            .await;
    }
    let mut answers = Vec::new();
    for id in 10..15 {
        let frame = host.recv().await;
        assert_eq!(frame.tag, Tag::Reply(id));
        answers.push(status(frame.msg));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    agent.stop().await;
}

#[tokio::test]
async fn launched_processes_outlive_their_session_and_every_new_state_lists_them() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    let long = launch(&mut host, 1, sh("long", "sleep 1000")).await;
    let short = launch(&mut host, 2, sh("short", "read line; exit 3")).await;
    drop(host);

    // A host-agent restart: a new session sees both running.
    let mut host = agent.connect_host().await;
    let (_, state) = host.handshake().await;
    let ids: Vec<&str> = state.processes.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["long", "short"]);
    assert_eq!(state.processes[0].state, long.state);
    pid_of(&short);

    // `read` gets end of file from /dev/null at once: the short one ended (code 3 was
    // its script's) in the meantime or will shortly; its end is kept for a later session.
    drop(host);
    let started = Instant::now();
    loop {
        let mut host = agent.connect_host().await;
        let (_, state) = host.handshake().await;
        let short = state
            .processes
            .iter()
            .find(|p| p.id == "short")
            .expect("kept");
        if short.state == (ProcessState::Exited { code: 3 }) {
            assert_eq!(state.processes.len(), 2);
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the short process's end never showed: {short:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alive(pid_of(&long)), "the long one still runs");
    agent.stop().await;
}

#[tokio::test]
async fn the_table_holds_at_most_the_configured_number_of_processes() {
    let agent = Agent::start(&SHELL.replace("[processes]\n", "[processes]\nmax = 2\n"));
    let mut host = connected(&agent).await;
    launch(&mut host, 1, sh("a", "sleep 1000")).await;
    launch(&mut host, 2, sh("b", "exit 0")).await;
    // Its end first (an event that could otherwise arrive before the next reply).
    assert_eq!(
        process_event(&mut host).await.state,
        ProcessState::Exited { code: 0 }
    );
    // The ended one holds its slot until released.
    let full = ask(&mut host, 3, HostMsg::LaunchProcess(sh("c", "true"))).await;
    assert_eq!(error_code(&full), ErrorCode::RateLimited);
    assert!(error_text(&full).contains("processes.max = 2"), "{full:?}");
    assert_eq!(
        ask(&mut host, 4, HostMsg::ReleaseProcess { id: "b".into() }).await,
        GuestMsg::Ack
    );
    pid_of(&launch(&mut host, 5, sh("c", "sleep 1000")).await);
    agent.stop().await;
}

#[tokio::test]
async fn a_process_flooding_stdout_is_never_blocked_and_only_its_tail_is_kept() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    const BYTES: u64 = 64 * 1024 * 1024;
    let script = format!("head -c {BYTES} /dev/zero; echo done");
    let started = Instant::now();
    launch(&mut host, 1, sh("flood", &script)).await;
    // The session keeps answering while the flood runs.
    host.expect_nothing_pending(2).await;
    let ended = bounded(process_event(&mut host)).await;
    assert_eq!(ended.state, ProcessState::Exited { code: 0 });
    assert_eq!(ended.stdout_bytes, BYTES + 5);
    let chunk = read(&mut host, 3, "flood", OutputStream::Stdout, 0).await;
    assert_eq!(
        chunk.offset,
        BYTES + 5 - 4096,
        "only the 4 KiB tail is kept"
    );
    assert_eq!(chunk.data.len(), 4096);
    assert!(chunk.data.as_bytes().ends_with(b"done\n"));
    assert!(chunk.eof);
    eprintln!("64 MiB drained in {:?}", started.elapsed());
    agent.stop().await;
}

#[tokio::test]
async fn the_environment_is_minimal_plus_what_the_allowlist_lets_the_host_set() {
    let agent = Agent::start(
        r#"
[processes]
[[processes.allow]]
command = "/bin/sh"
args = ["-c", "**"]
env = ["APP_*"]
cwd = ["/tmp"]
"#,
    );
    let mut host = connected(&agent).await;
    let mut with_env = sh(
        "env",
        "echo \"$APP_MODE $HOME $USER $(pwd)\"; env | sort | cut -d= -f1 | tr '\\n' ' '",
    );
    with_env.env = vec![("APP_MODE".into(), "fast".into())];
    with_env.cwd = Some("/tmp".into());
    launch(&mut host, 1, with_env).await;
    process_event(&mut host).await;
    let out = read(&mut host, 2, "env", OutputStream::Stdout, 0).await;
    let text = String::from_utf8(out.data.into_vec()).expect("utf-8");
    let (first, names) = text.split_once('\n').expect("two lines");
    assert!(
        first.starts_with("fast ") && first.ends_with(" root /tmp"),
        "{first}"
    );
    for name in names.split_whitespace() {
        assert!(
            ["APP_MODE", "HOME", "LOGNAME", "PATH", "PWD", "SHELL", "SHLVL", "USER", "_"]
                .contains(&name),
            "unexpected variable {name} in {names}"
        );
    }
    let mut refused = sh("ld", "true");
    refused.env = vec![("LD_PRELOAD".into(), "/tmp/x.so".into())];
    refused.cwd = Some("/tmp".into());
    let answer = ask(&mut host, 3, HostMsg::LaunchProcess(refused)).await;
    assert_eq!(error_code(&answer), ErrorCode::NotAllowed);
    agent.stop().await;
}

#[tokio::test]
async fn a_launch_runs_as_the_user_it_names() {
    let agent = Agent::start(
        "[processes]\n[[processes.allow]]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"**\"]\nusers = [\"nobody\"]\n",
    );
    let mut host = connected(&agent).await;
    let mut as_nobody = sh("who", "id -un");
    as_nobody.user = Some("nobody".into());
    let started = launch(&mut host, 1, as_nobody).await;
    assert_eq!(started.user.as_str(), "nobody");
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(
            process_event(&mut host).await.state,
            ProcessState::Exited { code: 0 }
        );
        let out = read(&mut host, 2, "who", OutputStream::Stdout, 0).await;
        assert_eq!(out.data.as_bytes(), b"nobody\n");
    } else {
        // Only a root agent may switch users.
        assert!(
            matches!(started.state, ProcessState::FailedToStart { .. }),
            "{started:?}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn a_reload_changes_what_later_launches_may_run() {
    let agent = Agent::start("");
    let mut host = connected(&agent).await;
    let before = ask(&mut host, 1, HostMsg::LaunchProcess(sh("a", "exit 0"))).await;
    assert_eq!(error_code(&before), ErrorCode::NotAllowed);
    let text = std::fs::read_to_string(&agent.config_path).expect("config") + SHELL;
    std::fs::write(&agent.config_path, text).expect("write config");
    agent.handle.reload().await;
    host.expect_nothing_pending(2).await;
    let started = launch(&mut host, 3, sh("a", "exit 0")).await;
    pid_of(&started);
    agent.stop().await;
}

#[tokio::test]
async fn stopping_the_agent_ends_its_processes() {
    let agent = Agent::start(SHELL);
    let mut host = connected(&agent).await;
    // One that ends on SIGTERM, one that ignores it and gets SIGKILL after the grace.
    let polite = pid_of(&launch(&mut host, 1, sh("polite", "sleep 1000")).await);
    let stubborn = pid_of(
        &launch(
            &mut host,
            2,
            sh("stubborn", "trap '' TERM; while :; do sleep 1; done"),
        )
        .await,
    );
    host.expect_nothing_pending(3).await;
    assert!(alive(polite) && alive(stubborn));
    let started = Instant::now();
    agent.stop().await;
    assert!(!alive(polite), "SIGTERM ended it");
    assert!(!alive(stubborn), "SIGKILL ended it after the grace");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
