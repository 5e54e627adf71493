#!/usr/bin/env bash
# The README's main job: install what is needed, import the data, train a small model
# on the CPU (about 3 minutes on 2 cores), evaluate it.
#
#   scripts/main.sh                      # the bundled CIFAR-10 JPEG archive (../shared/data)
#   scripts/main.sh PATH                 # an ImageFolder directory, .tar or .tar.gz
#   scripts/main.sh cifar-10-binary.tar.gz   # the official binary archive
#   CONFIG=configs/cpu.toml scripts/main.sh  # the 15-minute recipe
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

src="${1:-../shared/data/cifar10-train-jpg.tar.gz}"
config="${CONFIG:-configs/cpu-quick.toml}"
data_dir="data/cifar10"

cargo build --release --locked -p cifar-trainer
trainer=target/release/trainer

if [ ! -f "$data_dir/manifest.json" ]; then
  if [ ! -e "$src" ]; then
    echo "no dataset at $src: pass an ImageFolder directory or archive, or cifar-10-binary.tar.gz" >&2
    exit 1
  fi
  case "$(basename "$src")" in
    cifar-10-binary.tar.gz) "$trainer" data fetch --file "$src" --out "$data_dir" ;;
    *) "$trainer" data import "$src" --out "$data_dir" ;;
  esac
fi
"$trainer" data verify "$data_dir"

run="runs/$(date -u +%Y%m%d-%H%M%S)-$(basename "$config" .toml)"
"$trainer" fit --config "$config" --run-dir "$run" data.path="$data_dir"
"$trainer" eval --run "$run" --tta
# Compile to one int8 file (BN folded, calibrated, checked against f32) and use it.
"$trainer" compile --run "$run" --precision int8 -o "$run/model.cifar"
"$trainer" inspect "$run/model.cifar" | head -8
"$trainer" classify "$run/model.cifar" fixtures/images/*.png
echo
echo "done: the run (metrics, plots, evaluation) is in $run/, the compiled model is $run/model.cifar"
echo "serve it over HTTP: cargo run --release -p cifar-server --bin cifar-serve -- --model $run/model.cifar"
