//! The component registry: content-addressed versions in Postgres, the
//! active version per slot held in an `ArcSwap`, and hot swap driven by
//! `LISTEN/NOTIFY` with a polling fallback. A call clones the `Arc` of the
//! version it started with, so in-flight calls finish on the old version.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::egress_policy::{Egress, EgressPolicy};
use super::harness::{self, FixtureFile};
use super::host_imports::HttpPolicy;
use super::runtime::{sha256_hex, CallEnv, Limits};
use super::{Loaded, PluginError, Runtime, Slot};
use crate::config::{Config, SlotConfig};
use crate::store::plugins::{self, Activation};

/// The version a slot runs now, with its guest configuration.
pub struct Active {
    pub loaded: Arc<Loaded>,
    pub config: Vec<(String, String)>,
    pub activation_id: i64,
    /// The egress policy approved with the activation (adapters).
    pub egress: Arc<Egress>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    pool: PgPool,
    config: Arc<Config>,
    slots: [ArcSwapOption<Active>; 3],
    /// Shadow candidates (posting rules only): run beside the active
    /// version, diffed and counted, never applied.
    shadows: [ArcSwapOption<Active>; 3],
    /// Every version loaded so far, by sha (orders pin adapter versions).
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Activations that orders are pinned to, by id (they never change).
    activations: Mutex<HashMap<i64, Arc<Active>>>,
    http_client: reqwest::Client,
    /// Shared once, not copied per call.
    secrets: Arc<BTreeMap<String, secrecy::SecretString>>,
    /// Adapter HTTP requests refused by the allow-list.
    pub refused_requests: Arc<AtomicU64>,
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::PspAdapter => 0,
        Slot::RetryPolicy => 1,
        Slot::PostingRules => 2,
    }
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>, pool: PgPool, config: Arc<Config>) -> Arc<Registry> {
        let secrets = Arc::new(config.secrets.clone());
        Arc::new(Registry {
            runtime,
            pool,
            config,
            slots: Default::default(),
            shadows: Default::default(),
            loaded: Mutex::new(HashMap::new()),
            activations: Mutex::new(HashMap::new()),
            http_client: super::egress::egress_client(),
            refused_requests: Arc::new(AtomicU64::new(0)),
            secrets,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn slot_config(&self, slot: Slot) -> &SlotConfig {
        match slot {
            Slot::PspAdapter => &self.config.components.psp_adapter,
            Slot::RetryPolicy => &self.config.components.retry_policy,
            Slot::PostingRules => &self.config.components.posting_rules,
        }
    }

    /// Limits and host policy for one call in `slot` (an adapter call gets
    /// the node config's fallback egress; see [`Registry::adapter_env`]).
    pub fn env(&self, slot: Slot, trace_id: &str) -> CallEnv {
        let fallback = Arc::new(self.egress_of(slot, None));
        self.env_with(slot, trace_id, fallback)
    }

    /// Limits and host policy for one call of an adapter activation: its
    /// approved egress policy goes with it.
    pub fn adapter_env(&self, active: &Active, trace_id: &str) -> CallEnv {
        self.env_with(Slot::PspAdapter, trace_id, active.egress.clone())
    }

    fn env_with(&self, slot: Slot, trace_id: &str, egress: Arc<Egress>) -> CallEnv {
        let slot_config = self.slot_config(slot);
        let http = (slot == Slot::PspAdapter).then(|| HttpPolicy {
            client: self.http_client.clone(),
            egress,
            timeout: Duration::from_millis(slot_config.http_timeout_ms),
            max_response_bytes: slot_config.http_max_response_bytes,
            secrets: self.secrets.clone(),
            fake_secrets: false,
            refused: self.refused_requests.clone(),
        });
        CallEnv {
            limits: Limits::from_slot(slot_config),
            http,
            script: None,
            trace_id: trace_id.to_string(),
        }
    }

    /// The egress an activation's stored policy allows on this node. A
    /// stored policy that no longer passes the checks allows nothing.
    fn egress_of(&self, slot: Slot, stored: Option<&serde_json::Value>) -> Egress {
        let slot_config = self.slot_config(slot);
        let Some(stored) = stored else {
            return Egress::node_config(&slot_config.allow_hosts, &slot_config.deny_hosts);
        };
        let approved = serde_json::from_value::<EgressPolicy>(stored.clone())
            .map_err(|e| e.to_string())
            .and_then(|policy| Egress::approved(&policy, &slot_config.deny_hosts));
        approved.unwrap_or_else(|error| {
            tracing::error!(%slot, %error, "stored egress policy refused; the adapter may reach nothing");
            Egress::nothing()
        })
    }

    fn active_of(&self, slot: Slot, loaded: Arc<Loaded>, activation: &Activation) -> Active {
        Active {
            loaded,
            config: activation.config_pairs(),
            activation_id: activation.id,
            egress: Arc::new(self.egress_of(slot, activation.egress.as_ref())),
        }
    }

    /// The active version of `slot`.
    pub fn active(&self, slot: Slot) -> Result<Arc<Active>, PluginError> {
        self.slots[index(slot)]
            .load_full()
            .ok_or_else(|| PluginError::Unavailable(format!("no active {slot} component")))
    }

    /// The shadow candidate of `slot`, if one is set.
    pub fn shadow(&self, slot: Slot) -> Option<Arc<Active>> {
        self.shadows[index(slot)].load_full()
    }

    /// A specific activation: the component and the config it was approved
    /// with (an order's PSP calls all use the activation it was pinned to).
    pub async fn activation(&self, slot: Slot, id: i64) -> Result<Arc<Active>, PluginError> {
        if let Some(active) = self.slots[index(slot)]
            .load_full()
            .filter(|a| a.activation_id == id)
        {
            return Ok(active);
        }
        if let Some(cached) = self.activations.lock().unwrap().get(&id).cloned() {
            return Ok(cached);
        }
        let row = plugins::activation(&self.pool, id)
            .await
            .map_err(|e| PluginError::Unavailable(format!("registry read: {e}")))?
            .ok_or_else(|| PluginError::InvalidComponent(format!("no activation {id}")))?;
        if row.slot != slot.as_str() {
            return Err(PluginError::InvalidComponent(format!(
                "activation {id} is for {}",
                row.slot
            )));
        }
        let loaded = self.by_sha(slot, &row.sha256).await?;
        let active = Arc::new(self.active_of(slot, loaded, &row));
        self.activations.lock().unwrap().insert(id, active.clone());
        Ok(active)
    }

    /// A specific version (e.g. the adapter an order is pinned to).
    pub async fn by_sha(&self, slot: Slot, sha256: &str) -> Result<Arc<Loaded>, PluginError> {
        let cached = self.loaded.lock().unwrap().get(sha256).cloned();
        if let Some(loaded) = cached {
            if loaded.slot != slot {
                return Err(PluginError::InvalidComponent(format!(
                    "{sha256} is a {} component",
                    loaded.slot
                )));
            }
            return Ok(loaded);
        }
        let row = plugins::bytes(&self.pool, sha256)
            .await
            .map_err(|e| PluginError::Unavailable(format!("registry read: {e}")))?
            .ok_or_else(|| {
                PluginError::InvalidComponent(format!("no component with sha256 {sha256}"))
            })?;
        if row.0 != slot.as_str() {
            return Err(PluginError::InvalidComponent(format!(
                "{sha256} is a {} component",
                row.0
            )));
        }
        self.load_bytes(slot, &row.1).await
    }

    async fn load_bytes(&self, slot: Slot, bytes: &[u8]) -> Result<Arc<Loaded>, PluginError> {
        let loaded = Arc::new(self.runtime.load(slot, bytes).await?);
        self.remember(&loaded);
        Ok(loaded)
    }

    fn remember(&self, loaded: &Arc<Loaded>) {
        self.loaded
            .lock()
            .unwrap()
            .insert(loaded.sha256.clone(), loaded.clone());
    }

    /// Validates and stores an uploaded component: fixtures covering every
    /// export of the slot's world are required and must pass in the harness;
    /// they are stored with it, for every activation to re-run. Nothing of a
    /// refused version is kept (no cache file, no compiled copy in memory).
    pub async fn push(
        &self,
        slot: Slot,
        bytes: &[u8],
        fixtures: &[FixtureFile],
        actor: &str,
    ) -> Result<plugins::PluginRow, PushError> {
        harness::check_coverage(slot, fixtures).map_err(PushError::FixturesMissing)?;
        let loaded = self
            .runtime
            .load_candidate(slot, bytes)
            .await
            .map_err(PushError::Refused)?;
        harness::check_coverage_of(&loaded, fixtures).map_err(PushError::FixturesMissing)?;
        self.run_fixtures(&loaded, fixtures)
            .await
            .map_err(PushError::FixturesFailed)?;
        let fixtures = serde_json::to_value(fixtures).expect("fixtures serialize");
        self.store(loaded, bytes, Some(&fixtures), actor).await
    }

    /// Stores one of the node's own components (`components.dir`: the
    /// bootstrap of an empty slot, the dev folder watch) without fixtures.
    /// Such a version can be activated only by the node itself or a
    /// rollback, never by `activate`, which needs stored fixtures.
    pub async fn install(
        &self,
        slot: Slot,
        bytes: &[u8],
        actor: &str,
    ) -> Result<plugins::PluginRow, PushError> {
        let loaded = self
            .runtime
            .load_candidate(slot, bytes)
            .await
            .map_err(PushError::Refused)?;
        self.store(loaded, bytes, None, actor).await
    }

    async fn store(
        &self,
        loaded: Loaded,
        bytes: &[u8],
        fixtures: Option<&serde_json::Value>,
        actor: &str,
    ) -> Result<plugins::PluginRow, PushError> {
        let plugin = plugins::NewPlugin {
            sha256: &loaded.sha256,
            slot: loaded.slot.as_str(),
            name: &loaded.name,
            version: &loaded.version,
            bytes,
            fixtures,
            uploaded_by: actor,
        };
        plugins::insert(&self.pool, &plugin)
            .await
            .map_err(|e| PushError::Store(e.into()))?;
        let row = plugins::PluginRow {
            sha256: loaded.sha256.clone(),
            slot: loaded.slot.as_str().into(),
            name: loaded.name.clone(),
            version: loaded.version.clone(),
            uploaded_by: actor.into(),
            uploaded_at: chrono::Utc::now(),
        };
        self.runtime.keep(&loaded);
        self.remember(&Arc::new(loaded));
        Ok(row)
    }

    /// Runs fixture files in the harness; Err holds the failed reports.
    async fn run_fixtures(&self, loaded: &Loaded, files: &[FixtureFile]) -> Result<(), String> {
        // Fixtures name made-up hosts: the harness's open egress, fake
        // secrets (`plugin test --policy` checks a policy too).
        let env = harness::env(self.slot_config(loaded.slot), None)
            .expect("an open harness policy always builds");
        let mut failed = String::new();
        for file in files {
            let report = harness::run(&self.runtime, loaded, file, &env).await;
            if !report.passed() {
                failed.push_str(&report.render());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Activates a stored version on every node, after re-running the
    /// fixtures stored with it against the stored bytes (under this node's
    /// limits). With `plugins.require_approval` the activator must not be
    /// the uploader.
    pub async fn activate(
        &self,
        slot: Slot,
        sha256: &str,
        config: &serde_json::Value,
        egress: Option<&EgressPolicy>,
        actor: &str,
    ) -> Result<plugins::Activation, ActivateError> {
        if let Some(policy) = egress {
            policy.check().map_err(ActivateError::BadPolicy)?;
        }
        let egress = egress.map(|p| serde_json::to_value(p).expect("policy serializes"));
        let store_error = |e: sqlx::Error| ActivateError::Store(e.into());
        let gate = plugins::gate(&self.pool, sha256)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ActivateError::NotFound(format!("no stored component with sha256 {sha256}"))
            })?;
        if gate.slot != slot.as_str() {
            return Err(ActivateError::NotFound(format!(
                "{sha256} is a {} component",
                gate.slot
            )));
        }
        if self.config.plugins.require_approval && gate.uploaded_by == actor {
            return Err(ActivateError::NeedsApproval(format!(
                "{actor} uploaded {sha256}; plugins.require_approval needs someone else to activate it"
            )));
        }
        let fixtures = stored_fixtures(slot, gate.fixtures).map_err(ActivateError::NoFixtures)?;
        let loaded = self.checked(slot, sha256, &fixtures).await?;
        let activation = plugins::activate(
            &self.pool,
            slot.as_str(),
            sha256,
            config,
            egress.as_ref(),
            "activate",
            actor,
        )
        .await
        .map_err(store_error)?;
        self.remember(&loaded);
        Ok(activation)
    }

    /// The stored version, its fixtures passed now. A version not yet in
    /// memory is kept (and cached on disk) only once they have.
    async fn checked(
        &self,
        slot: Slot,
        sha256: &str,
        fixtures: &[FixtureFile],
    ) -> Result<Arc<Loaded>, ActivateError> {
        let cached = self.loaded.lock().unwrap().get(sha256).cloned();
        let loaded = match cached {
            Some(loaded) => loaded,
            None => {
                let (_, bytes) = plugins::bytes(&self.pool, sha256)
                    .await
                    .map_err(|e| ActivateError::Store(e.into()))?
                    .ok_or_else(|| ActivateError::NotFound(format!("no component {sha256}")))?;
                let loaded = self
                    .runtime
                    .load_candidate(slot, &bytes)
                    .await
                    .map_err(ActivateError::Refused)?;
                Arc::new(loaded)
            }
        };
        harness::check_coverage_of(&loaded, fixtures).map_err(ActivateError::NoFixtures)?;
        self.run_fixtures(&loaded, fixtures)
            .await
            .map_err(ActivateError::FixturesFailed)?;
        self.runtime.keep(&loaded);
        Ok(loaded)
    }

    /// Activates the default component of every empty slot from the
    /// components directory (first start of a fresh database).
    pub async fn bootstrap(&self, dir: &Path) -> anyhow::Result<()> {
        let active = plugins::active(&self.pool).await?;
        for slot in Slot::ALL {
            if active.iter().any(|a| a.slot == slot.as_str()) {
                continue;
            }
            let slot_config = self.slot_config(slot);
            let path = dir.join(format!("{}.wasm", slot_config.default_component));
            let bytes = std::fs::read(&path).with_context(|| {
                format!("reading {} (run `cargo xtask components`)", path.display())
            })?;
            self.install(slot, &bytes, "bootstrap")
                .await
                .map_err(|e| anyhow::anyhow!("{} : {e}", path.display()))?;
            let config = serde_json::to_value(&slot_config.config)?;
            plugins::activate(
                &self.pool,
                slot.as_str(),
                &sha256_hex(&bytes),
                &config,
                None,
                "activate",
                "bootstrap",
            )
            .await?;
        }
        Ok(())
    }

    /// Makes the node's active versions match the database.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        for activation in plugins::active(&self.pool).await? {
            let Some(slot) = Slot::parse(&activation.slot) else {
                continue;
            };
            let current = self.slots[index(slot)].load();
            if current
                .as_ref()
                .is_some_and(|c| c.activation_id == activation.id)
            {
                continue;
            }
            self.swap(slot, &activation).await?;
        }
        for shadow in plugins::shadows(&self.pool).await? {
            let Some(slot) = Slot::parse(&shadow.slot) else {
                continue;
            };
            let current = self.shadows[index(slot)].load();
            let unchanged = match (&shadow.sha256, current.as_ref()) {
                (None, None) => true,
                (Some(_), Some(c)) => c.activation_id == shadow.id,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let candidate = match &shadow.sha256 {
                None => None,
                Some(sha) => Some(Arc::new(Active {
                    loaded: self.by_sha(slot, sha).await?,
                    config: plugins::config_pairs(&shadow.config),
                    activation_id: shadow.id,
                    egress: Arc::new(self.egress_of(slot, None)),
                })),
            };
            tracing::info!(%slot, sha256 = ?shadow.sha256, "shadow candidate set");
            self.shadows[index(slot)].store(candidate);
        }
        Ok(())
    }

    async fn swap(&self, slot: Slot, activation: &Activation) -> anyhow::Result<()> {
        let loaded = self.by_sha(slot, &activation.sha256).await?;
        tracing::info!(%slot, sha256 = %loaded.sha256, name = %loaded.name, version = %loaded.version,
            activation = activation.id, "component activated");
        crate::metrics::component_active(
            slot.as_str(),
            &loaded.sha256,
            &loaded.name,
            &loaded.version,
        );
        let active = self.active_of(slot, loaded, activation);
        self.slots[index(slot)].store(Some(Arc::new(active)));
        Ok(())
    }

    /// Follows activations: NOTIFY for speed, polling in case a notification
    /// was lost (e.g. the LISTEN connection dropped).
    pub fn spawn_watcher(self: &Arc<Self>, shutdown: CancellationToken) {
        let registry = self.clone();
        let poll = Duration::from_millis(self.config.components.poll_interval_ms);
        tokio::spawn(async move {
            let mut listener = registry.listen().await;
            loop {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await.ok().flatten().is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = notified => {
                        if !got {
                            tracing::warn!("plugin LISTEN connection lost; polling until it is back");
                            listener = None;
                        }
                    }
                    _ = tokio::time::sleep(poll) => {
                        if listener.is_none() {
                            listener = registry.listen().await;
                        }
                    }
                }
                if registry.config.components.watch {
                    if let Err(error) = registry.reload_changed_files().await {
                        tracing::warn!(error = %format!("{error:#}"), "watching the components folder failed");
                    }
                }
                if let Err(error) = registry.refresh().await {
                    tracing::error!(error = %format!("{error:#}"), "refreshing active components failed");
                }
            }
        });
    }

    /// Dev mode (`components.watch`): when a slot's default component file in
    /// `components.dir` changes, store and activate it on every node.
    async fn reload_changed_files(&self) -> anyhow::Result<()> {
        for slot in Slot::ALL {
            let slot_config = self.slot_config(slot);
            let path = self
                .config
                .components
                .dir
                .join(format!("{}.wasm", slot_config.default_component));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let sha = sha256_hex(&bytes);
            if self.active(slot).is_ok_and(|a| a.loaded.sha256 == sha) {
                continue;
            }
            tracing::info!(%slot, path = %path.display(), "component file changed; hot-reloading");
            self.install(slot, &bytes, "watch")
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let config = serde_json::to_value(&slot_config.config)?;
            plugins::activate(
                &self.pool,
                slot.as_str(),
                &sha,
                &config,
                None,
                "activate",
                "watch",
            )
            .await?;
        }
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(plugins::CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Slot → (sha, name, version) of what this node runs now.
    pub fn snapshot(&self) -> BTreeMap<&'static str, (String, String, String)> {
        Slot::ALL
            .into_iter()
            .filter_map(|slot| {
                let active = self.slots[index(slot)].load_full()?;
                Some((
                    slot.as_str(),
                    (
                        active.loaded.sha256.clone(),
                        active.loaded.name.clone(),
                        active.loaded.version.clone(),
                    ),
                ))
            })
            .collect()
    }
}

/// Fixtures stored with a version, required and covering its world.
fn stored_fixtures(
    slot: Slot,
    stored: Option<serde_json::Value>,
) -> Result<Vec<FixtureFile>, String> {
    let stored = stored.ok_or_else(|| {
        "stored without fixtures (by the node itself); push it again with fixtures to activate it"
            .to_string()
    })?;
    let fixtures: Vec<FixtureFile> =
        serde_json::from_value(stored).map_err(|e| format!("stored fixtures do not parse: {e}"))?;
    harness::check_coverage(slot, &fixtures)?;
    Ok(fixtures)
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No fixtures, or not one case for each export of the world.
    #[error("{0}")]
    FixturesMissing(String),
    #[error("{0}")]
    Refused(PluginError),
    #[error("fixtures failed:\n{0}")]
    FixturesFailed(String),
    #[error("registry: {0}")]
    Store(anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// No stored version with that sha in this slot.
    #[error("{0}")]
    NotFound(String),
    /// Four-eyes rule: the uploader may not activate.
    #[error("approval required: {0}")]
    NeedsApproval(String),
    /// The egress policy cannot be enforced as written.
    #[error("egress policy: {0}")]
    BadPolicy(String),
    /// Stored without fixtures, or with fixtures that no longer cover the world.
    #[error("no fixtures to re-run: {0}")]
    NoFixtures(String),
    #[error("{0}")]
    Refused(PluginError),
    #[error("fixtures failed:\n{0}")]
    FixturesFailed(String),
    #[error("registry: {0}")]
    Store(anyhow::Error),
}
