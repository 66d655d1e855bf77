//! Redis read cache of account balances. Written only with a version check,
//! so a slow writer can never replace a newer balance with an older one.
//!
//! Each seller's hash carries a TTL (`redis.balance_ttl_secs`), renewed on
//! every write, so idle sellers leave Redis; a read of an expired seller
//! falls back to Postgres. A hash is only ever created whole: a writer that
//! finds it gone fills it with every account of the owner read from Postgres
//! (after its own commit, so nothing older than its rows), never with just
//! the accounts it touched; a reader therefore never sees half a seller.

use std::collections::BTreeSet;

use redis::aio::ConnectionManager;
use redis::Script;
use sqlx::PgPool;

use crate::config::RedisConfig;
use crate::kafka::Names;
use crate::store::ledger::{self, BalanceRow};

/// One account into an existing hash: -1 (nothing written) when the hash is
/// gone, 0 when the cached version is as new, 1 when written.
const SET_IF_NEWER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local written = 0
if (not current) or tonumber(cjson.decode(current)['version']) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  written = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return written
";

/// Every account of an owner at once (ARGV: ttl, then field/version/value
/// triples), each with the same version check.
const FILL: &str = r"
for i = 2, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(cjson.decode(current)['version']) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
";

#[derive(Clone)]
pub struct BalanceCache {
    redis: ConnectionManager,
    names: Names,
    pool: PgPool,
    ttl_secs: u64,
}

impl BalanceCache {
    pub fn new(
        redis: ConnectionManager,
        names: &Names,
        pool: PgPool,
        config: &RedisConfig,
    ) -> Self {
        BalanceCache {
            redis,
            names: names.clone(),
            pool,
            ttl_secs: config.balance_ttl_secs,
        }
    }

    fn key(&self, owner: &str) -> String {
        self.names.redis_key(&format!("balances:{owner}"))
    }

    /// Refreshes the cached rows (committed balances); an owner whose hash
    /// has expired is filled whole from Postgres.
    pub async fn store(&self, rows: &[BalanceRow]) -> anyhow::Result<()> {
        let script = Script::new(SET_IF_NEWER);
        let mut redis = self.redis.clone();
        let mut gone = BTreeSet::new();
        for row in rows {
            let owner = owner_of(&row.account_code);
            if gone.contains(owner) {
                continue;
            }
            let written: i32 = script
                .key(self.key(owner))
                .arg(&row.account_code)
                .arg(row.version)
                .arg(serde_json::to_string(row)?)
                .arg(self.ttl_secs)
                .invoke_async(&mut redis)
                .await?;
            if written < 0 {
                gone.insert(owner);
            }
        }
        for owner in &gone {
            self.fill(owner).await?;
        }
        Ok(())
    }

    /// Writes every account of `owner` from Postgres in one atomic call.
    async fn fill(&self, owner: &str) -> anyhow::Result<()> {
        let rows = ledger::balances_of_owner(&self.pool, owner).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let script = Script::new(FILL);
        let mut call = script.key(self.key(owner));
        call.arg(self.ttl_secs);
        for row in &rows {
            call.arg(&row.account_code)
                .arg(row.version)
                .arg(serde_json::to_string(row)?);
        }
        let mut redis = self.redis.clone();
        let _: i32 = call.invoke_async(&mut redis).await?;
        Ok(())
    }

    /// All cached accounts of `owner`; empty when nothing is cached.
    pub async fn load(&self, owner: &str) -> anyhow::Result<Vec<BalanceRow>> {
        let mut redis = self.redis.clone();
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(self.key(owner))
            .query_async(&mut redis)
            .await?;
        let mut rows: Vec<BalanceRow> = values
            .iter()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        rows.sort_by(|a, b| a.account_code.cmp(&b.account_code));
        Ok(rows)
    }
}

/// The owner part of an account code (`TYPE.owner...`).
fn owner_of(account_code: &str) -> &str {
    account_code.split('.').nth(1).unwrap_or("")
}
