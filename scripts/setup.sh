#!/usr/bin/env bash
# Prepares a Debian machine to build, test and demo wssmig: system packages (as root, with
# apt-get; otherwise it says what to install), the npm dependencies (Bun among them), and the
# compiled binaries in dist/. Safe to run again: it installs only what is missing.
#   bash scripts/setup.sh           what the demo needs
#   bash scripts/setup.sh --tests   also what only the tests need (tinyproxy)
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=false
[ "${1:-}" = "--tests" ] && for_tests=true

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v openssl >/dev/null || missing+=(openssl)
command -v as >/dev/null && command -v ld >/dev/null || missing+=(binutils)
command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
# The lossy-link test emulates netem with a small python3 forwarder where the kernel lacks netem.
command -v python3 >/dev/null || missing+=(python3)
# The --proxy tests run a real HTTP proxy, each with a configuration of its own.
installs_tinyproxy=false
if $for_tests && ! command -v tinyproxy >/dev/null; then
  missing+=(tinyproxy)
  installs_tinyproxy=true
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if $installs_tinyproxy; then
      # The package may start a system-wide proxy service; the tests need none, so leave none running.
      (systemctl disable --now tinyproxy || service tinyproxy stop) >/dev/null 2>&1 || true
    fi
  else
    echo "setup: missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and run again" >&2
    exit 1
  fi
fi

# npm ci only when the lock file changed since the last install (it wipes node_modules).
if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
bash scripts/build.sh
