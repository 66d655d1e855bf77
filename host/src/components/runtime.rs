//! The sandbox: compiles components once, instantiates them per call in a
//! fresh store with fuel, a memory cap and a wall-clock cap, and classifies
//! every failure as a `PluginError`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::bindings::{adapter, adapter_v2, policy, rules, rules_v2};
use super::host_imports::{self, HostState, HttpPolicy};
use super::{scrub, PluginError, Slot};

/// Instances alive at once across all slots; past this a call waits.
const MAX_CONCURRENT_INSTANCES: usize = 200;
/// Largest linear memory any slot may configure.
pub const MAX_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// A guest yields to the async executor every this much fuel, so a
/// CPU-bound call cannot starve other tasks and its wall-clock cap can fire.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// Largest component binary accepted. Real components are 100 KiB to 3 MiB;
/// compile time and memory grow with the size, and an upload is compiled
/// before anything else is known about it.
pub const MAX_COMPONENT_BYTES: usize = 16 * 1024 * 1024;
/// Longest a compile may take before the upload is refused. Cranelift cannot
/// be interrupted: the blocking thread finishes in the background, still
/// holding its compile permit, so slow uploads cannot pile up threads.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Compiles at once: each takes a blocking thread and, with parallel
/// compilation, every core, so more would only slow all of them.
const MAX_CONCURRENT_COMPILES: usize = 2;
/// See [`host_imports::MAX_INSTANCES_PER_STORE`]; the pooling allocator
/// refuses a component past it when it is compiled.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = host_imports::MAX_INSTANCES_PER_STORE as u32;

/// Per-call limits, taken from the slot's host policy.
#[derive(Clone, Debug)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: usize,
    pub wall: Duration,
    pub max_delay_ms: u32,
    pub max_output_bytes: usize,
}

impl Limits {
    pub fn from_slot(slot: &crate::config::SlotConfig) -> Self {
        Limits {
            fuel: slot.fuel,
            memory_bytes: slot.memory_bytes.min(MAX_MEMORY_BYTES),
            wall: Duration::from_millis(slot.wall_ms),
            max_delay_ms: slot.max_delay_ms,
            max_output_bytes: slot.max_output_bytes,
        }
    }
}

/// What one call cost: for the harness, metrics and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct CallStats {
    pub fuel_used: u64,
    pub peak_memory_bytes: usize,
    pub wall: Duration,
    pub host_wait_ms: u64,
}

/// Everything one call needs besides its arguments.
#[derive(Clone)]
pub struct CallEnv {
    pub limits: Limits,
    pub http: Option<HttpPolicy>,
    /// Harness only: scripted HTTP answers instead of the network.
    pub script: Option<super::http_script::HttpScript>,
    pub trace_id: String,
}

impl CallEnv {
    /// A slot's limits with no network and no script: a pure call, as the
    /// harness, replay and component loading make.
    pub fn offline(slot: &crate::config::SlotConfig, trace_id: &str) -> Self {
        CallEnv {
            limits: Limits::from_slot(slot),
            http: None,
            script: None,
            trace_id: trace_id.to_string(),
        }
    }
}

enum Pre {
    Adapter(adapter::AdapterPre<HostState>),
    AdapterV2(adapter_v2::AdapterPre<HostState>),
    Policy(policy::PolicyPre<HostState>),
    Rules(rules::RulesPre<HostState>),
    RulesV2(rules_v2::RulesPre<HostState>),
}

/// One compiled component version, ready to instantiate.
pub struct Loaded {
    pub slot: Slot,
    pub sha256: String,
    pub name: String,
    pub version: String,
    pub size_bytes: usize,
    pre: Pre,
    /// Kept to write the on-disk cache once the version is trusted.
    component: Component,
}

/// psp-adapter 2.0.0 types used by the host.
pub type RefundRequest = adapter_v2::paynode::psp_adapter::refunds::RefundRequest;
pub type Incoming = adapter_v2::paynode::psp_adapter::notifications::Incoming;
pub type Notification = adapter_v2::paynode::psp_adapter::notifications::Notification;
pub type Rejection = adapter_v2::paynode::psp_adapter::notifications::Rejection;
/// posting-rules 2.0.0's refund event.
pub type RefundedOrder = rules_v2::paynode::posting_rules::refunds::RefundedOrder;
type RulesResult = Result<
    Vec<rules::paynode::posting_rules::types::JournalEntry>,
    rules::paynode::posting_rules::types::RuleError,
>;
type Outcome = adapter::paynode::psp_adapter::types::Outcome;
type ChargeRequest = adapter::paynode::psp_adapter::types::ChargeRequest;

/// Said when an order pinned to a v1 adapter is to be refunded (or a v1
/// adapter is handed a notification).
pub const NO_REFUNDS: &str = "adapter version does not support refunds";

impl Loaded {
    /// The contract version the component implements: its world's major
    /// version (1 for every psp-adapter built before 2.0.0, and for the
    /// other slots).
    pub fn contract_major(&self) -> u32 {
        match self.pre {
            Pre::AdapterV2(_) | Pre::RulesV2(_) => 2,
            _ => 1,
        }
    }

    /// Whether `refund`, `refund-status` and `parse-notification` exist
    /// (psp-adapter), or `post-refund` (posting-rules).
    pub fn supports_refunds(&self) -> bool {
        self.contract_major() >= 2
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("slot", &self.slot)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

pub struct Runtime {
    engine: Engine,
    adapter_linker: Linker<HostState>,
    adapter_v2_linker: Linker<HostState>,
    plain_linker: Linker<HostState>,
    /// None when not configured or not safe to use (see [`usable_cache_dir`]).
    cache_dir: Option<PathBuf>,
    engine_tag: String,
    permits: Arc<Semaphore>,
    compile_permits: Arc<Semaphore>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Calls a component on whichever listed world `loaded` was built for. Each
/// world's generated bindings are types of their own with same-named
/// methods, so the call is written once here instead of once per world; a
/// world not listed takes the `else` branch (`unreachable!` when all are).
macro_rules! per_world {
    ($runtime:expr, $loaded:expr, $env:expr, [$($world:ident),+],
     |$instance:ident, $store:ident| $call:expr, else $other:expr) => {
        match &$loaded.pre {
            $(Pre::$world(pre) => {
                $runtime
                    .run($loaded, $env, |mut $store| async move {
                        let $instance = pre.instantiate_async(&mut $store).await?;
                        let out = $call;
                        Ok((out, $store))
                    })
                    .await?
            })+
            #[allow(unreachable_patterns)]
            _ => $other,
        }
    };
}

impl Runtime {
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_INSTANCES as u32 + 16);
        pool.total_core_instances(4 * MAX_CONCURRENT_INSTANCES as u32);
        pool.total_memories(2 * MAX_CONCURRENT_INSTANCES as u32);
        pool.total_tables(4 * MAX_CONCURRENT_INSTANCES as u32);
        pool.total_stacks(MAX_CONCURRENT_INSTANCES as u32 + 16);
        pool.max_memory_size(MAX_MEMORY_BYTES);
        pool.max_memories_per_component(host_imports::MAX_MEMORIES_PER_STORE as u32);
        pool.max_tables_per_component(host_imports::MAX_TABLES_PER_STORE as u32);
        pool.max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT);
        pool.table_elements(host_imports::MAX_TABLE_ELEMENTS);
        // Keep the first pages of a freed slot resident (zeroed in place)
        // instead of returning them to the OS: the next call then takes no
        // page faults there. Measured in the component_call bench: ~20 µs →
        // ~11 µs per call for a small component.
        pool.linear_memory_keep_resident(2 * 1024 * 1024);
        pool.table_keep_resident(64 * 1024);
        // Reset only pages that are actually resident (Linux >= 6.7; falls
        // back to a full reset elsewhere).
        pool.pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config.consume_fuel(true);
        config.wasm_component_model(true);
        config.memory_reservation(MAX_MEMORY_BYTES as u64 * 2);
        config.memory_guard_size(32 * 1024 * 1024);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;

        let mut adapter_linker = Linker::new(&engine);
        adapter::Adapter::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut adapter_linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut adapter_v2_linker = Linker::new(&engine);
        adapter_v2::Adapter::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut adapter_v2_linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let plain_linker = Linker::new(&engine);

        Ok(Arc::new(Runtime {
            engine_tag: engine_tag(&engine),
            engine,
            adapter_linker,
            adapter_v2_linker,
            plain_linker,
            cache_dir: cache_dir.and_then(|dir| usable_cache_dir(&dir)),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_INSTANCES)),
            compile_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_COMPILES)),
        }))
    }

    /// [`Runtime::load_candidate`], then writes the compiled form to the
    /// disk cache: for versions already trusted (stored after their
    /// fixtures passed, or the operator's own files).
    pub async fn load(&self, slot: Slot, bytes: &[u8]) -> Result<Loaded, PluginError> {
        let loaded = self.load_candidate(slot, bytes).await?;
        self.keep(&loaded);
        Ok(loaded)
    }

    /// Compiles (or loads precompiled) `bytes`, checks it implements `slot`'s
    /// world and imports nothing else, and asks it for its name and version.
    /// Nothing is written to disk: a candidate that fails here or later (its
    /// fixtures) leaves no trace.
    pub async fn load_candidate(&self, slot: Slot, bytes: &[u8]) -> Result<Loaded, PluginError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(PluginError::InvalidComponent(format!(
                "{} bytes is larger than the {MAX_COMPONENT_BYTES} bytes a component may have",
                bytes.len()
            )));
        }
        let sha256 = sha256_hex(bytes);
        let component = self.compile(&sha256, bytes).await?;
        let pre = self.pre(slot, &component)?;
        let mut loaded = Loaded {
            slot,
            sha256,
            name: String::new(),
            version: String::new(),
            size_bytes: bytes.len(),
            pre,
            component,
        };
        let env = CallEnv::offline(&crate::config::SlotConfig::default(), "");
        let (name, version) = self.info(&loaded, &env).await?;
        if name.is_empty() || name.len() > 64 || version.is_empty() || version.len() > 32 {
            return Err(PluginError::InvalidOutput(
                "info() must name the component and its version".into(),
            ));
        }
        loaded.name = name;
        loaded.version = version;
        Ok(loaded)
    }

    /// The world check: imports only what the slot offers, exports its world.
    /// A psp-adapter exporting `refund` is held to the 2.0.0 world, any
    /// other to 1.0.0.
    fn pre(&self, slot: Slot, component: &Component) -> Result<Pre, PluginError> {
        let v2_export = match slot {
            Slot::PspAdapter => "refund",
            Slot::PostingRules => "post-refund",
            Slot::RetryPolicy => "",
        };
        let v2 = component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| !v2_export.is_empty() && name == v2_export);
        let linker = match slot {
            Slot::PspAdapter if v2 => &self.adapter_v2_linker,
            Slot::PspAdapter => &self.adapter_linker,
            Slot::RetryPolicy | Slot::PostingRules => &self.plain_linker,
        };
        let instance_pre: InstancePre<HostState> =
            linker.instantiate_pre(component).map_err(|e| {
                PluginError::InvalidComponent(format!("imports outside the {slot} world: {e:#}"))
            })?;
        let wrong_world = |e: wasmtime::Error| {
            PluginError::InvalidComponent(format!("does not implement the {slot} world: {e:#}"))
        };
        Ok(match slot {
            Slot::PspAdapter if v2 => {
                Pre::AdapterV2(adapter_v2::AdapterPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::PspAdapter => {
                Pre::Adapter(adapter::AdapterPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::RetryPolicy => {
                Pre::Policy(policy::PolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::PostingRules if v2 => {
                Pre::RulesV2(rules_v2::RulesPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::PostingRules => {
                Pre::Rules(rules::RulesPre::new(instance_pre).map_err(wrong_world)?)
            }
        })
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.engine_tag)))
    }

    /// Compiles on a blocking thread (Cranelift would hold an async worker
    /// for seconds), bounded in time; a cached artifact is used when one
    /// exists and nobody else could have written it.
    async fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        if let Some(path) = self.cache_path(sha256) {
            if private_file(&path) {
                // SAFETY: the file was written by `Component::serialize` of an
                // engine with the same compatibility hash (it is in the name),
                // in a directory and a file no other user can write.
                if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                    return Ok(component);
                }
            }
        }
        let permit = self
            .compile_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginError::Unavailable("runtime shut down".into()))?;
        let engine = self.engine.clone();
        let bytes = bytes.to_vec();
        let compiling = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Component::new(&engine, &bytes)
        });
        match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
            Err(_) => Err(PluginError::Timeout(format!(
                "compiling took longer than {} s",
                COMPILE_TIMEOUT.as_secs()
            ))),
            Ok(Err(join)) => Err(PluginError::Trap(format!("compiler panicked: {join}"))),
            Ok(Ok(compiled)) => compiled.map_err(|e| {
                PluginError::InvalidComponent(format!("not a valid component: {e:#}"))
            }),
        }
    }

    /// Writes a trusted version's compiled form to the disk cache (owner-only
    /// permissions; best effort: a failed write only costs a compile later).
    pub fn keep(&self, loaded: &Loaded) {
        let Some(path) = self.cache_path(&loaded.sha256) else {
            return;
        };
        if path.exists() {
            return;
        }
        let Ok(serialized) = loaded.component.serialize() else {
            return;
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if write_private(&tmp, &serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn store(&self, loaded: &Loaded, env: &CallEnv) -> Store<HostState> {
        let mut state = HostState::new(env.limits.memory_bytes, &loaded.name);
        state.http = env.http.clone();
        state.script = env.script.clone();
        state.max_delay_ms = env.limits.max_delay_ms;
        state.trace_id = env.trace_id.clone();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_fuel(env.limits.fuel).expect("fuel is enabled");
        store
            .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
            .expect("async is enabled");
        store
    }

    async fn info(&self, loaded: &Loaded, env: &CallEnv) -> Result<(String, String), PluginError> {
        let (info, _) = per_world!(
            self, loaded, env,
            [Adapter, AdapterV2, Policy, Rules, RulesV2],
            |instance, store| {
                let info = instance.call_info(&mut store).await?;
                (info.name, info.version)
            },
            else unreachable!("every world is listed")
        );
        super::invariants::check_info(&info.0, &info.1)?;
        Ok(info)
    }

    pub async fn charge(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        request: &adapter::paynode::psp_adapter::types::ChargeRequest,
    ) -> Result<(adapter::paynode::psp_adapter::types::Outcome, CallStats), PluginError> {
        self.adapter_call(loaded, env, config, request, false).await
    }

    pub async fn status(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        request: &adapter::paynode::psp_adapter::types::ChargeRequest,
    ) -> Result<(adapter::paynode::psp_adapter::types::Outcome, CallStats), PluginError> {
        self.adapter_call(loaded, env, config, request, true).await
    }

    async fn adapter_call(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        request: &ChargeRequest,
        status: bool,
    ) -> Result<(Outcome, CallStats), PluginError> {
        let config = config.to_vec();
        let (mut outcome, stats) = per_world!(
            self, loaded, env,
            [Adapter, AdapterV2],
            |instance, store| if status {
                instance.call_status(&mut store, &config, request).await?
            } else {
                instance.call_charge(&mut store, &config, request).await?
            },
            else return Err(not_an_adapter(loaded))
        );
        scrub_outcome(&mut outcome, env);
        super::invariants::check_outcome(&outcome, env.limits.max_output_bytes)?;
        Ok((outcome, stats))
    }

    /// `refund` (or, with `status`, `refund-status`) of a 2.0.0 adapter;
    /// a v1 adapter answers [`PluginError::Unsupported`].
    pub async fn refund(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        request: &RefundRequest,
        status: bool,
    ) -> Result<(Outcome, CallStats), PluginError> {
        let pre = v2_pre(loaded)?;
        let config = config.to_vec();
        let (mut outcome, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let outcome = if status {
                    instance
                        .call_refund_status(&mut store, &config, request)
                        .await?
                } else {
                    instance.call_refund(&mut store, &config, request).await?
                };
                Ok((outcome, store))
            })
            .await?;
        scrub_outcome(&mut outcome, env);
        super::invariants::check_outcome(&outcome, env.limits.max_output_bytes)?;
        Ok((outcome, stats))
    }

    /// `parse-notification` of a 2.0.0 adapter. What it returns is checked
    /// for size and scrubbed; the host still trusts none of it beyond
    /// looking records up by it.
    pub async fn parse_notification(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        incoming: &Incoming,
    ) -> Result<(Result<Vec<Notification>, Rejection>, CallStats), PluginError> {
        let pre = v2_pre(loaded)?;
        let config = config.to_vec();
        let (mut result, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let result = instance
                    .call_parse_notification(&mut store, &config, incoming)
                    .await?;
                Ok((result, store))
            })
            .await?;
        let no_secrets = Default::default();
        let secrets = env
            .http
            .as_ref()
            .map_or(&no_secrets, |p| p.secrets.as_ref());
        match &mut result {
            Ok(notifications) => {
                super::invariants::check_notifications(notifications, env.limits.max_output_bytes)?;
                for n in notifications.iter_mut() {
                    n.message = scrub::guest_text(&n.message, secrets);
                }
            }
            Err(Rejection::BadSignature(why) | Rejection::Malformed(why)) => {
                *why = scrub::guest_text(why, secrets)
            }
        }
        Ok((result, stats))
    }

    pub async fn decide(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        context: &policy::paynode::retry_policy::types::RetryContext,
    ) -> Result<(policy::paynode::retry_policy::types::Decision, CallStats), PluginError> {
        let Pre::Policy(pre) = &loaded.pre else {
            return Err(PluginError::InvalidComponent(format!(
                "{} is not a retry-policy",
                loaded.name
            )));
        };
        let (mut decision, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let decision = instance
                    .call_decide(&mut store, &config.to_vec(), context)
                    .await?;
                Ok((decision, store))
            })
            .await?;
        if let policy::paynode::retry_policy::types::Decision::GiveUp(reason) = &mut decision {
            // Becomes the order's failure reason: a record, like outcome texts.
            *reason = scrub::guest_text(reason, &Default::default());
        }
        super::invariants::check_decision(&decision)?;
        Ok((decision, stats))
    }

    /// Runs the posting rules. The result is size-checked here; ledger
    /// invariants that need the order are checked by `invariants::check_journals`.
    pub async fn post(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        order: &rules::paynode::posting_rules::types::FinalizedOrder,
    ) -> Result<
        (
            Result<
                Vec<rules::paynode::posting_rules::types::JournalEntry>,
                rules::paynode::posting_rules::types::RuleError,
            >,
            CallStats,
        ),
        PluginError,
    > {
        let config = config.to_vec();
        let (result, stats) = per_world!(
            self, loaded, env,
            [Rules, RulesV2],
            |instance, store| instance.call_post(&mut store, &config, order).await?,
            else return Err(not_rules(loaded))
        );
        check_rules_result(&result, env)?;
        Ok((result, stats))
    }

    /// posting-rules 2.0.0's `post-refund`; a v1 rules component answers
    /// [`PluginError::Unsupported`].
    pub async fn post_refund(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        config: &[(String, String)],
        refund: &RefundedOrder,
    ) -> Result<(RulesResult, CallStats), PluginError> {
        let pre = match &loaded.pre {
            Pre::RulesV2(pre) => pre,
            Pre::Rules(_) => {
                return Err(PluginError::Unsupported(format!(
                    "{} {}: rules version does not post refunds (posting-rules 1.0.0)",
                    loaded.name, loaded.version
                )))
            }
            _ => return Err(not_rules(loaded)),
        };
        let config = config.to_vec();
        let (result, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let result = instance
                    .call_post_refund(&mut store, &config, refund)
                    .await?;
                Ok((result, store))
            })
            .await?;
        check_rules_result(&result, env)?;
        Ok((result, stats))
    }

    /// One sandboxed call: a fresh store, bounded by the wall-clock cap.
    async fn run<R, F, Fut>(
        &self,
        loaded: &Loaded,
        env: &CallEnv,
        call: F,
    ) -> Result<(R, CallStats), PluginError>
    where
        F: FnOnce(Store<HostState>) -> Fut,
        Fut: std::future::Future<Output = wasmtime::Result<(R, Store<HostState>)>>,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PluginError::Unavailable("runtime shut down".into()))?;
        let store = self.store(loaded, env);
        let request_left = store.data().request_left.clone();
        let started = Instant::now();
        let outcome = tokio::time::timeout(env.limits.wall, call(store)).await;
        let wall = started.elapsed();
        let failure = match outcome {
            Err(_) => PluginError::Timeout(format!(
                "wall-clock cap of {} ms reached",
                env.limits.wall.as_millis()
            )),
            Ok(Err(error)) => classify(error, env),
            Ok(Ok((value, store))) => {
                let state = store.data();
                let stats = CallStats {
                    fuel_used: env.limits.fuel - store.get_fuel().unwrap_or(0),
                    peak_memory_bytes: state.limiter.peak_bytes,
                    wall,
                    host_wait_ms: state.host_wait_ms,
                };
                return Ok((value, stats));
            }
        };
        if request_left.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PluginError::AfterRequest(failure.to_string()));
        }
        Err(failure)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn not_rules(loaded: &Loaded) -> PluginError {
    PluginError::InvalidComponent(format!("{} is not a posting-rules component", loaded.name))
}

fn check_rules_result(result: &RulesResult, env: &CallEnv) -> Result<(), PluginError> {
    match result {
        Ok(entries) => super::invariants::check_output_size(entries, env.limits.max_output_bytes),
        Err(error) => super::invariants::check_rule_error(error),
    }
}

fn not_an_adapter(loaded: &Loaded) -> PluginError {
    PluginError::InvalidComponent(format!("{} is not a psp-adapter", loaded.name))
}

fn v2_pre(loaded: &Loaded) -> Result<&adapter_v2::AdapterPre<HostState>, PluginError> {
    match &loaded.pre {
        Pre::AdapterV2(pre) => Ok(pre),
        Pre::Adapter(_) => Err(PluginError::Unsupported(format!(
            "{} {}: {NO_REFUNDS} (psp-adapter 1.0.0)",
            loaded.name, loaded.version
        ))),
        _ => Err(not_an_adapter(loaded)),
    }
}

/// Outcome texts are stored in `psp_attempts` and shown by the payments API:
/// no secret value in them, and messages capped. A PSP reference is never
/// cut (the status check looks the charge up by it), only scrubbed.
fn scrub_outcome(outcome: &mut adapter::paynode::psp_adapter::types::Outcome, env: &CallEnv) {
    use adapter::paynode::psp_adapter::types::Outcome;
    let no_secrets = Default::default();
    let secrets = env
        .http
        .as_ref()
        .map_or(&no_secrets, |p| p.secrets.as_ref());
    match outcome {
        Outcome::Succeeded(reference) => *reference = scrub::text(reference, secrets),
        Outcome::Declined(failure) | Outcome::Transient(failure) => {
            failure.code = scrub::guest_text(&failure.code, secrets);
            failure.message = scrub::guest_text(&failure.message, secrets);
        }
        Outcome::Unknown(reason) => *reason = scrub::guest_text(reason, secrets),
    }
}

/// Maps a wasmtime error to the failure class of the call.
fn classify(error: wasmtime::Error, env: &CallEnv) -> PluginError {
    let text = format!("{error:#}");
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => {
                PluginError::Timeout(format!("CPU budget of {} fuel exhausted", env.limits.fuel))
            }
            Trap::Interrupt => PluginError::Timeout("interrupted".into()),
            _ => PluginError::Trap(text),
        };
    }
    if text.contains("memory limit of") || text.contains("resource limit exceeded") {
        return PluginError::ResourceLimit(text);
    }
    if text.contains("pooling") || text.contains("maximum concurrent") {
        return PluginError::Unavailable(text);
    }
    PluginError::Trap(text)
}

/// Names cache files: sha256 of wasmtime's compatibility hash, which covers
/// the wasmtime version, the target and every compile setting (a stable
/// hash, unlike `DefaultHasher`, whose algorithm may change between Rust
/// releases). Loading checks compatibility again anyway.
fn engine_tag(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

/// The cache directory if it is safe to load native code from: created
/// owner-only when missing, refused (no cache, with a warning) when another
/// user could write it, since a file planted there would run as host code.
fn usable_cache_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        let created = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        if let Err(error) = created {
            tracing::warn!(dir = %dir.display(), %error, "component cache not used: cannot create it");
            return None;
        }
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o022 == 0 => {
            Some(dir.to_path_buf())
        }
        Ok(meta) => {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o7777),
                "component cache not used: group or others may write it");
            None
        }
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "component cache not used");
            None
        }
    }
}

/// A regular file only its owner may write (group/other write bits clear).
fn private_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o022 == 0)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
