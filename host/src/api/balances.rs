//! `GET /api/v1/sellers/{sellerId}/balances`: from the Redis cache, falling
//! back to Postgres when the cache is empty or unreachable.

use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{role, Principal};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::store::ledger::{self, BalanceRow};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SellerBalances {
    pub seller_id: String,
    /// "cache" or "database".
    #[schema(pattern = "^(cache|database)$")]
    pub source: String,
    pub accounts: Vec<AccountBalance>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountBalance {
    pub account: String,
    pub currency: String,
    /// Balance on the account's normal side, in minor units.
    pub balance_minor: i64,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub version: i64,
}

/// Balances of one seller's accounts.
#[utoipa::path(get, path = "/api/v1/sellers/{seller_id}/balances", tag = "ledger",
    params(("seller_id" = String, Path, min_length = 1, max_length = 64, pattern = r"^[^.\x00]+$",
        description = "Seller id: 1..=64 bytes, no '.'")),
    responses(
        (status = 200, description = "Balances", body = SellerBalances),
        (status = 400, description = "Bad seller id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role FINANCE", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn seller_balances(
    State(state): State<AppState>,
    principal: Principal,
    Path(seller_id): Path<String>,
) -> Result<axum::Json<SellerBalances>, ApiError> {
    principal.require(role::FINANCE)?;
    // NUL is refused: PostgreSQL text cannot store it (it was a 500).
    if seller_id.is_empty()
        || seller_id.len() > 64
        || seller_id.contains('.')
        || seller_id.contains('\0')
    {
        return Err(ApiError::validation("bad seller id"));
    }
    let cached = state
        .balance_cache
        .load(&seller_id)
        .await
        .unwrap_or_default();
    let (source, rows) = if cached.is_empty() {
        (
            "database",
            ledger::balances_of_owner(&state.pool, &seller_id).await?,
        )
    } else {
        ("cache", cached)
    };
    let credit_normal = &state.config.ledger.credit_normal_types;
    Ok(axum::Json(SellerBalances {
        seller_id,
        source: source.into(),
        accounts: rows
            .into_iter()
            .map(|r| view(r, credit_normal))
            .collect::<Result<_, _>>()?,
    }))
}

/// The balance signed by the account's normal side; checked, so a corrupt
/// row is a 500 naming it, never a wrapped number.
pub fn view(row: BalanceRow, credit_normal: &[String]) -> Result<AccountBalance, ApiError> {
    let kind = row.account_code.split('.').next().unwrap_or("");
    let balance = if credit_normal.iter().any(|t| t == kind) {
        row.credit_minor.checked_sub(row.debit_minor)
    } else {
        row.debit_minor.checked_sub(row.credit_minor)
    }
    .ok_or_else(|| ApiError::internal(format!("balance of {} overflows", row.account_code)))?;
    Ok(AccountBalance {
        account: row.account_code,
        currency: row.currency,
        balance_minor: balance,
        debit_minor: row.debit_minor,
        credit_minor: row.credit_minor,
        version: row.version,
    })
}
