#!/usr/bin/env bash
# Builds the Kubernetes control plane and CLI tools llmfleet's tests use, from their
# upstream Go modules, into a cache outside the repository keyed by their versions.
# The files come in groups, each built only when something of it is missing:
#   cluster          kube-apiserver kube-controller-manager kube-scheduler kubectl
#                    (k8s.io/kubernetes), kwok and its stages (sigs.k8s.io/kwok),
#                    helm (helm.sh/helm/v4)
#   etcd             etcd (go.etcd.io/etcd/server/v3)
#   kube-score       kube-score (github.com/zegl/kube-score)
#   monitoring-crds  the ServiceMonitor, PodMonitor and PrometheusRule CRDs
#                    (github.com/prometheus-operator/prometheus-operator, no build)
#   prometheus       prometheus and promtool from Debian's `prometheus` package (apt, no build)
# Prints the bin directory on the last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

# Cache layout: one directory per combination of pinned versions, <cache>/<key>/ with
# bin/, kwok-stages/ and crds/, so checkouts pinning different versions never share or
# overwrite a file, and bin/ is one PATH entry. The key names every version, but each
# group depends on a few of them only: a group missing here is first looked for in the
# other key directories, and any whose key has the same versions for that group holds
# the same files, which are hard-linked (no copy, no space). Only what no directory has
# is built. So bumping one version rebuilds its group alone (kube-score: 40 s from cold,
# not the ~6 min of the cluster group), a warm run only stats a few files, and a cold CI
# machine builds each group once, as one all-in-one build would. A key per group
# instead would need a PATH entry per group, or a bin/ of symlinks that dangle when a
# group's directory is deleted. llmfleet_devcluster.tools.locate_tools() spells the same key.
cache_root=${LLMFLEET_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmfleet/tools}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
key+="_kube-score-${KUBE_SCORE_VERSION}_prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
key+="_prometheus-${PROMETHEUS_DEB_VERSION}"
dir="$cache_root/$key"
bin="$dir/bin"

# KWOK's default stages (what makes fake nodes Ready and scheduled pods Running) ship
# as YAML in its module; the dev cluster feeds them to the kwok binary.
stages=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)
crds_dir=example/prometheus-operator-crd
crds=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
      monitoring.coreos.com_prometheusrules.yaml)

# Each group's files (relative to <key>/) and the key parts they depend on.
groups=(cluster etcd kube-score monitoring-crds prometheus)
declare -A files versions
files[cluster]="bin/kube-apiserver bin/kube-controller-manager bin/kube-scheduler bin/kubectl bin/kwok bin/helm"
for s in "${stages[@]}"; do files[cluster]+=" kwok-stages/$(basename "$s")"; done
versions[cluster]="k8s-${KUBERNETES_VERSION} kwok-${KWOK_VERSION} helm-${HELM_VERSION}"
files[etcd]="bin/etcd"
versions[etcd]="etcd-${ETCD_VERSION}"
files[kube-score]="bin/kube-score"
versions[kube-score]="kube-score-${KUBE_SCORE_VERSION}"
files[monitoring-crds]="${crds[*]/#/crds/}"
versions[monitoring-crds]="prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
files[prometheus]="bin/prometheus bin/promtool"
versions[prometheus]="prometheus-${PROMETHEUS_DEB_VERSION}"

# complete DIR GROUP: DIR holds every file of GROUP (binaries executable).
complete() {
  local f
  for f in ${files[$2]}; do
    case $f in bin/*) [ -x "$1/$f" ] ;; *) [ -f "$1/$f" ] ;; esac || return 1
  done
}
# place SRC DST: put SRC at DST atomically, so a concurrent reader never sees half a
# file; a hard link when SRC is already in the cache, else a copy.
place() {
  mkdir -p "$(dirname "$2")"
  ln -f "$1" "$2.tmp.$$" 2>/dev/null || cp -p "$1" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
}
# adopt GROUP: link GROUP's files from another key directory with the same versions for it.
adopt() {
  local other parts v f
  for other in "$cache_root"/*/; do
    other=${other%/}
    [ "$other" != "$dir" ] && complete "$other" "$1" || continue
    parts=" $(basename "$other" | tr _ ' ') "
    for v in ${versions[$1]}; do [[ $parts == *" $v "* ]] || continue 2; done
    for f in ${files[$1]}; do place "$other/$f" "$dir/$f"; done
    echo "$1: linked from $other" >&2
    return 0
  done
  return 1
}

todo=()
for g in "${groups[@]}"; do
  complete "$dir" "$g" || adopt "$g" || todo+=("$g")
done
if [ ${#todo[@]} -eq 0 ]; then
  echo "tools already built in $bin" >&2
  echo "$bin"
  exit 0
fi
needs_go=false
for g in "${todo[@]}"; do [ "$g" = prometheus ] || needs_go=true; done
if $needs_go; then
  command -v go >/dev/null || { echo "build-tools.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
  echo "building ${todo[*]} into $dir (go $(go env GOVERSION))" >&2
else
  echo "fetching ${todo[*]} into $dir" >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llmfleet-tools.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
if $needs_go; then
  proxy=${GOPROXY:-$(go env GOPROXY)}; proxy=${proxy%%,*}
  gover=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
fi
out="$work/out"; mkdir -p "$out/bin"

# new_module DIR: a throwaway main module whose replaces come from stdin.
new_module() {
  mkdir -p "$1"
  { echo "module llmfleet.local/toolbuild"; echo; echo "go $gover"; echo; echo "replace ("; cat; echo ")"; } > "$1/go.mod"
}

# Kubernetes components, kubectl, KWOK and Helm in one module (shared deps compile once).
# k8s.io/kubernetes points its staging modules at ./staging; they are published as
# k8s.io/<name> v0.<minor>.<patch>. The replaces are generated from the pinned
# version's own go.mod so they never drift.
build_cluster() {
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  curl -fsSL "$proxy/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.mod" |
    sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9.-]+) => \./staging/src/k8s\.io/[a-z0-9.-]+[[:space:]]*$#\t\1 => \1 '"$staging_version"'#p' |
    new_module "$work/k8s"
  local n; n=$(grep -c ' => ' "$work/k8s/go.mod")
  [ "$n" -gt 20 ] || { echo "build-tools.sh: found only $n staging replaces in k8s.io/kubernetes@${KUBERNETES_VERSION}'s go.mod" >&2; exit 1; }
  local kv=${KUBERNETES_VERSION#v}; local minor=${kv#*.}
  local ldflags="-s -w"
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
    go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
      sigs.k8s.io/kwok/cmd/kwok helm.sh/helm/v4/cmd/helm >&2
    local kwok_dir; kwok_dir=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kwok")
    mkdir -p "$out/kwok-stages"
    for s in "${stages[@]}"; do cp "$kwok_dir/kustomize/stage/$s" "$out/kwok-stages/"; done
  )
}

# etcd in its own module: Kubernetes itself depends on a newer etcd server than the
# one we pin, so it cannot share the module above. Its go.mod replaces sibling modules
# with ../paths; the same modules are published at the same version.
build_etcd() {
  curl -fsSL "$proxy/go.etcd.io/etcd/server/v3/@v/${ETCD_VERSION}.mod" |
    sed -nE 's#^[[:space:]]*(go\.etcd\.io/etcd/[a-z0-9/.-]+) => \.\./[a-z0-9/.-]+[[:space:]]*$#\t\1 => \1 '"$ETCD_VERSION"'#p' |
    new_module "$work/etcd"
  (
    cd "$work/etcd"
    go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
    go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3 >&2
  )
}

# kube-score in its own module too: it pins older k8s.io/api and apimachinery than
# Kubernetes v1.37, which the module above would force on it. Its version, commit and
# build date are main-package variables; the proxy records no commit.
build_kube_score() {
  new_module "$work/kube-score" </dev/null
  (
    cd "$work/kube-score"
    go get "github.com/zegl/kube-score@${KUBE_SCORE_VERSION}" >&2
    local date; date=$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' github.com/zegl/kube-score)
    go build -trimpath -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION} -X main.date=$date" \
      -o "$out/bin/kube-score" github.com/zegl/kube-score/cmd/kube-score >&2
  )
}

# The CRDs are YAML files in prometheus-operator's module: download that module alone
# (checked against the checksum database like any module), none of its dependencies.
fetch_monitoring_crds() {
  local module=github.com/prometheus-operator/prometheus-operator mod_dir c
  mod_dir=$(cd "$work" && go mod download -json "$module@${PROMETHEUS_OPERATOR_VERSION}" |
    sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -d "$mod_dir" ] || { echo "build-tools.sh: go mod download $module@${PROMETHEUS_OPERATOR_VERSION} gave no directory" >&2; exit 1; }
  mkdir -p "$out/crds"
  for c in "${crds[@]}"; do
    grep -q '^kind: CustomResourceDefinition' "$mod_dir/$crds_dir/$c" ||
      { echo "build-tools.sh: $module@${PROMETHEUS_OPERATOR_VERSION}/$crds_dir/$c is not a CRD" >&2; exit 1; }
    cp "$mod_dir/$crds_dir/$c" "$out/crds/"
  done
}

# Debian's package of the pinned version, unpacked without installing it (no service is
# started, no root needed once apt's package lists are there). apt-get download checks the
# .deb against the archive's signed index. The binaries are Go, linked only to libc.
fetch_prometheus() {
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { echo "build-tools.sh: prometheus comes from Debian's package: apt-get and dpkg-deb are required" >&2; exit 1; }
  local pkg="prometheus=${PROMETHEUS_DEB_VERSION}" deb
  mkdir -p "$work/deb" && chmod 0777 "$work/deb"  # apt's sandbox user writes there
  if ! (cd "$work/deb" && apt-get download -q "$pkg" >&2); then
    # A fresh machine may have no package lists yet.
    [ "$(id -u)" = 0 ] || { echo "build-tools.sh: apt-get download $pkg failed; run apt-get update as root" >&2; exit 1; }
    apt-get update -qq >&2
    (cd "$work/deb" && apt-get download -q "$pkg" >&2)
  fi
  deb=$(ls "$work"/deb/prometheus_*.deb)
  dpkg-deb -x "$deb" "$work/deb/root"
  cp "$work/deb/root/usr/bin/prometheus" "$work/deb/root/usr/bin/promtool" "$out/bin/"
}

# runs NAME: the built binary NAME prints its version.
runs() {
  local v
  case $1 in
    kubectl) v=$("$out/bin/$1" version --client 2>&1) ;;
    helm|kube-score) v=$("$out/bin/$1" version 2>&1) ;;
    *) v=$("$out/bin/$1" --version 2>&1) ;;
  esac || { echo "build-tools.sh: $1 does not run: $v" >&2; return 1; }
  echo "  $1: $(echo "$v" | head -1)" >&2
}

for g in "${todo[@]}"; do
  start=$(date +%s)
  case $g in
    cluster) build_cluster ;;
    etcd) build_etcd ;;
    kube-score) build_kube_score ;;
    monitoring-crds) fetch_monitoring_crds ;;
    prometheus) fetch_prometheus ;;
  esac
  echo "$g: done in $(( $(date +%s) - start )) s" >&2
  for f in ${files[$g]}; do
    case $f in bin/*) runs "${f#bin/}"; chmod 0755 "$out/$f" ;; *) chmod 0644 "$out/$f" ;; esac
  done
  # Installed group by group: a later group's failure keeps what is already built.
  for f in ${files[$g]}; do place "$out/$f" "$dir/$f"; done
done
echo "$bin"
