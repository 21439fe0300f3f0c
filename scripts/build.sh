#!/usr/bin/env bash
# Compiles every role into a standalone binary: dist/wssmig-<role>. The binaries need only
# glibc on the target host; nothing has to be installed there. Do not strip them: stripping
# removes the embedded program.
set -euo pipefail
cd "$(dirname "$0")/.."
BUN="${BUN:-$(pwd)/node_modules/.bin/bun}"
[ -x "$BUN" ] || BUN=bun
mkdir -p dist
roles=(gencerts server client receive send)
for role in "${roles[@]}"; do
  [ -f "src/$role.ts" ] || continue
  "$BUN" build --compile --minify-whitespace --minify-syntax "src/$role.ts" --outfile "dist/wssmig-$role" >/dev/null
  echo "built dist/wssmig-$role"
done
