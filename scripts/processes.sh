# The processes a `make run*` script starts (scripts/run-local.sh, scripts/run-scale.sh): sourced after
# the script defines `say`. Ports checked before anything starts, a wait until each process answers,
# and all of them stopped together when the script ends.

started=()  # the pids stop_started stops: add each process the script starts in the background

# ports_free PORT...: stop when one is in use already, before anything is started.
ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "port $port is already in use"
      exit 1
    fi
  done
}

# fail STEP LOG: show the end of a step's log and stop.
fail() { tail -n 40 "$2" >&2; say "$1 failed (log: $2)"; exit 1; }

stop_started() {
  trap - EXIT INT TERM
  local running=() pid
  for pid in "${started[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then running+=("$pid"); fi
  done
  if [ ${#running[@]} -gt 0 ]; then
    say "stopping"
    kill "${running[@]}" 2>/dev/null || true
    wait "${running[@]}" 2>/dev/null || true
  fi
}

# stop_on_exit: from here on, every started process stops when the script ends; Ctrl-C (SIGINT to the
# whole process group) or SIGTERM ends it with 0, as stopping on purpose is no failure.
stop_on_exit() {
  trap stop_started EXIT
  trap 'exit 0' INT TERM
}

# wait_up URL PID NAME [LOG]: until URL answers 2xx (about 150 s at most); stop if the process died.
wait_up() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      if [ -n "${4:-}" ]; then fail "starting $3" "$4"; fi
      say "$3 did not start"
      exit 1
    fi
    sleep 0.5
  done
  say "$3 did not answer at $1"
  exit 1
}
