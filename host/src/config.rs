//! Node configuration: a TOML file plus `PAYNODE_*` environment overrides
//! (`__` separates levels, e.g. `PAYNODE_KAFKA__BROKERS`), validated at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub intake: IntakeConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub auth: AuthConfig,
    pub stages: StagesConfig,
    pub outbox: OutboxConfig,
    pub psp: PspConfig,
    pub retry: RetryConfig,
    pub ledger: LedgerConfig,
    pub components: ComponentsConfig,
    /// Values the host substitutes for `{{secret:NAME}}` placeholders in
    /// adapter HTTP headers. Never logged, never given to a guest.
    #[serde(skip_serializing)]
    pub secrets: BTreeMap<String, String>,
    pub failpoints: Failpoints,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Bodies above this are refused with 413 before parsing.
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Bound on payment orders in one payment (one per seller).
    pub max_payment_orders: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            max_payment_orders: 50,
        }
    }
}

/// Group commit of `POST /api/v1/payments`: concurrent requests share one
/// database transaction (one durable commit) instead of one each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeConfig {
    /// Most requests one group transaction carries. Each holds one advisory
    /// lock until the commit, so this also bounds the lock-table slots a
    /// group takes (Postgres has `max_locks_per_transaction` × connections).
    pub group_max_requests: usize,
    /// Longest a group keeps collecting queued requests. A group never waits
    /// for requests that are not queued yet: it closes as soon as the queue
    /// is empty, so a lone request is not held back.
    pub group_max_wait_us: u64,
    /// Group transactions in flight at once, each on its own connection: one
    /// group's statements run while another waits for its commit to be durable.
    pub writers: usize,
    /// Requests waiting for a group; past this a request is refused with 503.
    pub queue_capacity: usize,
    /// A group transaction still open after this long is rolled back and its
    /// requests answered 503 (below `http.request_timeout_ms`, so they hear
    /// it from the group, not from the HTTP deadline).
    pub group_timeout_ms: u64,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            group_max_requests: 64,
            group_max_wait_us: 2_000,
            writers: 2,
            queue_capacity: 1_024,
            group_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(skip_serializing)]
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/paynode".into(),
            max_connections: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(skip_serializing)]
    pub url: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Prefix for topics, consumer groups, transactional ids and Redis keys,
    /// so several nodes or tests share one broker without seeing each other.
    pub prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    pub security_protocol: String,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    #[serde(skip_serializing)]
    pub sasl_password: Option<String>,
    pub ssl_ca_location: Option<PathBuf>,
    /// A Kafka transaction is closed after this many records ...
    pub batch_max_records: usize,
    /// ... or after this long, whichever comes first.
    pub batch_max_wait_ms: u64,
    pub transaction_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            prefix: String::new(),
            partitions: 4,
            replication_factor: 1,
            security_protocol: "PLAINTEXT".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            batch_max_records: 500,
            batch_max_wait_ms: 100,
            transaction_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret for locally minted tokens (`paynode token`).
    #[serde(skip_serializing)]
    pub hs256_secret: String,
    /// Accept HS256 tokens signed with `hs256_secret` (dev); production
    /// turns this off and relies on `jwks_url` only.
    pub allow_hs256: bool,
    /// JWKS endpoint of the identity provider (e.g. Keycloak's
    /// `.../protocol/openid-connect/certs`); enables RS256/ES256 tokens.
    pub jwks_url: Option<String>,
    /// Keys are re-fetched when older than this.
    pub jwks_refresh_secs: u64,
    /// Minimum time between two JWKS fetches (a token with an unknown `kid`
    /// triggers one), so bogus tokens cannot hammer the identity provider.
    pub jwks_min_refresh_secs: u64,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: "paynode-dev-secret-change-me".into(),
            allow_hs256: true,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 10,
            issuer: "paynode-dev".into(),
            audience: "paynode".into(),
            leeway_secs: 30,
        }
    }
}

/// Workers per stage; 0 disables a stage on this node so stages can be
/// scaled as separate deployments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagesConfig {
    pub http: bool,
    pub outbox_dispatcher: usize,
    pub payment_order_enqueuer: usize,
    pub psp_call_executor: usize,
    pub psp_result_applier: usize,
    pub retry_scheduler: usize,
    pub ledger_request_dispatcher: usize,
    pub ledger_recording_consumer: usize,
    pub account_balance_consumer: usize,
    /// Messages of different keys handled at once inside one batch.
    pub per_batch_concurrency: usize,
    /// A stable id for this node's transactional ids (e.g. the pod ordinal).
    pub instance_id: String,
}

impl Default for StagesConfig {
    fn default() -> Self {
        StagesConfig {
            http: true,
            outbox_dispatcher: 1,
            payment_order_enqueuer: 1,
            psp_call_executor: 1,
            psp_result_applier: 1,
            retry_scheduler: 1,
            ledger_request_dispatcher: 1,
            ledger_recording_consumer: 1,
            account_balance_consumer: 1,
            per_batch_concurrency: 64,
            instance_id: "0".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    pub batch_size: i64,
    pub poll_interval_ms: u64,
    /// How far ahead 30-minute partitions are created.
    pub partitions_ahead_minutes: u64,
    /// Drained partitions older than this are dropped.
    pub keep_drained_minutes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch_size: 500,
            poll_interval_ms: 20,
            partitions_ahead_minutes: 180,
            keep_drained_minutes: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PspConfig {
    /// `status` queries made to settle an unknown outcome before REQUIRES_REVIEW.
    pub status_checks: u32,
    pub status_check_delay_ms: u64,
}

impl Default for PspConfig {
    fn default() -> Self {
        PspConfig {
            status_checks: 3,
            status_check_delay_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Hard cap on PSP calls per order, whatever the policy says (seed: 1 + 5 retries).
    pub max_attempts: u32,
    /// Delays a policy asks for are clamped to this.
    pub max_delay_ms: u64,
    pub poll_interval_ms: u64,
    pub batch_size: usize,
    /// An item claimed by the scheduler returns to the queue if not
    /// acknowledged within this lease.
    pub lease_ms: u64,
    /// The sweeper re-adds retries Redis lost if they are this overdue.
    pub sweep_grace_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 6,
            max_delay_ms: 120_000,
            poll_interval_ms: 100,
            batch_size: 500,
            lease_ms: 30_000,
            sweep_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Account types whose normal balance is a credit (liabilities, revenue);
    /// balances of other types are shown debit-positive.
    pub credit_normal_types: Vec<String>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            credit_normal_types: vec!["AUTH_LIABILITY".into(), "MERCHANT_ACCOUNT".into()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentsConfig {
    /// Where `cargo xtask components` writes `.wasm` files.
    pub dir: PathBuf,
    /// Precompiled artifacts, keyed by sha256 and engine compatibility.
    pub cache_dir: PathBuf,
    /// How often a node re-reads active versions if NOTIFY was missed.
    pub poll_interval_ms: u64,
    /// Dev only: watch `dir` and hot-reload changed default components.
    pub watch: bool,
    pub psp_adapter: SlotConfig,
    pub retry_policy: SlotConfig,
    pub posting_rules: SlotConfig,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            dir: PathBuf::from("target/components"),
            cache_dir: PathBuf::from("target/component-cache"),
            poll_interval_ms: 1_000,
            watch: false,
            psp_adapter: SlotConfig {
                default_component: "psp-simulator".into(),
                config: BTreeMap::from([("scenario".into(), "NORMAL".into())]),
                wall_ms: 30_000,
                ..SlotConfig::default()
            },
            retry_policy: SlotConfig {
                default_component: "retry-equal-jitter".into(),
                ..SlotConfig::default()
            },
            posting_rules: SlotConfig {
                default_component: "ledger-marketplace".into(),
                ..SlotConfig::default()
            },
        }
    }
}

/// Host-side policy of one component slot. Guests see only `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlotConfig {
    /// Component (file stem in `components.dir`) activated when the slot is empty.
    pub default_component: String,
    /// Guest configuration used with the default component.
    pub config: BTreeMap<String, String>,
    /// CPU budget per call in fuel units (≈ wasm instructions). Time spent
    /// awaiting host calls does not consume fuel.
    pub fuel: u64,
    pub memory_bytes: usize,
    /// Wall-clock cap for a whole call, host calls included.
    pub wall_ms: u64,
    /// host:port pairs an adapter may reach through the `http` import.
    pub allow_hosts: Vec<String>,
    pub http_timeout_ms: u64,
    pub http_max_response_bytes: usize,
    /// Cap on a `delay` request (simulated latency).
    pub max_delay_ms: u32,
    /// Cap on the JSON size of a call's result.
    pub max_output_bytes: usize,
}

impl Default for SlotConfig {
    fn default() -> Self {
        SlotConfig {
            default_component: String::new(),
            config: BTreeMap::new(),
            fuel: 50_000_000,
            memory_bytes: 32 * 1024 * 1024,
            wall_ms: 5_000,
            allow_hosts: Vec::new(),
            http_timeout_ms: 10_000,
            http_max_response_bytes: 1024 * 1024,
            max_delay_ms: 5_000,
            max_output_bytes: 256 * 1024,
        }
    }
}

/// Test-only fault injection; all off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failpoints {
    /// Abort the PSP-call stage's next N transactions between produce and commit.
    pub psp_executor_abort_before_commit: u32,
    /// Hold each intake transaction this long after taking the idempotency lock.
    pub intake_hold_ms: u64,
}

impl Config {
    /// Defaults, then the TOML file (if any), then `PAYNODE_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            // Only `SECTION__KEY` variables are config; PAYNODE_LOG,
            // PAYNODE_CONFIG and tool variables are not.
            .merge(
                Env::prefixed("PAYNODE_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.kafka.batch_max_records == 0 || self.kafka.batch_max_records > 10_000 {
            bail!("kafka.batch_max_records must be in 1..=10000");
        }
        if self.kafka.partitions < 1 {
            bail!("kafka.partitions must be >= 1");
        }
        self.validate_intake()?;
        if self.retry.max_attempts == 0 || self.retry.max_attempts > 20 {
            bail!("retry.max_attempts must be in 1..=20");
        }
        if self.auth.allow_hs256 && self.auth.hs256_secret.len() < 16 {
            bail!("auth.hs256_secret must be at least 16 bytes (or set auth.allow_hs256 = false)");
        }
        if !self.auth.allow_hs256 && self.auth.jwks_url.is_none() {
            bail!("auth.allow_hs256 = false needs auth.jwks_url, or no token could be verified");
        }
        if !self
            .kafka
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            bail!("kafka.prefix may contain only [A-Za-z0-9._-]");
        }
        for (name, slot) in self.components.slots() {
            if slot.fuel == 0 || slot.memory_bytes < 1024 * 1024 || slot.wall_ms == 0 {
                bail!("components.{name}: fuel, memory_bytes (>= 1 MiB) and wall_ms must be set");
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_intake(&self) -> anyhow::Result<()> {
        let intake = &self.intake;
        if intake.group_max_requests == 0 || intake.group_max_requests > 1_000 {
            bail!("intake.group_max_requests must be in 1..=1000");
        }
        if intake.writers == 0 || intake.writers as u32 >= self.database.max_connections {
            bail!("intake.writers must be in 1..database.max_connections");
        }
        if intake.queue_capacity == 0 {
            bail!("intake.queue_capacity must be >= 1");
        }
        if intake.group_timeout_ms == 0 || intake.group_timeout_ms >= self.http.request_timeout_ms {
            bail!("intake.group_timeout_ms must be in 1..http.request_timeout_ms");
        }
        Ok(())
    }
}

impl ComponentsConfig {
    pub fn slots(&self) -> [(&'static str, &SlotConfig); 3] {
        [
            ("psp_adapter", &self.psp_adapter),
            ("retry_policy", &self.retry_policy),
            ("posting_rules", &self.posting_rules),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[kafka]\nbrokerz = \"x\"\n"));
        assert!(figment.extract::<Config>().is_err());
    }
}
