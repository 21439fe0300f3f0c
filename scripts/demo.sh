#!/usr/bin/env bash
# The README's first command: sets up this machine (packages, npm dependencies, binaries) and
# runs a real live migration between two local VMs through the wssmig tunnel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node_modules/.bin/bun scripts/demo.ts
