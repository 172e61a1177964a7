#!/usr/bin/env bash
# Builds the raftkv image (raftkv:local): a statically linked release binary (glibc, crt-static;
# no musl target or base image needed) copied into an image FROM scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p raft-driver-std --bin raftkv \
    --target "$target" --target-dir target/static
mkdir -p deploy/bin
cp "target/static/$target/release/raftkv" deploy/bin/raftkv
strip deploy/bin/raftkv 2>/dev/null || true
if ldd deploy/bin/raftkv 2>&1 | grep -q '=>'; then
    echo "deploy/bin/raftkv is not statically linked" >&2
    exit 1
fi
docker build -t raftkv:local deploy
