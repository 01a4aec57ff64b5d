#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: Gatehouse (and HAProxy
# when installed) as plain reverse proxies in front of one `gatehouse echo` upstream.
#
#   benches/icount.sh [--requests N] [--no-build] [NAME=/path/to/gatehouse ...]
#
# Why: throughput on a shared VM moves by tens of percent with the neighbours' load, which
# hides a 5% change; an instruction count does not move (two runs of one binary agree to
# 0.1%). It leaves out the kernel (syscalls, loopback TCP) and the cost of cache misses, so
# confirm a change with load.sh or the shared rig on a quiet machine.
#
# What it does, per row: starts the proxy under `valgrind --tool=callgrind` pinned to one CPU
# (so Gatehouse picks its current-thread runtime, as when pinned in the rig), sends 2,000
# warm-up requests with h2load (HTTP/1.1, 8 connections, keep-alive), zeroes the counters,
# sends N more (default 5,000), dumps the counters and prints instructions per request and
# the ratio to the first row. Rows: `gatehouse` (the release build, or --no-build for the
# existing one), any NAME=BIN given (e.g. an older build to A/B), and `haproxy` (one thread,
# upstream keep-alive) if haproxy is installed.
# Everything it started is stopped on exit.
#
# Needs: valgrind, h2load (Debian: `apt-get install valgrind nghttp2-client`), taskset, curl,
# python3 (free ports).
set -euo pipefail

N=5000
BUILD=1
ROWS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *=*) ROWS+=("$1"); shift ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for b in valgrind callgrind_control h2load taskset curl python3; do
  command -v "$b" >/dev/null || { echo "$b not found (apt-get install valgrind nghttp2-client)" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --quiet); fi
GH=$TARGET/release/gatehouse
[ -x "$GH" ] || { echo "no release build at $GH (run without --no-build)" >&2; exit 1; }
CPU=$(( $(nproc) > 1 ? 1 : 0 ))

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
"$GH" echo --listen "127.0.0.1:$UP" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)

# One public route to the echo upstream, limits out of the way (the check itself still runs).
write_config() { # port admin-port dir
  cat >"$3/gateway.yaml" <<EOF
listen: 127.0.0.1:$1
admin_listen: 127.0.0.1:$2
log: { level: warn, access_log: false }
store: { kind: sqlite, path: $3/gatehouse.db }
rate_limits: { default: { requests: 100000000, per: 1s } }
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: { targets: ["http://127.0.0.1:$UP"] }
    auth: public
EOF
}

FIRST=""
measure() { # name port -- command...
  local name=$1 port=$2 out="$WORK/$1.callgrind"
  shift 3
  taskset -c "$CPU" valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local i
  for i in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.3; done
  curl -sf "http://127.0.0.1:$port/" >/dev/null || { cat "$WORK/$name.log" >&2; echo "$name did not answer" >&2; exit 1; }
  h2load --h1 -n 2000 -c 8 "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local succeeded
  succeeded=$(h2load --h1 -n "$N" -c 8 "http://127.0.0.1:$port/" | awk '/^requests:/ {print $8}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local dump
  dump=$(ls -t "$out".* 2>/dev/null | head -1)
  local total
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  local per=$(( total / N ))
  [ -z "$FIRST" ] && FIRST=$per
  printf '%-20s %10d instr/request  %5.2fx  (%s of %s requests succeeded)\n' \
    "$name" "$per" "$(echo "$per $FIRST" | awk '{print $1/$2}')" "$succeeded" "$N"
}

row_gatehouse() { # name bin
  local dir="$WORK/$1" port admin
  mkdir -p "$dir"
  port=$(free_port); admin=$(free_port)
  write_config "$port" "$admin" "$dir"
  measure "$1" "$port" -- "$2" serve --config "$dir/gateway.yaml"
}

echo "user-space instructions per proxied request (callgrind), $N requests, h2load --h1 -c 8"
row_gatehouse gatehouse "$GH"
for r in "${ROWS[@]}"; do row_gatehouse "${r%%=*}" "${r#*=}"; done
if command -v haproxy >/dev/null; then
  HP=$(free_port)
  cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
    option http-keep-alive
backend up
    server up1 127.0.0.1:$UP maxconn 1000
frontend fe
    bind 127.0.0.1:$HP
    default_backend up
EOF
  measure haproxy "$HP" -- haproxy -db -f "$WORK/haproxy.cfg"
fi
