#!/usr/bin/env bash
# `docker-compose` (Compose v1) or `docker compose` (v2), whichever this machine has, run from
# deploy/ with the given arguments.
set -euo pipefail
cd "$(dirname "$0")"
if command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "$@"
elif docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
fi
echo "neither docker-compose nor the docker compose plugin is installed" >&2
exit 2
