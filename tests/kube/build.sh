#!/usr/bin/env bash
# Builds the Kubernetes control plane the end-to-end suites run against, from
# Go modules (no container images, no release downloads), into a cache
# directory, and prints that directory's bin/ path. Reuses what it finds.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler
#       k8s.io/kubernetes, through the wrapper module in controlplane/: it
#       requires k8s.io/kubernetes and replaces each staging module
#       (k8s.io/api, k8s.io/client-go, ...; v0.0.0 in kubernetes' own go.mod,
#       which points them at ./staging) with its published version, because
#       `go install k8s.io/kubernetes/...@v1.x` refuses a module with
#       replace directives. The version ldflags make the binaries report
#       their real version (/version, --version).
#   kine     github.com/k3s-io/kine: K3s's etcd shim, run on SQLite (cgo).
#   kwok     sigs.k8s.io/kwok/cmd/kwok: fake nodes and pod lifecycle.
#
# Cache: $EDGEFLEET_KUBE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/edgefleet/kube,
# one directory per set of versions. Go's own build cache (~/.cache/go-build)
# makes a rebuild after a version bump faster.
#
# `--print-if-built` prints the directory only if everything is there.
# To move to a newer Kubernetes: change K8S_VERSION, then
#   tests/kube/build.sh --update-module   (rewrites controlplane/go.mod, go.sum)
set -euo pipefail

K8S_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
KINE_VERSION=v0.17.5
KWOK_VERSION=v0.8.0

here=$(cd "$(dirname "$0")" && pwd)
base=${EDGEFLEET_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet/kube}
cache="$base/k8s-$K8S_VERSION-kine-$KINE_VERSION-kwok-$KWOK_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler kine kwok)

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed (go on PATH)" >&2; exit 1; }
export GOFLAGS=-mod=mod
export CGO_ENABLED=1

if [ "${1:-}" = "--update-module" ]; then
  # The staging modules, read offline from kubernetes' own go.mod.
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  mod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod
  {
    printf 'module edgefleet.test/controlplane\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    awk -v v="$STAGING_VERSION" '/^require \(/{f=1;next} f&&/^\)/{f=0} f&&$2=="v0.0.0"&&$1~/^k8s.io\//{print "\t"$1" => "$1" "v}' "$mod"
    printf ')\n'
  } > "$here/controlplane/go.mod"
  (cd "$here/controlplane" && go mod tidy)
  echo "controlplane/go.mod and go.sum updated for k8s.io/kubernetes $K8S_VERSION" >&2
  exit 0
fi

complete() {
  for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done
}

if complete; then
  echo "$cache/bin"
  exit 0
fi
# The test fixture asks without building (a build takes minutes).
if [ "${1:-}" = "--print-if-built" ]; then
  exit 1
fi

started=$(date +%s)
tmp="$cache.partial"
rm -rf "$tmp"
mkdir -p "$tmp/bin"
echo "build.sh: building the Kubernetes control plane into $cache (first run only)" >&2

ver=${K8S_VERSION#v}
major=${ver%%.*}
minor=${ver#*.}
minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
(
  cd "$here/controlplane"
  go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
)
echo "build.sh: control plane built ($(( $(date +%s) - started )) s)" >&2
GOBIN="$tmp/bin" go install -trimpath -ldflags "-s -w" "github.com/k3s-io/kine@$KINE_VERSION"
echo "build.sh: kine built ($(( $(date +%s) - started )) s)" >&2
GOBIN="$tmp/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
echo "build.sh: kwok built ($(( $(date +%s) - started )) s)" >&2

"$tmp/bin/kube-apiserver" --version >&2
rm -rf "$cache"
mv "$tmp" "$cache"
echo "build.sh: done in $(( $(date +%s) - started )) s; $(du -sh "$cache" | cut -f1) of binaries" >&2
echo "$cache/bin"
