#!/usr/bin/env bash
# Installs what building and testing paynode needs, idempotently: Debian
# packages (C toolchain bits for librdkafka, rustc-web + rust-web-src for
# wasm guests when rustup has no wasm target, promtool) and the broker.
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
for pkg in build-essential cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev curl python3-venv prometheus postgresql-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  for pkg in rustc-web rust-web-src; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "[prereqs] installing: ${need[*]}"
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "[prereqs] ok"
