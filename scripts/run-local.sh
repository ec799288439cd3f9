#!/usr/bin/env bash
# The whole stack without Docker: the worker on 127.0.0.1:8000 and n8n on http://localhost:5678
# with the Role Injector node and the sample workflows. Ollama is your own (OLLAMA_URL).
# Ctrl-C stops both.
#
#   OLLAMA_URL    Ollama for the sample workflows and the worker's proxy (http://localhost:11434)
#   OLLAMA_MODEL  model set in the sample workflows (qwen3:8b)
#   WORKER_PORT, N8N_PORT   (8000, 5678)
#   N8N_HOME      n8n's data folder (.n8n-local in the repository)
#   FORCE_IMPORT=true       import the samples again (they are imported on the first run only)
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
WORKER_PORT=${WORKER_PORT:-8000}
N8N_PORT=${N8N_PORT:-5678}
OLLAMA_URL=${OLLAMA_URL:-http://localhost:11434}
OLLAMA_MODEL=${OLLAMA_MODEL:-qwen3:8b}
N8N_HOME=${N8N_HOME:-$repo/.n8n-local}
worker_url="http://127.0.0.1:$WORKER_PORT"

say() { echo "run-local: $*" >&2; }

if [ ! -x .venv/bin/role-injector ]; then
  say ".venv/bin/role-injector is missing; create the venv first (make test or make run does it)"
  exit 1
fi
for port in "$WORKER_PORT" "$N8N_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is already in use"
    exit 1
  fi
done

tools=$(bash scripts/install-n8n.sh)
export PATH="$tools/node24/node_modules/node/bin:$PATH"
n8n="$tools/n8n/node_modules/.bin/n8n"

# Build, pack and install the node package the way n8n installs community packages.
say "building the n8n node package"
pack=$(mktemp -d)
(
  cd n8n-node
  # --ignore-scripts: a dev dependency runs `npx only-allow pnpm` at install time and waits for a yes.
  [ -x node_modules/.bin/n8n-node ] || npm ci --ignore-scripts --no-audit --no-fund
  npx --no-install n8n-node build >/dev/null
  npm pack --silent --pack-destination "$pack" >/dev/null
)
nodes="$N8N_HOME/.n8n/nodes"
mkdir -p "$nodes"
[ -f "$nodes/package.json" ] || echo '{"name": "installed-nodes", "private": true}' > "$nodes/package.json"
rm -rf "$nodes/node_modules/n8n-nodes-role-injector"  # npm would keep an installed same-version copy
# --omit=peer: the node must use n8n's own n8n-workflow, not a second copy.
(cd "$nodes" && npm install --omit=peer --ignore-scripts --no-audit --no-fund "$pack"/*.tgz >/dev/null)
rm -rf "$pack"

export N8N_USER_FOLDER="$N8N_HOME" DB_TYPE=sqlite N8N_PORT N8N_DIAGNOSTICS_ENABLED=false \
  N8N_VERSION_NOTIFICATIONS_ENABLED=false N8N_PERSONALIZATION_ENABLED=false

pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_up URL PID NAME: until URL answers (about 150 s at most), or stop if the process died.
wait_up() {
  for _ in $(seq 1 300); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { say "$3 did not start"; exit 1; }
    sleep 0.5
  done
  say "$3 did not answer at $1"; exit 1
}

ROLE_INJECTOR_OLLAMA_URL="$OLLAMA_URL" .venv/bin/role-injector serve --host 127.0.0.1 \
  --port "$WORKER_PORT" --roles "$repo/roles" &
pids+=($!)
wait_up "$worker_url/healthz" "${pids[0]}" "the worker"

say "importing the sample credentials and workflows into $N8N_HOME (first run only)"
SAMPLES_DIR="$repo/workflows" ROLE_INJECTOR_URL="$worker_url" OLLAMA_URL="$OLLAMA_URL" \
  OLLAMA_MODEL="$OLLAMA_MODEL" N8N_BIN="$n8n" sh docker/import-samples.sh

"$n8n" start &
pids+=($!)
wait_up "http://127.0.0.1:$N8N_PORT/healthz" "${pids[1]}" "n8n"

cat >&2 <<EOF

  n8n     http://localhost:$N8N_PORT   (workflows: Role chat with Ollama, Raw ChatML..., Role API over a webhook)
  worker  $worker_url   (REST /v1/*, Ollama-compatible proxy /api/*)
  Ollama  $OLLAMA_URL   (model $OLLAMA_MODEL)

  Try the worker:
    curl -s $worker_url/v1/inject -H 'Content-Type: application/json' \\
      -d '{"role": "agi-engineer", "prompt": "Привет! С чего начать?", "variables": {"user_name": "Анна"}, "budget": 1500}'

  Press Ctrl-C to stop.
EOF
# Stop everything as soon as either process exits.
wait -n "${pids[@]}"
