#!/usr/bin/env bash
# Makes the Debian 12 base image that deploy/docker's Dockerfiles build FROM, where no
# image can be pulled: `debootstrap --variant=minbase bookworm` (with curl for the health
# check and DejaVu fonts for the trainer's plots), trimmed (no docs, man pages, locales,
# package lists or .debs: about 90 MB) and `podman import`ed. Prints the image name.
#
# Done once per machine: the image stays in podman's storage, and the root filesystem's
# tarball in ~/.cache/cifar-edge (so a reset podman store costs an import, 10 s, not a
# debootstrap, about 70 s). DEBIAN_MIRROR picks another mirror.
set -euo pipefail
image=localhost/cifar-edge-base:bookworm
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/cifar-edge
tarball=$cache/debian-bookworm-minbase.tar
if [ ! -f "$tarball" ]; then
  root=$(mktemp -d)
  trap 'rm -rf --one-file-system "$root"' EXIT
  echo "debootstrap: a Debian 12 base image (once per machine, about a minute)" >&2
  debootstrap --variant=minbase --include=ca-certificates,curl,fonts-dejavu-core bookworm "$root" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  mkdir -p "$cache"
  tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
fi
podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image"
