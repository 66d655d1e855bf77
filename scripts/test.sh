#!/usr/bin/env bash
# Runs every check and test of paynode against real services:
# formatting, lints, components built from source, their fixtures, unit
# tests, and integration tests on PostgreSQL, Redis and the broker.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/prereqs.sh
bash scripts/services.sh test           # brokers: :9094 memory storage (fast), :9092 durable (crash test)
export PAYNODE_TEST_BROKERS=127.0.0.1:9094
export PAYNODE_DURABLE_TEST_BROKERS=127.0.0.1:9092   # crash test

echo "== components"
cargo xtask components

echo "== fmt + clippy"
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

echo "== component fixtures (per-plugin harness)"
cargo build -q -p paynode
paynode_bin="${CARGO_TARGET_DIR:-target}/debug/paynode"
for dir in psp-adapters/* plugins/* ledger-rules/*; do
  [ -d "$dir/fixtures" ] || continue
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  "$paynode_bin" plugin test "target/components/$name.wasm" "$dir/fixtures"
done

echo "== tests"
cargo test
# The reference components' pure logic, natively (the same code the
# fixtures above exercise as components).
cargo test -q -p psp-simulator -p psp-stripe -p retry-equal-jitter -p ledger-marketplace

echo "== API fuzzing (schemathesis against the served OpenAPI document)"
bash scripts/schemathesis.sh
