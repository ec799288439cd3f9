#!/bin/sh
# Entry point of the role-injector n8n image.
# The n8n data volume outlives the image, so the bundled node package is copied into it on every
# start: a rebuilt image never runs with the node version the volume was created with.
# `import-samples` runs docker/import-samples.sh; anything else goes to n8n's own entry point.
set -eu

nodes="${N8N_USER_FOLDER:-$HOME}/.n8n/nodes"
package=n8n-nodes-role-injector
mkdir -p "$nodes/node_modules"
[ -f "$nodes/package.json" ] || cp /opt/role-injector/nodes/package.json "$nodes/package.json"
rm -rf "${nodes:?}/node_modules/$package"
cp -R "/opt/role-injector/nodes/node_modules/$package" "$nodes/node_modules/$package"

if [ "${1:-}" = "import-samples" ]; then
  shift
  exec /usr/local/bin/import-samples.sh "$@"
fi
exec /docker-entrypoint.sh "$@"
