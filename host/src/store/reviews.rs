//! Settling an order in REQUIRES_REVIEW: the guarded transition, its
//! finalized event (through the outbox, so both commit together) and the
//! audit row, in one transaction. Used by the admin API and the janitor.

use serde_json::Value;
use sqlx::PgPool;

use super::payments::OrderRow;
use super::{orders, outbox};
use crate::domain::events::{event_type, Envelope, FinalStatus, OrderFinalized};
use crate::kafka::topic;

pub struct Settlement<'a> {
    pub status: FinalStatus,
    pub psp_reference: Option<&'a str>,
    pub reason: String,
    /// Who settled it and what to put in the audit.
    pub actor: &'a str,
    pub action: &'a str,
    pub details: Value,
}

/// False if the order was no longer in review (nothing written).
pub async fn settle(
    pool: &PgPool,
    order: &OrderRow,
    settlement: &Settlement<'_>,
) -> sqlx::Result<bool> {
    let id = order.payment_order_id;
    let attempt = order.last_applied_attempt.max(1);
    let trace_id: String =
        sqlx::query_scalar("SELECT trace_id FROM payments WHERE payment_id = $1")
            .bind(order.payment_id)
            .fetch_one(pool)
            .await?;
    let mut tx = pool.begin().await?;
    let applied = orders::settle_review(
        &mut tx,
        id,
        settlement.status.order_status(),
        attempt,
        settlement.psp_reference,
        Some(&settlement.reason),
    )
    .await?;
    if !applied {
        tx.rollback().await?;
        return Ok(false);
    }
    let key = id.to_string();
    let finalized = OrderFinalized {
        order: order.order_ref(),
        status: settlement.status,
        psp_reference: settlement.psp_reference.map(str::to_string),
        final_attempt: attempt as u32,
        reason: Some(settlement.reason.clone()),
    };
    let event = Envelope::new(
        event_type::PAYMENT_ORDER_FINALIZED,
        &key,
        attempt as u32,
        &trace_id,
        None,
        &finalized,
    );
    outbox::append(&mut tx, topic::PAYMENT_ORDER_FINALIZED, &[(key, event)]).await?;
    sqlx::query("INSERT INTO admin_audit (actor, action, target, details) VALUES ($1, $2, $3, $4)")
        .bind(settlement.actor)
        .bind(settlement.action)
        .bind(id.to_string())
        .bind(&settlement.details)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}
