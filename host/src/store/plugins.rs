//! plugins, plugin_activations and admin_audit: the component registry.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// NOTIFY channel on which activations are announced.
pub const CHANNEL: &str = "paynode_plugins";

#[derive(sqlx::FromRow, Serialize, Clone, Debug, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginRow {
    pub sha256: String,
    pub slot: String,
    pub name: String,
    pub version: String,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    pub id: i64,
    pub slot: String,
    pub sha256: String,
    #[schema(value_type = Object)]
    pub config: Value,
    /// The approved egress policy (`components::egress_policy`); None: the
    /// node config's `allow_hosts` apply.
    #[schema(value_type = Option<Object>)]
    pub egress: Option<Value>,
    pub action: String,
    pub activated_by: String,
    pub activated_at: DateTime<Utc>,
}

impl Activation {
    /// The guest-visible configuration as WIT wants it.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        config_pairs(&self.config)
    }
}

pub fn config_pairs(config: &Value) -> Vec<(String, String)> {
    let map: BTreeMap<String, Value> = serde_json::from_value(config.clone()).unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// A version to store: its bytes, what it says it is, who uploaded it and
/// the fixtures it passed (None: the node's own files, stored unchecked).
pub struct NewPlugin<'a> {
    pub sha256: &'a str,
    pub slot: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub bytes: &'a [u8],
    pub fixtures: Option<&'a Value>,
    pub uploaded_by: &'a str,
}

/// Stores a version and audits the upload in one transaction (an upload is
/// never stored unaudited). A sha already stored keeps its first row.
pub async fn insert(pool: &PgPool, plugin: &NewPlugin<'_>) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO plugins (sha256, slot, name, version, bytes, fixtures, uploaded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(plugin.sha256)
    .bind(plugin.slot)
    .bind(plugin.name)
    .bind(plugin.version)
    .bind(plugin.bytes)
    .bind(plugin.fixtures)
    .bind(plugin.uploaded_by)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "sha256": plugin.sha256, "name": plugin.name, "version": plugin.version,
        "fixtureFiles": plugin.fixtures.and_then(Value::as_array).map(Vec::len),
    });
    audit_in(&mut tx, plugin.uploaded_by, "push", plugin.slot, &details).await?;
    tx.commit().await
}

pub async fn bytes(pool: &PgPool, sha256: &str) -> sqlx::Result<Option<(String, Vec<u8>)>> {
    sqlx::query_as("SELECT slot, bytes FROM plugins WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

/// What an activation checks: the slot, the uploader and the stored fixtures.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct Gate {
    pub slot: String,
    pub uploaded_by: String,
    pub fixtures: Option<Value>,
}

pub async fn gate(pool: &PgPool, sha256: &str) -> sqlx::Result<Option<Gate>> {
    sqlx::query_as("SELECT slot, uploaded_by, fixtures FROM plugins WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<PluginRow>> {
    sqlx::query_as(
        "SELECT sha256, slot, name, version, uploaded_by, uploaded_at FROM plugins ORDER BY slot, uploaded_at",
    )
    .fetch_all(pool)
    .await
}

pub async fn active(pool: &PgPool) -> sqlx::Result<Vec<Activation>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (slot) id, slot, sha256, config, egress, action, activated_by, activated_at
         FROM plugin_activations ORDER BY slot, id DESC",
    )
    .fetch_all(pool)
    .await
}

/// One activation by id (an order's pinned adapter and its config).
pub async fn activation(pool: &PgPool, id: i64) -> sqlx::Result<Option<Activation>> {
    sqlx::query_as(
        "SELECT id, slot, sha256, config, egress, action, activated_by, activated_at
         FROM plugin_activations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Appends an activation and announces it, in one transaction.
pub async fn activate(
    pool: &PgPool,
    slot: &str,
    sha256: &str,
    config: &Value,
    egress: Option<&Value>,
    action: &str,
    actor: &str,
) -> sqlx::Result<Activation> {
    let mut tx = pool.begin().await?;
    let activation: Activation = sqlx::query_as(
        "INSERT INTO plugin_activations (slot, sha256, config, egress, action, activated_by) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, slot, sha256, config, egress, action, activated_by, activated_at",
    )
    .bind(slot)
    .bind(sha256)
    .bind(config)
    .bind(egress)
    .bind(action)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    let details = serde_json::json!({ "sha256": sha256, "config": config, "egress": egress });
    announce(&mut tx, actor, action, slot, &details).await?;
    tx.commit().await?;
    Ok(activation)
}

/// The shadow candidate of a slot (the latest row; `sha256` None = off).
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct Shadow {
    pub id: i64,
    pub slot: String,
    pub sha256: Option<String>,
    pub config: Value,
}

pub async fn shadows(pool: &PgPool) -> sqlx::Result<Vec<Shadow>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (slot) id, slot, sha256, config FROM plugin_shadows ORDER BY slot, id DESC",
    )
    .fetch_all(pool)
    .await
}

/// Sets (or with `None` clears) a slot's shadow and announces it, audited.
pub async fn set_shadow(
    pool: &PgPool,
    slot: &str,
    sha256: Option<&str>,
    config: &Value,
    actor: &str,
) -> sqlx::Result<Shadow> {
    let mut tx = pool.begin().await?;
    let shadow: Shadow = sqlx::query_as(
        "INSERT INTO plugin_shadows (slot, sha256, config, set_by) VALUES ($1, $2, $3, $4)
         RETURNING id, slot, sha256, config",
    )
    .bind(slot)
    .bind(sha256)
    .bind(config)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    let details = serde_json::json!({ "sha256": sha256, "config": config });
    announce(&mut tx, actor, "shadow", slot, &details).await?;
    tx.commit().await?;
    Ok(shadow)
}

/// The activation before the current one whose sha differs (rollback target).
pub async fn previous(pool: &PgPool, slot: &str) -> sqlx::Result<Option<Activation>> {
    sqlx::query_as(
        "WITH current AS (SELECT sha256 FROM plugin_activations WHERE slot = $1 ORDER BY id DESC LIMIT 1)
         SELECT id, slot, sha256, config, egress, action, activated_by, activated_at FROM plugin_activations
         WHERE slot = $1 AND sha256 <> (SELECT sha256 FROM current) ORDER BY id DESC LIMIT 1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
}

pub async fn audit(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target: &str,
    details: &Value,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    audit_in(&mut tx, actor, action, target, details).await?;
    tx.commit().await
}

/// Audits a registry change and tells every node (NOTIFY is delivered at
/// commit, so nodes never see a change that rolled back).
async fn announce(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    slot: &str,
    details: &Value,
) -> sqlx::Result<()> {
    audit_in(tx, actor, action, slot, details).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn audit_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    target: &str,
    details: &Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO admin_audit (actor, action, target, details) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(details)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
