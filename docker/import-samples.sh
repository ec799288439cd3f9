#!/bin/sh
# Imports the sample credentials and workflows (workflows/) into n8n and publishes the webhook
# workflow. Used by the compose service `n8n-import`, by scripts/run-local.sh and by the e2e tests.
#
# The sample files point at http://localhost:8000 (worker) and http://localhost:11434 (Ollama) and
# use the model qwen3:8b; on the way in they are rewritten to ROLE_INJECTOR_URL, OLLAMA_URL and
# OLLAMA_MODEL, and the worker credentials get ROLE_INJECTOR_API_KEY (the OpenAI one keeps its
# placeholder "no-key" when there is none: OpenAI clients refuse an empty key). The import runs once per n8n
# data folder (a marker file), so restarting a stack never overwrites the user's edits;
# FORCE_IMPORT=true imports again (and overwrites the samples).
set -eu

SAMPLES_DIR=${SAMPLES_DIR:-/workflows}
ROLE_INJECTOR_URL=${ROLE_INJECTOR_URL:-http://localhost:8000}
ROLE_INJECTOR_API_KEY=${ROLE_INJECTOR_API_KEY:-}
OLLAMA_URL=${OLLAMA_URL:-http://localhost:11434}
OLLAMA_MODEL=${OLLAMA_MODEL:-qwen3:8b}
N8N_BIN=${N8N_BIN:-n8n}
PUBLISH_IDS=${PUBLISH_IDS:-roleApiWebhook}
data_dir="${N8N_USER_FOLDER:-$HOME}/.n8n"
marker="$data_dir/.role-injector-samples-imported"

if [ -f "$marker" ] && [ "${FORCE_IMPORT:-false}" != "true" ]; then
  echo "import-samples: already imported into $data_dir (FORCE_IMPORT=true imports again)"
  exit 0
fi

# Values go into sed replacements: escape the delimiter, & and backslashes.
escape() { printf '%s' "$1" | sed -e 's/[#&\\]/\\&/g'; }
worker_url=$(escape "$ROLE_INJECTOR_URL")
ollama_url=$(escape "$OLLAMA_URL")
model=$(escape "$OLLAMA_MODEL")
api_key=$(escape "$ROLE_INJECTOR_API_KEY")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/workflows"

sed -e "s#http://localhost:8000#$worker_url#g" -e "s#http://localhost:11434#$ollama_url#g" \
  -e "s#\"apiKey\": \"\"#\"apiKey\": \"$api_key\"#g" \
  -e "s#\"apiKey\": \"no-key\"#\"apiKey\": \"${api_key:-no-key}\"#g" \
  "$SAMPLES_DIR/credentials.json" > "$work/credentials.json"
for file in "$SAMPLES_DIR"/*.json; do
  case "$(basename "$file")" in credentials*.json) continue ;; esac
  # The model is a Set node value ("value": "qwen3:8b"); prose mentioning the model stays as it is.
  sed -e "s#http://localhost:8000#$worker_url#g" -e "s#http://localhost:11434#$ollama_url#g" \
    -e "s#\"value\": \"qwen3:8b\"#\"value\": \"$model\"#g" \
    "$file" > "$work/workflows/$(basename "$file")"
done

"$N8N_BIN" import:credentials --input="$work/credentials.json"
"$N8N_BIN" import:workflow --separate --input="$work/workflows"
# Publishing takes the version just imported; a running n8n picks it up only after a restart.
for id in $PUBLISH_IDS; do
  "$N8N_BIN" publish:workflow --id="$id"
done
mkdir -p "$data_dir"
touch "$marker"
echo "import-samples: imported $SAMPLES_DIR (worker $ROLE_INJECTOR_URL, Ollama $OLLAMA_URL, model $OLLAMA_MODEL)"
