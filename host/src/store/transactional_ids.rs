//! kafka_transactional_ids: the generation of each producing worker's
//! transactional id, bumped once per life of the node, and how far earlier
//! generations are known to be fenced.

use sqlx::PgPool;

/// Starts a new generation of `base`; returns (new generation, highest
/// generation already fenced, -1 if none).
pub async fn next_generation(pool: &PgPool, base: &str) -> sqlx::Result<(i32, i32)> {
    sqlx::query_as(
        "INSERT INTO kafka_transactional_ids (base, generation) VALUES ($1, 0)
         ON CONFLICT (base) DO UPDATE SET generation = kafka_transactional_ids.generation + 1
         RETURNING generation, fenced",
    )
    .bind(base)
    .fetch_one(pool)
    .await
}

/// Records that every generation up to `fenced` has been re-initialised.
pub async fn mark_fenced(pool: &PgPool, base: &str, fenced: i32) -> sqlx::Result<()> {
    sqlx::query("UPDATE kafka_transactional_ids SET fenced = greatest(fenced, $2) WHERE base = $1")
        .bind(base)
        .bind(fenced)
        .execute(pool)
        .await?;
    Ok(())
}
