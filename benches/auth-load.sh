#!/usr/bin/env bash
# What authentication costs on the proxy path: the same upstream through a public route
# (no auth), an API-key route (cache hit), the same with the route's own rate limit, a
# Gatehouse JWT (verified-token cache hit), a fresh Gatehouse JWT on every request (an EdDSA
# signature check each time: tokens of the same real session minted in advance by
# mint-tokens.py) and an external IdP's ES256 JWT (tokens.trusted_issuers, JWKS served
# here), measured interleaved in one run and reported as ratios against the public route.
# When redis-server is installed, a second Gatehouse on `store.kind: redis` (a redis-server
# the script starts) adds the API-key and JWT rows again (rkey, rjwt): a cache hit must cost the same whichever
# store backs the cache (issue 5).
#
#   benches/auth-load.sh [--duration 10s] [--reps 3] [--connections 64] [--no-build] [--shared]
#
# --shared adds a third Gatehouse on that redis-server (shared-bench.yaml) with two more
# rows: a public route under a limit shared in `exact` mode (one Redis round trip per request)
# and in `approximate` mode (local check, synced every 5 ms); target (issue 5): approximate
# >= 90% of the public route. ROWS="plain exact approx" runs only those rows (no token
# minting without `fresh`).
#
# Gatehouse and the echo upstream are pinned to SERVER_CPUS (default 1), wrk to LOADGEN_CPUS
# (default 0). Targets (issue 4): API key >= 95% and cached JWT >= 90% of the public route.
# Needs: wrk, curl, taskset, cargo, python3 with PyJWT + cryptography (as the tests).
set -euo pipefail

DURATION=10s REPS=3 CONNS=64 BUILD=1 SHARED=0
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
die() { echo "auth-load.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --reps) REPS=${2:?}; shift 2 ;;
    --connections|-c) CONNS=${2:?}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --shared) SHARED=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
DUR_S=${DURATION%s}
[[ $DUR_S =~ ^[0-9]+$ ]] && [ "$DUR_S" -ge 1 ] && [ "$DUR_S" -le 600 ] || die "--duration must be 1s..600s"
[[ $REPS =~ ^[0-9]+$ ]] && [ "$REPS" -ge 1 ] && [ "$REPS" -le 20 ] || die "--reps must be 1..20"
command -v wrk >/dev/null || die "wrk not found"

HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
if [ -n "${GATEHOUSE_BIN:-}" ]; then BIN=$GATEHOUSE_BIN; else
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse
  [ "$BUILD" = 1 ] && { (cd "$ROOT" && cargo build --release --quiet --bin gatehouse) || die "build failed"; }
fi
[ -x "$BIN" ] || die "no binary at $BIN"
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c "$SERVER_CPUS") PIN_GEN=(taskset -c "$LOADGEN_CPUS")
else PIN_SRV=() PIN_GEN=(); fi

WORK=$(mktemp -d -t gatehouse-auth.XXXXXX); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { local p; for _ in $(seq 1 200); do p=$(( 20000 + RANDOM % 30000 )); port_open "$p" || { echo "$p"; return; }; done; die "no free port"; }
start() { local name=$1 port=$2; shift 2; "${PIN_SRV[@]}" "$@" >"$WORK/$name.log" 2>&1 </dev/null & PIDS+=("$!")
  for _ in $(seq 1 150); do port_open "$port" && return 0; sleep 0.1; done; cat "$WORK/$name.log" >&2; die "$name did not start"; }

UP=$(free_port); GH=$(free_port); ADM=$(free_port); JWKS=$(free_port)
python3 "$HERE/mint-tokens.py" keys "$WORK" || die "python3 with PyJWT + cryptography needed"
start upstream "$UP" "$BIN" echo --listen "127.0.0.1:$UP"
"${PIN_GEN[@]}" python3 -m http.server "$JWKS" --bind 127.0.0.1 --directory "$WORK" >"$WORK/jwks.log" 2>&1 </dev/null & PIDS+=("$!")
export GATEHOUSE_BENCH_PORT=$GH GATEHOUSE_BENCH_ADMIN_PORT=$ADM GATEHOUSE_BENCH_UPSTREAM_PORT=$UP GATEHOUSE_BENCH_DIR=$WORK GATEHOUSE_BENCH_JWKS_PORT=$JWKS
start gatehouse "$GH" "$BIN" serve --config "$HERE/auth-bench.yaml"
BASE=http://127.0.0.1:$GH SHARED_BASE= BASE_R= RP=
if command -v redis-server >/dev/null; then
  RP=$(free_port)
  start redis "$RP" redis-server --bind 127.0.0.1 --port "$RP" --save "" --appendonly no --dir "$WORK"
  # The same routes on a Redis store: rows rkey and rjwt.
  GH2=$(free_port); ADM2=$(free_port)
  sed "s|^store: .*|store: { kind: redis, url: \"redis://127.0.0.1:$RP/0\" }|" "$HERE/auth-bench.yaml" >"$WORK/redis.yaml"
  GATEHOUSE_BENCH_PORT=$GH2 GATEHOUSE_BENCH_ADMIN_PORT=$ADM2 start gatehouse-redis "$GH2" "$BIN" serve --config "$WORK/redis.yaml"
  BASE_R=http://127.0.0.1:$GH2
else
  echo "auth-load.sh: redis-server not installed; no Redis rows" >&2
fi
if [ "$SHARED" = 1 ]; then
  [ -n "$RP" ] || die "redis-server not found"
  SGH=$(free_port); SADM=$(free_port)
  export GATEHOUSE_BENCH_REDIS_PORT=$RP GATEHOUSE_BENCH_SHARED_PORT=$SGH GATEHOUSE_BENCH_SHARED_ADMIN_PORT=$SADM
  start shared "$SGH" "$BIN" serve --config "$HERE/shared-bench.yaml"
  SHARED_BASE=http://127.0.0.1:$SGH
fi
DEFAULT_ROWS="plain key limited jwt fresh ext"
[ -n "$BASE_R" ] && DEFAULT_ROWS+=" rkey rjwt"
[ "$SHARED" = 1 ] && DEFAULT_ROWS+=" exact approx"
read -r -a ROWS <<<"${ROWS:-$DEFAULT_ROWS}"
wants() { [[ " ${ROWS[*]} " == *" $1 "* ]]; }
wants plain || die "ROWS must include plain (the baseline)"
for r in "${ROWS[@]}"; do case $r in plain|key|limited|jwt|fresh|ext) ;;
  rkey|rjwt) [ -n "$BASE_R" ] || die "row $r needs redis-server" ;;
  exact|approx) [ "$SHARED" = 1 ] || die "row $r needs --shared" ;; *) die "unknown row $r" ;; esac; done
account() { # base tag -> sets TOKEN_<tag>, KEY_<tag>
  curl -sf "$1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-123"}' >"$WORK/reg-$2.json" || die "register failed"
  local token key
  token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$WORK/reg-$2.json")
  curl -sf "$1/auth/api-keys" -H 'content-type: application/json' -H "authorization: Bearer $token" \
    -d '{"name":"bench"}' >"$WORK/key-$2.json" || die "api key failed"
  key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/key-$2.json")
  printf -v "TOKEN_$2" '%s' "$token"; printf -v "KEY_$2" '%s' "$key"
}
account "$BASE" local
TOKEN=$TOKEN_local KEY=$KEY_local
if wants rkey || wants rjwt; then account "$BASE_R" redis; fi

EXT=$(python3 "$HERE/mint-tokens.py" ext "$WORK" 1 /dev/stdout | head -1)
# Fresh tokens: one file per round (warm-up included), each more than a round can send
# (FRESH_PER_SECOND x duration), so no token is presented twice in a run.
FRESH_PER_SECOND=${FRESH_PER_SECOND:-12000}
FRESH_N=$(( FRESH_PER_SECOND * DUR_S ))
if wants fresh; then
  echo "minting $(( (REPS + 1) * FRESH_N )) fresh tokens..." >&2
  for rep in $(seq 0 "$REPS"); do
    python3 "$HERE/mint-tokens.py" own "$WORK" "$TOKEN" "$FRESH_N" "$WORK/fresh-$rep.txt" || die "minting failed"
  done
fi
curl -sf "$BASE/jwt/check" -H "authorization: Bearer $EXT" >/dev/null || die "external token refused (JWKS not fetched?)"
if wants fresh; then curl -sf "$BASE/jwt/check" -H "authorization: Bearer $(head -1 "$WORK/fresh-0.txt")" >/dev/null || die "minted token refused"; fi
if [ "$SHARED" = 1 ]; then for r in exact approx; do curl -sf "$SHARED_BASE/$r/check" >/dev/null || die "shared route $r refused"; done; fi

run() { # row rep -> "rps p99_us non2xx"
  local row=$1 rep=$2 hdr=() path=$1 script=$HERE/wrk-report.lua base=$BASE
  case $row in
    exact|approx) base=$SHARED_BASE ;;
    key|limited) hdr=(-H "X-API-Key: $KEY") ;;
    jwt) hdr=(-H "Authorization: Bearer $TOKEN") ;;
    ext) hdr=(-H "Authorization: Bearer $EXT"); path=jwt ;;
    fresh) script=$HERE/wrk-tokens.lua; path=jwt ;;
    rkey) hdr=(-H "X-API-Key: $KEY_redis"); path=key; base=$BASE_R ;;
    rjwt) hdr=(-H "Authorization: Bearer $TOKEN_redis"); path=jwt; base=$BASE_R ;;
  esac
  TOKENS_FILE=$WORK/fresh-$rep.txt timeout $(( DUR_S + 60 )) "${PIN_GEN[@]}" wrk -t1 -c"$CONNS" -d"$DUR_S"s --latency "${hdr[@]}" \
    -s "$script" "$base/$path" >"$WORK/$row.out" 2>&1 || true
  awk -v fresh="$([ "$row" = fresh ] && echo "$FRESH_N" || echo 0)" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if (fresh > 0 && v["requests"] > fresh) printf "auth-load.sh: %d requests > %d fresh tokens: some were reused (raise FRESH_PER_SECOND)\n", v["requests"], fresh > "/dev/stderr"
    printf "%.0f %d %d\n", v["requests"] / (v["duration_us"] / 1e6), v["p99_us"], v["err_status"] + v["err_connect"] + v["err_timeout"] }' "$WORK/$row.out"
}
declare -A RPS P99
for r in "${ROWS[@]}"; do run "$r" 0 >/dev/null; done  # warm-up
for rep in $(seq 1 "$REPS"); do
  order=("${ROWS[@]}"); if [ $(( rep % 2 )) = 0 ]; then order=(); for r in "${ROWS[@]}"; do order=("$r" "${order[@]}"); done; fi
  for r in "${order[@]}"; do
    read -r rps p99 errs < <(run "$r" "$rep")
    [ "$errs" = 0 ] || echo "auth-load.sh: $errs failed requests on $r" >&2
    RPS[$r]+="$rps "; P99[$r]+="$p99 "
    echo "rep $rep $r: $rps req/s p99 $p99 us" >&2
  done
done
median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {printf "%.0f", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=$(median "${RPS[plain]}")
echo
echo "Gatehouse on cpu(s) $SERVER_CPUS, wrk -c$CONNS on $LOADGEN_CPUS; $REPS reps of ${DUR_S}s, medians"
printf '%-22s %10s %10s %12s\n' row "req/s" "p99 us" "vs public"
for r in "${ROWS[@]}"; do
  m=$(median "${RPS[$r]}"); p=$(median "${P99[$r]}")
  label=$r; case $r in plain) label="public (no auth)";; key) label="API key (cache hit)";;
    limited) label="API key + route limit";; jwt) label="JWT (cache hit)";; fresh) label="JWT fresh (EdDSA)";;
    ext) label="IdP JWT ES256 (hit)";; rkey) label="API key, Redis store";;
    rjwt) label="JWT, Redis store";; exact) label="shared limit, exact";;
    approx) label="shared limit, approx";; esac
  awk -v l="$label" -v m="$m" -v p="$p" -v b="$base" 'BEGIN { printf "%-22s %10d %10d %11.2fx\n", l, m, p, m / b }'
done
