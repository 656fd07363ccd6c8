//! Test fixtures for the tests of this crate and of the crates that run the real guest agent
//! (the host agent's end-to-end test). Behind the `testing` feature: never in a product build.

use std::path::PathBuf;

use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, DaemonHandle, Tuning};

/// [`Background::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("the daemon did not start")]
    Start(#[source] DaemonError),
    #[error("cannot start the daemon's thread or runtime")]
    Thread(#[source] std::io::Error),
}

/// The daemon on a thread of its own with a current-thread runtime, as `appmon-guest` runs it
/// on its main thread: for programs and tests that embed the agent. No signals are caught;
/// [`Background::stop`], or dropping it, stops the daemon as SIGTERM does and joins the thread.
pub struct Background {
    handle: DaemonHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl Background {
    /// Starts the daemon and returns once its sockets are bound, or with why it could not start.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        tuning: Tuning,
    ) -> Result<Background, BackgroundError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("appmon-guest".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = tx.send(Err(BackgroundError::Thread(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Daemon::start(config, config_path, tuning, None) {
                        Ok((daemon, handle)) => {
                            let _ = tx.send(Ok(handle));
                            daemon.run().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(BackgroundError::Start(e)));
                        }
                    }
                });
            })
            .map_err(BackgroundError::Thread)?;
        match rx.recv() {
            Ok(Ok(handle)) => Ok(Background {
                handle,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread ended without a word: it panicked.
            Err(_) => {
                let _ = thread.join();
                Err(BackgroundError::Thread(std::io::Error::other(
                    "the daemon's thread ended before it started",
                )))
            }
        }
    }

    /// Reload, shutdown and the daemon's state.
    pub fn handle(&self) -> &DaemonHandle {
        &self.handle
    }

    /// Stops the daemon as SIGTERM does (its sockets are removed) and waits for its thread.
    /// Panics when the daemon's thread panicked.
    pub async fn stop(mut self) {
        self.handle.shutdown().await;
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join task")
                .expect("the daemon's thread did not panic");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Drop may run inside a runtime, where blocking on the shutdown is not allowed.
            let handle = self.handle.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() {
                    rt.block_on(handle.shutdown());
                }
            })
            .join();
            let _ = thread.join();
        }
    }
}
