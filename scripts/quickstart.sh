#!/usr/bin/env bash
# Sets up a fresh machine and runs llmfleet's quickstart on a local dev cluster:
# the CRDs, the operator, and a simulated model served by a ModelDeployment.
#   ./scripts/quickstart.sh        set up and run
#   ./scripts/quickstart.sh down   stop everything this script started (by PID)
set -euo pipefail
cd "$(dirname "$0")/.."
llmfleet=.venv/bin/llmfleet
state=${XDG_CACHE_HOME:-$HOME/.cache}/llmfleet/quickstart
pidfile=$state/operator.pid

stop_operator() {
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # Only our operator: the PID may have been reused since.
  if grep -q "llmfleet" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = "down" ]; then
  stop_operator
  [ -x "$llmfleet" ] && "$llmfleet" dev-cluster down
  exit 0
fi

bash scripts/setup.sh
mkdir -p "$state"
kubeconfig=$("$llmfleet" dev-cluster up)
tools=$(bash operator/llmfleet/devcluster/build-tools.sh 2>/dev/null)
export KUBECONFIG=$kubeconfig PATH=$tools:$PATH

kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/modeldeployments.llmfleet.io crd/routepolicies.llmfleet.io

stop_operator
metrics_port=${LLMFLEET_METRICS_PORT:-9480}
health_port=${LLMFLEET_HEALTH_PORT:-9481}
nohup "$llmfleet" run --kubeconfig "$kubeconfig" --bind 127.0.0.1 \
  --metrics-port "$metrics_port" --health-port "$health_port" > "$state/operator.log" 2>&1 &
echo $! > "$pidfile"
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$health_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { cat "$state/operator.log"; exit 1; }
  sleep 0.2
done

kubectl apply -f manifests/examples/sim-quickstart.yaml
kubectl wait --for=condition=Ready --timeout=120s md/quickstart-sim
kubectl get md
cat <<MSG

llmfleet is running (operator PID $(cat "$pidfile"), log $state/operator.log,
metrics http://127.0.0.1:$metrics_port/metrics). Try:
  export KUBECONFIG=$kubeconfig PATH=$tools:\$PATH
  kubectl describe md quickstart-sim
  kubectl scale md/quickstart-sim --replicas=3 && kubectl get md -w
Stop everything with: ./scripts/quickstart.sh down
MSG
