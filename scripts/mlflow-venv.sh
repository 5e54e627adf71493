#!/usr/bin/env bash
# Installs a real MLflow tracking server (PyPI, pinned in trainer/tests/mlflow-requirements.txt)
# into a virtual environment under the target folder, once, and prints the path of its
# `mlflow` executable. scripts/test.sh exports it as CIFAR_MLFLOW for
# trainer/tests/tracking_cli.rs, which starts and stops the server itself on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/target-dir.sh
venv="$target/mlflow-venv"
req=trainer/tests/mlflow-requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  cp "$req" "$venv/requirements.txt"
fi
echo "$venv/bin/mlflow"
