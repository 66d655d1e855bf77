//! Outcome constructors. What each outcome means for the host is in the
//! WIT (`wit/psp-adapter/adapter.wit`): only an explicit answer of the PSP
//! is `succeeded` or `declined`; `transient` promises the PSP certainly did
//! not charge; anything else is `unknown`, which the host settles with
//! `status`.

use crate::{Failure, HttpError, Outcome};

pub fn succeeded(reference: impl Into<String>) -> Outcome {
    Outcome::Succeeded(reference.into())
}

pub fn declined(code: impl Into<String>, message: impl Into<String>) -> Outcome {
    Outcome::Declined(failure(code, message))
}

pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Outcome {
    Outcome::Transient(failure(code, message))
}

pub fn unknown(reason: impl Into<String>) -> Outcome {
    Outcome::Unknown(reason.into())
}

fn failure(code: impl Into<String>, message: impl Into<String>) -> Failure {
    Failure {
        code: code.into(),
        message: message.into(),
    }
}

/// A failed exchange: after the request may have left (timeout, broken
/// exchange) nobody knows; before (refused by the host, no connection)
/// nothing was charged. `unknown` reasons are fixed texts, so fixtures can
/// compare them; the host's detail goes to the log.
pub fn from_http_error(error: &HttpError) -> Outcome {
    match error {
        HttpError::Timeout => unknown("timeout waiting for the PSP"),
        HttpError::FailedAfterSend(_) => unknown("exchange with the PSP broke after sending"),
        HttpError::ConnectFailed(m) => transient("api_connection_error", m.as_str()),
        HttpError::Refused(m) => transient("host_refused", m.as_str()),
    }
}

/// A failed exchange of a `status` lookup: whatever failed, the lookup
/// says nothing about the charge, so it stays `unknown` (a refused or
/// unconnected lookup is no evidence that the PSP never charged).
pub fn from_status_http_error(error: &HttpError) -> Outcome {
    let kind = match error {
        HttpError::Timeout => "timeout",
        HttpError::FailedAfterSend(_) => "failed-after-send",
        HttpError::ConnectFailed(_) => "connect-failed",
        HttpError::Refused(_) => "refused",
    };
    unknown(format!("status lookup failed ({kind})"))
}

/// A `status` answer for "the PSP has no charge under this key": it never
/// charged, so retrying with the same idempotency key is safe. Only when
/// the PSP's lookup is authoritative; an unclear lookup is `unknown`.
pub fn never_charged(message: impl Into<String>) -> Outcome {
    transient("not_found", message)
}

/// A `refund-status` answer for "the PSP has no refund under this key":
/// it never refunded, so the host may send the refund again with the same
/// key. As for [`never_charged`], only when the lookup is authoritative.
pub fn never_refunded(message: impl Into<String>) -> Outcome {
    transient("not_found", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sending_nobody_knows_before_sending_nothing_was_charged() {
        let timeout = from_http_error(&HttpError::Timeout);
        assert_eq!(timeout, unknown("timeout waiting for the PSP"));
        let broke = from_http_error(&HttpError::FailedAfterSend("reset".into()));
        assert_eq!(broke, unknown("exchange with the PSP broke after sending"));
        let connect = from_http_error(&HttpError::ConnectFailed("refused".into()));
        assert_eq!(connect, transient("api_connection_error", "refused"));
        let refused = from_http_error(&HttpError::Refused("not allowed".into()));
        assert_eq!(refused, transient("host_refused", "not allowed"));
        let lookup = from_status_http_error(&HttpError::ConnectFailed("x".into()));
        assert_eq!(lookup, unknown("status lookup failed (connect-failed)"));
    }
}
