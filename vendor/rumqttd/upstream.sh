#!/usr/bin/env bash
# The vendored rumqttd against its upstream release on crates.io.
#
#   vendor/rumqttd/upstream.sh        prints our changes: diff -ru upstream ours
#   vendor/rumqttd/upstream.sh test   runs the crate's own tests with the
#                                     features the hub builds it with and
#                                     the workspace's dependency versions
#                                     (vendor/rumqttd/Cargo.lock)
#
# The version is the one in vendor/rumqttd/Cargo.toml; the .crate is
# checked against the sha256 below, taken from the crates.io index.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -n1)
expected_sha256=32399b9dee6e96350790223dd7356bf7f8f15009d7e58e20f4093f1137213e16
[ "$version" = 0.20.0 ] || {
  echo "upstream.sh: Cargo.toml says $version; update expected_sha256 for it" >&2
  exit 2
}

case "${1:-diff}" in
  diff)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    crate="$work/rumqttd-$version.crate"
    cached=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "rumqttd-$version.crate" 2>/dev/null | head -n1 || true)
    if [ -n "$cached" ]; then
      cp "$cached" "$crate"
    else
      curl -sSfL -o "$crate" "https://static.crates.io/crates/rumqttd/rumqttd-$version.crate"
    fi
    echo "$expected_sha256  $crate" | sha256sum -c --quiet -
    tar -xzf "$crate" -C "$work"
    # diff exits 1 when the trees differ, which they do: that is the output.
    (cd "$work" && diff -ru \
      --exclude=.cargo_vcs_info.json --exclude=Cargo.toml.orig \
      --exclude=Cargo.lock --exclude=EDGEFLEET.md --exclude=upstream.sh \
      --exclude=target \
      "rumqttd-$version" "$here") | sed "s|$work/||; s|$root/||" || true
    ;;
  test)
    cargo test --manifest-path "$here/Cargo.toml" --locked \
      --no-default-features --features use-rustls \
      --target-dir "$root/target/vendor-rumqttd"
    ;;
  *)
    echo "usage: $0 [diff|test]" >&2
    exit 2
    ;;
esac
