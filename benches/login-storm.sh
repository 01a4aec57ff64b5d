#!/usr/bin/env bash
# Login cost and isolation: what one password login costs with the shipped argon2id parameters,
# and whether a storm of logins stalls proxied traffic. Every figure is a ratio against a
# baseline measured in the same run.
#
#   benches/login-storm.sh [--duration 10s] [--reps 3] [--logins 20] [--connections 16] [--no-build]
#
# What it does:
#   1. cargo build --release (skip with --no-build or GATEHOUSE_BIN=/path/to/gatehouse);
#   2. starts `gatehouse echo` and Gatehouse (benches/bench.yaml: one public route to the echo,
#      the account API on /auth) on free loopback ports, Gatehouse pinned to SERVER_CPUS
#      (default: CPU 1), the load generators to LOADGEN_CPUS (default: CPU 0);
#   3. registers one user, then per rep runs, interleaved:
#        quiet  wrk on a proxied path alone (--connections, default 16);
#        storm  the same wrk while a second wrk keeps --logins (default 20) connections
#               posting the right password to /auth/login back to back;
#        alone  the logins without proxied traffic (what the argon2 parameters cost);
#   4. prints per phase the median proxied req/s and p99, the ratio storm/quiet of the proxied
#      p99 (the target: within 1.5x), and logins/s and login latency alone and in the storm.
# Everything it started is stopped on exit; every wrk run is bounded by `timeout`.
# Needs: wrk, curl, taskset (util-linux), cargo.
set -euo pipefail

DURATION=10s REPS=3 LOGINS=20 CONNS=16 BUILD=1
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}

die() { echo "login-storm.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --reps) REPS=${2:?}; shift 2 ;;
    --logins) LOGINS=${2:?}; shift 2 ;;
    --connections|-c) CONNS=${2:?}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
DUR_S=${DURATION%s}
[[ $DUR_S =~ ^[0-9]+$ ]] && [ "$DUR_S" -ge 1 ] && [ "$DUR_S" -le 600 ] || die "--duration must be 1s..600s"
for v in REPS LOGINS CONNS; do [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v must be a positive whole number"; done
[ "$REPS" -le 20 ] || die "--reps must be at most 20"
command -v wrk >/dev/null || die "wrk not found ('sudo apt-get install wrk')"
command -v curl >/dev/null || die "curl not found"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
else
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  BIN=$TARGET_DIR/release/gatehouse
  if [ "$BUILD" = 1 ]; then
    echo "login-storm.sh: building the release binary" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet --bin gatehouse) || die "cargo build failed"
  fi
fi
[ -x "$BIN" ] || die "no binary at $BIN"

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c "$SERVER_CPUS") PIN_GEN=(taskset -c "$LOADGEN_CPUS")
else
  PIN_SRV=() PIN_GEN=()
fi

WORK=$(mktemp -d -t gatehouse-storm.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p n
  for n in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_open "$p" || { echo "$p"; return 0; }
  done
  die "no free port"
}
start() { # name port cmd...
  local name=$1 port=$2 n; shift 2
  "${PIN_SRV[@]}" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  for n in $(seq 1 150); do port_open "$port" && return 0; sleep 0.1; done
  cat "$WORK/$name.log" >&2; die "$name did not start"
}

UP_PORT=$(free_port); GH_PORT=$(free_port); GH_ADMIN=$(free_port)
while [ "$GH_PORT" = "$UP_PORT" ]; do GH_PORT=$(free_port); done
while [ "$GH_ADMIN" = "$UP_PORT" ] || [ "$GH_ADMIN" = "$GH_PORT" ]; do GH_ADMIN=$(free_port); done
start upstream "$UP_PORT" "$BIN" echo --listen "127.0.0.1:$UP_PORT"
export GATEHOUSE_BENCH_PORT=$GH_PORT GATEHOUSE_BENCH_ADMIN_PORT=$GH_ADMIN
export GATEHOUSE_BENCH_UPSTREAM_PORT=$UP_PORT GATEHOUSE_BENCH_DIR=$WORK GATEHOUSE_BENCH_ACCESS_LOG=false
start gatehouse "$GH_PORT" "$BIN" serve --config "$HERE/bench.yaml"

BASE=http://127.0.0.1:$GH_PORT
EMAIL=storm@example.com PASSWORD=storm-bench-password-1
code=$(curl -s -o "$WORK/register.json" -w '%{http_code}' "$BASE/auth/register" \
  -H 'content-type: application/json' -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}")
[ "$code" = 201 ] || { cat "$WORK/register.json" >&2; die "register answered $code"; }

cat >"$WORK/login.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"email":"$EMAIL","password":"$PASSWORD"}'
wrk.headers["Content-Type"] = "application/json"
EOF
cat "$HERE/wrk-report.lua" >>"$WORK/login.lua"

# wrk ... -> "requests duration_us p50_us p99_us errors"
run_wrk() { # out_file conns duration_s script url
  timeout $(( $3 + 30 )) "${PIN_GEN[@]}" wrk -t1 -c"$2" -d"$3"s --timeout 10s --latency -s "$4" "$5" >"$1" 2>&1 || true
}
parse() { # file -> "rps p50_us p99_us non2xx"
  awk '/^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "%.1f %d %d %d\n", v["requests"] / (v["duration_us"] / 1e6), v["p50_us"], v["p99_us"], v["err_status"] + v["err_connect"] + v["err_timeout"]
  }' "$1"
}

echo "login-storm.sh: warming up" >&2
run_wrk "$WORK/warm" "$CONNS" 2 "$HERE/wrk-report.lua" "$BASE/bench"
Q_RPS=() Q_P99=() S_RPS=() S_P99=() L_RPS=() L_P50=() L_P99=() A_RPS=() A_P50=() A_P99=()
for rep in $(seq 1 "$REPS"); do
  # Logins alone: what the argon2 parameters cost when nothing else runs.
  run_wrk "$WORK/alone" "$LOGINS" "$DUR_S" "$WORK/login.lua" "$BASE/auth/login"
  read -r arps ap50 ap99 aerrs < <(parse "$WORK/alone")
  [ "$aerrs" = 0 ] || echo "login-storm.sh: $aerrs failed logins (alone)" >&2
  A_RPS+=("$arps"); A_P50+=("$ap50"); A_P99+=("$ap99")
  echo "rep $rep logins alone: ${arps}/s p50 ${ap50} us" >&2
  for phase in quiet storm; do
    [ $(( rep % 2 )) = 0 ] && phase=$([ "$phase" = quiet ] && echo storm || echo quiet)
    if [ "$phase" = storm ]; then
      # The storm starts a second earlier and ends a second later than the measured window.
      run_wrk "$WORK/login" "$LOGINS" $(( DUR_S + 2 )) "$WORK/login.lua" "$BASE/auth/login" &
      LOGIN_JOB=$!
      sleep 1
    fi
    run_wrk "$WORK/proxy" "$CONNS" "$DUR_S" "$HERE/wrk-report.lua" "$BASE/bench"
    read -r rps p50 p99 errs < <(parse "$WORK/proxy")
    [ "$errs" = 0 ] || echo "login-storm.sh: $errs failed proxied requests in $phase" >&2
    if [ "$phase" = storm ]; then
      wait "$LOGIN_JOB" || true
      read -r lrps lp50 lp99 lerrs < <(parse "$WORK/login")
      [ "$lerrs" = 0 ] || echo "login-storm.sh: $lerrs failed logins" >&2
      S_RPS+=("$rps"); S_P99+=("$p99"); L_RPS+=("$lrps"); L_P50+=("$lp50"); L_P99+=("$lp99")
    else
      Q_RPS+=("$rps"); Q_P99+=("$p99")
    fi
    echo "rep $rep $phase: proxied ${rps} req/s p99 ${p99} us" >&2
  done
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.1f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
qr=$(median "${Q_RPS[@]}"); qp=$(median "${Q_P99[@]}")
sr=$(median "${S_RPS[@]}"); sp=$(median "${S_P99[@]}")
lr=$(median "${L_RPS[@]}"); l50=$(median "${L_P50[@]}"); l99=$(median "${L_P99[@]}")
ar=$(median "${A_RPS[@]}"); a50=$(median "${A_P50[@]}"); a99=$(median "${A_P99[@]}")
echo
echo "Gatehouse on cpu(s) ${SERVER_CPUS}, wrk on ${LOADGEN_CPUS}; $REPS reps of ${DUR_S}s, medians"
printf '%-28s %12s %12s\n' phase "proxied r/s" "proxied p99"
printf '%-28s %12s %10s us\n' "quiet" "$qr" "$qp"
printf '%-28s %12s %10s us\n' "storm ($LOGINS logins in flight)" "$sr" "$sp"
awk -v a="$sp" -v b="$qp" -v c="$sr" -v d="$qr" 'BEGIN { printf "storm/quiet: p99 x%.2f (target <= 1.5), throughput x%.2f\n", a / b, c / d }'
awk -v r="$ar" -v a="$a50" -v b="$a99" 'BEGIN { printf "logins alone:            %.1f/s, p50 %.0f ms, p99 %.0f ms\n", r, a / 1000, b / 1000 }'
awk -v r="$lr" -v a="$l50" -v b="$l99" -v q="$ar" 'BEGIN { printf "logins during the storm: %.1f/s (x%.2f of alone), p50 %.0f ms, p99 %.0f ms\n", r, r / q, a / 1000, b / 1000 }'
