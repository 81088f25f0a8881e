#!/usr/bin/env bash
# Idempotent setup of a fresh machine for llmfleet development:
#   - a virtualenv in .venv with llmfleet (editable), its test dependencies and the dev
#     cluster harness (tools/devcluster, editable)
#   - the pinned Kubernetes control plane, etcd, KWOK, kubectl, helm and kube-score, built
#     from their upstream Go modules into ~/.cache/llmfleet/tools/ (skipped when cached)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]' -e tools/devcluster  # the dev cluster harness: not part of the operator
# The dev cluster's system node wires pods with iproute2 (`ip`); most machines have it.
if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq iproute2 >/dev/null
fi
start=$(date +%s)
bin=$(bash tools/devcluster/llmfleet_devcluster/build-tools.sh)
echo "tools in $bin ($(( $(date +%s) - start )) s)" >&2
