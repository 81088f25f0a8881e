#!/usr/bin/env bash
# Sets up a fresh machine and runs llmfleet's quickstart on a local dev cluster: the
# Helm chart installed with the real helm binary (operator and Envoy ingress running
# from the chart's own pod specs), a simulated model applied with kubectl, and a real
# OpenAI request through the chart's Envoy.
#   ./scripts/quickstart.sh        set up and run
#   ./scripts/quickstart.sh down   stop everything this script started
set -euo pipefail
cd "$(dirname "$0")/.."
llmfleet=.venv/bin/llmfleet
namespace=llmfleet-system

if [ "${1:-}" = "down" ]; then
  [ -x "$llmfleet" ] && "$llmfleet" dev-cluster down
  exit 0
fi

bash scripts/setup.sh
kubeconfig=$("$llmfleet" dev-cluster up)
tools=$(bash tools/devcluster/llmfleet_devcluster/build-tools.sh 2>/dev/null)
export KUBECONFIG=$kubeconfig PATH=$tools:$PATH

# The chart: CRDs, the operator and the Envoy ingress. The dev cluster's values file
# only places the pods on its system node, whose kubelet runs them as processes.
helm upgrade --install llmfleet charts/llmfleet -n "$namespace" --create-namespace \
  -f manifests/dev-cluster/values.yaml --wait --timeout 3m
kubectl get pods -n "$namespace" -o wide

# A model served by the simulated engine, published as the OpenAI model "quickstart".
kubectl apply -f manifests/examples/sim-quickstart.yaml
kubectl wait --for=condition=Ready --timeout=120s md/quickstart-sim
kubectl wait --for=condition=Programmed --timeout=60s rp/quickstart
kubectl get md,rp
echo

# The ingress Service, at the loopback address the dev cluster gives its ClusterIP.
endpoint=http://$("$llmfleet" dev-cluster address -n "$namespace" llmfleet-ingress | head -1)
echo "$ curl $endpoint/v1/chat/completions -d '{\"model\": \"quickstart\", ...}'"
curl -fsS --retry 5 --retry-connrefused --retry-delay 1 "$endpoint/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model": "quickstart", "max_tokens": 12, "messages": [{"role": "user", "content": "Hello!"}]}'
echo
cat <<MSG

llmfleet is running in the dev cluster (namespace $namespace). The OpenAI endpoint is
$endpoint/v1; container logs are under $(dirname "$kubeconfig")/logs/pods/.
Try:
  export KUBECONFIG=$kubeconfig PATH=$tools:\$PATH
  kubectl describe md quickstart-sim; kubectl describe rp quickstart
  kubectl scale md/quickstart-sim --replicas=3 && kubectl get md -w
  curl $endpoint/v1/models
  helm test llmfleet -n $namespace
Stop everything with: ./scripts/quickstart.sh down
MSG
