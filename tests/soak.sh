#!/usr/bin/env bash
# The soak drill at full size: 20,000 payloads (or $1) through JetStream
# while scanner and store nodes are killed -9 at random every 10-20 s, then
# SQLite, Elasticsearch and MongoDB reconciled per worker. Needs what
# tests/run.sh installs (nats-server, osmem-server, secantusdb).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PATH:$scripts"
TRAWL_SOAK_PAYLOADS="${1:-20000}" cargo test --release --locked -p trawl-e2e --test e2e soak:: -- --nocapture
