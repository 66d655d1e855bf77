//! Stripe webhooks: the `Stripe-Signature` check and the events paynode
//! acts on. Pure: the MAC comes from the caller (the host's
//! `crypto.hmac-sha256` in the component, a fake in tests).
//!
//! A correctly signed event is refused when its signed timestamp lies more
//! than 5 minutes from the host's time of receipt (`received-at`), as
//! Stripe's own libraries do: a captured request replayed later fails here,
//! and the host applies each event id once besides.

use paynode_guest::v2::{
    constant_time_eq, hex_lower, Incoming, Notification, NotificationKind, Rejection,
};
use paynode_guest::Outcome;
use serde::Deserialize;
use serde_json::Value;

use crate::mapping::{map_intent, map_refund, paynode_key, PaymentIntent, Refund, RefundList};

pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// How far a signed timestamp may lie from the time of receipt, either way
/// (clocks drift both ways).
pub const TOLERANCE_SECS: u64 = 300;

/// A `Stripe-Signature` header: `t=<unix time>,v1=<hex>[,v1=<hex>...]`
/// (other schemes, like `v0`, ignored).
#[derive(Debug, PartialEq, Eq)]
pub struct Signature<'a> {
    pub timestamp: &'a str,
    pub v1: Vec<&'a str>,
}

pub fn parse_signature(header: &str) -> Option<Signature<'_>> {
    let (mut timestamp, mut v1) = (None, Vec::new());
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", signature)) => v1.push(signature),
            _ => {}
        }
    }
    let timestamp = timestamp.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))?;
    (!v1.is_empty()).then_some(Signature { timestamp, v1 })
}

/// Checks the signature over `"{t}.{raw body}"` (MAC from `hmac`: any v1
/// value may match, each compared in constant time), then reads the event.
pub fn parse(
    incoming: &Incoming,
    hmac: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Vec<Notification>, Rejection> {
    let bad = |why: &str| Rejection::BadSignature(why.to_string());
    let header = incoming
        .header(SIGNATURE_HEADER)
        .ok_or_else(|| bad("no Stripe-Signature header"))?;
    let signature =
        parse_signature(header).ok_or_else(|| bad("malformed Stripe-Signature header"))?;
    let payload = [signature.timestamp.as_bytes(), b".", &incoming.body].concat();
    let mac = hmac(&payload).map_err(|e| bad(&format!("cannot compute the MAC: {e}")))?;
    let expected = hex_lower(&mac);
    let matched = signature.v1.iter().fold(false, |any, v1| {
        any | constant_time_eq(v1.to_ascii_lowercase().as_bytes(), expected.as_bytes())
    });
    if !matched {
        return Err(bad("signature does not match"));
    }
    let signed_at: u64 = signature
        .timestamp
        .parse()
        .map_err(|_| bad("malformed Stripe-Signature header"))?;
    if signed_at.abs_diff(incoming.received_at) > TOLERANCE_SECS {
        return Err(bad("timestamp outside the 300 s tolerance"));
    }
    parse_event(&incoming.body).map_err(Rejection::Malformed)
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

/// A Charge as `charge.refunded` carries it: its refunds are embedded only
/// on older API versions.
#[derive(Deserialize)]
struct Charge {
    #[serde(default)]
    refunds: Option<RefundList>,
}

/// The notifications in one (signed) event. Types paynode does not act on,
/// objects paynode did not create (no `paynode_key` metadata) and refunds
/// still pending give none: answering them as errors would only make
/// Stripe resend them.
pub fn parse_event(body: &[u8]) -> Result<Vec<Notification>, String> {
    let event: Event =
        serde_json::from_slice(body).map_err(|_| "not a Stripe event".to_string())?;
    if event.id.is_empty() {
        return Err("event without an id".into());
    }
    let kind = event.kind.as_str();
    let object = |what| move |_| format!("{kind} does not carry a {what}");
    Ok(match kind {
        kind @ ("payment_intent.succeeded" | "payment_intent.payment_failed") => {
            let pi: PaymentIntent =
                serde_json::from_value(event.data.object).map_err(object("payment intent"))?;
            let succeeded = kind == "payment_intent.succeeded";
            charge_notification(&event.id, succeeded, &pi)
                .into_iter()
                .collect()
        }
        "refund.created" | "refund.updated" | "charge.refund.updated" => {
            let refund: Refund =
                serde_json::from_value(event.data.object).map_err(object("refund"))?;
            refund_notification(event.id.clone(), &refund)
                .into_iter()
                .collect()
        }
        // One event lists every refund of the charge so far; each gets an
        // event id of its own so the host applies each once.
        "charge.refunded" => {
            let charge: Charge =
                serde_json::from_value(event.data.object).map_err(object("charge"))?;
            let refunds = charge.refunds.map(|list| list.data).unwrap_or_default();
            refunds
                .iter()
                .filter_map(|r| {
                    let id = format!("{}/{}", event.id, r.id.as_deref().unwrap_or(""));
                    refund_notification(id, r)
                })
                .collect()
        }
        _ => Vec::new(),
    })
}

fn notification(
    event_id: String,
    kind: NotificationKind,
    key: &str,
    reference: Option<&str>,
    message: String,
) -> Notification {
    Notification {
        event_id,
        kind,
        idempotency_key: key.to_string(),
        psp_reference: reference.unwrap_or("").to_string(),
        message,
    }
}

fn charge_notification(
    event_id: &str,
    succeeded: bool,
    pi: &PaymentIntent,
) -> Option<Notification> {
    let key = paynode_key(&pi.metadata)?;
    let (kind, message) = match (succeeded, map_intent(pi)) {
        (true, Outcome::Succeeded(_)) => (NotificationKind::ChargeSucceeded, String::new()),
        (true, _) => return None,
        (false, Outcome::Declined(failure)) => (NotificationKind::ChargeFailed, failure.code),
        (false, _) => (NotificationKind::ChargeFailed, "payment_failed".into()),
    };
    Some(notification(
        event_id.into(),
        kind,
        key,
        pi.id.as_deref(),
        message,
    ))
}

fn refund_notification(event_id: String, refund: &Refund) -> Option<Notification> {
    let key = paynode_key(&refund.metadata)?;
    let (kind, message) = match map_refund(refund) {
        Outcome::Succeeded(_) => (NotificationKind::RefundSucceeded, String::new()),
        Outcome::Declined(failure) => (NotificationKind::RefundFailed, failure.code),
        _ => return None,
    };
    Some(notification(
        event_id,
        kind,
        key,
        refund.id.as_deref(),
        message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the host's HMAC: the payload's bytes, summed.
    fn fake_mac(payload: &[u8]) -> Result<Vec<u8>, String> {
        Ok(vec![payload.iter().fold(0u8, |a, b| a.wrapping_add(*b))])
    }

    fn signed(body: &str, extra: &str) -> Incoming {
        let mac = fake_mac(format!("12.{body}").as_bytes()).unwrap();
        let header = format!("t=12,v1=00{extra},v1={},v0=ff", hex_lower(&mac));
        Incoming {
            headers: vec![("stripe-signature".into(), header)],
            body: body.as_bytes().to_vec(),
            received_at: 12,
        }
    }

    fn event(kind: &str, object: &str) -> String {
        format!(r#"{{"id":"evt_1","object":"event","type":"{kind}","data":{{"object":{object}}}}}"#)
    }

    #[test]
    fn a_signed_timestamp_far_from_receipt_is_refused() {
        let body = event("unknown.type", "{}");
        let outside = Err(Rejection::BadSignature(
            "timestamp outside the 300 s tolerance".into(),
        ));
        for (received_at, fresh) in [(12, true), (312, true), (313, false), (0, true)] {
            let mut incoming = signed(&body, "");
            incoming.received_at = received_at;
            let want = if fresh { Ok(vec![]) } else { outside.clone() };
            assert_eq!(
                parse(&incoming, fake_mac),
                want,
                "received at {received_at}"
            );
        }
    }

    #[test]
    fn signature_headers() {
        let sig = parse_signature("t=1492774577, v1=ab,v1=cd,v0=ef").unwrap();
        assert_eq!(sig.timestamp, "1492774577");
        assert_eq!(sig.v1, vec!["ab", "cd"]);
        for bad in ["", "v1=ab", "t=12", "t=x1,v1=ab", "t=,v1=ab", "garbage"] {
            assert_eq!(parse_signature(bad), None, "{bad}");
        }
    }

    #[test]
    fn any_v1_may_match_and_nothing_else_passes() {
        let body = event("unknown.type", "{}");
        assert_eq!(parse(&signed(&body, ""), fake_mac), Ok(vec![]));
        let mut tampered = signed(&body, "");
        tampered.body.push(b' ');
        let bad = |why: &str| Err(Rejection::BadSignature(why.into()));
        assert_eq!(parse(&tampered, fake_mac), bad("signature does not match"));
        let unsigned = Incoming {
            headers: vec![],
            body: body.clone().into_bytes(),
            received_at: 12,
        };
        assert_eq!(
            parse(&unsigned, fake_mac),
            bad("no Stripe-Signature header")
        );
        let no_secret = |_: &[u8]| Err("no secret named x".to_string());
        assert_eq!(
            parse(&signed(&body, ""), no_secret),
            bad("cannot compute the MAC: no secret named x")
        );
        let garbage = signed("not json", "");
        assert_eq!(
            parse(&garbage, fake_mac),
            Err(Rejection::Malformed("not a Stripe event".into()))
        );
    }

    #[test]
    fn events() {
        let one = |kind, object: &str| parse_event(event(kind, object).as_bytes());
        let n = |id: &str, kind, key: &str, reference: &str, message: &str| Notification {
            event_id: id.into(),
            kind,
            idempotency_key: key.into(),
            psp_reference: reference.into(),
            message: message.into(),
        };
        let pi = r#"{"id":"pi_1","status":"succeeded","metadata":{"paynode_key":"k-1"}}"#;
        assert_eq!(
            one("payment_intent.succeeded", pi),
            Ok(vec![n(
                "evt_1",
                NotificationKind::ChargeSucceeded,
                "k-1",
                "pi_1",
                ""
            )])
        );
        let failed = r#"{"id":"pi_1","status":"requires_payment_method","metadata":{"paynode_key":"k-1"},
            "last_payment_error":{"code":"card_declined","decline_code":"insufficient_funds"}}"#;
        assert_eq!(
            one("payment_intent.payment_failed", failed),
            Ok(vec![n(
                "evt_1",
                NotificationKind::ChargeFailed,
                "k-1",
                "pi_1",
                "insufficient_funds"
            )])
        );
        let foreign = r#"{"id":"pi_2","status":"succeeded","metadata":{}}"#;
        assert_eq!(one("payment_intent.succeeded", foreign), Ok(vec![]));
        let re = |status| {
            format!(r#"{{"id":"re_1","status":"{status}","metadata":{{"paynode_key":"rk-1"}}}}"#)
        };
        assert_eq!(
            one("refund.updated", &re("succeeded")),
            Ok(vec![n(
                "evt_1",
                NotificationKind::RefundSucceeded,
                "rk-1",
                "re_1",
                ""
            )])
        );
        assert_eq!(
            one("refund.updated", &re("failed")),
            Ok(vec![n(
                "evt_1",
                NotificationKind::RefundFailed,
                "rk-1",
                "re_1",
                "failed"
            )])
        );
        assert_eq!(one("refund.updated", &re("pending")), Ok(vec![]));
        let charge = format!(
            r#"{{"id":"ch_1","refunds":{{"has_more":false,"data":[{},{}]}}}}"#,
            re("succeeded"),
            r#"{"id":"re_2","status":"succeeded"}"#
        );
        assert_eq!(
            one("charge.refunded", &charge),
            Ok(vec![n(
                "evt_1/re_1",
                NotificationKind::RefundSucceeded,
                "rk-1",
                "re_1",
                ""
            )])
        );
        assert_eq!(one("charge.refunded", r#"{"id":"ch_1"}"#), Ok(vec![]));
        assert_eq!(one("customer.created", r#"{"id":"cus_1"}"#), Ok(vec![]));
        assert_eq!(
            one("refund.updated", r#"{"id":"re_1"}"#),
            Err("refund.updated does not carry a refund".into())
        );
        assert!(parse_event(br#"{"id":"","type":"x","data":{"object":{}}}"#).is_err());
    }
}
