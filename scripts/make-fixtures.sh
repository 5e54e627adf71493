#!/usr/bin/env bash
# Rebuilds fixtures/: a tiny trained model (f32 and int8), one validation image per
# class, and the golden outputs of both models on those images. Needs the imported
# dataset in data/cifar10 (scripts/main.sh creates it). Training is deterministic, so
# the weights are reproducible; the files differ only in their creation time.
#
#   scripts/make-fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cifar-trainer
source scripts/target-dir.sh
trainer="$target/release/trainer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf fixtures/models fixtures/images fixtures/golden fixtures/drift
mkdir -p fixtures/models fixtures/golden
"$trainer" --quiet fit --config configs/fixture.toml --run-dir "$work/run"
"$trainer" compile --run "$work/run" --precision f32 -o fixtures/models/tiny-f32.cifar
"$trainer" compile --run "$work/run" --precision int8 --calibration 500 -o fixtures/models/tiny-int8.cifar
"$trainer" data export data/cifar10 --out fixtures/images --per-class 1
mkdir -p fixtures/drift
"$trainer" data export data/cifar10 --sheet fixtures/drift/validation-500.png --per-class 50
for p in f32 int8; do
  "$trainer" classify --device cpu --json --logits --top-k 10 "fixtures/models/tiny-$p.cifar" fixtures/images/*.png \
    > "fixtures/golden/tiny-$p.jsonl"
done
echo "fixtures rebuilt"
