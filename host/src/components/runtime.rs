//! The sandbox: compiles components once, instantiates them per call in a
//! fresh store with fuel, a memory cap and a wall-clock cap, and classifies
//! every failure as a `PluginError`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::bindings::{adapter, policy, rules};
use super::host_imports::{HostState, HttpPolicy};
use super::{PluginError, Slot};

/// Instances alive at once across all slots; past this a call waits.
const MAX_CONCURRENT_INSTANCES: usize = 200;
/// Largest linear memory any slot may configure.
pub const MAX_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// A guest yields to the async executor every this much fuel, so a
/// CPU-bound call cannot starve other tasks and its wall-clock cap can fire.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

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
    pub script: Option<super::harness::HttpScript>,
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
    Policy(policy::PolicyPre<HostState>),
    Rules(rules::RulesPre<HostState>),
}

/// One compiled component version, ready to instantiate.
pub struct Loaded {
    pub slot: Slot,
    pub sha256: String,
    pub name: String,
    pub version: String,
    pub size_bytes: usize,
    pre: Pre,
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
    plain_linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    engine_tag: String,
    permits: Arc<Semaphore>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
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
        let plain_linker = Linker::new(&engine);

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_tag = format!("{:016x}", hasher.finish());
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Arc::new(Runtime {
            engine,
            adapter_linker,
            plain_linker,
            cache_dir,
            engine_tag,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_INSTANCES)),
        }))
    }

    /// Compiles (or loads precompiled) `bytes`, checks it implements `slot`'s
    /// world and imports nothing else, and asks it for its name and version.
    pub async fn load(&self, slot: Slot, bytes: &[u8]) -> Result<Loaded, PluginError> {
        let sha256 = sha256_hex(bytes);
        let component = self.compile(&sha256, bytes)?;
        let linker = match slot {
            Slot::PspAdapter => &self.adapter_linker,
            Slot::RetryPolicy | Slot::PostingRules => &self.plain_linker,
        };
        let instance_pre: InstancePre<HostState> =
            linker.instantiate_pre(&component).map_err(|e| {
                PluginError::InvalidComponent(format!("imports outside the {slot} world: {e:#}"))
            })?;
        let wrong_world = |e: wasmtime::Error| {
            PluginError::InvalidComponent(format!("does not implement the {slot} world: {e:#}"))
        };
        let pre = match slot {
            Slot::PspAdapter => {
                Pre::Adapter(adapter::AdapterPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::RetryPolicy => {
                Pre::Policy(policy::PolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
            Slot::PostingRules => {
                Pre::Rules(rules::RulesPre::new(instance_pre).map_err(wrong_world)?)
            }
        };
        let mut loaded = Loaded {
            slot,
            sha256,
            name: String::new(),
            version: String::new(),
            size_bytes: bytes.len(),
            pre,
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

    fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}-{}.cwasm", self.engine_tag)));
        if let Some(path) = &cached {
            if path.exists() {
                // SAFETY: the file was written by `Component::serialize` of an
                // engine with the same compatibility hash (it is in the name),
                // in a cache directory only this node writes.
                if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, path) } {
                    return Ok(component);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::InvalidComponent(format!("not a valid component: {e:#}")))?;
        if let (Some(path), Ok(serialized)) = (&cached, component.serialize()) {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
        Ok(component)
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
        let (info, _) = match &loaded.pre {
            Pre::Adapter(pre) => {
                self.run(loaded, env, |mut store| async move {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let info = instance.call_info(&mut store).await?;
                    Ok(((info.name, info.version), store))
                })
                .await?
            }
            Pre::Policy(pre) => {
                self.run(loaded, env, |mut store| async move {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let info = instance.call_info(&mut store).await?;
                    Ok(((info.name, info.version), store))
                })
                .await?
            }
            Pre::Rules(pre) => {
                self.run(loaded, env, |mut store| async move {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let info = instance.call_info(&mut store).await?;
                    Ok(((info.name, info.version), store))
                })
                .await?
            }
        };
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
        request: &adapter::paynode::psp_adapter::types::ChargeRequest,
        status: bool,
    ) -> Result<(adapter::paynode::psp_adapter::types::Outcome, CallStats), PluginError> {
        let Pre::Adapter(pre) = &loaded.pre else {
            return Err(PluginError::InvalidComponent(format!(
                "{} is not a psp-adapter",
                loaded.name
            )));
        };
        let (outcome, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let outcome = if status {
                    instance
                        .call_status(&mut store, &config.to_vec(), request)
                        .await?
                } else {
                    instance
                        .call_charge(&mut store, &config.to_vec(), request)
                        .await?
                };
                Ok((outcome, store))
            })
            .await?;
        super::invariants::check_outcome(&outcome, env.limits.max_output_bytes)?;
        Ok((outcome, stats))
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
        let (decision, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let decision = instance
                    .call_decide(&mut store, &config.to_vec(), context)
                    .await?;
                Ok((decision, store))
            })
            .await?;
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
        let Pre::Rules(pre) = &loaded.pre else {
            return Err(PluginError::InvalidComponent(format!(
                "{} is not a posting-rules component",
                loaded.name
            )));
        };
        let (result, stats) = self
            .run(loaded, env, |mut store| async move {
                let instance = pre.instantiate_async(&mut store).await?;
                let result = instance
                    .call_post(&mut store, &config.to_vec(), order)
                    .await?;
                Ok((result, store))
            })
            .await?;
        match &result {
            Ok(entries) => {
                super::invariants::check_output_size(entries, env.limits.max_output_bytes)?
            }
            Err(error) => super::invariants::check_rule_error(error)?,
        }
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
    if text.contains("memory limit of") {
        return PluginError::ResourceLimit(text);
    }
    if text.contains("pooling") || text.contains("maximum concurrent") {
        return PluginError::Unavailable(text);
    }
    PluginError::Trap(text)
}
