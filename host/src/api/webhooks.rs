//! `POST /api/v1/webhooks/{adapter}`: PSP notifications.
//!
//! No bearer token: a PSP proves itself by its signature, which the active
//! adapter's `parse-notification` checks with the host's `hmac-sha256`
//! import (the secret stays in the host). A bad signature is a 401 and
//! nothing changes. Each notification is applied once per PSP event id and
//! only ever *settles*: an order or refund in REQUIRES_REVIEW gets its
//! final status (with its finalized event, through the outbox); one still
//! in flight is left to its stage (`deferred`, not recorded, so the PSP's
//! redelivery can settle it later); a final one is never changed: a
//! notification that agrees is `unchanged`, one that contradicts it is
//! recorded `contradicted`, logged as an error and counted
//! (`psp_notifications_total{result="contradicted"}`) for a human to review.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::problem::{ApiError, Problem};
use super::AppState;
use crate::components::bindings::adapter_v2::paynode::psp_adapter::notifications::NotificationKind;
use crate::components::runtime::{Incoming, Notification, Rejection};
use crate::components::Slot;
use crate::domain::events::FinalStatus;
use crate::domain::payment::OrderStatus;
use crate::domain::refund::RefundStatus;
use crate::store::{orders, refunds, reviews};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsHandled {
    pub results: Vec<NotificationResult>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationResult {
    pub event_id: String,
    /// applied | unchanged | duplicate | deferred | contradicted | unknown_subject
    pub result: &'static str,
}

/// Receive a PSP notification for the active psp-adapter.
#[utoipa::path(post, path = "/api/v1/webhooks/{adapter}", tag = "webhooks", operation_id = "receive_webhook",
    params(("adapter" = String, Path, description = "`psp-adapter`, or the active adapter's name")),
    request_body(content = String, description = "The PSP's raw body, signed as the adapter expects", content_type = "*/*"),
    responses(
        (status = 200, description = "Verified; what each notification did", body = NotificationsHandled),
        (status = 400, description = "Signed correctly but not understood", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Bad or missing signature: nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such adapter, or its contract version has no notifications", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The adapter component failed", body = Problem, content_type = "application/problem+json"),
    ),
    security(()))]
pub async fn receive(
    State(state): State<AppState>,
    Path(adapter): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<NotificationsHandled>, ApiError> {
    let active = state.registry.active(Slot::PspAdapter).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    if (adapter != Slot::PspAdapter.as_str() && adapter != active.loaded.name)
        || !active.loaded.supports_refunds()
    {
        return Err(ApiError::not_found(format!(
            "no active adapter {adapter} that takes notifications"
        )));
    }
    let incoming = Incoming {
        headers: headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
        received_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    // Under the active activation's own egress policy.
    let env = state.registry.adapter_env(&active, "webhook");
    let parsed = state
        .registry
        .runtime()
        .parse_notification(&active.loaded, &env, &active.config, &incoming)
        .await;
    let notifications = match parsed {
        Ok((Ok(list), _)) => list,
        Ok((Err(Rejection::BadSignature(why)), _)) => {
            crate::metrics::notification("bad_signature");
            return Err(ApiError::unauthorized(format!("bad signature: {why}")));
        }
        Ok((Err(Rejection::Malformed(why)), _)) => {
            crate::metrics::notification("malformed");
            return Err(ApiError::validation(format!(
                "notification not understood: {why}"
            )));
        }
        Err(error) => {
            tracing::warn!(%error, adapter = %active.loaded.name, "parse-notification failed");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "adapter-failed",
                format!(
                    "the adapter could not read the notification ({})",
                    error.class()
                ),
            ));
        }
    };
    let mut results = Vec::with_capacity(notifications.len());
    for notification in &notifications {
        let result = handle(&state, &active.loaded.name, notification).await?;
        crate::metrics::notification(result);
        results.push(NotificationResult {
            event_id: notification.event_id.clone(),
            result,
        });
    }
    Ok(axum::Json(NotificationsHandled { results }))
}

fn kind_name(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::ChargeSucceeded => "charge-succeeded",
        NotificationKind::ChargeFailed => "charge-failed",
        NotificationKind::RefundSucceeded => "refund-succeeded",
        NotificationKind::RefundFailed => "refund-failed",
    }
}

/// One notification: duplicate check, effect, record.
async fn handle(
    state: &AppState,
    adapter: &str,
    n: &Notification,
) -> Result<&'static str, ApiError> {
    if refunds::notification_seen(&state.pool, adapter, &n.event_id).await? {
        return Ok("duplicate");
    }
    let result = match n.kind {
        NotificationKind::ChargeSucceeded | NotificationKind::ChargeFailed => {
            settle_order(state, n).await?
        }
        NotificationKind::RefundSucceeded | NotificationKind::RefundFailed => {
            settle_refund(state, n).await?
        }
    };
    if result == "contradicted" {
        tracing::error!(adapter, eventId = %n.event_id, kind = kind_name(n.kind), key = %n.idempotency_key,
            "PSP notification contradicts a recorded final outcome; left for review");
    }
    if result != "deferred" {
        refunds::record_notification(
            &state.pool,
            adapter,
            &n.event_id,
            kind_name(n.kind),
            &n.idempotency_key,
            &n.psp_reference,
            result,
        )
        .await?;
    }
    Ok(result)
}

/// What a notification says against what is recorded.
fn verdict(says_succeeded: bool, recorded_succeeded: bool) -> &'static str {
    if says_succeeded == recorded_succeeded {
        "unchanged"
    } else {
        "contradicted"
    }
}

async fn settle_order(state: &AppState, n: &Notification) -> Result<&'static str, ApiError> {
    let succeeded = n.kind == NotificationKind::ChargeSucceeded;
    let Some(order) = orders::by_psp_key(&state.pool, &n.idempotency_key).await? else {
        return Ok("unknown_subject");
    };
    match order.status {
        OrderStatus::Succeeded | OrderStatus::Failed => {
            Ok(verdict(succeeded, order.status == OrderStatus::Succeeded))
        }
        OrderStatus::Initiated | OrderStatus::Pending | OrderStatus::Parked => Ok("deferred"),
        OrderStatus::RequiresReview => {
            if succeeded && n.psp_reference.is_empty() {
                return Ok("deferred");
            }
            let settlement = reviews::Settlement {
                status: if succeeded {
                    FinalStatus::Succeeded
                } else {
                    FinalStatus::Failed
                },
                psp_reference: succeeded.then_some(n.psp_reference.as_str()),
                reason: format!("settled by PSP notification {}", n.event_id),
                actor: "psp-notification",
                action: "settle-review",
                details: serde_json::json!({ "eventId": n.event_id, "pspReference": n.psp_reference, "message": n.message }),
            };
            Ok(
                if reviews::settle(&state.pool, &order, &settlement).await? {
                    "applied"
                } else {
                    "unchanged"
                },
            )
        }
    }
}

async fn settle_refund(state: &AppState, n: &Notification) -> Result<&'static str, ApiError> {
    let succeeded = n.kind == NotificationKind::RefundSucceeded;
    let Some(refund) = refunds::by_psp_key(&state.pool, &n.idempotency_key).await? else {
        return Ok("unknown_subject");
    };
    match refund.status {
        RefundStatus::Succeeded | RefundStatus::Failed => {
            Ok(verdict(succeeded, refund.status == RefundStatus::Succeeded))
        }
        RefundStatus::Requested => Ok("deferred"),
        RefundStatus::RequiresReview => {
            let order = orders::get(&state.pool, refund.payment_order_id)
                .await?
                .ok_or_else(|| ApiError::internal("refund without its order"))?;
            let (to, reference, reason) = if succeeded {
                (
                    RefundStatus::Succeeded,
                    Some(n.psp_reference.as_str()).filter(|r| !r.is_empty()),
                    None,
                )
            } else {
                let reason = format!("PSP notification {}: {}", n.event_id, n.message);
                (RefundStatus::Failed, None, Some(reason))
            };
            let applied = refunds::settle_review(
                &state.pool,
                &refund,
                order.order_ref(),
                to,
                reference,
                reason.as_deref(),
            )
            .await?;
            if applied {
                crate::metrics::refund(if succeeded { "succeeded" } else { "failed" });
            }
            Ok(if applied { "applied" } else { "unchanged" })
        }
    }
}
