#!/usr/bin/env bash
# Raspberry Pi checks, called by .ci/run; runs alone too:
#   bash .ci/pi.sh
# Installs the cross toolchain, qemu and debootstrap, then
#   1. runs the unit tests of edgefleet-protocol and edge-agent, the golden
#      wire tests and the agent's CLI tests for aarch64 under qemu-user,
#   2. packages that aarch64 build as an arm64 .deb with cargo-deb,
#   3. installs the .deb and, separately, packaging/install.sh in an arm64
#      Debian root (debootstrap + qemu-user-static), enrolling with a real
#      host hub, and uninstalls both (packaging/chroot-test.sh).
# The CI .deb holds the dev-profile binary the tests just built (deps at
# opt-level 2): a fat-LTO release cross build takes ~10 min here, too long
# for CI. The release binary and its size: packaging/size.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
target=aarch64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
start=$(date +%s)
step() {
  echo
  echo "=== pi: $* ($(($(date +%s) - start))s)"
}

step "system packages (cross linkers, qemu, debootstrap)"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
need=()
for p in gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
  qemu-user qemu-user-static binfmt-support debootstrap shellcheck dpkg-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

step "rust targets"
rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null

step "cargo-deb"
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0
fi
cargo deb --version

step "shellcheck packaging scripts"
shellcheck -s sh packaging/install.sh packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm
shellcheck packaging/chroot-test.sh packaging/size.sh .ci/pi.sh .ci/run tests/kube/build.sh

step "aarch64 unit tests under qemu (edgefleet-protocol, edge-agent)"
# One invocation: the same feature set as one build, no rebuilt dependencies.
# Unit tests of both crates, the protocol's golden wire tests, the agent's
# CLI tests (the aarch64 binary run through binfmt_misc).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
$sudo update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
# Binaries started through binfmt_misc find the arm64 libc here.
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu \
  cargo test --target "$target" -p edgefleet-protocol -p edge-agent --lib --bins --test wire --test cli

step "aarch64 binary runs under qemu"
bin="$target_dir/$target/debug/edge-agent"
file -b "$bin" 2>/dev/null || true
qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" --version

step "arm64 .deb (cargo-deb, dev-profile binary from the tests)"
deb="$target_dir/pi/edge-agent_arm64.deb"
mkdir -p "$(dirname "$deb")"
cargo deb -p edge-agent --target "$target" --profile dev --no-build --strip --fast -o "$deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

step "systemd units"
if [ -x "$target_dir/debug/edge-agent" ] && [ -x "$target_dir/debug/cloudcore" ] &&
  command -v systemd-analyze >/dev/null 2>&1; then
  systemd/verify.sh "$target_dir/debug"
else
  echo "(host debug binaries not built yet: .ci/run runs systemd/verify.sh)"
fi

step "arm64 chroot install test"
cloudcore=${CLOUDCORE:-$target_dir/debug/cloudcore}
if [ ! -x "$cloudcore" ]; then
  cargo build -p cloudcore --bin cloudcore
fi
CLOUDCORE="$cloudcore" packaging/chroot-test.sh "$deb" "$bin"

step "done"
