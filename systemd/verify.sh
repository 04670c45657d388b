#!/usr/bin/env bash
# Checks the units as systemd would load them: `systemd-analyze verify` on a
# throwaway root holding the system's own units plus our binaries and
# /bin/sh (verify
# refuses an ExecStart that does not exist), then holds the
# `systemd-analyze security` exposure score at or below THRESHOLD.
#   systemd/verify.sh target/debug        (directory with edge-agent and cloudcore)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bins=${1:?usage: systemd/verify.sh DIR-WITH-BINARIES}
# 2.0 of 10 ("OK"), where an unhardened unit scores 9.6 ("UNSAFE"). What the
# score still counts is what the services need: IPv4/IPv6 sockets to talk at all.
THRESHOLD=${THRESHOLD:-2.0}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$bins/edge-agent" "$bins/cloudcore" "$root/usr/bin/"
# ExecReload's shell, as every system has it.
cp -L /bin/sh "$root/bin/sh"
cp "$here/edge-agent.service" "$here/cloudcore.service" "$root/etc/systemd/system/"
status=0
for unit in edge-agent.service cloudcore.service; do
  if out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) && [ -z "$out" ]; then
    echo "verify   $unit: ok"
  else
    echo "verify   $unit: FAILED"; echo "$out"; status=1
  fi
  score=$(systemd-analyze security --offline=true --root="$root" "$unit" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [ -n "$score" ] && awk -v s="$score" -v t="$THRESHOLD" 'BEGIN { exit !(s <= t) }'; then
    echo "security $unit: exposure $score <= $THRESHOLD"
  else
    echo "security $unit: exposure ${score:-unknown} above $THRESHOLD"; status=1
  fi
done
exit $status
