#!/usr/bin/env bash
# moto, a real S3-compatible server (PyPI, pinned in remote/testing/moto-requirements.txt):
# prints the path of its `moto_server` executable. scripts/test.sh exports it as
# CIFAR_MOTO for the trainer's and the server's object-storage tests, which start and
# stop it on loopback (remote/testing/moto.rs).
exec "$(dirname "$0")/tool-venv.sh" moto remote/testing/moto-requirements.txt moto_server
