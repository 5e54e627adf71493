#!/usr/bin/env bash
# Builds the container images from binaries built here (Debian 12's rustc is too old to
# build the workspace inside the image): localhost/cifar-serve:TAG from
# deploy/docker/serve.Dockerfile and localhost/cifar-trainer:TAG from trainer.Dockerfile,
# on the debootstrap base image (scripts/base-image.sh), with `podman build --isolation
# chroot` (no registry, no container runtime needed).
#
# Usage: scripts/build-images.sh [--model FILE.cifar] [--tag TAG]
#   --model  bake this model into the server image as /models/model.cifar (default:
#            none; mount a volume on /models)
#   --tag    image tag (default: latest)
set -euo pipefail
model="" tag=latest
while [ $# -gt 0 ]; do
  case $1 in
    --model|--tag)
      [ $# -ge 2 ] || { echo "$1 needs a value (see --help)" >&2; exit 2; }
      if [ "$1" = --model ]; then model=$(realpath -- "$2" 2>/dev/null || echo "$2"); else tag=$2; fi
      shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$model" ] && [ ! -f "$model" ]; then
  echo "no such model file: $model" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
source scripts/target-dir.sh
base=$(scripts/base-image.sh)
cargo build --release --locked -q -p cifar-server --bin cifar-serve -p cifar-trainer --bin trainer
stage=$target/images
rm -rf "$stage" && mkdir -p "$stage/serve/models" "$stage/trainer"
strip -o "$stage/serve/cifar-serve" "$target/release/cifar-serve"
strip -o "$stage/trainer/trainer" "$target/release/trainer"
[ -z "$model" ] || cp "$model" "$stage/serve/models/model.cifar"
cp -r configs "$stage/trainer/configs"
build() {
  # The image this tag named before, removed once the new one is built (only that one:
  # other untagged images on the machine are not ours to prune).
  local old
  old=$(podman image inspect --format '{{.Id}}' "localhost/cifar-$1:$tag" 2>/dev/null || true)
  podman build --quiet --isolation chroot --format docker --build-arg "BASE=$base" \
    -f "deploy/docker/$1.Dockerfile" -t "localhost/cifar-$1:$tag" "$stage/$1" >/dev/null
  echo "built localhost/cifar-$1:$tag ($(podman image inspect --format '{{.Size}}' "localhost/cifar-$1:$tag" | numfmt --to=si)B)"
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "localhost/cifar-$1:$tag")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}
build serve
build trainer
