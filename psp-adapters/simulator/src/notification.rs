//! Notifications (webhooks) in the simulator's simple signed format (see
//! the crate docs).

use paynode_guest::v2::{
    self, constant_time_eq, hex_lower, Incoming, Notification, NotificationKind, Rejection,
};

use crate::simulate::get;

/// Parses a signed body (see the crate docs) into one notification.
pub fn parse_body(body: &[u8]) -> Result<Notification, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    let mut fields = std::collections::BTreeMap::new();
    for pair in text.trim().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("field {pair:?} has no `=`"))?;
        fields.insert(key, value);
    }
    let field = |name: &str| fields.get(name).copied().unwrap_or("");
    let kind = match field("type") {
        "charge.succeeded" => NotificationKind::ChargeSucceeded,
        "charge.failed" => NotificationKind::ChargeFailed,
        "refund.succeeded" => NotificationKind::RefundSucceeded,
        "refund.failed" => NotificationKind::RefundFailed,
        other => return Err(format!("unknown type {other:?}")),
    };
    if field("id").is_empty() || field("key").is_empty() {
        return Err("`id` and `key` are required".into());
    }
    Ok(Notification {
        event_id: field("id").into(),
        kind,
        idempotency_key: field("key").into(),
        psp_reference: field("reference").into(),
        message: field("message").into(),
    })
}

/// Checks the `x-sim-signature` header against the host's HMAC of the raw
/// body (the key stays in the host), then parses the body.
pub fn parse_notification(
    config: &[(String, String)],
    incoming: &Incoming,
) -> Result<Vec<Notification>, Rejection> {
    let signature = incoming
        .header("x-sim-signature")
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| Rejection::BadSignature("no x-sim-signature header".into()))?;
    let secret = get(config, "webhook-secret").unwrap_or("sim_webhook_secret");
    let mac = v2::hmac_sha256(secret, &incoming.body)
        .map_err(|e| Rejection::BadSignature(format!("cannot compute the MAC: {e}")))?;
    if !constant_time_eq(hex_lower(&mac).as_bytes(), signature.as_bytes()) {
        return Err(Rejection::BadSignature("signature does not match".into()));
    }
    parse_body(&incoming.body)
        .map(|n| vec![n])
        .map_err(Rejection::Malformed)
}
