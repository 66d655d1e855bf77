//! Node configuration: a TOML file plus `PAYNODE_*` environment overrides
//! (`__` separates levels, e.g. `PAYNODE_KAFKA__BROKERS`), validated at start.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
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
    pub ops: OpsConfig,
    pub security: SecurityConfig,
    pub plugins: PluginsConfig,
    /// Values the host substitutes for `{{secret:NAME}}` placeholders in
    /// adapter HTTP headers. Never logged, never given to a guest.
    #[serde(skip_serializing)]
    pub secrets: BTreeMap<String, SecretString>,
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
    /// Cap on one payment order's amount, in minor units.
    pub max_order_amount_minor: i64,
    /// Cap on a payment's total, in minor units.
    pub max_payment_amount_minor: i64,
}

/// Default cap on an order and on a payment: 10^12 minor units, i.e. 10
/// billion in a 2-decimal currency (EUR), about 6 billion EUR in yen, 3
/// billion in a 3-decimal currency (KWD): far above any real payment, yet
/// an i64 balance takes ~9.2 million capped payments to overflow, so an
/// attacker cannot wrap a balance with a handful of requests.
pub const DEFAULT_MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            max_payment_orders: 50,
            max_order_amount_minor: DEFAULT_MAX_AMOUNT_MINOR,
            max_payment_amount_minor: DEFAULT_MAX_AMOUNT_MINOR,
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
    /// How long an Idempotency-Key replays its first response. Past it the
    /// key is forgotten: a request carrying it again is a new request (its
    /// `orderId` still cannot pay twice: `(client, orderId)` is unique for
    /// good, so a late retry of the same order gets 409, never a second
    /// payment). The payment rows themselves are kept.
    pub idempotency_retention_secs: u64,
    /// Expired keys deleted per statement by the purge task, so one purge
    /// never holds a long transaction or a large lock set.
    pub idempotency_purge_batch: i64,
    /// How often the purge task runs (one node at a time).
    pub idempotency_purge_interval_ms: u64,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            group_max_requests: 64,
            group_max_wait_us: 2_000,
            writers: 2,
            queue_capacity: 1_024,
            group_timeout_ms: 5_000,
            idempotency_retention_secs: 24 * 3_600,
            idempotency_purge_batch: 1_000,
            idempotency_purge_interval_ms: 60_000,
        }
    }
}

/// Debug redacts the URL's password (see [`RedactedUrl`]).
#[derive(Clone, Serialize, Deserialize)]
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

/// Debug redacts the URL's password (see [`RedactedUrl`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(skip_serializing)]
    pub url: String,
    /// TTL of a seller's cached balance hash, renewed on every write. A
    /// seller without activity drops out of Redis; a read then falls back to
    /// Postgres (the source of truth), so the TTL bounds memory, not truth.
    pub balance_ttl_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            balance_ttl_secs: 24 * 3_600,
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
    pub sasl_password: Option<SecretString>,
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
    /// Dev mode (also `--dev`): the built-in HS256 dev secret may be used,
    /// JWKS may be fetched over plain http and the simulator PSP may run.
    /// Off by default so a forgotten setting fails closed.
    pub dev: bool,
    /// HS256 shared secret for locally minted tokens (`paynode token`).
    /// Unset: only dev mode may verify HS256 tokens (with the dev secret).
    #[serde(skip_serializing)]
    pub hs256_secret: Option<SecretString>,
    /// Accept HS256 tokens. Unset: on without `jwks_url`, off with it, so
    /// adding an identity provider never leaves a shared secret in force.
    pub allow_hs256: Option<bool>,
    /// Issuer of HS256 tokens (minted and verified) when `jwks_url` is also
    /// configured: required then and distinct from `issuer`, so a locally
    /// minted token can never pass for one of the identity provider.
    pub hs256_issuer: Option<String>,
    /// JWKS endpoint of the identity provider (e.g. Keycloak's
    /// `.../protocol/openid-connect/certs`); enables RS256/ES256 tokens.
    /// `https` only outside dev mode.
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
    /// Longest lifetime (`exp - iat`) a token may claim; a token without
    /// `iat` or past this is refused. A stolen token is then useful for at
    /// most this long, whatever its issuer put in `exp`.
    pub max_token_lifetime_secs: u64,
}

/// The HS256 secret dev mode uses when none is configured.
pub const DEV_HS256_SECRET: &str = "paynode-dev-secret-change-me";

/// Secrets published in this repository (defaults, compose, examples):
/// anyone can mint tokens with them, so only dev mode accepts them.
const KNOWN_DEV_SECRETS: &[&str] = &[DEV_HS256_SECRET, "compose-dev-secret-change-me"];

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits).
const MIN_HS256_SECRET_BYTES: usize = 32;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            dev: false,
            hs256_secret: None,
            allow_hs256: None,
            hs256_issuer: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 10,
            issuer: "paynode-dev".into(),
            audience: "paynode".into(),
            leeway_secs: 30,
            max_token_lifetime_secs: 24 * 3_600,
        }
    }
}

impl AuthConfig {
    /// Whether HS256 tokens are verified (see `allow_hs256`).
    pub fn hs256_enabled(&self) -> bool {
        self.allow_hs256.unwrap_or(self.jwks_url.is_none())
    }

    /// The configured HS256 secret, or the dev secret in dev mode.
    pub fn hs256_key(&self) -> Option<&str> {
        match &self.hs256_secret {
            Some(secret) => Some(secret.expose_secret()),
            None => self.dev.then_some(DEV_HS256_SECRET),
        }
    }

    /// The `iss` of HS256 tokens.
    pub fn hs256_token_issuer(&self) -> &str {
        self.hs256_issuer.as_deref().unwrap_or(&self.issuer)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.jwks_min_refresh_secs < 1 {
            bail!("auth.jwks_min_refresh_secs must be >= 1");
        }
        if self.max_token_lifetime_secs < 1 {
            bail!("auth.max_token_lifetime_secs must be >= 1");
        }
        if let Some(url) = &self.jwks_url {
            let parsed = reqwest::Url::parse(url).context("auth.jwks_url")?;
            if parsed.scheme() != "https" && !(self.dev && parsed.scheme() == "http") {
                bail!("auth.jwks_url must be https (plain http only in dev mode)");
            }
        }
        if !self.hs256_enabled() {
            if self.jwks_url.is_none() {
                bail!(
                    "auth.allow_hs256 = false needs auth.jwks_url, or no token could be verified"
                );
            }
            return Ok(());
        }
        self.validate_hs256_secret()?;
        if self.jwks_url.is_some() {
            match &self.hs256_issuer {
                Some(issuer) if *issuer != self.issuer => {}
                _ => bail!(
                    "auth.allow_hs256 with auth.jwks_url needs auth.hs256_issuer, distinct from auth.issuer"
                ),
            }
        }
        Ok(())
    }

    fn validate_hs256_secret(&self) -> anyhow::Result<()> {
        let Some(secret) = self.hs256_key() else {
            bail!(
                "auth.hs256_secret is not set: set one (PAYNODE_AUTH__HS256_SECRET, at least \
                 {MIN_HS256_SECRET_BYTES} bytes), or use auth.jwks_url without HS256, or run in \
                 dev mode (--dev, auth.dev = true)"
            );
        };
        if self.dev {
            return Ok(());
        }
        if KNOWN_DEV_SECRETS.contains(&secret) {
            bail!("auth.hs256_secret is a published dev value: anyone could mint tokens with it; set a secret of your own (or run in dev mode)");
        }
        if secret.len() < MIN_HS256_SECRET_BYTES {
            bail!("auth.hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes");
        }
        Ok(())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &RedactedUrl(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &RedactedUrl(&self.url))
            .field("balance_ttl_secs", &self.balance_ttl_secs)
            .finish()
    }
}

/// A connection URL as it may be logged: the password (userinfo or a
/// `password` query parameter) replaced by `***`. A URL that does not parse
/// is not shown at all, since where its password sits is unknown.
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut url) = reqwest::Url::parse(self.0) else {
            return f.write_str("<unparseable url>");
        };
        if url.password().is_some() {
            // Only fails for URLs that cannot have a password.
            let _ = url.set_password(Some("***"));
        }
        if url.query_pairs().any(|(key, _)| key == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key == "password" {
                        "***".into()
                    } else {
                        value
                    };
                    (key.into_owned(), value.into_owned())
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.write_str(url.as_str())
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
    /// How long an attempt's claim holds off a second holder (after a
    /// rebalance). Must outlast the holder's longest possible charge plus
    /// its status checks, so a holder that is still mid-charge is never
    /// second-guessed by a `status` query.
    pub claim_lease_ms: u64,
    /// The review janitor's re-checks of an order in REQUIRES_REVIEW, in
    /// seconds after the previous one; when spent, an admin decides.
    pub review_schedule_secs: Vec<u64>,
    /// How often the janitor looks for due re-checks.
    pub review_poll_ms: u64,
    /// Let the PSP stage run the simulator adapter outside dev mode (a load
    /// test or staging cluster). The simulator approves charges without
    /// moving money, so production refuses it by default.
    pub allow_simulator: bool,
}

impl Default for PspConfig {
    fn default() -> Self {
        PspConfig {
            status_checks: 3,
            status_check_delay_ms: 200,
            claim_lease_ms: 150_000,
            review_schedule_secs: vec![60, 300, 1_800, 7_200, 86_400],
            review_poll_ms: 5_000,
            allow_simulator: false,
        }
    }
}

impl PspConfig {
    /// The longest one executor call of an order can take: the charge and
    /// every status check, each bounded by the adapter's wall-clock cap.
    pub fn longest_call(&self, adapter: &SlotConfig) -> std::time::Duration {
        let calls = 1 + u64::from(self.status_checks);
        std::time::Duration::from_millis(
            calls * adapter.wall_ms + u64::from(self.status_checks) * self.status_check_delay_ms,
        )
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

/// Rules for changing the registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Four eyes: an activation must be made by someone other than the
    /// uploader of the version (the token's subject; `--actor` for the CLI).
    pub require_approval: bool,
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
    /// Where an adapter may go through the `http` import: `host:port` or
    /// `https://host:port`; plain http only as `http://host:port`. DNS names
    /// leading to internal addresses are refused unless the IP is listed
    /// literally (see `components::egress`).
    ///
    /// Only for activations without an approved egress policy (the node's
    /// own bootstrap, older activations): an activation's policy replaces it.
    pub allow_hosts: Vec<String>,
    /// The operator's deny-list (same entry format): refused whatever an
    /// activation's egress policy allows. Config can narrow a policy, never
    /// widen it.
    pub deny_hosts: Vec<String>,
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
            deny_hosts: Vec::new(),
            http_timeout_ms: 10_000,
            http_max_response_bytes: 1024 * 1024,
            max_delay_ms: 5_000,
            max_output_bytes: 256 * 1024,
        }
    }
}

/// The operations listener: `/metrics` and the detailed `/health/ready` on
/// an address of their own (a pod port Prometheus and the kubelet reach, not
/// the public ingress). When set, the public listener serves neither.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// e.g. `0.0.0.0:9090`; unset: everything on `http.listen`.
    pub listen: Option<String>,
}

/// Transport security of the node's own connections (Kafka, Postgres,
/// Redis). Outside dev mode a plaintext connection is logged as a warning
/// at start; with `require_tls` the node refuses to start instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub require_tls: bool,
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
    /// Defaults, then the TOML file (if any), then `PAYNODE_*` variables;
    /// `dev` (the `--dev` flag) turns dev mode on whatever they say.
    pub fn load(file: Option<&Path>, dev: bool) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let mut config: Config = figment
            // Only `SECTION__KEY` variables are config; PAYNODE_LOG,
            // PAYNODE_CONFIG and tool variables are not.
            .merge(
                Env::prefixed("PAYNODE_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .context("invalid configuration")?;
        config.auth.dev |= dev;
        config.validate_except_auth()?;
        Ok(config)
    }

    /// Everything a node needs to serve, tokens included.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_except_auth()?;
        self.auth.validate()
    }

    /// What every command needs. Offline commands (`plugin test`, `migrate`,
    /// `dlq`, `reconcile`) verify no token, so a missing HS256 secret must not
    /// stop them; `serve` and `token` check `auth` as well.
    fn validate_except_auth(&self) -> anyhow::Result<()> {
        if self.kafka.batch_max_records == 0 || self.kafka.batch_max_records > 10_000 {
            bail!("kafka.batch_max_records must be in 1..=10000");
        }
        if self.http.max_order_amount_minor < 1 || self.http.max_payment_amount_minor < 1 {
            bail!("http.max_order_amount_minor and http.max_payment_amount_minor must be >= 1");
        }
        if self.kafka.partitions < 1 {
            bail!("kafka.partitions must be >= 1");
        }
        self.validate_intake()?;
        if self.retry.max_attempts == 0 || self.retry.max_attempts > 20 {
            bail!("retry.max_attempts must be in 1..=20");
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
        self.validate_psp_limits()
    }

    /// The PSP limits must nest: one HTTP request fits in the wall-clock cap
    /// (else the cap, not the request timeout, ends a call whose request is
    /// at the PSP), and the claim lease outlasts the longest call.
    fn validate_psp_limits(&self) -> anyhow::Result<()> {
        let adapter = &self.components.psp_adapter;
        if adapter.http_timeout_ms >= adapter.wall_ms {
            bail!(
                "components.psp_adapter.http_timeout_ms ({}) must be below wall_ms ({})",
                adapter.http_timeout_ms,
                adapter.wall_ms
            );
        }
        let longest = self.psp.longest_call(adapter);
        if u128::from(self.psp.claim_lease_ms) <= longest.as_millis() {
            bail!(
                "psp.claim_lease_ms ({}) must exceed the longest PSP call ({} ms: charge + {} status checks at wall_ms {})",
                self.psp.claim_lease_ms,
                longest.as_millis(),
                self.psp.status_checks,
                adapter.wall_ms
            );
        }
        if self.psp.review_schedule_secs.contains(&0) {
            bail!("psp.review_schedule_secs entries must be > 0");
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
        if intake.idempotency_retention_secs == 0
            || intake.idempotency_purge_batch < 1
            || intake.idempotency_purge_interval_ms == 0
        {
            bail!("intake.idempotency_retention_secs, idempotency_purge_batch and idempotency_purge_interval_ms must be >= 1");
        }
        if self.redis.balance_ttl_secs == 0 {
            bail!("redis.balance_ttl_secs must be >= 1");
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

    fn dev() -> Config {
        let mut config = Config::default();
        config.auth.dev = true;
        config
    }

    fn refusal(config: &Config) -> String {
        format!("{:#}", config.validate().expect_err("config accepted"))
    }

    #[test]
    fn dev_defaults_are_valid() {
        dev().validate().unwrap();
        assert_eq!(dev().auth.hs256_key(), Some(DEV_HS256_SECRET));
    }

    #[test]
    fn hs256_needs_a_secret_of_its_own_outside_dev_mode() {
        // The defaults once verified tokens with the published dev secret.
        assert!(refusal(&Config::default()).contains("auth.hs256_secret is not set"));
        let mut config = Config::default();
        for published in KNOWN_DEV_SECRETS {
            config.auth.hs256_secret = Some((*published).into());
            assert!(refusal(&config).contains("published dev value"));
        }
        config.auth.hs256_secret = Some("short-but-not-published".into());
        assert!(refusal(&config).contains("at least 32 bytes"));
        config.auth.hs256_secret = Some("a-secret-of-our-own-0123456789abcdef".into());
        config.validate().unwrap();
    }

    #[test]
    fn jwks_turns_hs256_off_unless_it_has_its_own_issuer() {
        let mut config = Config::default();
        config.auth.jwks_url = Some("https://idp.example/certs".into());
        config.validate().unwrap();
        assert!(!config.auth.hs256_enabled());

        config.auth.allow_hs256 = Some(true);
        config.auth.hs256_secret = Some("a-secret-of-our-own-0123456789abcdef".into());
        assert!(refusal(&config).contains("auth.hs256_issuer"));
        config.auth.hs256_issuer = Some(config.auth.issuer.clone());
        assert!(refusal(&config).contains("auth.hs256_issuer"));
        config.auth.hs256_issuer = Some("paynode-local".into());
        config.validate().unwrap();
        assert_eq!(config.auth.hs256_token_issuer(), "paynode-local");
    }

    #[test]
    fn jwks_needs_https_and_a_refresh_floor() {
        let mut config = Config::default();
        config.auth.jwks_url = Some("http://idp.example/certs".into());
        assert!(refusal(&config).contains("https"));
        config.auth.dev = true;
        config.validate().unwrap();
        config.auth.jwks_min_refresh_secs = 0;
        assert!(refusal(&config).contains("jwks_min_refresh_secs"));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config = dev();
        config.auth.hs256_secret = Some("hs256-secret-value-0123456789abcdef".into());
        config.database.url = "postgres://paynode:db-pass-value@pg:5432/paynode".into();
        config.redis.url = "redis://:redis-pass-value@redis:6379".into();
        config.kafka.sasl_password = Some("sasl-pass-value".into());
        config
            .secrets
            .insert("psp_api_key".into(), "sk_live_value".into());
        let debug = format!("{config:?}");
        for secret in [
            "hs256-secret-value",
            "db-pass-value",
            "redis-pass-value",
            "sasl-pass-value",
            "sk_live_value",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // What is not secret stays readable.
        assert!(
            debug.contains("postgres://paynode:***@pg:5432/paynode"),
            "{debug}"
        );
        assert!(debug.contains("psp_api_key"), "{debug}");
        let query = RedactedUrl("postgres://pg/paynode?user=u&password=p-in-query").to_string();
        assert_eq!(query, "postgres://pg/paynode?user=u&password=***");
    }

    #[test]
    fn psp_limits_must_nest() {
        let mut config = Config::default();
        config.components.psp_adapter.http_timeout_ms = config.components.psp_adapter.wall_ms;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.psp.claim_lease_ms = 1_000;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("claim_lease_ms"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[kafka]\nbrokerz = \"x\"\n"));
        assert!(figment.extract::<Config>().is_err());
    }
}
