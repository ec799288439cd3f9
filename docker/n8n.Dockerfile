# syntax=docker/dockerfile:1
# n8n with the Role Injector community node installed, plus the sample import script.
# Build from the repository root:  docker build -f docker/n8n.Dockerfile -t role-injector-n8n .
ARG N8N_VERSION=2.41.1

# Stage 1: build and pack the node package, then install the tarball the way n8n expects
# community packages (<n8n folder>/nodes/node_modules/<package>), with the same script that
# run-local.sh and the tests use (scripts/n8n-toolchain.sh; this image's Node 24 is used as it is).
FROM node:24-bookworm-slim AS node-package
WORKDIR /build
COPY scripts/n8n-toolchain.sh scripts/
# The dependencies first, in their own layer: they change less often than the sources.
COPY n8n-node/package.json n8n-node/package-lock.json n8n-node/
RUN bash scripts/n8n-toolchain.sh deps
COPY n8n-node/ n8n-node/
RUN bash scripts/n8n-toolchain.sh pack /packed \
 && bash scripts/n8n-toolchain.sh install-package /packed/n8n-nodes-role-injector-*.tgz /nodes

# Stage 2: the official image. The package is kept outside the data volume and copied in at start
# (docker/n8n-entrypoint.sh), because a volume created by an older image would shadow it.
FROM n8nio/n8n:${N8N_VERSION}
COPY --from=node-package --chown=node:node /nodes /opt/role-injector/nodes
COPY --chmod=0755 docker/n8n-entrypoint.sh /usr/local/bin/role-injector-entrypoint.sh
COPY --chmod=0755 docker/import-samples.sh /usr/local/bin/import-samples.sh
USER node
ENTRYPOINT ["tini", "--", "/usr/local/bin/role-injector-entrypoint.sh"]
