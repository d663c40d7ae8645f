#!/usr/bin/env bash
# Builds the control plane Spawner's Kubernetes tests run against, from Go
# modules only (no downloads outside the Go module proxy):
#
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes)
#   etcd                                                      (go.etcd.io/etcd/server/v3 etcdmain)
#   kwok                                                      (sigs.k8s.io/kwok, the fake kubelet)
#
# into a cache outside the repository, keyed by the versions:
#   ${SPAWNER_TESTENV_CACHE:-~/.cache/spawner-testenv}/k8s-<v>_etcd-<v>_kwok-<v>/bin
# A second run finds the cache and builds nothing. The last line printed on
# stdout is the directory holding the binaries; progress goes to stderr.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod points the k8s.io/*
# staging modules at ./staging. A tiny wrapper module requires it and
# replaces every staging module with the matching v0.x release.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.8}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
STAGING_VERSION="0.${K8S_VERSION#1.}"

CACHE_ROOT="${SPAWNER_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spawner-testenv}"
OUT="$CACHE_ROOT/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN="$OUT/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# kwok's stage definitions (what a fake kubelet does to Nodes and Pods), taken
# from the kwok module itself: node-initialize marks fake Nodes Ready,
# pod-ready runs scheduled Pods (Running, Ready, a Pod IP), pod-complete
# finishes Job Pods, pod-delete finalizes deleted Pods as a kubelet would.
STAGES=(node/fast/node-initialize pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete)

say() { echo "==> $*" >&2; }
fail() { echo "deploy/testenv/build.sh: step '$1' failed: $2" >&2; exit 1; }

complete=1
for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || complete=0; done
for s in "${STAGES[@]}"; do [[ -f "$OUT/stages/$(basename "$s").yaml" ]] || complete=0; done
if [[ $complete == 1 ]]; then
  say "cached: $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || fail "find go" "go is not on PATH (Go 1.24+ is needed)"
mkdir -p "$OUT" "$BIN"
WORK="$(mktemp -d "$OUT/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
started=$SECONDS

build_kube() {
  local dir="$WORK/kube"
  mkdir -p "$dir"
  {
    echo "module spawner.dev/testenv/kube"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes v${K8S_VERSION}"
    echo
    echo "replace ("
    for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
             cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
             cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms \
             kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
             mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller; do
      echo "	k8s.io/$m => k8s.io/$m v${STAGING_VERSION}"
    done
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  say "kubernetes v${K8S_VERSION}: resolving modules"
  (cd "$dir" && go mod tidy >&2) || fail "kubernetes: go mod tidy" "module resolution failed (is v${K8S_VERSION} with staging v${STAGING_VERSION} on the module proxy?)"
  local pkg="k8s.io/component-base/version"
  local ldflags="-s -w -X $pkg.gitVersion=v${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    say "kubernetes v${K8S_VERSION}: building $cmd (minutes on 2 cores; cached afterwards)"
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") || fail "build $cmd" "go build failed (see above)"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
}

build_etcd() {
  local dir="$WORK/etcd"
  mkdir -p "$dir"
  printf 'module spawner.dev/testenv/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > "$dir/go.mod"
  cat > "$dir/main.go" <<'GO'
// etcd, built from its server module: the root module is not installable
// with `go install` (it has replace directives), etcdmain.Main is the same.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  say "etcd v${ETCD_VERSION}: resolving modules"
  (cd "$dir" && go mod tidy >&2) || fail "etcd: go mod tidy" "module resolution failed (is go.etcd.io/etcd/server/v3@v${ETCD_VERSION} served?)"
  say "etcd v${ETCD_VERSION}: building"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .) || fail "build etcd" "go build failed (see above)"
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kwok() {
  say "kwok v${KWOK_VERSION}: building"
  GOBIN="$WORK/kwok-bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v${KWOK_VERSION}" >&2 \
    || fail "build kwok" "go install sigs.k8s.io/kwok/cmd/kwok@v${KWOK_VERSION} failed (see above)"
  mv "$WORK/kwok-bin/kwok" "$BIN/kwok"
}

copy_stages() {
  local mod
  mod="$(GOFLAGS= go mod download -json "sigs.k8s.io/kwok@v${KWOK_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$mod/kustomize/stage" ]] || fail "kwok stages" "sigs.k8s.io/kwok@v${KWOK_VERSION} has no kustomize/stage directory"
  mkdir -p "$OUT/stages"
  for s in "${STAGES[@]}"; do
    cp "$mod/kustomize/stage/$s.yaml" "$OUT/stages/" || fail "kwok stages" "missing $s.yaml in the kwok module"
  done
}

[[ -x "$BIN/etcd" ]] || build_etcd
[[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/kube-scheduler" ]] || build_kube
[[ -x "$BIN/kwok" ]] || build_kwok
copy_stages

say "built in $((SECONDS - started)) s: $BIN"
echo "$BIN"
