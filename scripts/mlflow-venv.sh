#!/usr/bin/env bash
# A real MLflow tracking server (PyPI, pinned in trainer/tests/mlflow-requirements.txt):
# prints the path of its `mlflow` executable. scripts/test.sh exports it as CIFAR_MLFLOW
# for trainer/tests/tracking_cli.rs, which starts and stops the server on loopback.
exec "$(dirname "$0")/tool-venv.sh" mlflow trainer/tests/mlflow-requirements.txt mlflow
