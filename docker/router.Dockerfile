# The router of the compose profile `scale` (docs/scaling.md): PyPI's vllm-router, the version
# scripts/engine-toolchain.sh pins (and the tests run). Its arguments come from the compose file.
FROM python:3.12-slim
ARG VLLM_ROUTER_VERSION=0.1.17
RUN pip install --quiet --no-cache-dir "vllm-router==${VLLM_ROUTER_VERSION}"
# Its log lines are coloured otherwise.
ENV NO_COLOR=1
ENTRYPOINT ["vllm-router"]
