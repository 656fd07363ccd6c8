//! libappmon: the C library applications call, shaped like VMware's guest application-monitoring
//! API (`include/appmon.h` is its contract), over the guest agent's Rust client
//! ([`appmon_guest_agent::client`]).
//!
//! # Modules
//!
//! - [`calls`]: each C call as a safe Rust function on one shared [`Client`], its errors turned
//!   into the header's codes and the calling thread's message.
//! - `ffi` (this file): the `extern "C"` functions, the only place with raw pointers. Every
//!   `unsafe` block carries a `// SAFETY:` comment.
//!
//! # Which module uses which
//!
//! `ffi` → `calls`.
//!
//! [`Client`]: appmon_guest_agent::client::Client

// The exported names are the C API's (appmon.h), not Rust's.
#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, CStr, CString};

pub mod calls;

pub use calls::AppmonLibError;

/// `Appmon_Enable`.
#[no_mangle]
pub extern "C" fn Appmon_Enable() -> AppmonLibError {
    calls::enable()
}

/// `Appmon_Disable`.
#[no_mangle]
pub extern "C" fn Appmon_Disable() -> AppmonLibError {
    calls::disable()
}

/// `Appmon_MarkActive`.
#[no_mangle]
pub extern "C" fn Appmon_MarkActive() -> AppmonLibError {
    calls::mark_active()
}

/// `Appmon_IsEnabled`: 1 or 0.
#[no_mangle]
pub extern "C" fn Appmon_IsEnabled() -> c_int {
    c_int::from(calls::is_enabled())
}

/// `Appmon_GetAppStatus`: a string the caller releases with [`Appmon_Free`], or null.
#[no_mangle]
pub extern "C" fn Appmon_GetAppStatus() -> *mut c_char {
    match calls::get_app_status() {
        Some(status) => CString::from(status).into_raw(),
        None => std::ptr::null_mut(),
    }
}

/// `Appmon_PostAppState`.
///
/// # Safety
///
/// `state` is null or points to a NUL-terminated string that stays valid during the call.
#[no_mangle]
pub unsafe extern "C" fn Appmon_PostAppState(state: *const c_char) -> AppmonLibError {
    if state.is_null() {
        return calls::post_app_state(None);
    }
    // SAFETY: not null, and the caller promises a NUL-terminated string alive during the call.
    let state = unsafe { CStr::from_ptr(state) };
    calls::post_app_state(Some(state.to_bytes()))
}

/// `Appmon_Free`.
///
/// # Safety
///
/// `status` is null or a pointer [`Appmon_GetAppStatus`] returned and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn Appmon_Free(status: *mut c_char) {
    if !status.is_null() {
        // SAFETY: the caller promises a pointer from `CString::into_raw` in Appmon_GetAppStatus,
        // freed once.
        drop(unsafe { CString::from_raw(status) });
    }
}

/// `Appmon_LastErrorMessage`: valid until the calling thread's next call.
#[no_mangle]
pub extern "C" fn Appmon_LastErrorMessage() -> *const c_char {
    calls::last_error_ptr()
}
