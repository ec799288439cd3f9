#!/usr/bin/env bash
# Provides a headless Chromium for the browser tests and prints the path of its binary.
#
# Debian's `chromium` package, installed with apt when it is missing (needs root, or sudo without a
# password). Chosen over the npm package @sparticuz/chromium because that one ships an x64 binary
# only and is built for AWS Lambda: it starts only with --single-process --no-zygote, which is
# fragile for a multi-page editor. Debian's is the distribution's own build, for x64 and arm64.
#
# ROLE_INJECTOR_CHROMIUM=/path/to/chromium uses that binary instead (e.g. a browser you have).
# Playwright drives it through `executable_path`; `playwright install` (a download) is never used.
set -euo pipefail

say() { echo "install-chromium: $*" >&2; }

if [ -n "${ROLE_INJECTOR_CHROMIUM:-}" ]; then
  if [ ! -x "$ROLE_INJECTOR_CHROMIUM" ]; then
    say "ROLE_INJECTOR_CHROMIUM=$ROLE_INJECTOR_CHROMIUM is not an executable file"
    exit 1
  fi
  echo "$ROLE_INJECTOR_CHROMIUM"
  exit 0
fi

binary=/usr/bin/chromium
if [ ! -x "$binary" ]; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    say "Chromium is missing and installing it needs root: run 'sudo apt-get install chromium'"
    say "or set ROLE_INJECTOR_CHROMIUM to a Chromium or Chrome binary"
    exit 1
  fi
  # One apt run at a time from this project's scripts (apt's own lock fails instead of waiting).
  lock_dir="${ROLE_INJECTOR_TOOLS:-$HOME/.cache/role-injector/tools}"
  mkdir -p "$lock_dir"
  exec 9>"$lock_dir/.chromium.lock"
  flock 9
  if [ ! -x "$binary" ]; then
    say "installing Debian's chromium with apt (about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq >&2
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
  fi
fi
echo "$binary"
