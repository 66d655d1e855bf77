//! `paynode replay`: runs a candidate posting-rules component over the
//! finalized orders the ledger has recorded and diffs its journals against
//! what was posted. Nothing is written; this is what an operator reads
//! before `plugin activate`.
//!
//! The candidate gets the same input and the same host invariant checks as
//! in the LedgerRecordingConsumer, so "rejected" here means "would be
//! dead-lettered there".

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::components::invariants::{check_journals, PostingScope};
use crate::components::posting::{recorded_journals, rule_input};
use crate::components::runtime::CallEnv;
use crate::components::{Loaded, Runtime, Slot};
use crate::config::Config;
use crate::domain::events::{FinalStatus, LedgerEntriesRecorded, OrderFinalized};
use crate::domain::ledger::posting_lines;
use crate::store::payments::OrderRow;

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// The candidate posts exactly what the ledger holds.
    Same,
    /// Valid journals, but different ones.
    Changed,
    /// The candidate failed or broke a host invariant: in production this
    /// order's event would go to the DLQ.
    Rejected,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDiff {
    pub payment_order_id: Uuid,
    pub verdict: Verdict,
    /// Posting lines only the ledger has (`journal account side amount`).
    pub removed: Vec<String>,
    /// Posting lines only the candidate produces.
    pub added: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub candidate: String,
    pub sha256: String,
    pub orders: usize,
    pub same: usize,
    pub changed: usize,
    pub rejected: usize,
    /// Orders whose verdict is not `Same`.
    pub diffs: Vec<OrderDiff>,
}

impl ReplayReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "replay of {} (sha256 {}) over {} recorded order(s): {} same, {} changed, {} rejected\n",
            self.candidate,
            &self.sha256[..16.min(self.sha256.len())],
            self.orders,
            self.same,
            self.changed,
            self.rejected
        );
        for diff in &self.diffs {
            out.push_str(&format!("{} {:?}\n", diff.payment_order_id, diff.verdict));
            if let Some(error) = &diff.error {
                out.push_str(&format!("    ! {error}\n"));
            }
            for line in &diff.removed {
                out.push_str(&format!("    - {line}\n"));
            }
            for line in &diff.added {
                out.push_str(&format!("    + {line}\n"));
            }
        }
        out
    }
}

#[derive(sqlx::FromRow)]
struct Recorded {
    #[sqlx(flatten)]
    order: OrderRow,
    recorded_event: serde_json::Value,
    /// Set when the recording is a refund's (its `post-refund` is replayed).
    refund_id: Option<uuid::Uuid>,
    refund_amount: Option<i64>,
    refund_reference: Option<String>,
}

async fn recorded_orders(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Recorded>> {
    sqlx::query_as(
        "SELECT o.*, r.recorded_event, f.refund_id, f.amount_minor AS refund_amount,
                f.psp_reference AS refund_reference
         FROM ledger_recordings r JOIN payment_orders o USING (payment_order_id)
         LEFT JOIN refunds f ON f.finalized_event_id = r.source_event_id
         WHERE o.status IN ('SUCCEEDED', 'FAILED')
         ORDER BY r.created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

async fn judge(
    runtime: &Runtime,
    candidate: &Loaded,
    env: &CallEnv,
    config: &[(String, String)],
    row: &Recorded,
) -> anyhow::Result<OrderDiff> {
    let recorded: LedgerEntriesRecorded = serde_json::from_value(row.recorded_event.clone())
        .context("a ledger recording that this version cannot read")?;
    let order = &row.order;
    let finalized = OrderFinalized {
        order: order.order_ref(),
        status: if order.status == crate::domain::payment::OrderStatus::Succeeded {
            FinalStatus::Succeeded
        } else {
            FinalStatus::Failed
        },
        psp_reference: order.psp_reference.clone(),
        final_attempt: order.final_attempt.unwrap_or(0).max(0) as u32,
        reason: order.failure_reason.clone(),
    };
    let rejected = |error: String| OrderDiff {
        payment_order_id: order.payment_order_id,
        verdict: Verdict::Rejected,
        removed: Vec::new(),
        added: Vec::new(),
        error: Some(error),
    };
    let posted = match row.refund_id {
        Some(refund_id) => {
            let money = |quantity: i64| {
                crate::components::bindings::rules::paynode::posting_rules::types::Money {
                    quantity,
                    currency: order.currency.clone(),
                }
            };
            let refund = crate::components::runtime::RefundedOrder {
                refund_id: refund_id.to_string(),
                payment_order_id: order.payment_order_id.to_string(),
                payment_id: order.payment_id.to_string(),
                seller_id: order.seller_id.clone(),
                captured: money(order.amount_minor),
                amount: money(row.refund_amount.unwrap_or(0)),
                psp_reference: row.refund_reference.clone().unwrap_or_default(),
            };
            runtime.post_refund(candidate, env, config, &refund).await
        }
        None => {
            runtime
                .post(candidate, env, config, &rule_input(&finalized))
                .await
        }
    };
    let entries = match posted {
        Err(error) => return Ok(rejected(format!("{}: {error}", error.class()))),
        Ok((Err(rule_error), _)) => {
            return Ok(rejected(format!(
                "rule_error: {}: {}",
                rule_error.code, rule_error.message
            )))
        }
        Ok((Ok(entries), _)) => entries,
    };
    let scope = PostingScope {
        seller_id: &order.seller_id,
        currency: &order.currency,
    };
    if let Err(violation) = check_journals(&entries, &scope) {
        return Ok(rejected(format!("{}: {violation}", violation.class())));
    }
    let before = posting_lines(&recorded.journals);
    let after = posting_lines(&recorded_journals(
        order.payment_order_id,
        &order.currency,
        entries,
    ));
    let removed: Vec<String> = before.difference(&after).cloned().collect();
    let added: Vec<String> = after.difference(&before).cloned().collect();
    Ok(OrderDiff {
        payment_order_id: order.payment_order_id,
        verdict: if removed.is_empty() && added.is_empty() {
            Verdict::Same
        } else {
            Verdict::Changed
        },
        removed,
        added,
        error: None,
    })
}

/// Replays the `limit` most recent recordings through `candidate`.
pub async fn replay(
    pool: &PgPool,
    runtime: &Runtime,
    candidate: &Loaded,
    env: &CallEnv,
    config: &[(String, String)],
    limit: i64,
    progress: &ProgressBar,
) -> anyhow::Result<ReplayReport> {
    let rows = recorded_orders(pool, limit).await?;
    progress.set_length(rows.len() as u64);
    let mut report = ReplayReport {
        candidate: format!("{} {}", candidate.name, candidate.version),
        sha256: candidate.sha256.clone(),
        orders: rows.len(),
        same: 0,
        changed: 0,
        rejected: 0,
        diffs: Vec::new(),
    };
    for row in &rows {
        let diff = judge(runtime, candidate, env, config, row).await?;
        match diff.verdict {
            Verdict::Same => report.same += 1,
            Verdict::Changed => report.changed += 1,
            Verdict::Rejected => report.rejected += 1,
        }
        if diff.verdict != Verdict::Same {
            report.diffs.push(diff);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(report)
}

pub struct Options<'a> {
    pub component: &'a Path,
    pub config: Vec<(String, String)>,
    pub limit: i64,
    pub json: bool,
    pub fail_on_change: bool,
}

pub async fn run(config: &Config, options: Options<'_>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(options.component)
        .with_context(|| format!("reading {}", options.component.display()))?;
    let runtime = Runtime::new(None)?;
    let candidate = runtime
        .load(Slot::PostingRules, &bytes)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", options.component.display()))?;
    let env = CallEnv::offline(&config.components.posting_rules, "replay");
    let pool = crate::store::connect(&config.database).await?;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("replaying {bar:30} {pos}/{len} orders")
            .expect("valid template"),
    );
    let report = replay(
        &pool,
        &runtime,
        &candidate,
        &env,
        &options.config,
        options.limit,
        &progress,
    )
    .await?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    let failed = report.rejected > 0 || (options.fail_on_change && report.changed > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
