# Sourced by the scripts: sets `target` to the folder cargo builds into, wherever the
# user's settings put it (CARGO_TARGET_DIR, `build.target-dir` in a cargo config), so a
# script runs the binaries it just built, not stale ones under ./target.
target="$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
