//! Redis read cache of account balances. Written only with a version check,
//! so a slow writer can never replace a newer balance with an older one.

use redis::aio::ConnectionManager;
use redis::Script;

use crate::kafka::Names;
use crate::store::ledger::BalanceRow;

const SET_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local version = tonumber(cjson.decode(current)['version'])
  if version >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

#[derive(Clone)]
pub struct BalanceCache {
    redis: ConnectionManager,
    names: Names,
}

impl BalanceCache {
    pub fn new(redis: ConnectionManager, names: &Names) -> Self {
        BalanceCache {
            redis,
            names: names.clone(),
        }
    }

    fn key(&self, owner: &str) -> String {
        self.names.redis_key(&format!("balances:{owner}"))
    }

    pub async fn store(&self, rows: &[BalanceRow]) -> anyhow::Result<()> {
        let script = Script::new(SET_IF_NEWER);
        let mut redis = self.redis.clone();
        for row in rows {
            let owner = row.account_code.split('.').nth(1).unwrap_or("");
            let _: i32 = script
                .key(self.key(owner))
                .arg(&row.account_code)
                .arg(row.version)
                .arg(serde_json::to_string(row)?)
                .invoke_async(&mut redis)
                .await?;
        }
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
