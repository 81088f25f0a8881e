#!/usr/bin/env bash
# Sets up a fresh machine and runs llmfleet's quickstart on a local dev cluster.
#   ./scripts/quickstart.sh        set up, start the cluster, show it
#   ./scripts/quickstart.sh down   stop everything this script started
set -euo pipefail
cd "$(dirname "$0")/.."
llmfleet=.venv/bin/llmfleet

if [ "${1:-}" = "down" ]; then
  [ -x "$llmfleet" ] && "$llmfleet" dev-cluster down
  exit 0
fi

bash scripts/setup.sh
kubeconfig=$("$llmfleet" dev-cluster up)
tools=$(bash operator/llmfleet/devcluster/build-tools.sh 2>/dev/null)
export KUBECONFIG=$kubeconfig PATH=$tools:$PATH

kubectl get nodes -L nvidia.com/gpu.product
cat <<MSG

The dev cluster is running. Use it with:
  export KUBECONFIG=$kubeconfig PATH=$tools:\$PATH
Stop it with: ./scripts/quickstart.sh down
MSG
