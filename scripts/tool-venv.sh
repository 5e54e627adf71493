#!/usr/bin/env bash
# Installs a Python tool the tests run as a real server (pinned in REQUIREMENTS) into a
# virtual environment under the target folder, once, and prints the path of its
# EXECUTABLE. Usage: scripts/tool-venv.sh NAME REQUIREMENTS EXECUTABLE
# (scripts/mlflow-venv.sh and scripts/moto-venv.sh name the two the suite uses).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/target-dir.sh
name=$1 req=$2 exe=$3
venv="$target/$name-venv"
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  cp "$req" "$venv/requirements.txt"
fi
echo "$venv/bin/$exe"
