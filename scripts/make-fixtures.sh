#!/usr/bin/env bash
# Rebuilds every file in fixtures/ from committed sources with this checkout's code
# (after a format change, say):
#
#   - models/tiny-{f32,int8}.cifar: configs/fixture.toml, trained here (a minute), compiled;
#   - models/{cpu,resnet}-{f32,int8}.cifar: the benchmark models, compiled from the
#     committed runs fixtures/runs/{cpu,resnet}/ (configs/cpu.toml and configs/resnet.toml,
#     their final weights); with --retrain those runs are trained again first (about 35
#     minutes on 2 cores; training is deterministic, so the weights come out the same);
#   - images/, drift/ and golden/: sample images and the tiny models' golden outputs;
#   - malformed/: the malformed-file corpus (sdk/tests/malformed.rs writes it).
#
# fixtures/old-format/ keeps model files of earlier format versions as they were; they
# are not rebuilt (tests check that they are refused with a clear message).
#
# Needs the imported dataset in data/cifar10 (scripts/main.sh creates it).
#
#   scripts/make-fixtures.sh [--retrain]
set -euo pipefail
cd "$(dirname "$0")/.."
retrain=0
[ "${1:-}" = "--retrain" ] && retrain=1
cargo build --release --locked -p cifar-trainer
source scripts/target-dir.sh
trainer="$target/release/trainer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -f data/cifar10/manifest.json ] || { echo "import the dataset first: scripts/main.sh or trainer data import" >&2; exit 1; }

if [ $retrain = 1 ]; then
  for family in cpu resnet; do
    "$trainer" --quiet fit --config "configs/$family.toml" --run-dir "$work/$family"
    mkdir -p "fixtures/runs/$family"
    cp "$work/$family"/{config.toml,dataset.json,model.safetensors,summary.json} "fixtures/runs/$family/"
  done
fi

rm -rf fixtures/models fixtures/images fixtures/golden fixtures/drift
mkdir -p fixtures/models fixtures/golden fixtures/drift
"$trainer" --quiet fit --config configs/fixture.toml --run-dir "$work/tiny"
"$trainer" compile --run "$work/tiny" --precision f32 -o fixtures/models/tiny-f32.cifar
"$trainer" compile --run "$work/tiny" --precision int8 --calibration 500 -o fixtures/models/tiny-int8.cifar
for family in cpu resnet; do
  for p in f32 int8; do
    "$trainer" compile --run "fixtures/runs/$family" --precision $p -o "fixtures/models/$family-$p.cifar"
  done
done
"$trainer" data export data/cifar10 --out fixtures/images --per-class 1
"$trainer" data export data/cifar10 --sheet fixtures/drift/validation-500.png --per-class 50
for p in f32 int8; do
  "$trainer" classify --device cpu --json --logits --top-k 10 "fixtures/models/tiny-$p.cifar" fixtures/images/*.png \
    > "fixtures/golden/tiny-$p.jsonl"
done
rm -rf fixtures/malformed
CIFAR_MALFORMED_DIR="$PWD/fixtures/malformed" cargo test --release --locked -p cifar-sdk --test malformed >&2
echo "fixtures rebuilt"
