#!/usr/bin/env bash
# The whole stack without Docker: the worker on 127.0.0.1:8000 and n8n on http://localhost:5678
# with the Role Injector node and the sample workflows. Ollama is your own (OLLAMA_URL).
# Ctrl-C stops both. When the worker stops, n8n keeps running (the node then reports it).
#
#   OLLAMA_URL    your Ollama (http://localhost:11434): the worker's proxy forwards to it, and the sample
#                 workflows reach it through the worker
#   OLLAMA_MODEL  model set in the sample workflows (qwen3:8b)
#   WORKER_PORT, N8N_PORT   (8000, 5678)
#   N8N_HOME      n8n's data folder (.n8n-local in the repository); logs go to $N8N_HOME/logs
#   FORCE_IMPORT=true       import the samples again (they are imported on the first run only)
#   SAMPLES_DIR   the workflows and credentials.json to import (workflows/ in the repository)
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
WORKER_PORT=${WORKER_PORT:-8000}
N8N_PORT=${N8N_PORT:-5678}
OLLAMA_URL=${OLLAMA_URL:-http://localhost:11434}
OLLAMA_MODEL=${OLLAMA_MODEL:-qwen3:8b}
N8N_HOME=${N8N_HOME:-$repo/.n8n-local}
SAMPLES_DIR=${SAMPLES_DIR:-$repo/workflows}
worker_url="http://127.0.0.1:$WORKER_PORT"
logs="$N8N_HOME/logs"

say() { echo "run-local: $*" >&2; }
# shellcheck source=scripts/processes.sh
source scripts/processes.sh

if [ ! -x .venv/bin/role-injector ]; then
  say ".venv/bin/role-injector is missing; create the venv first (make test or make run does it)"
  exit 1
fi
ports_free "$WORKER_PORT" "$N8N_PORT"
mkdir -p "$logs"

toolchain=scripts/n8n-toolchain.sh
tools=$(bash "$toolchain" install)
PATH="$(bash "$toolchain" node-bin):$PATH"
export PATH
n8n="$tools/n8n/node_modules/.bin/n8n"

# Build, pack and install the node package the way n8n installs community packages.
say "building the n8n node package (log: $logs/node-package.log)"
pack=$(mktemp -d)
tgz=$(bash "$toolchain" pack "$pack" 2>"$logs/node-package.log") || fail "building the node package" "$logs/node-package.log"
bash "$toolchain" install-package "$tgz" "$N8N_HOME/.n8n/nodes" >/dev/null 2>>"$logs/node-package.log" \
  || fail "installing the node package" "$logs/node-package.log"
rm -rf "$pack"

export N8N_USER_FOLDER="$N8N_HOME" DB_TYPE=sqlite N8N_PORT N8N_DIAGNOSTICS_ENABLED=false \
  N8N_VERSION_NOTIFICATIONS_ENABLED=false N8N_PERSONALIZATION_ENABLED=false

stop_on_exit

ROLE_INJECTOR_OLLAMA_URL="$OLLAMA_URL" .venv/bin/role-injector serve --host 127.0.0.1 \
  --port "$WORKER_PORT" --roles "$repo/roles" &
worker_pid=$!
started+=("$worker_pid")
wait_up "$worker_url/healthz" "$worker_pid" "the worker"

say "importing the sample credentials and workflows (first run only; log: $logs/import.log)"
SAMPLES_DIR="$SAMPLES_DIR" ROLE_INJECTOR_URL="$worker_url" OLLAMA_MODEL="$OLLAMA_MODEL" N8N_BIN="$n8n" \
  sh docker/import-samples.sh >"$logs/import.log" 2>&1 \
  || fail "importing the samples" "$logs/import.log"

# n8n's own output (hundreds of database migration lines on the first run) goes to its log.
say "starting n8n (log: $logs/n8n.log)"
"$n8n" start >"$logs/n8n.log" 2>&1 &
n8n_pid=$!
started+=("$n8n_pid")
# /healthz answers some 20 s before the editor does: wait for the editor's settings and page.
wait_up "http://127.0.0.1:$N8N_PORT/rest/settings" "$n8n_pid" "n8n" "$logs/n8n.log"
wait_up "http://127.0.0.1:$N8N_PORT/" "$n8n_pid" "n8n" "$logs/n8n.log"

cat >&2 <<BANNER

  n8n     http://localhost:$N8N_PORT   (the sample workflows are in Overview; log: $logs/n8n.log)
  worker  $worker_url   (REST /v1/*, Ollama-compatible proxy /api/*)
  Ollama  $OLLAMA_URL   (model $OLLAMA_MODEL)

  Try the worker:
    curl -s $worker_url/v1/inject -H 'Content-Type: application/json' \\
      -d '{"role": "agi-engineer", "prompt": "Привет! С чего начать?", "variables": {"user_name": "Анна"}, "budget": 1500}'

  Press Ctrl-C to stop.
BANNER

# n8n outlives the worker: the editor stays up and the node says it cannot reach the worker.
# When n8n stops, everything stops.
wait -n "$worker_pid" "$n8n_pid" || true
if kill -0 "$n8n_pid" 2>/dev/null; then
  say "the worker stopped; n8n keeps running and the Role Injector node reports that it cannot reach"
  say "the worker. Start the worker again in another terminal:"
  say "  ROLE_INJECTOR_OLLAMA_URL=$OLLAMA_URL .venv/bin/role-injector serve --host 127.0.0.1 --port $WORKER_PORT --roles roles"
fi
# n8n exits with 0 only when it was asked to stop (SIGINT, SIGTERM), e.g. by a Ctrl-C that this shell
# could not trap (a shell started in the background without job control ignores SIGINT): a stop.
if wait "$n8n_pid"; then
  exit 0
fi
fail "n8n" "$logs/n8n.log"
