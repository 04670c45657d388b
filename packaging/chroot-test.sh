#!/usr/bin/env bash
# Installs edge-agent for real in an arm64 Debian root (debootstrap minbase +
# qemu-user-static through binfmt_misc), as on a Raspberry Pi without systemd
# as PID 1:
#   1. the .deb (systemd-sysusers from systemd-standalone-sysusers): files, modes, owners, the edgefleet user, the enabled unit,
#      `edge-agent --version` and `edge-agent check` (as the service user),
#      with a hub: `edge-agent enroll` as root leaving edgefleet-owned state,
#      a config edit surviving a reinstall, remove keeping config and state,
#      purge deleting them;
#   2. packaging/install.sh with a local binary: the same checks, enrollment
#      with a real hub (a host cloudcore, when CLOUDCORE=path is given),
#      a second run changing nothing, the uninstall script removing it all.
#
#   packaging/chroot-test.sh EDGE_AGENT_DEB EDGE_AGENT_ARM64_BINARY
#   CLOUDCORE=target/debug/cloudcore packaging/chroot-test.sh …   (adds enrollment)
# Needs root, debootstrap, qemu-user-static, binfmt-support; ~2-3 min.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
deb=$(realpath "${1:?usage: chroot-test.sh EDGE_AGENT_DEB EDGE_AGENT_BINARY}")
bin=$(realpath "${2:?usage: chroot-test.sh EDGE_AGENT_DEB EDGE_AGENT_BINARY}")
arch=${ARCH:-arm64}
qemu="qemu-aarch64"
if [ "$arch" = armhf ]; then qemu="qemu-arm"; fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

fails=0
passes=0
ok() {
  passes=$((passes + 1))
  echo "  ok   $*"
}
bad() {
  fails=$((fails + 1))
  echo "  FAIL $*"
}
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
# stat_is PATH "MODE OWNER GROUP" (inside the root)
stat_is() {
  local got
  # Owners are resolved by the host's names: compare numeric ids instead.
  got=$(stat -c '%a %u %g' "$root$1" 2>/dev/null || echo missing)
  local want_mode want_user want_group
  read -r want_mode want_user want_group <<<"$2"
  local want
  want="$want_mode $(uid "$want_user") $(gid "$want_group")"
  if [ "$got" = "$want" ]; then ok "$1 is $2"; else bad "$1 is $2 (got: $got)"; fi
}
uid() { if [ "$1" = root ]; then echo 0; else in_root getent passwd "$1" | cut -d: -f3; fi; }
gid() { if [ "$1" = root ]; then echo 0; else in_root getent group "$1" | cut -d: -f3; fi; }
in_root() { chroot "$root" "$@"; }
absent() { [ ! -e "$root$1" ] && [ ! -L "$root$1" ]; }
present() { [ -e "$root$1" ]; }

indent() { printf '%s\n' "$1" | sed 's/^/      /'; }
step() { echo "=== $* ($(($(date +%s) - start))s)"; }
start=$(date +%s)

step "binfmt_misc for $qemu"
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable "$qemu" >/dev/null 2>&1 || true
[ -e "/proc/sys/fs/binfmt_misc/$qemu" ] || {
  echo "binfmt for $qemu is not registered (apt-get install qemu-user-static binfmt-support)" >&2
  exit 1
}

root=$(mktemp -d /var/tmp/edgefleet-chroot.XXXXXX)
# mktemp makes it 0700: as "/" of the chroot that would stop every non-root
# user (the edgefleet checks) from resolving any path.
chmod 755 "$root"
hub_pid=
cleanup() {
  if [ -n "$hub_pid" ]; then kill "$hub_pid" 2>/dev/null || true; fi
  for m in proc dev/pts dev; do
    mountpoint -q "$root/$m" && umount -l "$root/$m"
  done
  rm -rf "$root"
}
trap cleanup EXIT

if [ -n "${CHROOT_TEMPLATE:-}" ]; then
  # Development only: reuse a finished debootstrap root instead of a new one.
  step "copy of $CHROOT_TEMPLATE into $root"
  cp -a "$CHROOT_TEMPLATE/." "$root/"
else
  step "debootstrap $arch bookworm minbase into $root"
  debootstrap --arch="$arch" --variant=minbase --include=systemd-standalone-sysusers --foreign bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }
  cp "/usr/bin/$qemu-static" "$root/usr/bin/"
  chroot "$root" /debootstrap/debootstrap --second-stage >>"$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }
  rm -f "$root.log"
fi
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
echo "  root: $(in_root uname -m), $(cat "$root/etc/debian_version")"

version=$(grep -m1 '^version' "$repo/Cargo.toml" | cut -d'"' -f2)

# The package depends on ca-certificates, whose postinst (an openssl rehash
# per certificate) takes minutes under qemu: the host's bundle stands in.
if [ ! -s "$root/etc/ssl/certs/ca-certificates.crt" ]; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
dpkg_i() { in_root dpkg -i --ignore-depends=ca-certificates /tmp/edge-agent.deb; }

hub_env=()
if [ -n "${CLOUDCORE:-}" ]; then
  step "a hub on the host for enrollment: $CLOUDCORE"
  hubdir=$(mktemp -d)
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  api=$(free_port)
  mqtt=$(free_port)
  "$CLOUDCORE" serve --data-dir "$hubdir" --api-listen "127.0.0.1:$api" \
    --broker-listen "127.0.0.1:$mqtt" >"$hubdir.log" 2>&1 &
  hub_pid=$!
  deadline=$(($(date +%s) + 30))
  until curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && [ -s "$hubdir/bootstrap-token" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      cat "$hubdir.log"
      echo "hub did not become ready within 30 s" >&2
      exit 1
    fi
    sleep 0.2
  done
  hub_env=(EDGEFLEET_HUB="http://127.0.0.1:$api" EDGEFLEET_TOKEN="$(cat "$hubdir/bootstrap-token")"
    EDGEFLEET_LABELS="site=chroot,arch=$arch")
fi

# ---------------------------------------------------------------- the .deb
step "dpkg -i $(basename "$deb")"
cp "$deb" "$root/tmp/edge-agent.deb"
dpkg_i
check "package installed" in_root dpkg-query -W edge-agent
stat_is /usr/bin/edge-agent "755 root root"
stat_is /etc/edgefleet "750 root edgefleet"
stat_is /etc/edgefleet/agent.toml "640 root edgefleet"
stat_is /var/lib/edgefleet "700 edgefleet edgefleet"
stat_is /usr/lib/sysusers.d/edgefleet.conf "644 root root"
unit=$(in_root dpkg -L edge-agent | grep '/edge-agent.service$' | head -1)
check "unit $unit installed, same as systemd/edge-agent.service" \
  cmp -s "$root$unit" "$repo/systemd/edge-agent.service"
check "unit enabled (multi-user.target.wants)" \
  test -L "$root/etc/systemd/system/multi-user.target.wants/edge-agent.service"
check "agent.toml is a conffile" \
  bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' edge-agent | grep -q /etc/edgefleet/agent.toml"
pw=$(in_root getent passwd edgefleet || true)
check "user edgefleet: system uid, no login shell ($pw)" \
  bash -c "[ -n '$pw' ] && [ \$(echo '$pw' | cut -d: -f3) -lt 1000 ] && echo '$pw' | grep -q ':/usr/sbin/nologin$'"
out=$(in_root /usr/bin/edge-agent --version 2>&1 || true)
check "edge-agent --version under $qemu: $out" [ "$out" = "edge-agent $version" ]
set +e
out=$(in_root setpriv --reuid=edgefleet --regid=edgefleet --init-groups \
  /usr/bin/edge-agent check 2>&1)
rc=$?
set -e
indent "$out"
check "edge-agent check as edgefleet reads the config (PASS config)" \
  grep -q '^PASS  config' <<<"$out"
check "edge-agent check: not enrolled is FAIL (exit 1, got $rc)" [ "$rc" = 1 ]

if [ ${#hub_env[@]} -gt 0 ]; then
  step "sudo edge-agent enroll (root) hands the state files to edgefleet"
  out=$(in_root env "${hub_env[@]:1:1}" /usr/bin/edge-agent enroll \
    --hub "${hub_env[0]#EDGEFLEET_HUB=}" --label site=chroot-deb 2>&1) || bad "enroll failed"
  indent "$out"
  check "enroll says who owns the state" grep -q '^state owned by edgefleet' <<<"$out"
  stat_is /var/lib/edgefleet "700 edgefleet edgefleet"
  stat_is /var/lib/edgefleet/device-key.pem "600 edgefleet edgefleet"
  stat_is /var/lib/edgefleet/broker-password "600 edgefleet edgefleet"
  stat_is /var/lib/edgefleet/hub-key.pub "644 edgefleet edgefleet"
  set +e
  out=$(in_root setpriv --reuid=edgefleet --regid=edgefleet --init-groups \
    /usr/bin/edge-agent check 2>&1)
  set -e
  indent "$out"
  for what in config enrolled keys; do
    check "edge-agent check as edgefleet after a root enroll: $what passes" \
      bash -c "grep -q '^PASS  $what' <<<\"\$1\" && ! grep -q '^FAIL  $what' <<<\"\$1\"" _ "$out"
  done
fi

step "config edits survive a reinstall (upgrade path)"
echo "# local edit" >>"$root/etc/edgefleet/agent.toml"
dpkg_i >/dev/null
check "edit kept" grep -q '^# local edit$' "$root/etc/edgefleet/agent.toml"
stat_is /etc/edgefleet/agent.toml "640 root edgefleet"

step "dpkg -r keeps config and state"
echo "state" >"$root/var/lib/edgefleet/marker"
in_root dpkg -r edge-agent >/dev/null
check "binary removed" absent /usr/bin/edge-agent
check "unit removed" absent "$unit"
check "config kept" present /etc/edgefleet/agent.toml
check "state kept" present /var/lib/edgefleet/marker

step "dpkg -P deletes config and state"
in_root dpkg -P edge-agent >/dev/null
check "config dir deleted" absent /etc/edgefleet
check "state dir deleted" absent /var/lib/edgefleet
check "enable symlink deleted" absent /etc/systemd/system/multi-user.target.wants/edge-agent.service
check "package gone" bash -c "! chroot '$root' dpkg-query -W -f='\${Status}' edge-agent 2>/dev/null | grep -q installed"
# Debian keeps system users on purge; remove it so install.sh starts fresh.
in_root userdel edgefleet

# ------------------------------------------------------------ install.sh

snapshot() {
  (cd "$root" && find etc/edgefleet var/lib/edgefleet usr/local/bin etc/systemd/system/edge-agent.service \
    -printf '%p %m %u %g %s\n' 2>/dev/null | sort)
}

step "install.sh with a local binary"
cp "$bin" "$root/tmp/edge-agent"
cp "$here/install.sh" "$root/tmp/install.sh"
in_root env INSTALL_EDGEFLEET_BINARY=/tmp/edge-agent "${hub_env[@]}" sh /tmp/install.sh
stat_is /usr/local/bin/edge-agent "755 root root"
stat_is /usr/local/bin/edge-agent-uninstall.sh "755 root root"
stat_is /etc/edgefleet "750 root edgefleet"
stat_is /etc/edgefleet/agent.toml "640 root edgefleet"
stat_is /etc/edgefleet/agent.env "600 root root"
stat_is /var/lib/edgefleet "700 edgefleet edgefleet"
check "user edgefleet created" bash -c "chroot '$root' getent passwd edgefleet >/dev/null"
check "unit = systemd/edge-agent.service with ExecStart in /usr/local/bin" \
  bash -c "sed 's#/usr/local/bin/edge-agent#/usr/bin/edge-agent#' '$root/etc/systemd/system/edge-agent.service' | cmp -s - '$repo/systemd/edge-agent.service'"
if command -v shellcheck >/dev/null; then
  check "uninstall script is shellcheck-clean" shellcheck -s sh "$root/usr/local/bin/edge-agent-uninstall.sh"
fi
if [ ${#hub_env[@]} -gt 0 ]; then
  stat_is /var/lib/edgefleet/device-key.pem "600 edgefleet edgefleet"
  stat_is /var/lib/edgefleet/broker-password "600 edgefleet edgefleet"
  check "agent.toml holds the enrollment" grep -q "^device_id = \"..*\"" "$root/etc/edgefleet/agent.toml"
  check "token not stored in the env file" bash -c "! grep -q TOKEN '$root/etc/edgefleet/agent.env'"
  set +e
  out=$(in_root setpriv --reuid=edgefleet --regid=edgefleet --init-groups \
    /usr/local/bin/edge-agent check 2>&1)
  set -e
  indent "$out"
  for what in config enrolled keys hub broker; do
    check "edge-agent check after enrollment: $what passes" \
      bash -c "grep -q '^PASS  $what' <<<\"\$1\" && ! grep -q '^FAIL  $what' <<<\"\$1\"" _ "$out"
  done
  devices=$(curl -sf -H "Authorization: Bearer $(cat "$hubdir/operator-token")" \
    "http://127.0.0.1:$api/api/v1/devices" || true)
  check "the hub lists the device with its labels" grep -q '"site":"chroot"' <<<"$devices"
fi

step "install.sh again (idempotent)"
before=$(snapshot)
in_root env INSTALL_EDGEFLEET_BINARY=/tmp/edge-agent "${hub_env[@]}" sh /tmp/install.sh
after=$(snapshot)
if [ "$before" = "$after" ]; then
  ok "second run: same files, modes, owners, sizes"
else
  bad "second run changed files:"
  diff <(echo "$before") <(echo "$after") || true
fi
check "still runs" in_root /usr/local/bin/edge-agent --version

step "edge-agent-uninstall.sh"
in_root /usr/local/bin/edge-agent-uninstall.sh
for p in /usr/local/bin/edge-agent /usr/local/bin/edge-agent-uninstall.sh /etc/edgefleet \
  /var/lib/edgefleet /etc/systemd/system/edge-agent.service; do
  check "removed $p" absent "$p"
done
check "user edgefleet removed" bash -c "! chroot '$root' getent passwd edgefleet >/dev/null"

step "done"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
