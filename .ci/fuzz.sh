#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each,
# starting from its corpus in fuzz/corpus/<target> (read-only: new inputs go
# to a scratch directory). A crash, a panic or a leak fails the run and
# leaves the input under fuzz/artifacts/<target>/.
#
# cargo-fuzz drives libFuzzer with -Z flags: on the stable toolchain this
# repository pins, RUSTC_BOOTSTRAP=1 allows them. No sanitizer (-s none): the
# decoders are safe Rust, and ASan would double the build for no finding a
# panic would not already show.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
tools=${EDGEFLEET_CACHE:-$HOME/.cache/edgefleet}/cargo-fuzz
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --version 0.13.2 --root "$tools" >/dev/null
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target" "fuzz/corpus/$target"
  echo "--- $target (${seconds}s)"
  rc=0
  cargo fuzz run -s none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|thread .* panicked)' \
    "$scratch/$target.log" || true
  if [ "$rc" != 0 ]; then
    tail -40 "$scratch/$target.log" >&2
    echo "error: fuzz target $target failed (exit $rc); inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
