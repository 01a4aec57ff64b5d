#!/usr/bin/env bash
# Gatehouse's authentication rows in the shared side-by-side rig (/work/shared/bench/run.sh),
# next to HAProxy's: plain proxy, API key, API key + rate limit, RS256 and ES256 JWTs.
#
#   benches/rig.sh [--reps N] [--duration S] [--no-build] [--only REGEX] [-- RUN.SH-OPTIONS...]
#
# Rows (benches/rig-auth.yaml, one Gatehouse process per row, each spawned and pinned by run.sh,
# so run.sh's CPU accounting stays per row):
#   gatehouse            :18100 /        public
#   gatehouse-apikey     :18102 /key     X-API-Key: a key created with `gatehouse keys create`
#   gatehouse-apikey-rl  :18103 /key-rl  the same + the route's own per-key rate limit
#   gatehouse-jwt-rs256  :18104 /jwt     Authorization: Bearer @JWT_RS256@ (the rig's token)
#   gatehouse-jwt-es256  :18105 /jwt     Authorization: Bearer @JWT_ES256@
# plus run.sh's built-in rows matching --only (default 'haproxy'; direct is always kept).
# The JWT rows verify the very tokens HAProxy's jwt_verify rows verify: rig.sh serves the rig's
# public keys (keys/rs256-pub.pem, keys/es256-pub.pem) as a JWKS with the tokens' kids.
# Gatehouse caches verified tokens and wrk sends one token per row: its JWT rows measure cache
# hits, HAProxy's rows a signature check per request.
#
# Steps: build (cargo build --release --bin gatehouse, fat LTO: 5-10 min; skipped with
# --no-build or when GATEHOUSE_BIN names a binary; honours CARGO_TARGET_DIR), the rig's keys
# (tools/gen_keys.py creates them if missing), a JWKS served by `python3 -m http.server` on
# 127.0.0.1:GATEHOUSE_RIG_JWKS_PORT (18120, pinned to LOADGEN_CPUS), a user and an API key
# created with the gateway's CLI in a fresh SQLite store, a pre-flight (every row started as
# run.sh will start it, in front of a stub upstream on :18080: 200 with the row's credentials,
# the identity the upstream sees, 401 without or with bad ones; any failure stops the script),
# then run.sh. The build, the pre-flight and run.sh hold a flock on
# /tmp/gatehouse-bench.lock (GATEHOUSE_BENCH_LOCK), shared with other load tests on this
# machine: they wait for each other, never overlap. Everything started here is stopped on exit.
# Results: /work/shared/bench/results/<timestamp>-gatehouse-auth/ (summary.md, runs.tsv,
# checks.txt, raw/), plus gatehouse-ratios.txt there.
#
# Options: --reps N (3), --duration S (10), --only REGEX (haproxy), --no-build, --keep (keep
# the work dir: store, JWKS, pre-flight logs); after `--`, options passed to run.sh as they are.
# Environment: BENCH_RIG (/work/shared/bench), GATEHOUSE_BIN, CARGO_TARGET_DIR, LOADGEN_CPUS (0),
# SERVER_CPUS (1), GATEHOUSE_RIG_JWKS_PORT (18120), GATEHOUSE_BENCH_LOCK.
set -euo pipefail

REPS=3 DURATION=10 BUILD=1 ONLY=haproxy KEEP=0 PASS=()
RIG=${BENCH_RIG:-/work/shared/bench}
LOCK=${GATEHOUSE_BENCH_LOCK:-/tmp/gatehouse-bench.lock}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
JWKS_PORT=${GATEHOUSE_RIG_JWKS_PORT:-18120}
UPSTREAM_PORT=18080   # the rig's upstream (fixed in rig-auth.yaml)

die() { echo "rig.sh: $*" >&2; exit 2; }
log() { printf '%s rig.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --reps) REPS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; DURATION=${DURATION%s}; shift 2 ;;
    --only) ONLY=${2:?}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --) shift; PASS=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $REPS =~ ^[0-9]+$ ]] || die "--reps must be a whole number"
[[ $DURATION =~ ^[0-9]+$ ]] || die "--duration must be a whole number of seconds"
[ -x "$RIG/run.sh" ] || die "no rig at $RIG (set BENCH_RIG)"
for b in cargo curl taskset ss flock python3; do command -v "$b" >/dev/null || die "$b not found"; done
python3 -c 'import jwt, cryptography' 2>/dev/null || die "python3 needs pyjwt + cryptography (see $RIG/setup.sh)"

HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
CFG=$HERE/rig-auth.yaml
KEYS=$RIG/keys

# ---------------------------------------------------------------- rows
# name | port | path | header (run.sh placeholders allowed; @KEY@ = the key created below)
ROWS=(
  "gatehouse|18100|/|"
  "gatehouse-apikey|18102|/key|X-API-Key: @KEY@"
  "gatehouse-apikey-rl|18103|/key-rl|X-API-Key: @KEY@"
  "gatehouse-jwt-rs256|18104|/jwt|Authorization: Bearer @JWT_RS256@"
  "gatehouse-jwt-es256|18105|/jwt|Authorization: Bearer @JWT_ES256@"
)

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d -t gatehouse-rig.XXXXXX)
PIDS=()
stop_pids() { # stops PIDS (TERM, then KILL after 5 s), newest first
  local i p n
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for n in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { kill -KILL "$p" 2>/dev/null || true; log "killed pid $p with SIGKILL"; }
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  stop_pids
  if [ "$KEEP" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { local n; for n in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done; return 1; }
start() { # name port cpus cmd... (background, logs to WORK/name.log)
  local name=$1 port=$2 cpus=$3; shift 3
  port_open "$port" && die "port $port is in use: not starting $name"
  taskset -c "$cpus" "$@" >"$WORK/$name.log" 2>&1 </dev/null 9>&- &
  PIDS+=("$!")
  wait_port "$port" || { cat "$WORK/$name.log" >&2; die "$name did not listen on :$port within 10 s"; }
}

# ---------------------------------------------------------------- the lock (build, pre-flight, run)
exec 9>>"$LOCK" || die "cannot open $LOCK"
if ! flock -n 9; then
  log "waiting for $LOCK (another load test or build holds it)"
  flock 9
fi
log "holding $LOCK"

# ---------------------------------------------------------------- binary
if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
else
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/gatehouse
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release --bin gatehouse (fat LTO: 5-10 min when src/ changed)"
    (cd "$ROOT" && cargo build --release --bin gatehouse 9>&-) || die "build failed"
  fi
fi
BIN=$(cd "$(dirname "$BIN")" 2>/dev/null && pwd)/$(basename "$BIN")
[ -x "$BIN" ] || die "no binary at $BIN (build it, or set GATEHOUSE_BIN)"
"$BIN" check --config "$CFG" >/dev/null || die "$CFG does not load"
# What was measured: the binary, and the tree it was built from (uncommitted changes included).
BUILT="$BIN ($(date -r "$BIN" '+%Y-%m-%d %H:%M'))"
if [ -z "${GATEHOUSE_BIN:-}" ] && [ "$BUILD" = 1 ] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  BUILT+=", built from $(git -C "$ROOT" log -1 --format=%h) + $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock | wc -l) uncommitted file(s) in src/ Cargo.*"
else
  BUILT+=", not built by this run"
fi
log "binary: $BUILT"

# ---------------------------------------------------------------- keys, JWKS, tokens
python3 "$RIG/tools/gen_keys.py" "$KEYS" || die "key generation failed"
mkdir -p "$WORK/jwks"
python3 - "$KEYS" "$WORK/jwks/jwks.json" <<'EOF' || die "cannot write the JWKS"
import json, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
kd, out = sys.argv[1], sys.argv[2]
keys = []
for cls, pem, kid, alg in ((RSAAlgorithm, "rs256-pub.pem", "bench-rs256", "RS256"),
                           (ECAlgorithm, "es256-pub.pem", "bench-es256", "ES256")):
    with open(f"{kd}/{pem}", "rb") as f:
        jwk = cls.to_jwk(load_pem_public_key(f.read()), as_dict=True)
    jwk.update(kid=kid, alg=alg, use="sig")
    keys.append(jwk)
with open(out, "w") as f:
    json.dump({"keys": keys}, f, indent=1)
EOF
# The same tokens run.sh will use (fresh iat/exp, same keys): for the pre-flight only.
eval "$(python3 "$RIG/tools/gen_keys.py" "$KEYS" --tokens)" || die "token generation failed"
. "$KEYS/bench.env"   # BENCH_API_KEY: the rig's own key, a bad one for Gatehouse

# ---------------------------------------------------------------- user and API key
export GATEHOUSE_RIG_DIR=$WORK GATEHOUSE_RIG_JWKS_PORT=$JWKS_PORT
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
USER_JSON=$("$BIN" users create --config "$CFG" --email rig@bench.gatehouse.test --name "rig bench" 2>"$WORK/cli.log") \
  || { cat "$WORK/cli.log" >&2; die "gatehouse users create failed"; }
USER_ID=$(json_field id <<<"$USER_JSON")
KEY=$("$BIN" keys create --config "$CFG" --user "$USER_ID" --name rig 2>>"$WORK/cli.log" | json_field key) \
  || { cat "$WORK/cli.log" >&2; die "gatehouse keys create failed"; }
[ -n "$KEY" ] || die "no API key"
log "user $USER_ID, API key ${KEY:0:12}... in $WORK/gatehouse-rig-auth.db"

# ---------------------------------------------------------------- JWKS server
start jwks "$JWKS_PORT" "$LOADGEN_CPUS" python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1 --directory "$WORK/jwks"
JWKS_PID=${PIDS[-1]}
curl -sf "http://127.0.0.1:$JWKS_PORT/jwks.json" | python3 -c 'import json,sys; assert len(json.load(sys.stdin)["keys"]) == 2' \
  || die "JWKS not served"

spawn_cmd() { # port -> the command run.sh spawns for a row (also what the pre-flight starts)
  printf 'env GATEHOUSE_RIG_PORT=%q GATEHOUSE_RIG_ADMIN_PORT=%q GATEHOUSE_RIG_DIR=%q GATEHOUSE_RIG_JWKS_PORT=%q %q serve --config %q' \
    "$1" "$(( $1 + 10 ))" "$WORK" "$JWKS_PORT" "$BIN" "$CFG"
}
fill() { # header with placeholders -> the pre-flight's value
  local s=${1//@KEY@/$KEY}
  s=${s//@JWT_RS256@/$JWT_RS256}; s=${s//@JWT_ES256@/$JWT_ES256}
  printf '%s' "$s"
}

# ---------------------------------------------------------------- pre-flight
STUB=$(cat <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (self.headers.get("X-User-Id", "") + "\n" if self.path == "/__whoami" else "ok\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
)
log "pre-flight: every row started as run.sh will start it, stub upstream on :$UPSTREAM_PORT"
start stub-upstream "$UPSTREAM_PORT" "$SERVER_CPUS" python3 -c "$STUB" "$UPSTREAM_PORT"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name port path hdr <<<"$row"
  start "$name" "$port" "$SERVER_CPUS" bash -c "exec $(spawn_cmd "$port")"
done
FAILS=0
check() { # row what expected got
  local r=PASS; [ "$3" = "$4" ] || { r=FAIL; FAILS=$((FAILS + 1)); }
  printf '  %-20s %-44s expect %-22s got %-22s %s\n' "$1" "$2" "$3" "$4" "$r" >&2
}
code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@"; }
for row in "${ROWS[@]}"; do
  IFS='|' read -r name port path hdr <<<"$row"
  url=http://127.0.0.1:$port$path
  H=(); [ -z "$hdr" ] || H=(-H "$(fill "$hdr")")
  check "$name" "GET with the row's credentials" 200 "$(code "${H[@]}" "$url")"
  who=$(curl -s -m 5 "${H[@]}" -H 'X-User-Id: forged-by-client' "${url%/}/__whoami" | tr -d '\n') || true
  case $name in
    gatehouse) want="" ;;
    gatehouse-apikey*) want=$USER_ID ;;
    gatehouse-jwt-*) want=user-0001 ;;
  esac
  check "$name" "upstream's X-User-Id (forged one dropped)" "${want:-(none)}" "${who:-(none)}"
  [ "$name" = gatehouse ] && continue
  check "$name" "no credentials" 401 "$(code "$url")"
  case $name in
    gatehouse-apikey*)
      check "$name" "the rig's sk_bench_ key (not Gatehouse's)" 401 "$(code -H "X-API-Key: $BENCH_API_KEY" "$url")"
      last=${KEY: -1}; [ "$last" = A ] && flip=B || flip=A
      check "$name" "the key, last character changed" 401 "$(code -H "X-API-Key: ${KEY%?}$flip" "$url")"
      ;;
    gatehouse-jwt-*)
      tok=$JWT_RS256; [ "$name" = gatehouse-jwt-es256 ] && tok=$JWT_ES256
      check "$name" "signature tampered (last 5 chars)" 401 "$(code -H "Authorization: Bearer ${tok%?????}AAAAA" "$url")"
      check "$name" "@JWT_BAD@ (HS256, bad signature)" 401 "$(code -H "Authorization: Bearer $JWT_BAD" "$url")"
      check "$name" "@JWT_EXPIRED@" 401 "$(code -H "Authorization: Bearer $JWT_EXPIRED" "$url")"
      check "$name" "@JWT_HS256@ (kid not in the JWKS)" 401 "$(code -H "Authorization: Bearer $JWT_HS256" "$url")"
      check "$name" "the API key (not a JWT route)" 401 "$(code -H "X-API-Key: $KEY" "$url")"
      ;;
  esac
done
# stop everything but the JWKS server; run.sh starts the upstream and the rows itself
KEEP_PIDS=()
for p in "${PIDS[@]}"; do [ "$p" = "$JWKS_PID" ] || { kill -TERM "$p" 2>/dev/null || true; KEEP_PIDS+=("$p"); }; done
for p in "${KEEP_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=("$JWKS_PID")
if [ "$FAILS" -gt 0 ]; then
  for row in "${ROWS[@]}"; do IFS='|' read -r name _ <<<"$row"; echo "--- $name.log" >&2; tail -5 "$WORK/$name.log" >&2; done
  die "pre-flight: $FAILS check(s) failed, not measuring"
fi
for p in "$UPSTREAM_PORT" $(printf '%s\n' "${ROWS[@]}" | cut -d'|' -f2); do
  for n in $(seq 1 50); do port_open "$p" || break; sleep 0.1; done
  port_open "$p" && die "port $p still in use after the pre-flight"
done
log "pre-flight passed"

# ---------------------------------------------------------------- the run
OUT=$RIG/results/$(date +%Y%m%d-%H%M%S)-gatehouse-auth
ARGS=(--only "$ONLY" --reps "$REPS" --duration "$DURATION" --out "$OUT" "${PASS[@]}")
for row in "${ROWS[@]}"; do
  IFS='|' read -r name port path hdr <<<"$row"
  ARGS+=("$name=http://127.0.0.1:$port$path")
  [ -z "$hdr" ] || ARGS+=(-H "${hdr//@KEY@/$KEY}")
  ARGS+=(--spawn "$(spawn_cmd "$port")")
done
log "$RIG/run.sh --only '$ONLY' --reps $REPS --duration $DURATION ... (5 Gatehouse rows)"
rc=0
"$RIG/run.sh" "${ARGS[@]}" 9>&- || rc=$?
flock -u 9
[ "$rc" = 0 ] || die "run.sh failed (exit $rc)"

# ---------------------------------------------------------------- ratios
grep -q FAIL "$OUT/checks.txt" 2>/dev/null && log "WARNING: run.sh's pre-flight checks failed, see $OUT/checks.txt"
{ echo "gatehouse binary: $BUILT"; echo "config: $CFG; API key of user $USER_ID; JWKS on :$JWKS_PORT"
python3 - "$OUT/runs.tsv" <<'EOF'
import csv, statistics, sys
rows = {}
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    rows.setdefault(r["target"], []).append(r)
med = lambda t, k: statistics.median(float(r[k]) for r in rows[t])
print("ratios of median req/s (same run); server CPU per request, us")
for a, b in (("gatehouse-apikey", "gatehouse"), ("gatehouse-apikey-rl", "gatehouse"),
             ("gatehouse-jwt-rs256", "gatehouse"), ("gatehouse-jwt-es256", "gatehouse"),
             ("gatehouse", "haproxy-proxy"), ("gatehouse-apikey", "haproxy-apikey"),
             ("gatehouse-apikey-rl", "haproxy-apikey-rl"),
             ("gatehouse-jwt-rs256", "haproxy-jwt-rs256"), ("gatehouse-jwt-es256", "haproxy-jwt-es256")):
    if a in rows and b in rows:
        print(f"  {a:>20} / {b:<18} {med(a, 'rps') / med(b, 'rps'):6.3f}x   "
              f"srv us/req {med(a, 'srv_us_per_req'):6.1f} vs {med(b, 'srv_us_per_req'):6.1f}")
EOF
} | tee "$OUT/gatehouse-ratios.txt"
log "results in $OUT (summary.md, runs.tsv, checks.txt, gatehouse-ratios.txt, raw/)"
