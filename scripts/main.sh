#!/usr/bin/env bash
# The README's main job: install what is needed, import the data, train a small model
# on the CPU (about 3 minutes on 2 cores), evaluate it, compile it to an int8 file and
# classify the sample images with that file.
#
#   scripts/main.sh                          # the bundled CIFAR-10 JPEG archive (../shared/data)
#   scripts/main.sh PATH                     # an ImageFolder directory, .tar or .tar.gz
#   scripts/main.sh cifar-10-binary.tar.gz   # the official binary archive
#   scripts/main.sh [PATH] key=value ...     # config overrides, e.g. train.epochs=1
#   CONFIG=configs/cpu.toml scripts/main.sh  # the 15-minute recipe
#
# Environment: CONFIG (the recipe), DATA_DIR (where the dataset is imported, default
# data/cifar10; an existing dataset there is reused), RUN_DIR (default
# runs/<UTC time>-<recipe>), TRAINER (an already built trainer binary: no build).
set -euo pipefail
# Paths the user gives are relative to where they ran this; the defaults to the checkout.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
src=""
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
  src="$(abs "$1")"
  shift
fi
overrides=("$@")
config="$(abs "${CONFIG:-$(dirname "$0")/../configs/cpu-quick.toml}")"
[ -z "${DATA_DIR:-}" ] || DATA_DIR="$(abs "$DATA_DIR")"
[ -z "${RUN_DIR:-}" ] || RUN_DIR="$(abs "$RUN_DIR")"
[[ "${TRAINER:-}" != */* ]] || TRAINER="$(abs "$TRAINER")"
cd "$(dirname "$0")/.."
src="${src:-../shared/data/cifar10-train-jpg.tar.gz}"
data_dir="${DATA_DIR:-data/cifar10}"
run="${RUN_DIR:-runs/$(date -u +%Y%m%d-%H%M%S)-$(basename "$config" .toml)}"

if [ -n "${TRAINER:-}" ]; then
  trainer="$TRAINER"
else
  source scripts/setup.sh
  cargo build --release --locked -p cifar-trainer
  source scripts/target-dir.sh
  trainer="$target/release/trainer"
fi

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

"$trainer" fit --config "$config" --run-dir "$run" data.path="$data_dir" "${overrides[@]}"
"$trainer" eval --run "$run" --tta
# Compile to one int8 file (BN folded, calibrated, checked against f32), describe it,
# score the file itself, and classify with it.
"$trainer" compile --run "$run" --precision int8 -o "$run/model.cifar"
"$trainer" inspect --brief "$run/model.cifar"
"$trainer" eval --model "$run/model.cifar" --data "$data_dir"
"$trainer" classify "$run/model.cifar" fixtures/images/*.png
echo
echo "done: the run (metrics, plots, evaluation) is in $run/, the compiled model is $run/model.cifar"
echo "serve it over HTTP: cargo run --release -p cifar-server --bin cifar-serve -- --model $run/model.cifar"
