#!/usr/bin/env bash
# Lints, builds and tests the n8n node package (n8n-node/) and checks what `npm pack` would ship.
# The tests start the real worker from .venv (the root Makefile creates it before calling this).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
package="$repo/n8n-node"

if [ ! -x "$repo/.venv/bin/role-injector" ]; then
  echo "test-n8n-node: $repo/.venv/bin/role-injector is missing; run 'make test' (it creates .venv)" >&2
  exit 1
fi

toolchain="$repo/scripts/n8n-toolchain.sh"
# The n8n tooling needs Node 24; the toolchain script installs it if missing and prints its folder.
PATH="$(bash "$toolchain" node-bin):$PATH"
export PATH
echo "test-n8n-node: node $(node --version), npm $(npm --version)"

cd "$package"
# The dependencies live in the tools folder (installed once per lock file); a node_modules folder
# that a developer made with npm is left as it is.
if [ -L node_modules ] || [ ! -e node_modules ]; then
  ln -sfn "$(bash "$toolchain" deps)" node_modules
fi

npx n8n-node lint
npx tsc --noEmit -p test
npx n8n-node build
npx vitest run

# The package must ship the build and its docs only: no sources, tests or fixtures.
npm pack --dry-run --json | node -e '
  const files = JSON.parse(require("fs").readFileSync(0, "utf8"))[0].files.map((f) => f.path);
  const allowed = /^(dist\/.+|package\.json|README\.md|LICENSE(\.md)?)$/;
  const stray = files.filter((path) => !allowed.test(path));
  if (stray.length > 0 || !files.includes("dist/nodes/RoleInjector/RoleInjector.node.js")) {
    console.error("test-n8n-node: unexpected package contents:", stray.length ? stray : files);
    process.exit(1);
  }
  console.log(`test-n8n-node: npm pack would ship ${files.length} files, all allowed`);
'
