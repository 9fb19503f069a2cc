#!/usr/bin/env bash
# Packaging checks for CI: the Yocto crates list is in sync with Cargo.lock,
# the systemd unit verifies and its exposure is at most 2.0, and the layer is
# clean under oelint-adv. Needs: systemd-analyze (Debian's systemd), python3
# with pip (oelint-adv is installed into .ci's venv when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "-- yocto: exportd-crates.inc in sync with Cargo.lock"
yocto/gen-crates-inc.sh --check

echo "-- systemd: security exposure (must be <= 2.0)"
out=$(systemd-analyze security --offline=yes --no-pager systemd/exportd.service 2>&1)
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' | tail -1)
echo "exposure: ${score:-?}"
[ -n "$score" ] || { printf '%s\n' "$out" | tail -5; echo "could not read the exposure"; exit 1; }
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { echo "exposure $score > 2.0"; exit 1; }

echo "-- systemd: verify (against the built binary)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bin=$(pwd)/target/debug/exportd
[ -x "$bin" ] || cargo build --quiet
sed "s#/usr/bin/exportd#$bin#g" systemd/exportd.service > "$tmp/exportd.service"
systemd-analyze verify --man=no "$tmp/exportd.service"
echo "verify: clean"

echo "-- yocto: oelint-adv"
if ! command -v oelint-adv >/dev/null; then
  python3 -m pip install -q 'oelint-adv==9.11.2'
fi
oelint-adv --quiet --exit-zero yocto/meta-exportd/recipes-support/exportd/*.bb yocto/meta-exportd/recipes-support/exportd/*.inc 2>&1 | tee "$tmp/oelint.txt"
if grep -q ':error:' "$tmp/oelint.txt"; then echo "oelint-adv reported errors"; exit 1; fi
echo "oelint-adv: no errors"
