#!/usr/bin/env bash
# Property-based API tests: runs Schemathesis against a real `paynode serve`
# using the node's own OpenAPI document (GET /api-docs/openapi.json).
#
# Needs the test services (scripts/services.sh test): Postgres on :5432,
# Redis on :6379, the broker on :9094. The node gets its own database and
# Kafka prefix, listens on a free port and is stopped (and its database
# dropped) on exit. Exits non-zero if Schemathesis reports a failure.
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 30), SCHEMATHESIS_SEED,
# SCHEMATHESIS_ARGS (extra flags), PAYNODE_VENV, PAYNODE_TEST_BROKERS,
# KEEP_DATABASE=1 (keep the database for inspection).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

venv="${PAYNODE_VENV:-$HOME/.cache/paynode/venv}"
schemathesis_req="${SCHEMATHESIS_REQUIREMENT:-schemathesis>=4.32,<5}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
brokers="${PAYNODE_TEST_BROKERS:-127.0.0.1:9094}"
target_dir="${CARGO_TARGET_DIR:-target}"
paynode_bin="$target_dir/debug/paynode"

echo "== schemathesis: venv $venv"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "$schemathesis_req"
fi
"$venv/bin/schemathesis" --version

echo "== schemathesis: build paynode"
cargo build -q -p paynode

id="st$(date +%s)$$"
db="pn_${id}"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
base="http://127.0.0.1:$port"
work="$root/target/schemathesis/$id"
mkdir -p "$work"

psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null

export PAYNODE_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$db"
export PAYNODE_KAFKA__BROKERS="$brokers"
export PAYNODE_KAFKA__PREFIX="$id."
export PAYNODE_HTTP__LISTEN="127.0.0.1:$port"
export PAYNODE_COMPONENTS__DIR="$root/target/components"
export PAYNODE_COMPONENTS__CACHE_DIR="$work/component-cache"

node_pid=""
cleanup() {
  local status=$?
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$node_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  if [ "${KEEP_DATABASE:-0}" != 1 ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT INT TERM

echo "== schemathesis: node on $base (database $db, log $work/node.log)"
"$paynode_bin" serve --dev >"$work/node.log" 2>&1 &
node_pid=$!

ready=0
for _ in $(seq 1 120); do
  if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "paynode exited before it was ready; last log lines:" >&2
    tail -n 30 "$work/node.log" >&2
    exit 1
  fi
  if curl -fsS "$base/health/ready" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  echo "paynode not ready after 60s; last log lines:" >&2
  tail -n 30 "$work/node.log" >&2
  exit 1
fi

token=$("$paynode_bin" token --dev --role payment:write --role FINANCE --role ADMIN --subject schemathesis)

seed_args=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
  seed_args=(--seed "$SCHEMATHESIS_SEED")
fi

echo "== schemathesis: run (max $max_examples examples per operation)"
status=0
# Every check except positive_data_acceptance: that one expects every
# schema-valid request to succeed, but intake and review resolution enforce
# rules JSON Schema cannot state (orders sum to totalAmount, one currency per
# payment, known currencies, distinct sellers, SUCCEEDED needs pspReference),
# so schema-valid requests legitimately get a documented 400.
# `timeout` bounds the whole run; --max-time would keep fuzzing until it is spent.
# Run from the work directory: Schemathesis and Hypothesis keep caches
# (.schemathesis/, .hypothesis/) in the current directory.
(cd "$work" && timeout --signal=INT 240 "$venv/bin/schemathesis" run "$base/api-docs/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$max_examples" \
  --request-timeout 15 \
  --generation-database none \
  --report junit --report-dir "$work/report" \
  --no-color \
  "${seed_args[@]}" \
  ${SCHEMATHESIS_ARGS:-}) || status=$?

if [ "$status" != 0 ]; then
  echo "schemathesis failed (exit $status); node log: $work/node.log, report: $work/report" >&2
  grep -E '"level":"(ERROR|WARN)"' "$work/node.log" | tail -n 20 >&2 || true
fi
exit "$status"
