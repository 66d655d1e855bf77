//! # paynode
//!
//! A payment-processing node. The host (this crate) owns every side effect:
//! HTTP, Postgres, Kafka transactions, Redis, time, randomness and secrets.
//! WebAssembly components own the business decisions: how to talk to a PSP,
//! when to retry, what to post to the ledger.
//!
//! # Layout
//! - [`domain`]: money, statuses, event envelope. Pure, no I/O.
//! - [`api`]: axum routes, problem+json errors, idempotency, auth.
//! - [`intake`]: group commit of payment intake (many requests, one
//!   transaction, each answered on its own).
//! - [`store`]: Postgres queries; migrations live in `host/migrations`.
//! - [`pipeline`]: one module per seed stage, plus the one transactional
//!   consume → decide → produce loop they share.
//! - [`components`]: wasmtime runtime, limits, host imports, registry, harness.
//! - [`kafka`]: topic names, client settings, topic creation.
//! - [`health`]: readiness probes of Postgres, the broker and Redis.
//! - [`node`]: wires everything up for `paynode serve`.
//! - [`transport`]: plaintext Kafka/Postgres/Redis connections warned about
//!   or refused (`security.require_tls`).
//! - [`cli`]: the subcommands.

pub mod api;
pub mod balance_cache;
pub mod cli;
pub mod components;
pub mod config;
pub mod domain;
pub mod health;
pub mod intake;
pub mod kafka;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod retry_queue;
pub mod store;
pub mod telemetry;
pub mod transport;
