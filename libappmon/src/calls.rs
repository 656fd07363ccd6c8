//! The C calls as safe functions on one [`Client`] shared by every thread of the process (a
//! mutex serialises them over its one connection), with the header's error codes and a
//! per-thread message.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use appmon_guest_agent::client::{AppState, AppStatus, Client, ClientError, DEFAULT_TIMEOUT};
use appmon_guest_agent::config::DEFAULT_API_SOCKET;
use appmon_wire::report::error_chain;

/// `AppmonLibError` of `appmon.h`, value for value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppmonLibError {
    Success = 0,
    Other = 1,
    NotRunning = 2,
    NotEnabled = 3,
    NotSupported = 4,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn client() -> &'static Mutex<Client> {
    static CLIENT: OnceLock<Mutex<Client>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let socket = std::env::var_os("APPMON_SOCKET").unwrap_or_else(|| DEFAULT_API_SOCKET.into());
        let timeout = std::env::var("APPMON_TIMEOUT")
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
        Mutex::new(Client::new(socket).with_timeout(Some(timeout)))
    })
}

/// Runs `call` on the shared client and records the calling thread's message.
fn with_client<T>(
    call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    // A thread that panicked inside a call cannot have left the client half-changed in a way
    // that matters: the next call reconnects when its connection is broken.
    let mut client = client()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = call(&mut client);
    set_message(match &result {
        Ok(_) => String::new(),
        Err(e) => error_chain(e),
    });
    result
}

fn set_message(text: String) {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = text);
}

/// The calling thread's message, as a pointer that stays valid until its next call.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

/// The calling thread's message.
pub fn last_error() -> String {
    LAST_ERROR.with(|m| m.borrow().to_string_lossy().into_owned())
}

fn code(error: &ClientError, refused: AppmonLibError) -> AppmonLibError {
    match error {
        ClientError::Unreachable { .. } => AppmonLibError::NotRunning,
        ClientError::Refused { .. } => refused,
        _ => AppmonLibError::Other,
    }
}

fn status_code<T>(result: Result<T, ClientError>, refused: AppmonLibError) -> AppmonLibError {
    match result {
        Ok(_) => AppmonLibError::Success,
        Err(e) => code(&e, refused),
    }
}

pub fn enable() -> AppmonLibError {
    status_code(with_client(Client::enable), AppmonLibError::Other)
}

pub fn disable() -> AppmonLibError {
    status_code(with_client(Client::disable), AppmonLibError::Other)
}

/// The agent refuses a heartbeat only when the application has not enabled.
pub fn mark_active() -> AppmonLibError {
    status_code(with_client(Client::mark_active), AppmonLibError::NotEnabled)
}

pub fn is_enabled() -> bool {
    with_client(Client::is_enabled).unwrap_or(false)
}

/// `"green"`, `"red"` or `"gray"`; `None` when the call failed.
pub fn get_app_status() -> Option<&'static CStr> {
    let status = with_client(Client::get_app_status).ok()?;
    Some(match status {
        AppStatus::Green => c"green",
        AppStatus::Red => c"red",
        AppStatus::Gray => c"gray",
    })
}

/// `appStateOk` or `appStateNeedReset` (vSphere's spellings); anything else is not supported.
pub fn post_app_state(state: Option<&[u8]>) -> AppmonLibError {
    let state = match state {
        Some(b"appStateOk") => AppState::Ok,
        Some(b"appStateNeedReset") => AppState::NeedReset,
        other => {
            set_message(match other {
                None => "Appmon_PostAppState: state is NULL; expected \"appStateOk\" or \"appStateNeedReset\"".into(),
                Some(s) => format!(
                    "Appmon_PostAppState: unknown state {:?}; expected \"appStateOk\" or \"appStateNeedReset\"",
                    String::from_utf8_lossy(s)
                ),
            });
            return AppmonLibError::NotSupported;
        }
    };
    status_code(
        with_client(|c| c.post_app_state(state)),
        AppmonLibError::Other,
    )
}
