//! Postgres access. Every write is idempotent (deterministic ids,
//! `ON CONFLICT`, guarded status transitions) so a redelivered message
//! changes nothing. Migrations live in `host/migrations`.

pub mod attempts;
pub mod intake;
pub mod ledger;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod plugins;
pub mod reconcile;
pub mod reconcile_sums;
pub mod refunds;
pub mod reviews;
pub mod status;
pub mod transactional_ids;

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseConfig;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .url
        .parse()
        .context("database.url is not a Postgres URL")?;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to Postgres")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")
}
