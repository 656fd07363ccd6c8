//! [`LibvirtError`]: what libvirt said when a call failed, in plain types, so that the `virt`
//! crate's error type stays inside this crate.

use std::fmt;

use virt::enumutil::RawEnum;
use virt::error::{ErrorDomain, ErrorNumber};
use virt::sys;

/// A failed libvirt call as libvirt reported it: its error number (`virErrorNumber`,
/// `VIR_ERR_*`), the part of libvirt it came from (`virErrorDomain`, `VIR_FROM_*`) and its
/// message. Displayed as libvirt's message followed by both codes, with their names:
///
/// `operation forbidden: read only access prevents virDomainReset [code=operationdenied (6),
/// from=rpc (7)]`
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LibvirtError {
    /// `virErrorNumber`: `VIR_ERR_NO_DOMAIN`, `VIR_ERR_OPERATION_INVALID`, ...
    pub code: u32,
    /// `virErrorDomain`: `VIR_FROM_QEMU`, `VIR_FROM_RPC`, ...
    pub domain: u32,
    /// libvirt's message.
    pub message: String,
}

impl LibvirtError {
    /// An argument refused before it reached libvirt, for the reason libvirt would refuse it
    /// (`VIR_ERR_INVALID_ARG`): such as a NUL byte, which cannot cross into C.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        LibvirtError {
            code: sys::VIR_ERR_INVALID_ARG,
            domain: sys::VIR_FROM_NONE,
            message: message.into(),
        }
    }

    /// The error libvirt left for this thread by the last failed call.
    pub(crate) fn last() -> Self {
        Self::from_virt(&virt::error::Error::last_error())
    }

    pub(crate) fn from_virt(e: &virt::error::Error) -> Self {
        LibvirtError {
            code: e.code().to_raw(),
            domain: e.domain().to_raw(),
            message: e.message().to_string(),
        }
    }
}

impl fmt::Display for LibvirtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [code=", self.message)?;
        match ErrorNumber::from_raw(self.code) {
            Some(name) => write!(f, "{name} ({})", self.code)?,
            None => write!(f, "{}", self.code)?,
        }
        f.write_str(", from=")?;
        match ErrorDomain::from_raw(self.domain) {
            Some(name) => write!(f, "{name} ({})]", self.domain),
            None => write!(f, "{}]", self.domain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_message_code_and_origin() {
        let e = LibvirtError {
            code: sys::VIR_ERR_OPERATION_DENIED,
            domain: sys::VIR_FROM_RPC,
            message: "operation forbidden: read only access prevents virDomainReset".into(),
        };

        let text = e.to_string();

        assert!(
            text.starts_with(
                "operation forbidden: read only access prevents virDomainReset [code="
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("({})", sys::VIR_ERR_OPERATION_DENIED)),
            "{text}"
        );
        assert!(
            text.contains(&format!("({})]", sys::VIR_FROM_RPC)),
            "{text}"
        );
    }

    #[test]
    fn unknown_codes_are_shown_as_numbers() {
        let e = LibvirtError {
            code: 100_000,
            domain: 100_001,
            message: "from a newer libvirt".into(),
        };

        assert_eq!(
            e.to_string(),
            "from a newer libvirt [code=100000, from=100001]"
        );
    }
}
