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

# The n8n tooling needs Node 24; install-n8n.sh installs it (and n8n) if missing and prints the folder.
tools="$(bash "$repo/scripts/install-n8n.sh")"
export PATH="$tools/node24/node_modules/node/bin:$PATH"
echo "test-n8n-node: node $(node --version), npm $(npm --version)"

cd "$package"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  # --ignore-scripts: a dependency of @n8n/node-cli runs `npx only-allow pnpm` on install.
  npm ci --ignore-scripts --no-audit --no-fund
  touch node_modules
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
