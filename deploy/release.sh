#!/usr/bin/env bash
# Builds trawl's release binaries into dist/ and checks each one:
#
#   dist/trawl-VERSION-x86_64-linux-gnu    every feature; needs only glibc
#   dist/trawl-VERSION-x86_64-linux-musl   static, runs on any x86_64 Linux;
#                                           no RAR (UnRAR is C++, and there is
#                                           no musl C++ toolchain to build it)
#   dist/SHA256SUMS
#
# Each binary must scan EICAR and match the shipped rule, and the musl one
# must be static, or the script fails. Run from anywhere:
#
#   deploy/release.sh            # both
#   deploy/release.sh musl       # just one: gnu or musl
#
# Needs, once: `rustup target add x86_64-unknown-linux-musl` and
# `apt-get install musl-tools` (musl-gcc builds libyara and SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "trawl"))')
dist=dist
mkdir -p "$dist"
targets=("${@:-gnu musl}")
read -r -a targets <<<"${targets[*]}"

# EICAR, built here: no file that looks like malware is kept in the tree.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
mkdir "$probe/in"
printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-' 'ANTIVIRUS-TEST-FILE!$H+H*' >"$probe/in/eicar.com"

check() {
  local bin=$1
  "$bin" --version
  "$bin" scan "$probe/in" --rules rules/ --workers hash,yara --db "$probe/$(basename "$bin").db" -q
  python3 - "$probe/$(basename "$bin").db" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT rule FROM yara_matches WHERE filename = 'eicar.com'").fetchall()
assert ("EICAR_Test_File",) in rows, f"EICAR not matched: {rows}"
PY
}

for t in "${targets[@]}"; do
  case $t in
    gnu)
      triple=x86_64-unknown-linux-gnu
      cargo build --release --locked -p trawl --target "$triple"
      ;;
    musl)
      triple=x86_64-unknown-linux-musl
      CC_x86_64_unknown_linux_musl=musl-gcc \
        cargo build --release --locked -p trawl --target "$triple" \
        --no-default-features --features ssdeep
      ;;
    *)
      echo "release.sh: unknown target '$t' (gnu or musl)" >&2
      exit 2
      ;;
  esac
  out="$dist/trawl-$version-x86_64-linux-$t"
  strip -o "$out" "target/$triple/release/trawl"
  # Static: no program interpreter, no shared library needed.
  if [ "$t" = musl ] && readelf -ld "$out" | grep -E 'program interpreter|NEEDED' >&2; then
    echo "release.sh: $out is not static" >&2
    exit 1
  fi
  check "$out"
  echo "built $out ($(du -h "$out" | cut -f1))"
done
(cd "$dist" && sha256sum trawl-"$version"-* >SHA256SUMS)
cat "$dist/SHA256SUMS"
