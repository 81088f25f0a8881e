#!/usr/bin/env bash
# Sets up a fresh machine and runs llmfleet's quickstart on a local dev cluster:
# the CRDs, the operator, and a simulated model served by a ModelDeployment.
#   ./scripts/quickstart.sh        set up and run
#   ./scripts/quickstart.sh down   stop everything this script started (by PID)
set -euo pipefail
cd "$(dirname "$0")/.."
llmfleet=.venv/bin/llmfleet
state=${XDG_CACHE_HOME:-$HOME/.cache}/llmfleet/quickstart
metrics_port=${LLMFLEET_METRICS_PORT:-9480}
health_port=${LLMFLEET_HEALTH_PORT:-9481}
xds_port=${LLMFLEET_XDS_PORT:-9482}
activator_port=${LLMFLEET_ACTIVATOR_PORT:-9483}
admin_port=${LLMFLEET_ENVOY_ADMIN_PORT:-9484}
ingress_port=${LLMFLEET_INGRESS_PORT:-9400}

# stop NAME: stop the process recorded in $state/NAME.pid, if it is still ours.
stop() {
  local pidfile=$state/$1.pid
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null; then  # the PID may have been reused
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = "down" ]; then
  stop envoy envoy
  stop operator llmfleet
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

# The operator: controllers, autoscaler, xDS server and activator, all on loopback.
stop operator llmfleet
nohup "$llmfleet" run --kubeconfig "$kubeconfig" --bind 127.0.0.1 \
  --metrics-port "$metrics_port" --health-port "$health_port" \
  --xds-address 127.0.0.1 --xds-port "$xds_port" \
  --envoy-listener-address 127.0.0.1 --envoy-listener-port "$ingress_port" \
  --activator-address 127.0.0.1 --activator-port "$activator_port" > "$state/operator.log" 2>&1 &
echo $! > "$state/operator.pid"
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$health_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$state/operator.pid")" 2>/dev/null || { cat "$state/operator.log"; exit 1; }
  sleep 0.2
done

# The Envoy ingress, programmed by the operator over xDS.
stop envoy envoy
"$llmfleet" envoy-bootstrap --xds-address 127.0.0.1 --xds-port "$xds_port" --node-id quickstart \
  --admin-port "$admin_port" > "$state/envoy.yaml"
envoy=$(.venv/bin/python -c "from llmfleet.envoy.process import find_envoy; print(find_envoy())")
nohup "$envoy" -c "$state/envoy.yaml" --disable-hot-restart --log-level warn > "$state/envoy.log" 2>&1 &
echo $! > "$state/envoy.pid"

kubectl apply -f manifests/examples/sim-quickstart.yaml
kubectl wait --for=condition=Ready --timeout=120s md/quickstart-sim
kubectl wait --for=condition=Programmed --timeout=60s rp/quickstart
kubectl get md,rp
echo
echo "$ curl http://127.0.0.1:$ingress_port/v1/chat/completions -d '{\"model\": \"quickstart\", ...}'"
curl -fsS "http://127.0.0.1:$ingress_port/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "quickstart", "max_tokens": 12, "messages": [{"role": "user", "content": "Hello!"}]}'
echo
cat <<MSG

llmfleet is running: operator (log $state/operator.log, metrics
http://127.0.0.1:$metrics_port/metrics) and Envoy (OpenAI endpoint http://127.0.0.1:$ingress_port/v1).
Try:
  export KUBECONFIG=$kubeconfig PATH=$tools:\$PATH
  kubectl describe md quickstart-sim; kubectl describe rp quickstart
  kubectl scale md/quickstart-sim --replicas=3 && kubectl get md -w
  curl http://127.0.0.1:$ingress_port/v1/models
Stop everything with: ./scripts/quickstart.sh down
MSG
