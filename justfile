# Shortcuts over plain cargo. Every recipe is one cargo command you can run by hand.

# Run the whole test suite (what CI runs last, after the checks below).
test:
    cargo test --workspace

# Sweep simulated seeds: `just sim 0..100000 chaos`.
sim seeds="0..10000" profile="":
    cargo run --release -p raft-sim -- run --seeds {{seeds}} {{ if profile != "" { "--profile " + profile } else { "" } }}

# Replay one seed with a per-event trace.
replay seed profile nodes="3":
    cargo run --release -p raft-sim -- replay --seed {{seed}} --profile {{profile}} --nodes {{nodes}} --trace

# Explore every interleaving (`just explore --depth 12`; every run with two timeouts: `just explore --depth 0 --timeouts --clock 2 --reorders 0 --proposals 0 --crashes 0`).
explore *args="--depth 12":
    cargo run --release -p raft-sim -- explore {{args}}

# Simulator and server benchmarks (see docs/benchmarks.md).
bench:
    cargo run --release -p raft-sim -- run --seeds 0..2000 --profile chaos --nodes 3 --jobs 1
    cargo run --release -p raft-sim --example core_bench -- 1000000 128 64

# Fuzz a target (`just fuzz core_events 600`; `all 30`: each in turn; 0 s: until stopped). Needs nightly.
fuzz target="core_events" seconds="0":
    scripts/fuzz.sh {{target}} {{seconds}}

# Replay the committed fuzz seeds and regressions on stable (part of `just test`).
fuzz-replay:
    cargo test -p raft-fuzz-harness

# A local 3-node raftkv cluster on ports 6379-6381 (`just cluster 3 lease` for lease reads).
cluster nodes="3" reads="index":
    cargo run --release -p raft-driver-std --bin raftkv -- cluster --nodes {{nodes}} --read-mode {{reads}}

# A 3-node cluster in containers (image FROM scratch with a static raftkv; `just deploy 5` for five).
deploy nodes="3":
    deploy/build.sh
    deploy/compose.sh -f docker-compose.yml {{ if nodes == "5" { "-f docker-compose.5.yml" } else { "" } }} up -d
    @echo "clients: redis-cli -p 6379 (node 1; 6380, 6381...); metrics: curl 127.0.0.1:9101/metrics; status: deploy/bin/raftkv status 127.0.0.1:6379"

# Stop the containers and remove everything `just deploy` made (containers, network, volumes, image).
deploy-down:
    deploy/compose.sh -f docker-compose.yml -f docker-compose.5.yml down -v --remove-orphans
    -docker rmi raftkv:local

# The failure drills on containers (docs/benchmarks.md has the figures); skips, saying why, without Docker.
drills:
    deploy/build.sh
    python3 scripts/drills.py

# The read figures of docs/benchmarks.md against redis-server (needs redis-server, redis-benchmark, bc).
read-figures:
    cargo build --release -p raft-driver-std --bin raftkv --example mixed
    scripts/read_figures.sh

# Formatting and lints, as CI checks them.
lint: fmt clippy

# Formatting, both workspaces.
fmt:
    cargo fmt --all --check
    cargo fmt --manifest-path raft-core/no-std-check/Cargo.toml --check

# Lints, warnings denied.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Prove raft-core is no_std: link it into a no_std binary and run it (raft-core/no-std-check).
nostd:
    cargo run --release --manifest-path raft-core/no-std-check/Cargo.toml

# The same for a bare-metal target (needs `rustup target add x86_64-unknown-none`).
nostd-bare-metal:
    cargo build --release --manifest-path raft-core/no-std-check/Cargo.toml --target x86_64-unknown-none

# The driver without its default features.
driver-minimal:
    cargo build -p raft-driver-std --no-default-features

# API docs, broken intra-doc links and other rustdoc warnings denied.
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Everything CI does, in CI's order (CI adds nostd-bare-metal where it can).
all: fmt nostd driver-minimal clippy doc test
