#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside bytes (fuzz/README.md).
#
#   scripts/fuzz.sh ci                 build the SDK's targets and fuzz each briefly (CI:
#                                      the server's and trainer's instrumented build takes
#                                      11 minutes on 2 cores; their saved inputs replay on
#                                      stable in `cargo test` instead)
#   scripts/fuzz.sh run SECONDS [T..]  fuzz each target (or the named ones) for SECONDS,
#                                      growing target/fuzz/corpus/<t>; crashes, hangs and
#                                      out-of-memory inputs are minimized into
#                                      fuzz/regressions/<t>/ (commit them with the fix)
#   scripts/fuzz.sh merge              minimize the grown corpora; keep the smallest inputs
#                                      (FUZZ_CORPUS_KB, 256 per target) in fuzz/corpus/<t>/,
#                                      the committed corpus the regression test replays
#   scripts/fuzz.sh build              only build
#
# FUZZ_SET=sdk limits any mode to the SDK's targets (FUZZ_SET=all: every target).
# libFuzzer needs the nightly toolchain's sanitizer-coverage instrumentation: where no
# nightly toolchain is installed the script says so and exits 0 (the saved inputs still
# run on stable, in `cargo test -p cifar-fuzz`). ASAN=1 adds AddressSanitizer (slower;
# what the long runs use for the SDK's unsafe kernels). Every run is bounded: a process
# over 2 GiB (-rss_limit_mb), one allocation over 1 GiB (fuzz/src/bounded_alloc.rs) and
# an input that runs over 10 s (-timeout) are findings.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
  ci | run | merge | build) ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain list): libFuzzer cannot be built here; skipping" >&2
  echo "fuzz: the saved inputs still run on stable: cargo test -p cifar-fuzz" >&2
  exit 0
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth"
flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing"
suffix=""
if [ "${ASAN:-0}" = 1 ]; then
  flags+=" -Zsanitizer=address"
  suffix="-asan"
fi
# The seed writer, built as the suite builds it (stable, release: already there in CI).
source scripts/target-dir.sh
seeds_bin="$target/release/fuzz-seeds"
cargo build --release --locked --quiet -p cifar-fuzz --bin fuzz-seeds
# Instrumented builds go to their own folder: nothing they make mixes with the suite's.
fuzz_target_dir="$target/fuzz-build$suffix"
bin_dir="$fuzz_target_dir/$triple/fuzz"
work="$target/fuzz"
limits=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0:detect_leaks=0"

# The targets to build and run: FUZZ_SET=all (the default) or sdk (the SDK's only: a
# build without tokio, tonic or candle).
set_=${FUZZ_SET:-all}
[ "$mode" = ci ] && set_=${FUZZ_SET:-sdk}
# name max_len, one per line, from the one list (fuzz/src/lib.rs).
targets() { "$seeds_bin" --list | awk -v set="$set_" 'set == "all" || $3 == set { print $1, $2 }'; }

build() {
  local started=$SECONDS bins=() features=libfuzzer
  while read -r t _; do bins+=(--bin "$t"); done < <(targets)
  [ "$set_" = all ] || [ "$set_" = sdk ] || features="libfuzzer,$set_"
  [ "$set_" = all ] || features+=" --no-default-features"
  echo "fuzz: building $(( ${#bins[@]} / 2 )) targets (nightly, instrumented) into $fuzz_target_dir" >&2
  # shellcheck disable=SC2086  # $features is two words on purpose
  RUSTFLAGS="$flags" CARGO_TARGET_DIR="$fuzz_target_dir" cargo +nightly build --locked --quiet \
    --manifest-path fuzz/Cargo.toml --profile fuzz --target "$triple" --features $features "${bins[@]}"
  echo "fuzz: built in $((SECONDS - started)) s" >&2
}

# The starting corpus of a target: the seeds, the committed corpus, the regressions.
prepare() {
  local t=$1
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  for d in "$work/seeds/$t" "fuzz/corpus/$t" "fuzz/regressions/$t"; do
    [ -d "$d" ] && cp -n "$d"/* "$work/corpus/$t"/ 2>/dev/null || true
  done
}

# fuzz TARGET MAX_LEN SECONDS: one libFuzzer run; prints its last status line.
fuzz() {
  local t=$1 max_len=$2 secs=$3 log="$work/logs/$1.log"
  prepare "$t"
  mkdir -p "$work/logs"
  local status=0
  "$bin_dir/$t" "$work/corpus/$t" -max_len="$max_len" -max_total_time="$secs" "${limits[@]}" \
    -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  local execs cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  printf '%-14s %6s s  %10s execs  %-22s %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" \
    "$([ $status = 0 ] && echo ok || echo "FINDING (exit $status, log $log)")"
  return $status
}

# Minimizes every artifact of TARGET into fuzz/regressions/TARGET/.
keep_findings() {
  local t=$1 a
  for a in "$work/artifacts/$t"/*; do
    [ -f "$a" ] || continue
    mkdir -p "fuzz/regressions/$t"
    local out
    out="fuzz/regressions/$t/$(basename "$a")"
    "$bin_dir/$t" "$a" -minimize_crash=1 -max_total_time=60 "${limits[@]}" -exact_artifact_path="$out" \
      >"$work/logs/$t.minimize.log" 2>&1 || true
    [ -f "$out" ] || cp "$a" "$out"
    # Kept once: a later run must not bring back what is already fixed.
    mkdir -p "$work/kept/$t" && mv "$a" "$work/kept/$t/"
    echo "fuzz: $t: finding kept as $out" >&2
  done
}

case "$mode" in
  build)
    build
    ;;
  ci)
    # Half a minute per target: the targets build and run on nightly, and the saved
    # corpus gets a first round of mutations. The long runs are by hand (`run`).
    build
    rm -rf "$work/seeds" && "$seeds_bin" "$work/seeds"
    failed=0
    while read -r t max_len; do
      fuzz "$t" "$max_len" "${FUZZ_SECONDS:-30}" || failed=1
    done < <(targets)
    if [ $failed != 0 ]; then
      echo "fuzz: findings above; reproduce with $bin_dir/<target> <artifact>" >&2
      exit 1
    fi
    ;;
  run)
    secs=${1:?usage: scripts/fuzz.sh run SECONDS [TARGET...]}
    shift
    build
    rm -rf "$work/seeds" && "$seeds_bin" "$work/seeds"
    wanted=" $* "
    while read -r t max_len; do
      [ $# -gt 0 ] && [[ "$wanted" != *" $t "* ]] && continue
      # A finding stops libFuzzer; start again (up to 20 times) until the time is spent.
      deadline=$((SECONDS + secs))
      for _ in $(seq 20); do
        left=$((deadline - SECONDS))
        [ $left -gt 0 ] || break
        fuzz "$t" "$max_len" "$left" || true
      done
      keep_findings "$t"
    done < <(targets)
    ;;
  merge)
    build # up to date, and every target of the set (a no-op when nothing changed)
    # The committed corpus is the merged (minimized) one, smallest inputs first, up to
    # FUZZ_CORPUS_KB per target: the rest stays in target/fuzz/corpus for the next run.
    cap=$(( ${FUZZ_CORPUS_KB:-256} * 1024 ))
    while read -r t max_len; do
      [ -d "$work/corpus/$t" ] || continue
      merged="$work/merged/$t"
      rm -rf "$merged" && mkdir -p "$merged" "$work/logs"
      "$bin_dir/$t" -merge=1 -max_len="$max_len" "${limits[@]}" "$merged" "$work/corpus/$t" \
        >"$work/logs/$t.merge.log" 2>&1
      rm -rf "fuzz/corpus/$t" && mkdir -p "fuzz/corpus/$t"
      total=0
      while read -r size f; do
        [ $((total + size)) -le "$cap" ] || break
        cp "$merged/$f" "fuzz/corpus/$t/"
        total=$((total + size))
      done < <(cd "$merged" && find . -type f -printf '%s %P\n' | sort -n)
      echo "fuzz: $t: $(ls "$merged" | wc -l) inputs after merging, $(ls "fuzz/corpus/$t" | wc -l) kept ($total bytes)" >&2
    done < <(targets)
    ;;
esac
