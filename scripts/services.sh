#!/usr/bin/env bash
# Makes sure PostgreSQL (5432), Redis (6379) and the Kafka-protocol broker
# run on 127.0.0.1, starting only what is missing. Idempotent.
#
#   scripts/services.sh up      # the run command's broker: noida-db on 9092, data kept
#   scripts/services.sh test    # nisshi on 9094 (memory, fast) and 9095 (durable),
#                               # noida-db on 9096 (hides aborted records, as Kafka does)
#   scripts/services.sh down    # stops the brokers this script started
#   scripts/services.sh status
set -euo pipefail

NISSHI_VERSION=0.7.0
NOIDA_VERSION=0.2.3
STATE_DIR="${PAYNODE_STATE_DIR:-$HOME/.cache/paynode}"
# Broker installs build in a target dir of their own: a 20-minute
# `cargo install` must not hold the project's build lock.
INSTALL_TARGET_DIR="$HOME/.cache/paynode/install-target"
mkdir -p "$STATE_DIR"

say() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.2; done
  say "$name did not open port $port"; return 1
}

# An open port is not a usable server: after a crash or an unclean stop
# PostgreSQL listens while it replays its WAL and refuses every login ("the
# database system is in recovery mode"). Wait until a query answers.
wait_postgres_ready() {
  for i in $(seq 1 600); do
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1" >/dev/null 2>&1 && return 0
    [ $((i % 25)) -eq 0 ] && say "postgres: not accepting queries yet (${i}x0.5 s)"
    sleep 0.5
  done
  say "postgres: no query answered in 300 s"; return 1
}

ensure_postgres() {
  if port_open 5432; then say "postgres: running"; wait_postgres_ready; return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "postgres: installing"; as_root apt-get install -y -qq postgresql >/dev/null
  fi
  say "postgres: starting"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432 postgres
  wait_postgres_ready
}

ensure_redis() {
  if port_open 6379; then say "redis: running"; return; fi
  command -v redis-server >/dev/null || { say "redis: installing"; as_root apt-get install -y -qq redis-server >/dev/null; }
  say "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log"
  wait_port 6379 redis
}

# nisshi is built with Debian's rustc-web (it needs a newer compiler than some
# machines' rustup default); 0.8.x refuses transactional producers, so pin 0.7.0.
ensure_nisshi_binary() {
  if command -v nisshi >/dev/null && nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then return; fi
  if [ ! -x /usr/bin/rustc ] || ! dpkg -s rustc-web >/dev/null 2>&1; then
    say "installing rustc-web to build nisshi"; as_root apt-get install -y -qq rustc-web >/dev/null
  fi
  say "building nisshi $NISSHI_VERSION (once; ~15 min on 2 cores)"
  CARGO_TARGET_DIR="$INSTALL_TARGET_DIR" RUSTC=/usr/bin/rustc \
    cargo install "nisshi@$NISSHI_VERSION" --locked --features dynostore,postgres
}

start_broker() {
  local port=$1 storage=$2 name=$3
  if port_open "$port"; then say "broker :$port running"; return; fi
  ensure_nisshi_binary
  say "broker :$port starting ($storage)"
  nohup nisshi broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$storage" \
    --group-initial-rebalance-delay 0s \
    >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
  wait_port "$port" "broker $name"
}

ensure_noida_binary() {
  if command -v noida-db >/dev/null && noida-db --version 2>/dev/null | grep -q "$NOIDA_VERSION"; then return; fi
  say "building noida-db $NOIDA_VERSION (once; ~2 min on 2 cores)"
  CARGO_TARGET_DIR="$INSTALL_TARGET_DIR" \
    cargo install "noida-db@$NOIDA_VERSION" --locked --no-default-features --features kafka
}

# noida-db keeps a killed producer's open transaction until the same
# transactional id initialises again (it never expires one). The test
# broker therefore starts from an empty data dir each time, so no test
# inherits a stuck transaction from an earlier run; the run command's broker
# keeps its data (`keep`): a restarted node re-initialises its stable
# transactional ids, which ends any transaction its previous life left open.
start_noida() {
  local port=$1 name=$2 data=${3:-fresh}
  if port_open "$port"; then say "broker :$port running"; return; fi
  ensure_noida_binary
  say "broker :$port starting (noida-db, $data data dir)"
  [ "$data" = keep ] || rm -rf "$STATE_DIR/$name-data"
  nohup noida-db start --only kafka --kafka-port "$port" --data-dir "$STATE_DIR/$name-data" \
    >>"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
  wait_port "$port" "broker $name"
}

ensure_broker_db() {
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'nisshi'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE nisshi"
}

stop_broker() {
  local name=$1
  if [ -f "$STATE_DIR/$name.pid" ]; then
    local pid; pid=$(cat "$STATE_DIR/$name.pid")
    kill "$pid" 2>/dev/null && say "stopping $name" || true
    # Wait for it to exit: noida-db writes its data dir on the way out.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$STATE_DIR/$name.pid"
  fi
}

case "${1:-up}" in
  up)
    # The run command needs no nisshi: noida-db builds in ~2 minutes (nisshi
    # in ~20) and its ListOffsets answers what the lag metric asks.
    ensure_postgres; ensure_redis
    start_noida 9092 broker-run keep ;;
  test)
    # Memory storage on 9094 for speed; the durable nisshi on 9095 for the
    # crash test (the memory engine can lose records of aborted
    # transactions); noida-db on 9096 for the second pass.
    ensure_postgres; ensure_redis; ensure_broker_db
    start_broker 9094 "memory://nisshi/" broker-test
    # localhost, not 127.0.0.1: nisshi's Postgres client checks TLS names otherwise.
    start_broker 9095 "postgres://postgres@localhost/nisshi" broker-durable
    # Restarted on every test run: each run leaves hundreds of prefixed
    # topics and groups behind, and on a long-lived noida-db the two-node
    # rebalance tests were seen to stall (orders stranded, never consumed)
    # where a fresh one passed.
    stop_broker broker-noida
    start_noida 9096 broker-noida ;;
  down)
    stop_broker broker-run; stop_broker broker-durable; stop_broker broker-test; stop_broker broker-noida ;;
  status)
    for p in 5432 6379 9092 9094 9095 9096; do port_open $p && say ":$p up" || say ":$p down"; done ;;
  *) echo "usage: $0 up|test|down|status" >&2; exit 2 ;;
esac
