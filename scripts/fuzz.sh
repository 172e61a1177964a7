#!/usr/bin/env bash
# Runs one fuzz target for a while: `scripts/fuzz.sh TARGET [SECONDS]` (default: until stopped),
# or every target in turn: `scripts/fuzz.sh all SECONDS`.
#
# Needs a nightly toolchain (libFuzzer's sanitizer flags are nightly-only) and cargo-fuzz. A
# missing cargo-fuzz is installed from crates.io; a missing nightly is reported with the command
# that installs it (set FUZZ_INSTALL_NIGHTLY=1 to let this script run it).
#
# The fuzzer grows its working corpus in fuzz/corpus/TARGET (ignored by git) from the committed
# seeds in fuzz/seeds/TARGET; a crash lands in fuzz/artifacts/TARGET. Turn it into a regression:
# fix the bug, copy the input to fuzz/regressions/TARGET/NAME, and `cargo test -p
# raft-fuzz-harness` replays it on stable from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS]}
seconds=${2:-0}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if [ "${FUZZ_INSTALL_NIGHTLY:-0}" = 1 ]; then
        rustup toolchain install nightly --profile minimal
    else
        echo "fuzz: no nightly toolchain (libFuzzer needs one): rustup toolchain install nightly --profile minimal" >&2
        exit 2
    fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install --locked cargo-fuzz
fi

targets=("$target")
if [ "$target" = all ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ "$seconds" = 0 ]; then echo "==> fuzz $t (until stopped)"; else echo "==> fuzz $t for ${seconds}s"; fi
    # -O: optimised with debug assertions, as the harness's tests run; the corpus directory first
    # (new inputs go there), then the committed seeds (read only).
    cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096
done
