#!/usr/bin/env bash
# Installs what the build and tests need on a fresh Debian machine with Rust:
# nothing beyond the Rust toolchain today; fonts for the plots' labels if missing.
# Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]} (plots will have no labels without fonts)" >&2
  fi
fi
