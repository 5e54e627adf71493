#!/usr/bin/env bash
# Builds libcifar and installs it under PREFIX the way cargo-c does:
#   PREFIX/lib/libcifar.so.0.1.0 (+ libcifar.so.1, libcifar.so links), libcifar.a,
#   PREFIX/lib/pkgconfig/cifar.pc, PREFIX/include/cifar.h
# Then: cc app.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs cifar)
# Static: pkg-config --static --libs cifar, with -lcifar replaced by -l:libcifar.a.
#
#   scripts/install-lib.sh PREFIX
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:?usage: scripts/install-lib.sh PREFIX}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
abi="$(sed -n 's/^#define CIFAR_ABI_VERSION \([0-9]*\)/\1/p' include/cifar.h)"
cargo build --release --locked -p cifar-ffi
source scripts/target-dir.sh
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp "$target/release/libcifar.so" "$prefix/lib/libcifar.so.$version"
ln -sf "libcifar.so.$version" "$prefix/lib/libcifar.so.$abi"
ln -sf "libcifar.so.$abi" "$prefix/lib/libcifar.so"
cp "$target/release/libcifar.a" "$prefix/lib/libcifar.a"
cp include/cifar.h "$prefix/include/cifar.h"
cat > "$prefix/lib/pkgconfig/cifar.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: cifar
Description: cifar-edge inference SDK (C API)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lcifar
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed libcifar $version (ABI $abi) in $prefix"
