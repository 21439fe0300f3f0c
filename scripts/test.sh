#!/usr/bin/env bash
# The test command: sets up what is missing, builds the binaries, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
node_modules/.bin/tsc --noEmit -p .

report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
node_modules/.bin/bun test --timeout 300000 "$@" 2>&1 | tee "$report" || status=$?
# bun test ends with " N pass" / " N fail"; also say it in the plain form other tools read.
passed=$(sed -n 's/^ *\([0-9]\+\) pass$/\1/p' "$report" | tail -n 1)
failed=$(sed -n 's/^ *\([0-9]\+\) fail$/\1/p' "$report" | tail -n 1)
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
