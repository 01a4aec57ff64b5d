#!/usr/bin/env bash
# Whole-gateway load test: how much throughput and tail latency Gatehouse costs in front of an
# upstream, against a direct connection and against nginx as a plain reverse proxy, all
# measured in the same run (the only comparison that holds on a shared, noisy machine).
#
#   benches/load.sh [--duration 10s] [--connections 64] [--reps 3] [options]
#
# What it does:
#   1. cargo build --release (skip with --no-build or GATEHOUSE_BIN=/path/to/gatehouse);
#   2. starts `gatehouse echo` as the upstream, Gatehouse with benches/bench.yaml (one public
#      route to the echo) and, if nginx is installed, nginx as a plain reverse proxy with
#      upstream keepalive (1 worker, access_log off; config written to a temp dir), all on
#      free loopback ports and pinned to SERVER_CPUS (default: CPU 1) when there are 2+ CPUs;
#   3. warms every row up, then runs wrk pinned to LOADGEN_CPUS (default: CPU 0) against
#      direct / gatehouse / nginx, interleaved: rows forward on odd reps, reversed on even ones;
#   4. prints per row the median req/s and p99 over the reps, the ratios gatehouse/direct and
#      gatehouse/nginx, and Gatehouse's RSS before and after the load (VmRSS).
# Everything it started is stopped on exit (by pid); every wrk run is bounded by `timeout`.
#
# Options:
#   --duration D      per wrk run, e.g. 10s, 30s, 1m (default 10s)
#   --connections N   wrk connections (default 64)
#   --reps N          interleaved rounds (default 3; use 5 for close calls)
#   --threads N       wrk threads (default 1: one load-generator core)
#   --warmup D        warm-up per row, not recorded (default 2s)
#   --path P          request path (default /)
#   --access-log      run Gatehouse with its access log on (default off)
#   --no-nginx        skip the nginx row even if nginx is installed
#   --no-build        use the existing release binary
#   --no-idle-poll    let idle CPUs halt (see below)
#   --keep DIR        keep configs and logs in DIR (default: a temp dir, removed on exit)
# Environment: LOADGEN_CPUS (0), SERVER_CPUS (1), GATEHOUSE_BIN, CARGO_TARGET_DIR.
#
# Idle polling: on VMs, a vCPU that halts when idle pays hypervisor wake-up latency on every
# request, which can cut proxied throughput by 3x and swamps the differences measured here.
# When /dev/cpu_dma_latency is writable (root), the script holds it at 0 for the length of the
# run so idle CPUs poll instead (both CPUs then burn host CPU while it runs).
#
# Needs: wrk (Debian/Ubuntu: `sudo apt-get install wrk`), cargo, taskset (util-linux);
# nginx optional (`sudo apt-get install nginx`; the service need not run).
set -euo pipefail

DURATION=10s CONNS=64 REPS=3 THREADS=1 WARMUP=2s REQ_PATH=/ ACCESS_LOG=false
WITH_NGINX=1 BUILD=1 IDLE_POLL=1 KEEP=""
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}

die() { echo "load.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --connections|--conns|-c) CONNS=${2:?}; shift 2 ;;
    --reps) REPS=${2:?}; shift 2 ;;
    --threads) THREADS=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --path) REQ_PATH=${2:?}; shift 2 ;;
    --access-log) ACCESS_LOG=true; shift ;;
    --no-nginx) WITH_NGINX=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --no-idle-poll) IDLE_POLL=0; shift ;;
    --keep) KEEP=${2:?}; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# "10s" / "10" / "1m" -> seconds
to_secs() {
  local v=$1
  case "$v" in
    *ms) die "durations below a second are not useful here: '$v'" ;;
    *s) v=${v%s} ;;
    *m) v=$(( ${v%m} * 60 )) ;;
  esac
  [[ $v =~ ^[0-9]+$ ]] || die "bad duration '$1' (use 10s, 30s, 1m)"
  echo "$v"
}
DUR_S=$(to_secs "$DURATION"); WARM_S=$(to_secs "$WARMUP")
for v in CONNS REPS THREADS; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"; done
[ "$DUR_S" -ge 1 ] && [ "$DUR_S" -le 600 ] || die "--duration must be 1s..10m"
[ "$REPS" -ge 1 ] && [ "$REPS" -le 20 ] || die "--reps must be 1..20"
[ "$CONNS" -ge 1 ] && [ "$CONNS" -le 10000 ] || die "--connections must be 1..10000"
[ "$THREADS" -ge 1 ] && [ "$THREADS" -le "$CONNS" ] || die "--threads must be 1..connections"
[[ $REQ_PATH == /* ]] || die "--path must start with /"

command -v wrk >/dev/null || die "wrk not found. Install it: 'sudo apt-get install wrk' (Debian/Ubuntu), 'brew install wrk' (macOS), or build it from its source."
HAVE_NGINX=0
if [ "$WITH_NGINX" = 1 ]; then
  if command -v nginx >/dev/null; then HAVE_NGINX=1
  else echo "load.sh: nginx not found: no nginx row (install it with 'sudo apt-get install nginx')" >&2; fi
fi

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# ------------------------------------------------------------------ build
if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
else
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  BIN=$TARGET_DIR/release/gatehouse
  if [ "$BUILD" = 1 ]; then
    echo "load.sh: building the release binary (cargo build --release)" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet --bin gatehouse) \
      || die "cargo build failed"
  fi
fi
[ -x "$BIN" ] || die "no binary at $BIN (build it, or set GATEHOUSE_BIN)"

# ------------------------------------------------------------------ pinning
NCPU=$(nproc 2>/dev/null || echo 1)
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c "$SERVER_CPUS") PIN_GEN=(taskset -c "$LOADGEN_CPUS")
  PIN_NOTE="servers on cpus $SERVER_CPUS, wrk on cpus $LOADGEN_CPUS"
else
  PIN_SRV=() PIN_GEN=()
  PIN_NOTE="no pinning ($NCPU cpu(s)$(command -v taskset >/dev/null || echo ', no taskset')): servers and wrk share the CPU"
fi

# ------------------------------------------------------------------ process control
if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; WORK=$(cd "$KEEP" && pwd); else WORK=$(mktemp -d -t gatehouse-load.XXXXXX); fi
chmod 755 "$WORK"
PIDS=() PNAMES=()
cleanup() {
  local i pid n
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid=${PIDS[$i]}; kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  done
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid=${PIDS[$i]}
    for n in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null; echo "load.sh: killed ${PNAMES[$i]} (pid $pid)" >&2; }
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "load.sh: interrupted" >&2; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
free_port() { # a loopback port nothing listens on (and not handed out before in this run)
  local p n
  for n in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    [[ $TAKEN == *" $p "* ]] && continue
    port_open "$p" && continue
    TAKEN+="$p "; echo "$p"; return 0
  done
  die "no free port found"
}
wait_port() { # port seconds pid name
  local n
  for n in $(seq 1 $(( $2 * 10 ))); do
    port_open "$1" && return 0
    kill -0 "$3" 2>/dev/null || { cat "$WORK/$4.log" >&2; die "$4 exited before listening on :$1"; }
    sleep 0.1
  done
  cat "$WORK/$4.log" >&2; die "$4 did not listen on :$1 within $2 s"
}
start() { # name port -- cmd...
  local name=$1 port=$2; shift 3
  "${PIN_SRV[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid"); PNAMES+=("$name")
  wait_port "$port" 15 "$pid" "$name"
  LAST_PID=$pid
}
rss_kib() { # sum of VmRSS of the pids given
  local t=0 p v
  for p in "$@"; do v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true); t=$(( t + ${v:-0} )); done
  echo "$t"
}

if [ "$IDLE_POLL" = 1 ] && [ -w /dev/cpu_dma_latency ]; then
  ( exec 3>/dev/cpu_dma_latency && printf '\0\0\0\0' >&3 && exec sleep 86400 ) &
  PIDS+=("$!"); PNAMES+=(pm-qos-holder)
  POLL_NOTE="idle-poll on (/dev/cpu_dma_latency held at 0)"
else
  POLL_NOTE="idle-poll off"
fi

# ------------------------------------------------------------------ servers
UP_PORT=$(free_port); GH_PORT=$(free_port); GH_ADMIN=$(free_port)
start upstream "$UP_PORT" -- "$BIN" echo --listen "127.0.0.1:$UP_PORT"; UP_PID=$LAST_PID

export GATEHOUSE_BENCH_PORT=$GH_PORT GATEHOUSE_BENCH_ADMIN_PORT=$GH_ADMIN
export GATEHOUSE_BENCH_UPSTREAM_PORT=$UP_PORT GATEHOUSE_BENCH_DIR=$WORK
export GATEHOUSE_BENCH_ACCESS_LOG=$ACCESS_LOG
GH_CONFIG=$HERE/bench.yaml
"$BIN" check --config "$GH_CONFIG" >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; die "gatehouse check rejected $GH_CONFIG"; }
start gatehouse "$GH_PORT" -- "$BIN" serve --config "$GH_CONFIG"; GH_PID=$LAST_PID

ROWS=(direct gatehouse) URLS=("http://127.0.0.1:$UP_PORT$REQ_PATH" "http://127.0.0.1:$GH_PORT$REQ_PATH")
if [ "$HAVE_NGINX" = 1 ]; then
  NG_PORT=$(free_port)
  mkdir -p "$WORK/nginx/logs"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream echo_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NG_PORT backlog=4096;
        location / {
            proxy_pass http://echo_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  start nginx "$NG_PORT" -- nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf"; NG_PID=$LAST_PID
  ROWS+=(nginx); URLS+=("http://127.0.0.1:$NG_PORT$REQ_PATH")
fi
NR=${#ROWS[@]}

GH_RSS_IDLE=$(rss_kib "$GH_PID")

# ------------------------------------------------------------------ measurement
cpu_ticks() { # "steal busy total" of all cpus; busy = user+nice+system: irq and softirq time
  # (loopback TCP work charged to no process) would otherwise count as foreign
  awk '$1 == "cpu" { print $9 + 0, $2+$3+$4, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat
}
our_ticks() { # sets OUR_T: CPU ticks used so far by the servers (and their children) + reaped wrk runs
  local t=0 p c v
  for p in "${PIDS[@]}"; do
    for c in $p $(pgrep -P "$p" 2>/dev/null || true); do
      v=$(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true); t=$(( t + ${v:-0} ))
    done
  done
  times >"$WORK/.times"   # 2nd line: user and system time of reaped children (wrk)
  v=$(awk -v hz="$(getconf CLK_TCK)" 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += (a[1] * 60 + a[2]) * hz } printf "%d", n }' "$WORK/.times")
  OUR_T=$(( t + ${v:-0} ))
}
RUNS=$WORK/runs.tsv; : >"$RUNS"
run_wrk() { # seconds url -> RESULT line (or nothing)
  "${PIN_GEN[@]}" timeout -k 5 $(( $1 + 30 )) wrk -t"$THREADS" -c"$CONNS" -d"$1s" \
    -s "$HERE/wrk-report.lua" "$2" 2>&1 | grep '^RESULT ' | tail -1 || true
}
echo "load.sh: $NR rows x $REPS reps x ${DUR_S}s (+ ${WARM_S}s warm-up each), wrk -t$THREADS -c$CONNS;" \
  "$PIN_NOTE; $POLL_NOTE; about $(( NR * (REPS * (DUR_S + 1) + WARM_S + 1) )) s" >&2
for (( i=0; i<NR; i++ )); do
  res=$(run_wrk "$WARM_S" "${URLS[$i]}")
  [ -n "$res" ] || die "warm-up of ${ROWS[$i]} (${URLS[$i]}) gave no result (see $WORK/*.log)"
  [[ $res == *" err_status=0 "* ]] || echo "load.sh: WARNING: ${ROWS[$i]} answered non-2xx during warm-up: $res" >&2
done
for (( r=1; r<=REPS; r++ )); do
  if (( r % 2 )); then order=$(seq 0 $(( NR - 1 ))); else order=$(seq $(( NR - 1 )) -1 0); fi
  for i in $order; do
    our_ticks; o0=$OUR_T; read -r s0 b0 t0 < <(cpu_ticks)
    res=$(run_wrk "$DUR_S" "${URLS[$i]}")
    read -r s1 b1 t1 < <(cpu_ticks); our_ticks; o1=$OUR_T
    [ -n "$res" ] || { echo "load.sh: ${ROWS[$i]} rep $r: wrk gave no result" >&2; continue; }
    foreign=$(( (b1 - b0) - (o1 - o0) )); [ "$foreign" -ge 0 ] || foreign=0
    line=$(awk -v row="${ROWS[$i]}" -v r="$r" -v res="$res" -v st=$(( s1 - s0 )) -v tt=$(( t1 - t0 )) -v fo="$foreign" 'BEGIN {
      m = split(res, kv, " "); for (k = 2; k <= m; k++) { split(kv[k], p, "="); v[p[1]] = p[2] }
      rps = v["requests"] / (v["duration_us"] / 1e6)
      errs = v["err_connect"] + v["err_read"] + v["err_write"] + v["err_timeout"]
      printf "%s\t%d\t%.1f\t%d\t%d\t%d\t%d\t%.1f\t%.1f\n", row, r, rps, v["p50_us"], v["p99_us"],
        v["err_status"], errs, tt ? 100 * st / tt : 0, tt ? 100 * fo / tt : 0 }')
    printf '%s\n' "$line" >>"$RUNS"
    IFS=$'\t' read -r -a f <<<"$line"
    printf 'load.sh: rep %d %-10s %10.0f req/s  p50 %6d us  p99 %6d us  non2xx %s  sock-err %s  steal %s%%  foreign %s%%\n' \
      "$r" "${f[0]}" "${f[2]}" "${f[3]}" "${f[4]}" "${f[5]}" "${f[6]}" "${f[7]}" "${f[8]}" >&2
  done
done
GH_RSS_LOAD=$(rss_kib "$GH_PID")
NG_RSS=""
if [ "$HAVE_NGINX" = 1 ]; then NG_RSS=$(rss_kib "$NG_PID" $(pgrep -P "$NG_PID" || true)); fi

# ------------------------------------------------------------------ report
echo
echo "# benches/load.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "wrk -t$THREADS -c$CONNS -d${DUR_S}s x $REPS reps interleaved, GET $REQ_PATH to gatehouse echo; $PIN_NOTE; $POLL_NOTE; $NCPU cpus, $(uname -r)"
echo "gatehouse access_log $ACCESS_LOG; nginx: $([ "$HAVE_NGINX" = 1 ] && nginx -v 2>&1 | sed 's/.*nginx\///' || echo 'not run')"
echo
awk -F'\t' -v order="${ROWS[*]}" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  { rps[$1] = rps[$1] " " $3; p99[$1] = p99[$1] " " $5; p50[$1] = p50[$1] " " $4
    bad[$1] += $6 + $7; if ($8 > steal[$1]) steal[$1] = $8; if ($9 > fmax[$1]) fmax[$1] = $9
    if ($9 > 3) dist[$1]++; runs[$1]++
    if (!($1 in lo) || $3 < lo[$1]) lo[$1] = $3; if ($3 > hi[$1]) hi[$1] = $3 }
  END {
    n = split(order, rows, " ")
    printf "| %-9s | %9s | %8s | %8s | %6s | %6s | %9s | %11s | %9s |\n", "row", "req/s", "p50 us", "p99 us", "spread", "errors", "steal max", "foreign max", "disturbed "
    printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "-----------", "----------:", "---------:", "---------:", "-------:", "-------:", "----------:", "------------:", "----------:"
    for (k = 1; k <= n; k++) { r = rows[k]; if (!(r in runs)) continue
      m[r] = median(rps[r]); q[r] = median(p99[r])
      printf "| %-9s | %9.0f | %8.0f | %8.0f | %5.0f%% | %6d | %8.1f%% | %10.1f%% | %5d of %d |\n", r, m[r], median(p50[r]), q[r],
        m[r] ? 100 * (hi[r] - lo[r]) / m[r] : 0, bad[r], steal[r], fmax[r], dist[r], runs[r] }
    print ""
    if (m["direct"] && m["gatehouse"])
      printf "gatehouse/direct: req/s %.2fx, p99 %.2fx\n", m["gatehouse"] / m["direct"], q["direct"] ? q["gatehouse"] / q["direct"] : 0
    if (m["nginx"] && m["gatehouse"])
      printf "gatehouse/nginx:  req/s %.2fx, p99 %.2fx\n", m["gatehouse"] / m["nginx"], q["nginx"] ? q["gatehouse"] / q["nginx"] : 0
  }' "$RUNS"
printf 'gatehouse RSS: idle %.1f MiB, after load %.1f MiB' "$(awk -v k="$GH_RSS_IDLE" 'BEGIN{print k/1024}')" "$(awk -v k="$GH_RSS_LOAD" 'BEGIN{print k/1024}')"
[ -n "$NG_RSS" ] && printf '; nginx (master + worker) after load %.1f MiB' "$(awk -v k="$NG_RSS" 'BEGIN{print k/1024}')"
echo
echo "(medians over reps; spread = (max-min)/median of req/s; steal = hypervisor steal, foreign = CPU used"
echo " by processes this script did not start, both as % of all cpus during a run; a run is disturbed when"
echo " foreign > 3%: rerun, or read such rows with care; compare rows of one run only)"
[ -n "$KEEP" ] && echo "configs, logs and runs.tsv kept in $WORK" >&2
exit 0
