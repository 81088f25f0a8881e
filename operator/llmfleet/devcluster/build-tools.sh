#!/usr/bin/env bash
# Builds the Kubernetes control plane and CLI tools llmfleet's tests use, from their
# upstream Go modules, into a cache outside the repository keyed by their versions:
#   kube-apiserver kube-controller-manager kube-scheduler kubectl   (k8s.io/kubernetes)
#   etcd                                                           (go.etcd.io/etcd/server/v3)
#   kwok                                                           (sigs.k8s.io/kwok)
#   helm                                                           (helm.sh/helm/v4)
# Already-built tools are skipped. Prints the bin directory on the last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${LLMFLEET_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmfleet/tools}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache_root/$key/bin"
tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
# KWOK's default stages (what makes fake nodes Ready and scheduled pods Running) ship
# as YAML in its module; the dev cluster feeds them to the kwok binary.
stages_dir="$cache_root/$key/kwok-stages"
stages=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)

missing=()
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing+=("$t"); done
for s in "${stages[@]}"; do [ -f "$stages_dir/$(basename "$s")" ] || { missing+=(kwok-stages); break; }; done
if [ ${#missing[@]} -eq 0 ]; then
  echo "tools already built in $bin" >&2
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
echo "building ${missing[*]} into $bin (go $(go env GOVERSION))" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/llmfleet-tools.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
proxy=${GOPROXY:-$(go env GOPROXY)}; proxy=${proxy%%,*}
gover=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
out="$work/out"; mkdir -p "$out"
start=$(date +%s)

# new_module DIR: a throwaway main module whose replaces come from stdin.
new_module() {
  mkdir -p "$1"
  { echo "module llmfleet.local/toolbuild"; echo; echo "go $gover"; echo; echo "replace ("; cat; echo ")"; } > "$1/go.mod"
}

# 1. Kubernetes components, kubectl, KWOK and Helm in one module (shared deps compile once).
# k8s.io/kubernetes points its staging modules at ./staging; they are published as
# k8s.io/<name> v0.<minor>.<patch>. The replaces are generated from the pinned
# version's own go.mod so they never drift.
staging_version="v0.${KUBERNETES_VERSION#v1.}"
curl -fsSL "$proxy/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.mod" |
  sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9.-]+) => \./staging/src/k8s\.io/[a-z0-9.-]+[[:space:]]*$#\t\1 => \1 '"$staging_version"'#p' |
  new_module "$work/k8s"
n=$(grep -c ' => ' "$work/k8s/go.mod")
[ "$n" -gt 20 ] || { echo "build.sh: found only $n staging replaces in k8s.io/kubernetes@${KUBERNETES_VERSION}'s go.mod" >&2; exit 1; }
kv=${KUBERNETES_VERSION#v}; minor=${kv#*.}
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}"
ldflags+=" -X k8s.io/component-base/version.gitMajor=${kv%%.*}"
ldflags+=" -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
ldflags+=" -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
(
  cd "$work/k8s"
  go get "k8s.io/kubernetes@${KUBERNETES_VERSION}" "sigs.k8s.io/kwok@${KWOK_VERSION}" "helm.sh/helm/v4@${HELM_VERSION}" >&2
  go build -trimpath -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    sigs.k8s.io/kwok/cmd/kwok helm.sh/helm/v4/cmd/helm >&2
  kwok_dir=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kwok")
  mkdir -p "$out/kwok-stages"
  for s in "${stages[@]}"; do cp "$kwok_dir/kustomize/stage/$s" "$out/kwok-stages/"; done
)

# 2. etcd in its own module: Kubernetes itself depends on a newer etcd server than the
# one we pin, so it cannot share the module above. Its go.mod replaces sibling modules
# with ../paths; the same modules are published at the same version.
curl -fsSL "$proxy/go.etcd.io/etcd/server/v3/@v/${ETCD_VERSION}.mod" |
  sed -nE 's#^[[:space:]]*(go\.etcd\.io/etcd/[a-z0-9/.-]+) => \.\./[a-z0-9/.-]+[[:space:]]*$#\t\1 => \1 '"$ETCD_VERSION"'#p' |
  new_module "$work/etcd"
(
  cd "$work/etcd"
  go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3 >&2
)
echo "compiled in $(( $(date +%s) - start )) s" >&2

for t in "${tools[@]}"; do
  case $t in
    kubectl) v=$("$out/$t" version --client 2>&1) ;;
    helm) v=$("$out/$t" version 2>&1) ;;
    *) v=$("$out/$t" --version 2>&1) ;;
  esac || { echo "build.sh: $t does not run: $v" >&2; exit 1; }
  echo "  $t: $(echo "$v" | head -1)" >&2
done
mkdir -p "$bin"
for t in "${tools[@]}"; do install -m 0755 "$out/$t" "$bin/$t"; done
mkdir -p "$stages_dir"; install -m 0644 "$out"/kwok-stages/*.yaml "$stages_dir/"
echo "$bin"
