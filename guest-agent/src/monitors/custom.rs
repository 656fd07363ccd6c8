//! Custom monitors' executor: the monitor's command, run within its timeout; exit code 0 is
//! healthy, anything else (another code, a signal, the timeout, a program that cannot start)
//! is a failure that says what happened and the command's last line of output.

use std::time::Duration;

use super::config::CommandLine;
use super::machine::Verdict;
use crate::exec::{self, CommandSpec, Limits};

/// Output kept of a check command (its last line becomes the failure's reason).
pub const CHECK_OUTPUT: usize = 4096;

/// Runs the check once.
pub async fn check(command: &CommandLine, timeout: Duration) -> Verdict {
    let report = exec::run(
        &CommandSpec::new(command.0.clone()),
        Limits {
            time: timeout,
            output: CHECK_OUTPUT,
        },
    )
    .await;
    if report.outcome.success() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{}: {}", command.display(), report.summary()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandLine {
        CommandLine(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    #[tokio::test]
    async fn exit_zero_is_healthy() {
        assert_eq!(
            check(&sh("exit 0"), Duration::from_secs(5)).await,
            Verdict::Pass
        );
    }

    #[tokio::test]
    async fn another_exit_code_fails_with_the_last_line_of_output() {
        let verdict = check(
            &sh("echo checking; echo db does not answer; exit 2"),
            Duration::from_secs(5),
        )
        .await;
        let Verdict::Fail(reason) = verdict else {
            panic!("expected a failure")
        };
        assert!(
            reason.ends_with("exit code 2 (db does not answer)"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_hanging_check_is_killed_at_its_timeout_and_fails() {
        let started = std::time::Instant::now();
        let verdict = check(&sh("sleep 1000"), Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        let Verdict::Fail(reason) = verdict else {
            panic!("expected a failure")
        };
        assert!(reason.contains("timed out after 0.3 s: killed"), "{reason}");
    }
}
