#!/bin/sh
# Imports the sample credentials and workflows (workflows/) into n8n and publishes the webhook
# workflow. Used by the compose service `n8n-import`, by scripts/run-local.sh and by the e2e tests.
#
# The sample files point at http://localhost:8000 (the worker, which also carries their calls to
# Ollama: its proxy knows Ollama's URL) and use the model qwen3:8b; on the way in they are rewritten
# (as JSON) to ROLE_INJECTOR_URL and OLLAMA_MODEL, and the credentials that point at the worker get ROLE_INJECTOR_API_KEY
# when there is one (else they keep theirs: "" for the Role Injector one, the placeholder "no-key"
# for the OpenAI one, as OpenAI clients refuse an empty key). The import runs once per n8n
# data folder (a marker file), so restarting a stack never overwrites the user's edits;
# FORCE_IMPORT=true imports again (and overwrites the samples).
set -eu

SAMPLES_DIR=${SAMPLES_DIR:-/workflows}
ROLE_INJECTOR_URL=${ROLE_INJECTOR_URL:-http://localhost:8000}
ROLE_INJECTOR_API_KEY=${ROLE_INJECTOR_API_KEY:-}
OLLAMA_MODEL=${OLLAMA_MODEL:-qwen3:8b}
N8N_BIN=${N8N_BIN:-n8n}
PUBLISH_IDS=${PUBLISH_IDS:-roleApiWebhook}
data_dir="${N8N_USER_FOLDER:-$HOME}/.n8n"
marker="$data_dir/.role-injector-samples-imported"

if [ -f "$marker" ] && [ "${FORCE_IMPORT:-false}" != "true" ]; then
  echo "import-samples: already imported into $data_dir (FORCE_IMPORT=true imports again)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/workflows"

# Rewritten as JSON (node is there wherever n8n is): every string value that is exactly one of the
# samples' defaults is replaced; prose that mentions a default (sticky notes) stays as it is.
rewrite() {
  node -e '
    const fs = require("fs");
    const [source, target] = process.argv.slice(1);
    const env = process.env;
    const values = new Map([
      ["http://localhost:8000", env.ROLE_INJECTOR_URL],
      ["qwen3:8b", env.OLLAMA_MODEL],
    ]);
    // A default, or a default followed by a path (e.g. the OpenAI route of the worker, <worker>/v1).
    const rewrite = (text) => {
      for (const [from, to] of values) {
        if (text === from) return to;
        if (from.startsWith("http") && text.startsWith(from + "/")) return to + text.slice(from.length);
      }
      return text;
    };
    const walk = (value) => {
      if (typeof value === "string") return rewrite(value);
      if (Array.isArray(value)) return value.map(walk);
      if (value && typeof value === "object") {
        return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, walk(inner)]));
      }
      return value;
    };
    let data = walk(JSON.parse(fs.readFileSync(source, "utf8")));
    if (Array.isArray(data) && env.ROLE_INJECTOR_API_KEY) {
      // The credentials file: those that point at the worker take its API key.
      const worker = env.ROLE_INJECTOR_URL;
      const atWorker = (credential) => Object.values(credential.data).some(
        (text) => typeof text === "string" && (text === worker || text.startsWith(worker + "/")));
      data = data.map((credential) => "apiKey" in credential.data && atWorker(credential)
        ? { ...credential, data: { ...credential.data, apiKey: env.ROLE_INJECTOR_API_KEY } }
        : credential);
    }
    fs.writeFileSync(target, JSON.stringify(data, null, 2) + "\n");
  ' "$1" "$2"
}
export ROLE_INJECTOR_URL ROLE_INJECTOR_API_KEY OLLAMA_MODEL

rewrite "$SAMPLES_DIR/credentials.json" "$work/credentials.json"
for file in "$SAMPLES_DIR"/*.json; do
  case "$(basename "$file")" in credentials*.json) continue ;; esac
  rewrite "$file" "$work/workflows/$(basename "$file")"
done

"$N8N_BIN" import:credentials --input="$work/credentials.json"
"$N8N_BIN" import:workflow --separate --input="$work/workflows"
# Publishing takes the version just imported; a running n8n picks it up only after a restart.
for id in $PUBLISH_IDS; do
  "$N8N_BIN" publish:workflow --id="$id"
done
mkdir -p "$data_dir"
touch "$marker"
echo "import-samples: imported $SAMPLES_DIR (worker $ROLE_INJECTOR_URL, model $OLLAMA_MODEL)"
