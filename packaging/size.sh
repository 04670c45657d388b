#!/usr/bin/env bash
# Release-builds edge-agent for the Raspberry Pi targets (the real release
# profile: fat LTO, 1 codegen unit, panic=abort, stripped), strips it again
# with the target's binutils to be sure, and writes the sizes to
# BENCHMARKS.md (section agent-binary-size; target <= 12 MiB).
#   packaging/size.sh                         (aarch64 and armv7)
#   packaging/size.sh aarch64-unknown-linux-gnu
#   SIZE_NO_BUILD=1 packaging/size.sh …  (measure binaries built before)
# Needs the cross setup of .cargo/config.toml (see packaging/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then targets=("$@"); else
  targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
fi
target_dir=${CARGO_TARGET_DIR:-target}
limit=$((12 * 1024 * 1024))
rows=""
sections=""
over=""
for t in "${targets[@]}"; do
  case $t in
    aarch64-*) strip=aarch64-linux-gnu-strip pi="Raspberry Pi OS 64-bit (arm64)" ;;
    armv7-*) strip=arm-linux-gnueabihf-strip pi="Raspberry Pi OS 32-bit (armhf)" ;;
    *) strip=strip pi="$t" ;;
  esac
  s=$(date +%s)
  if [ -z "${SIZE_NO_BUILD:-}" ]; then
    echo "=== cargo build --release --target $t -p edge-agent"
    cargo build --release --target "$t" -p edge-agent
  fi
  secs=$(($(date +%s) - s))
  [ -z "${SIZE_NO_BUILD:-}" ] || secs="${SIZE_BUILD_SECS:-?}"
  out=$(mktemp)
  "$strip" -o "$out" "$target_dir/$t/release/edge-agent"
  bytes=$(stat -c %s "$out")
  sections="$sections- \`$t\` sections over 100 kB ($("${strip%strip}size" -A "$out" |
    awk '$2 > 100000 && $1 ~ /^\./ { printf "%s%s %.2f MiB", sep, $1, $2 / 1048576; sep = ", " }'))"$'\n'
  rm -f "$out"
  mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
  verdict="ok"
  if [ "$bytes" -gt "$limit" ]; then verdict="OVER"; over="$over $t"; fi
  echo "$t: $bytes bytes ($mib MiB), build ${secs}s"
  rows="$rows| \`$t\` ($pi) | $bytes | $mib MiB | ≤ 12 MiB | $verdict | ${secs} s |"$'\n'
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
machine="${cpu:-unknown CPU}, $(nproc) cores, $mem GiB RAM, Linux $(uname -r), $(rustc -V)"
body="Stripped \`edge-agent\` release binary (profile \`release\`: fat LTO, 1 codegen unit,
\`panic = \"abort\"\`, \`strip = \"symbols\"\`), cross-built with rustup targets and
Debian's cross linkers (\`.cargo/config.toml\`).

| target | bytes | size | target | verdict | build time (this machine, shared) |
|---|---|---|---|---|---|
${rows}
${sections}"
if [ -n "$over" ]; then
  body="$body
Over 12 MiB, \`.text\` is most of it. By symbol size (\`nm\` on the host build),
tract and what it instantiates (tract-core/-data/-linalg/-hir/-onnx/-nnef,
ndarray, rustfft, smallvec, generic core/alloc code) is about half of the
code; then h2/hyper/reqwest, kube-client and k8s-openapi, tokio, rustls.
What would shrink it: \`opt-level = \"s\"\` for the tract crates
(one \`[profile.release.package.tract-core]\` table per crate) or the whole release profile,
a leaner ONNX path (tract-onnx without tract-nnef/rustfft-backed ops),
\`-C relocation-model=static\` (non-PIE: no \`.rela.dyn\`) and
\`-C force-unwind-tables=no\` with \`panic = \"abort\"\` (\`.eh_frame\`);
measure with \`cargo bloat --release --target … -p edge-agent --crates\`
on a build with \`strip = false\`."
fi
BENCH_MACHINE=$machine BENCH_BODY=$body BENCH_CMD="packaging/size.sh" python3 - <<'EOF'
import datetime, os, pathlib
path = pathlib.Path("BENCHMARKS.md")
existing = path.read_text() if path.exists() else (
    "# Benchmarks\n\nEvery section below was written by the command it names; "
    "rerun that command to refresh it.\n")
id_ = "agent-binary-size"
begin, end = f"<!-- bench:{id_} -->", f"<!-- /bench:{id_} -->"
section = (f"{begin}\n## edge-agent binary size (stripped, Raspberry Pi targets)\n\n"
           f"- Command: `{os.environ['BENCH_CMD']}`\n- Machine: {os.environ['BENCH_MACHINE']}\n"
           f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}\n\n"
           f"{os.environ['BENCH_BODY'].rstrip()}\n{end}")
b, e = existing.find(begin), existing.find(end)
if b >= 0 and e > b:
    updated = existing[:b] + section + existing[e + len(end):]
else:
    updated = existing.rstrip() + "\n" + section + "\n"
path.write_text(updated)
print(f"wrote section {id_} of {path}")
EOF
if [ -n "$over" ]; then
  echo "over 12 MiB:$over (cargo install cargo-bloat; cargo bloat --release --target … -p edge-agent --crates)" >&2
  exit 1
fi
