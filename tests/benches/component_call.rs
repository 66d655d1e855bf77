//! One component call with a fresh `Store` from an `InstancePre`, split into
//! store setup / instantiate / call / drop, for the empty-export baseline
//! adapter, the PSP simulator, the equal-jitter retry policy and the
//! marketplace posting rules, next to the same logic written natively.
//!
//! Two measurements per component:
//! - "public API": `Runtime::charge` / `decide` / `post`, exactly what the
//!   pipeline calls (permit, fresh store, wall-clock timeout, call, drop).
//! - phases: the same engine (`Runtime::engine`), the same host state,
//!   limiter, fuel and yield interval as `Runtime::store`, but driven by hand
//!   so each phase can be timed (the runtime does not expose its
//!   `InstancePre` or its store builder).
//!
//! Run: `cargo bench -p paynode-tests --bench component_call`
//! Env: `PAYNODE_BENCH_ITERS` (default 20000), `PAYNODE_BENCH_WARMUP` (2000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paynode::components::bindings::{adapter, policy, rules};
use paynode::components::host_imports::HostState;
use paynode::components::registry::Registry;
use paynode::components::runtime::CallEnv;
use paynode::components::{Loaded, Runtime, Slot};
use paynode::config::Config;
use paynode_tests::component_path;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use adapter::paynode::psp_adapter::types as adapter_types;
use policy::paynode::retry_policy::types as policy_types;
use rules::paynode::posting_rules::types as rules_types;

/// ARCHITECTURE target for one sandboxed call (instantiate + call + drop).
const TARGET_MEDIAN_US: f64 = 10.0;
/// Mirrors the private `FUEL_YIELD_INTERVAL` of `components::runtime`.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanosecond samples of one measured quantity.
#[derive(Default, Clone)]
struct Samples(Vec<u64>);

impl Samples {
    fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }

    fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }

    /// (median, p90, p99) in µs.
    fn summary(&self) -> (f64, f64, f64) {
        let mut v = self.0.clone();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((v.len() as f64 * q) as usize).min(v.len() - 1);
            v[i] as f64 / 1000.0
        };
        (at(0.5), at(0.9), at(0.99))
    }

    fn median(&self) -> f64 {
        self.summary().0
    }
}

#[derive(Default)]
struct Phases {
    store: Samples,
    instantiate: Samples,
    call: Samples,
    drop: Samples,
    sum: Samples,
}

impl Phases {
    fn with_capacity(n: usize) -> Self {
        Phases {
            store: Samples::with_capacity(n),
            instantiate: Samples::with_capacity(n),
            call: Samples::with_capacity(n),
            drop: Samples::with_capacity(n),
            sum: Samples::with_capacity(n),
        }
    }

    fn record(&mut self, t: [Instant; 5]) {
        self.store.push(t[1] - t[0]);
        self.instantiate.push(t[2] - t[1]);
        self.call.push(t[3] - t[2]);
        self.drop.push(t[4] - t[3]);
        self.sum.push(t[4] - t[0]);
    }
}

/// The store `Runtime::store` builds, rebuilt here from public parts.
fn new_store(engine: &Engine, env: &CallEnv, plugin: &str) -> Result<Store<HostState>> {
    let mut state = HostState::new(env.limits.memory_bytes, plugin);
    state.http = env.http.clone();
    state.script = env.script.clone();
    state.max_delay_ms = env.limits.max_delay_ms;
    state.trace_id = env.trace_id.clone();
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_fuel(env.limits.fuel)?;
    store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))?;
    Ok(store)
}

fn charge_request() -> adapter_types::ChargeRequest {
    adapter_types::ChargeRequest {
        payment_order_id: "0b8f6f0e-4a5e-4c51-9a43-3f1f1c2b7d10".into(),
        payment_id: "5d1c9c43-2f0e-4bb8-8f5b-0a3f3e6a9c21".into(),
        seller_id: "seller-42".into(),
        amount: adapter_types::Money {
            quantity: 1500,
            currency: "EUR".into(),
        },
        attempt: 1,
        idempotency_key: "paynode-0b8f6f0e4a5e4c519a433f1f1c2b7d10".into(),
    }
}

fn retry_context() -> policy_types::RetryContext {
    policy_types::RetryContext {
        payment_order_id: "0b8f6f0e-4a5e-4c51-9a43-3f1f1c2b7d10".into(),
        attempt: 2,
        failure_code: "rate_limit_error".into(),
        elapsed_ms: 2_345,
        random: 0x9e37_79b9_7f4a_7c15,
    }
}

fn finalized_order() -> rules_types::FinalizedOrder {
    rules_types::FinalizedOrder {
        payment_order_id: "0b8f6f0e-4a5e-4c51-9a43-3f1f1c2b7d10".into(),
        payment_id: "5d1c9c43-2f0e-4bb8-8f5b-0a3f3e6a9c21".into(),
        seller_id: "seller-42".into(),
        amount: rules_types::Money {
            quantity: 1500,
            currency: "EUR".into(),
        },
        status: rules_types::OrderStatus::Succeeded,
        psp_reference: "psp-ref-1".into(),
    }
}

// ---------------------------------------------------------------------------
// Native baseline: the same logic as the guests, compiled into this binary.
// Written for this benchmark (not the guests' code); config parsing included
// because the guests parse their config on every call too.
// ---------------------------------------------------------------------------

mod native {
    /// Equal-jitter backoff: retry n waits uniformly in [h/2, h] ms with
    /// h = min(cap, base * 2^(n-1)); gives up past max-retries.
    pub fn equal_jitter(
        config: &[(String, String)],
        attempt: u32,
        random: u64,
    ) -> Result<u64, String> {
        let (mut base, mut cap, mut max_retries) = (2_000u64, 60_000u64, 5u32);
        for (k, v) in config {
            let v = v.trim();
            match k.as_str() {
                "base-ms" => base = v.parse().ok().filter(|x| *x > 0).unwrap_or(base),
                "cap-ms" => cap = v.parse().ok().filter(|x| *x > 0).unwrap_or(cap),
                "max-retries" => max_retries = v.parse().unwrap_or(max_retries),
                _ => {}
            }
        }
        let n = attempt.max(1);
        if n > max_retries {
            return Err(format!("max retries ({max_retries}) exhausted"));
        }
        let shift = 1u64.checked_shl(n - 1).unwrap_or(u64::MAX);
        let h = base.saturating_mul(shift).min(cap);
        let half = h / 2;
        Ok(half + random % (half + 1))
    }

    pub struct Posting {
        pub account: String,
        pub debit: bool,
        pub quantity: i64,
        pub currency: String,
    }

    pub struct Journal {
        pub kind: String,
        pub key: String,
        pub postings: Vec<Posting>,
    }

    fn ok_segment(s: &str) -> bool {
        !s.is_empty() && !s.contains('.') && !s.chars().any(char::is_whitespace)
    }

    /// Marketplace postings for a succeeded order: AUTH (2 legs) and CAPTURE (4 legs).
    pub fn marketplace(
        seller: &str,
        quantity: i64,
        currency: &str,
        succeeded: bool,
    ) -> Result<Vec<Journal>, String> {
        if !succeeded {
            return Ok(Vec::new());
        }
        if quantity <= 0 {
            return Err("invalid_amount".into());
        }
        if !ok_segment(currency) || !ok_segment(seller) {
            return Err("invalid_order".into());
        }
        let leg = |account: String, debit: bool| Posting {
            account,
            debit,
            quantity,
            currency: currency.to_string(),
        };
        Ok(vec![
            Journal {
                kind: "AUTH".into(),
                key: String::new(),
                postings: vec![
                    leg(format!("AUTH_RECEIVABLE.GLOBAL.{currency}"), true),
                    leg(format!("AUTH_LIABILITY.GLOBAL.{currency}"), false),
                ],
            },
            Journal {
                kind: "CAPTURE".into(),
                key: String::new(),
                postings: vec![
                    leg(format!("AUTH_LIABILITY.GLOBAL.{currency}"), true),
                    leg(format!("PSP_RECEIVABLES.GLOBAL.{currency}"), true),
                    leg(format!("AUTH_RECEIVABLE.GLOBAL.{currency}"), false),
                    leg(format!("MERCHANT_ACCOUNT.{seller}.{currency}"), false),
                ],
            },
        ])
    }
}

/// NOT the host's configuration: `Runtime::new`'s engine (its pooling
/// limits and flags mirrored here) plus "keep resident" on memories and
/// tables with `pagemap_scan`, so a freed slot's resident pages are reset
/// with `memset` instead of `madvise` and the next instance does not
/// page-fault them back in.
fn keep_resident_engine() -> Result<Engine> {
    const INSTANCES: u32 = 200; // mirrors MAX_CONCURRENT_INSTANCES
    let max_memory = paynode::components::runtime::MAX_MEMORY_BYTES;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(INSTANCES + 16);
    pool.total_core_instances(4 * INSTANCES);
    pool.total_memories(2 * INSTANCES);
    pool.total_tables(4 * INSTANCES);
    pool.total_stacks(INSTANCES + 16);
    pool.max_memory_size(max_memory);
    pool.max_memories_per_component(4);
    pool.max_tables_per_component(8);
    pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    pool.table_keep_resident(64 * 1024);
    // Reset only the pages that are actually resident (Linux >= 6.7).
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    config.wasm_component_model(true);
    config.memory_reservation(max_memory as u64 * 2);
    config.memory_guard_size(32 * 1024 * 1024);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))
}

const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;

/// Per-case results.
struct CaseResult {
    label: &'static str,
    phases: Phases,
    public: Samples,
}

fn read_component(name: &str) -> Result<Vec<u8>> {
    let path = component_path(name);
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build components first: `cargo xtask components`)",
            path.display()
        )
    })
}

struct Setup {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    /// The engine the phases run on (the runtime's, or a what-if variant).
    engine: Engine,
    adapter_linker: Linker<HostState>,
    plain_linker: Linker<HostState>,
    /// Also time the public `Runtime` API (only meaningful on its engine).
    public: bool,
}

impl Setup {
    fn new(
        runtime: &Arc<Runtime>,
        registry: &Arc<Registry>,
        engine: Engine,
        public: bool,
    ) -> Result<Setup> {
        let mut adapter_linker = Linker::new(&engine);
        adapter::Adapter::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut adapter_linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let plain_linker = Linker::new(&engine);
        Ok(Setup {
            runtime: runtime.clone(),
            registry: registry.clone(),
            engine,
            adapter_linker,
            plain_linker,
            public,
        })
    }

    async fn load(&self, slot: Slot, name: &str) -> Result<(Arc<Loaded>, Component)> {
        let bytes = read_component(name)?;
        let loaded = self
            .runtime
            .load(slot, &bytes)
            .await
            .map_err(|e| anyhow::anyhow!("loading {name} as {slot}: {e}"))?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| anyhow::anyhow!("compiling {name}: {e:#}"))?;
        Ok((Arc::new(loaded), component))
    }
}

async fn bench_adapter(
    setup: &Setup,
    label: &'static str,
    name: &str,
    config: Vec<(String, String)>,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let (loaded, component) = setup.load(Slot::PspAdapter, name).await?;
    let env = setup.registry.env(Slot::PspAdapter, "bench-trace");
    let pre = adapter::AdapterPre::new(
        setup
            .adapter_linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let engine = &setup.engine;
    let request = charge_request();

    // Sanity: the call does what we think it does.
    let (outcome, _) = setup
        .runtime
        .charge(&loaded, &env, &config, &request)
        .await
        .map_err(|e| anyhow::anyhow!("{name} charge: {e}"))?;
    if !matches!(outcome, adapter_types::Outcome::Succeeded(_)) {
        bail!("{name} charge did not succeed: {outcome:?}");
    }

    let mut phases = Phases::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let mut store = new_store(engine, &env, &loaded.name)?;
        let t1 = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        let outcome = instance.call_charge(&mut store, &config, &request).await?;
        let t3 = Instant::now();
        black_box(&outcome);
        drop(store);
        let t4 = Instant::now();
        if i >= warmup {
            phases.record([t0, t1, t2, t3, t4]);
        }
    }
    let mut public = Samples::with_capacity(iters);
    let public_runs = if setup.public { warmup + iters } else { 0 };
    for i in 0..public_runs {
        let t0 = Instant::now();
        let result = setup.runtime.charge(&loaded, &env, &config, &request).await;
        let elapsed = t0.elapsed();
        let value = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        black_box(&value);
        if i >= warmup {
            public.push(elapsed);
        }
    }
    Ok(CaseResult {
        label,
        phases,
        public,
    })
}

async fn bench_policy(
    setup: &Setup,
    label: &'static str,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let name = "retry-equal-jitter";
    let (loaded, component) = setup.load(Slot::RetryPolicy, name).await?;
    let env = setup.registry.env(Slot::RetryPolicy, "bench-trace");
    let pre = policy::PolicyPre::new(
        setup
            .plain_linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let engine = &setup.engine;
    let config: Vec<(String, String)> = Vec::new();
    let context = retry_context();

    let (decision, _) = setup
        .runtime
        .decide(&loaded, &env, &config, &context)
        .await
        .map_err(|e| anyhow::anyhow!("{name} decide: {e}"))?;
    let expected = native::equal_jitter(&config, context.attempt, context.random);
    match (&decision, &expected) {
        (policy_types::Decision::RetryAfter(ms), Ok(native_ms)) if ms == native_ms => {}
        _ => bail!("component ({decision:?}) and native ({expected:?}) disagree"),
    }

    let mut phases = Phases::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let mut store = new_store(engine, &env, &loaded.name)?;
        let t1 = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        let decision = instance.call_decide(&mut store, &config, &context).await?;
        let t3 = Instant::now();
        black_box(&decision);
        drop(store);
        let t4 = Instant::now();
        if i >= warmup {
            phases.record([t0, t1, t2, t3, t4]);
        }
    }
    let mut public = Samples::with_capacity(iters);
    let public_runs = if setup.public { warmup + iters } else { 0 };
    for i in 0..public_runs {
        let t0 = Instant::now();
        let result = setup.runtime.decide(&loaded, &env, &config, &context).await;
        let elapsed = t0.elapsed();
        let value = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        black_box(&value);
        if i >= warmup {
            public.push(elapsed);
        }
    }
    Ok(CaseResult {
        label,
        phases,
        public,
    })
}

async fn bench_rules(
    setup: &Setup,
    label: &'static str,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let name = "ledger-marketplace";
    let (loaded, component) = setup.load(Slot::PostingRules, name).await?;
    let env = setup.registry.env(Slot::PostingRules, "bench-trace");
    let pre = rules::RulesPre::new(
        setup
            .plain_linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let engine = &setup.engine;
    let config: Vec<(String, String)> = Vec::new();
    let order = finalized_order();

    let (result, _) = setup
        .runtime
        .post(&loaded, &env, &config, &order)
        .await
        .map_err(|e| anyhow::anyhow!("{name} post: {e}"))?;
    let entries = result.map_err(|e| anyhow::anyhow!("{name} refused the order: {e:?}"))?;
    let native = native::marketplace("seller-42", 1500, "EUR", true)
        .map_err(|e| anyhow::anyhow!("native: {e}"))?;
    let guest_shape: Vec<usize> = entries.iter().map(|e| e.postings.len()).collect();
    let native_shape: Vec<usize> = native.iter().map(|j| j.postings.len()).collect();
    if guest_shape != native_shape {
        bail!("component and native postings differ in shape");
    }

    let mut phases = Phases::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let mut store = new_store(engine, &env, &loaded.name)?;
        let t1 = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        let result = instance.call_post(&mut store, &config, &order).await?;
        let t3 = Instant::now();
        black_box(&result);
        drop(result);
        drop(store);
        let t4 = Instant::now();
        if i >= warmup {
            phases.record([t0, t1, t2, t3, t4]);
        }
    }
    let mut public = Samples::with_capacity(iters);
    let public_runs = if setup.public { warmup + iters } else { 0 };
    for i in 0..public_runs {
        let t0 = Instant::now();
        let result = setup.runtime.post(&loaded, &env, &config, &order).await;
        let elapsed = t0.elapsed();
        let value = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        black_box(&value);
        if i >= warmup {
            public.push(elapsed);
        }
    }
    Ok(CaseResult {
        label,
        phases,
        public,
    })
}

/// Native calls are far below timer resolution: time batches of `BATCH`.
fn bench_native(warmup: usize, iters: usize) -> (Samples, Samples) {
    const BATCH: u32 = 64;
    let config: Vec<(String, String)> = Vec::new();
    let context = retry_context();
    let mut jitter = Samples::with_capacity(iters);
    let mut postings = Samples::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        for k in 0..BATCH {
            black_box(native::equal_jitter(
                black_box(&config),
                black_box(context.attempt),
                black_box(context.random ^ u64::from(k)),
            ))
            .ok();
        }
        let t1 = Instant::now();
        for _ in 0..BATCH {
            let journals = native::marketplace(
                black_box("seller-42"),
                black_box(1500),
                black_box("EUR"),
                black_box(true),
            );
            black_box(&journals);
            if let Ok(journals) = journals {
                for j in &journals {
                    black_box((&j.kind, &j.key, j.postings.len()));
                    for p in &j.postings {
                        black_box((&p.account, p.debit, p.quantity, &p.currency));
                    }
                }
            }
        }
        let t2 = Instant::now();
        if i >= warmup {
            jitter.push((t1 - t0) / BATCH);
            postings.push((t2 - t1) / BATCH);
        }
    }
    (jitter, postings)
}

fn row(case: &str, what: &str, s: &Samples) {
    let (p50, p90, p99) = s.summary();
    println!("{case:<36} {what:<30} {p50:>9.2} {p90:>9.2} {p99:>9.2}");
}

fn main() -> Result<()> {
    let iters = env_usize("PAYNODE_BENCH_ITERS", 20_000).max(100);
    let warmup = env_usize("PAYNODE_BENCH_WARMUP", 2_000);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (results, whatif, native_jitter, native_postings) = tokio.block_on(async {
        let cache = paynode_tests::workspace_root().join("target/component-cache");
        let runtime = Runtime::new(Some(cache))?;
        let config = Config::default();
        // Never connected: `Registry::env` only needs the slot policies.
        let pool = sqlx::PgPool::connect_lazy("postgres://postgres@127.0.0.1:5432/postgres")?;
        let registry = Registry::new(runtime.clone(), pool, Arc::new(config));
        let setup = Setup::new(&runtime, &registry, runtime.engine().clone(), true)?;
        let simulator_config = vec![
            ("scenario".to_string(), "BEST_PSP_EVER".to_string()),
            ("latency".to_string(), "off".to_string()),
        ];
        let results = vec![
            bench_adapter(
                &setup,
                "(a) empty-export charge [baseline]",
                "empty-export",
                Vec::new(),
                warmup,
                iters,
            )
            .await?,
            bench_adapter(
                &setup,
                "(b) psp-simulator charge",
                "psp-simulator",
                simulator_config,
                warmup,
                iters,
            )
            .await?,
            bench_policy(&setup, "(c) retry-equal-jitter decide", warmup, iters).await?,
            bench_rules(&setup, "(d) ledger-marketplace post", warmup, iters).await?,
        ];
        let whatif_setup = Setup::new(&runtime, &registry, keep_resident_engine()?, false)?;
        let whatif = vec![
            bench_adapter(
                &whatif_setup,
                "(f) what-if: empty-export",
                "empty-export",
                Vec::new(),
                warmup,
                iters,
            )
            .await?,
            bench_rules(
                &whatif_setup,
                "(f) what-if: ledger-marketplace",
                warmup,
                iters,
            )
            .await?,
        ];
        let (native_jitter, native_postings) = bench_native(warmup, iters);
        anyhow::Ok((results, whatif, native_jitter, native_postings))
    })?;

    println!();
    println!(
        "component_call: fresh Store per call from InstancePre (pooling allocator, fuel, memory limiter); \
         {iters} iterations after {warmup} warm-up, one thread"
    );
    println!("all figures in µs");
    println!();
    println!(
        "{:<36} {:<30} {:>9} {:>9} {:>9}",
        "case", "phase", "median", "p90", "p99"
    );
    println!("{}", "-".repeat(96));
    for r in &results {
        row(r.label, "store new (host state, fuel)", &r.phases.store);
        row("", "instantiate", &r.phases.instantiate);
        row("", "call", &r.phases.call);
        row("", "drop (instance + store)", &r.phases.drop);
        row("", "sum of phases", &r.phases.sum);
        row("", "total via public Runtime API", &r.public);
        println!();
    }
    println!(
        "what-if (NOT the host's config): same engine settings + linear_memory_keep_resident({} KiB), \
         table_keep_resident(64 KiB), pagemap_scan(auto)",
        KEEP_RESIDENT_BYTES / 1024
    );
    for r in &whatif {
        row(r.label, "store new (host state, fuel)", &r.phases.store);
        row("", "instantiate", &r.phases.instantiate);
        row("", "call", &r.phases.call);
        row("", "drop (instance + store)", &r.phases.drop);
        row("", "sum of phases", &r.phases.sum);
        println!();
    }
    row(
        "(e) native [baseline]",
        "equal-jitter decide",
        &native_jitter,
    );
    row("", "marketplace postings", &native_postings);
    println!();

    let empty = results[0].public.median();
    let empty_phases = results[0].phases.sum.median();
    println!("ratios of medians (public-API total; hand-driven sum of phases in brackets)");
    println!("{}", "-".repeat(96));
    for r in &results {
        println!(
            "{:<36} vs empty-export {:>7.2}x [{:>6.2}x]",
            r.label,
            r.public.median() / empty,
            r.phases.sum.median() / empty_phases
        );
    }
    let nj = native_jitter.median();
    let np = native_postings.median();
    println!(
        "{:<36} vs native        {:>7.0}x [{:>6.0}x]   (native {nj:.3} µs)",
        results[2].label,
        results[2].public.median() / nj,
        results[2].phases.sum.median() / nj
    );
    println!(
        "{:<36} vs native        {:>7.0}x [{:>6.0}x]   (native {np:.3} µs)",
        results[3].label,
        results[3].public.median() / np,
        results[3].phases.sum.median() / np
    );
    println!(
        "{:<36} call phase only vs native: {:.0}x (jitter), {:.0}x (postings)",
        "",
        results[2].phases.call.median() / nj,
        results[3].phases.call.median() / np
    );
    println!();
    println!(
        "ARCHITECTURE target: ≤ {TARGET_MEDIAN_US:.0} µs median per call (instantiate + call + drop)"
    );
    println!("{}", "-".repeat(96));
    for r in &results {
        let measured = r.public.median();
        println!(
            "{:<36} measured {:>7.2} µs   target ≤ {:>4.1} µs   {}",
            r.label,
            measured,
            TARGET_MEDIAN_US,
            if measured <= TARGET_MEDIAN_US {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
    for (r, base) in whatif.iter().zip([&results[0], &results[3]]) {
        let measured = r.phases.sum.median();
        println!(
            "{:<36} measured {:>7.2} µs   target ≤ {:>4.1} µs   {}   ({:.2}x of the host config's sum of phases)",
            r.label,
            measured,
            TARGET_MEDIAN_US,
            if measured <= TARGET_MEDIAN_US { "MET" } else { "MISSED" },
            measured / base.phases.sum.median()
        );
    }
    println!();
    println!("(finished in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
