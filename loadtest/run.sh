#!/usr/bin/env bash
# Portvakt's loopback load test, in one run: the same generator (loadgen) against
#   (a) direct    the origin itself,
#   (b) nginx     nginx as a plain reverse proxy to it,
#   (c) portvakt  portvakt in proxy mode, with a logged-in patron's cookie,
# each with a closed-loop run at 64 connections, a constant-rate run at a fifth of the
# direct closed-loop throughput (the p99 target), and a constant-rate run at a fifth of
# the slowest target's closed-loop throughput ("moderate": on one core the origin is so
# much faster than any proxy that a fifth of its capacity loads a proxy and the origin
# together close to the core's limit, so that p99 there is mostly queueing). Prints req/s, p50 and p99 for each, each server's CPU time
# per request (utime+stime from /proc/PID/stat), the ratios and whether the targets are met.
#
#   loadtest/run.sh [--duration 10s] [--warmup 2s] [--connections 64] [--no-build]
#                   [--store memory|redis|both] [--rounds 1] [--callgrind]
#
# --store: portvakt's session store; `both` measures portvakt twice, with the memory store
# and with Redis (a redis-server of its own on a free loopback port), in the same run.
# --rounds N: the closed-loop runs and the moderate-rate runs N times each, the targets
# taking turns in each round; the ratios and the p99 differences are the medians of each
# round's (runs minutes apart on a VM vary by more than small changes do, and a burst of
# noise in one target's only run would be read as that target's tail), and the table shows
# each target's median round.
# --callgrind: instead of the runs, portvakt under valgrind's callgrind, counting the
# instructions it executes per proxied request (a steady figure on a busy machine);
# CALLGRIND_OUT=dir keeps the dumps for callgrind_annotate.
# PORTVAKT_BIN=path measures that portvakt binary instead of the one built here (to
# compare two builds, run them in turns; each gets the same config and pinning).
#
# Installs nothing. Needs cargo, curl and nginx (Debian: apt-get install -y nginx-light),
# redis-server for --store redis|both, valgrind for --callgrind.
# Only 127.0.0.1 is used; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10s
WARMUP=2s
CONNECTIONS=64
BUILD=1
STORE=memory
CALLGRIND=0
ROUNDS=1
RATE_DIVISOR=5 # the fixed rate is the direct closed-loop throughput divided by this
SERVICE=avis
INSTITUTION=NO-2399900
CARD=LOAD0001
PIN=4321

while [ $# -gt 0 ]; do
    case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --store) STORE=$2; shift 2 ;;
    --callgrind) CALLGRIND=1; shift ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
done

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }
case "$STORE" in
memory) PV_TARGETS=(portvakt) ;;
redis) PV_TARGETS=(portvakt-redis) ;;
both) PV_TARGETS=(portvakt portvakt-redis) ;;
*) die "--store must be memory, redis or both, not $STORE" ;;
esac
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a whole number from 1, not $ROUNDS"

# --- Tools ---------------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || die "nginx not found: apt-get install -y nginx-light (or nginx)"
if [ "$STORE" != memory ]; then
    REDIS_SERVER=$(command -v redis-server || true)
    [ -n "$REDIS_SERVER" ] || die "redis-server not found: apt-get install -y redis-server"
fi
if [ "$CALLGRIND" = 1 ]; then
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
        die "valgrind not found: apt-get install -y valgrind"
fi
CLK_TCK=$(getconf CLK_TCK)

# --- Machine -------------------------------------------------------------------------------
NCPU=$(nproc)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
say "machine: $NCPU cores ($CPU_MODEL), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Servers (origin, nginx, portvakt) on one core, the generator on another, so the generator
# does not take CPU from what it measures. SERVER_CPUS / GEN_CPUS override (taskset lists);
# ORIGIN_CPUS (default: SERVER_CPUS) moves the origin off the proxies' core.
SRV_PIN=()
GEN_PIN=()
ORIGIN_PIN=()
if command -v taskset >/dev/null && [ "$NCPU" -ge 2 ]; then
    SERVER_CPUS=${SERVER_CPUS:-0}
    GEN_CPUS=${GEN_CPUS:-1}
    ORIGIN_CPUS=${ORIGIN_CPUS:-$SERVER_CPUS}
    SRV_PIN=(taskset -c "$SERVER_CPUS")
    GEN_PIN=(taskset -c "$GEN_CPUS")
    ORIGIN_PIN=(taskset -c "$ORIGIN_CPUS")
    say "pinning: servers on CPU $SERVER_CPUS, generator on CPU $GEN_CPUS, origin on CPU $ORIGIN_CPUS"
    [ "$NCPU" -eq 2 ] && say "note: this machine has only 2 cores: the origin and the proxy under test share one," \
        "so proxied throughput is bounded by both together; nginx and portvakt are measured alike."
else
    say "pinning: none (taskset missing or 1 core): generator and servers share the CPU"
fi
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    say "warning: load average $load1 before the run: other work (compiles?) will disturb the figures"
fi

# --- Build ---------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
    say "building portvakt and loadgen (the production profile: release with LTO)…"
    cargo build --profile production --locked --quiet -p gateway -p loadgen
fi
PORTVAKT=${PORTVAKT_BIN:-$TARGET_DIR/production/portvakt}
LOADGEN=$TARGET_DIR/production/loadgen
[ -x "$PORTVAKT" ] || die "no portvakt binary at $PORTVAKT (run without --no-build, or fix PORTVAKT_BIN)"
[ -x "$LOADGEN" ] || die "no loadgen binary in $TARGET_DIR/production (run without --no-build)"

# --- Cleanup -------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portvakt-load.XXXXXX")
PIDS=()
cleanup() {
    local pid i alive
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (at most WAIT_TRIES/10 s, default 10 s) until `cmd…` succeeds, failing early if
# process $1 has died.
wait_for() {
    local pid=$1 what=$2 i
    shift 2
    for i in $(seq "${WAIT_TRIES:-100}"); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || die "$what exited; its log: $(tail -n 5 "$TMP/$what.log" 2>/dev/null)"
        sleep 0.1
    done
    die "$what did not come up within $((${WAIT_TRIES:-100} / 10)) s"
}

# CPU time (clock ticks) of a process and its children (nginx's workers): user + system,
# then system alone.
cpu_ticks() {
    local total=0 sys=0 p stat rest f kids
    for p in "$@"; do
        if command -v pgrep >/dev/null; then
            kids=$(pgrep -P "$p" || true)
        else
            kids=$(awk -v pp="$p" '{ sub(/.*\) /, ""); split($0, f, " "); if (f[2] == pp) print FILENAME }' \
                /proc/[0-9]*/stat 2>/dev/null | sed 's|/proc/||; s|/stat||')
        fi
        for q in $p $kids; do
            stat=$(cat "/proc/$q/stat" 2>/dev/null) || continue
            rest=${stat##*) }
            read -r -a f <<<"$rest"
            total=$((total + f[11] + f[12]))
            sys=$((sys + f[12]))
        done
    done
    echo "$total $sys"
}

# Context switches of a process's threads and its children's: involuntary (pre-empted),
# then voluntary (went to sleep: waiting for work).
ctx_switches() {
    local inv=0 vol=0 p q t kids v n
    for p in "$@"; do
        kids=$(pgrep -P "$p" 2>/dev/null || true)
        for q in $p $kids; do
            for t in /proc/"$q"/task/*/status; do
                while read -r n v; do
                    case "$n" in
                    nonvoluntary_ctxt_switches:) inv=$((inv + v)) ;;
                    voluntary_ctxt_switches:) vol=$((vol + v)) ;;
                    esac
                done <"$t" 2>/dev/null || true
            done
        done
    done
    echo "$inv $vol"
}

# --- (a) the origin ------------------------------------------------------------------------
"${ORIGIN_PIN[@]}" "$LOADGEN" origin --port 0 --lifetime 1h >"$TMP/origin.port" 2>"$TMP/origin.log" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
wait_for "$ORIGIN_PID" origin test -s "$TMP/origin.port"
ORIGIN_PORT=$(head -n1 "$TMP/origin.port")
PATH_UNDER_TEST=/artikkel/1
say "origin: 127.0.0.1:$ORIGIN_PORT (pid $ORIGIN_PID)"

mapfile -t PORTS < <("$LOADGEN" free-port --count 6)
NGINX_PORT=${PORTS[0]}

# --- (b) nginx -----------------------------------------------------------------------------
mkdir -p "$TMP/nginx"
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user $(id -un) $(id -gn);"
cat >"$TMP/nginx/nginx.conf" <<EOF
# A plain reverse proxy, generated by loadtest/run.sh.
$NGINX_USER
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
"${SRV_PIN[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx.log" -c "$TMP/nginx/nginx.conf" >>"$TMP/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_for "$NGINX_PID" nginx curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
say "nginx: 127.0.0.1:$NGINX_PORT (pid $NGINX_PID, $("$NGINX" -v 2>&1 | sed 's/.*version: //'))"

# --- (c) portvakt --------------------------------------------------------------------------
# One instance per store measured: `portvakt` with the memory store, `portvakt-redis` with
# a redis-server of its own. Each gets its own ports, config and patron session.
declare -A PV_PID PV_PORT PV_COOKIE PV_HOST PV_UNAVAILABLE
if [ "$STORE" != memory ]; then
    REDIS_PORT=${PORTS[5]}
    mkdir -p "$TMP/redis"
    # No persistence: nothing to write, nothing to wait for.
    "${SRV_PIN[@]}" "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$TMP/redis" --daemonize no >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_for "$REDIS_PID" redis bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT"
    say "redis: 127.0.0.1:$REDIS_PORT (pid $REDIS_PID, $("$REDIS_SERVER" --version | sed 's/.* v=\([^ ]*\).*/\1/'))"
fi

# start_portvakt NAME PORT ADMIN_PORT: config, start, log in; sets PV_*[NAME].
start_portvakt() {
    local name=$1 port=$2 admin=$3
    local PV=$TMP/$name
    mkdir -p "$PV/policy"
    "$PORTVAKT" keys generate --out "$PV/keys" >/dev/null
    local PUBLIC_HOST=bib.localhost:$port
    local SERVICE_HOST=$SERVICE.bib.localhost:$port
    local store='backend = "memory"'
    [ "$name" = portvakt-redis ] && store="backend = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT\""
    cat >"$PV/policy/policy.toml" <<EOF
[[institution]]
id = "$INSTITUTION"
name = "Lastprøvebiblioteket"
kind = "public_library"
municipality = "3999"

[[service]]
id = "$SERVICE"
name = "Avisarkivet (lasttest)"
access = "proxy"
release = ["pseudonym", "institution"]

[service.proxy]
origin = "http://127.0.0.1:$ORIGIN_PORT"
item_paths = ["/artikkel/*"]
search_paths = ["/sok"]

[[entitlement]]
institution = "$INSTITUTION"
service = "$SERVICE"
from = 2020-01-01
EOF
    cat >"$PV/patrons.toml" <<EOF
[[patron]]
card = "$CARD"
pin = "$PIN"
birth_date = 1980-06-15
home_library = "$INSTITUTION"
EOF
    # session_key_file is what the Redis store needs besides redis_url (the same file on
    # every replica); the memory store takes it too.
    cat >"$PV/portvakt.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
public_host = "$PUBLIC_HOST"

[policy]
dir = "policy"

[store]
$store
data_dir = "data"

[keys]
pseudonym_key_file = "keys/pseudonym.key"
session_key_file = "keys/session.key"
signing_key_file = "keys/signing.key"
signing_cert_file = "keys/signing.crt"

[[card_backend]]
kind = "file"
institutions = ["$INSTITUTION"]
path = "patrons.toml"
EOF
    local wrap=() tries=100
    if [ "$CALLGRIND" = 1 ]; then
        # Instrumentation off until the measured run (callgrind_control -i on).
        wrap=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.callgrind.%p")
        tries=600
    fi
    # No per-request log lines, as nginx runs with access_log off. PORTVAKT_LOG overrides.
    RUST_LOG=${PORTVAKT_LOG:-warn} "${SRV_PIN[@]}" "${wrap[@]}" "$PORTVAKT" serve --config "$PV/portvakt.toml" >"$TMP/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    PV_PID[$name]=$pid
    PV_PORT[$name]=$port
    PV_HOST[$name]=$SERVICE_HOST
    WAIT_TRIES=$tries wait_for "$pid" "$name" curl -fsS "http://127.0.0.1:$admin/readyz"
    say "$name: 127.0.0.1:$port as $PUBLIC_HOST (pid $pid, store ${store%%$'\n'*})"

    # Log in as a patron with curl, as a browser would: the form (CSRF cookie and field),
    # the POST, then the entry link, which hands the session over to the service's host.
    local JAR=$TMP/$name.cookies.txt code check csrf unavailable="" cookie=""
    local CURL=(curl -sS --max-time 30 -c "$JAR" -b "$JAR"
        --resolve "bib.localhost:$port:127.0.0.1" --resolve "$SERVICE_HOST:127.0.0.1")
    "${CURL[@]}" -o "$TMP/$name.login.html" "http://$PUBLIC_HOST/login"
    csrf=$(sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' "$TMP/$name.login.html" | head -n1)
    [ -n "$csrf" ] || die "no csrf field on $name's login page"
    code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' --data-urlencode "csrf=$csrf" \
        --data-urlencode "library=$INSTITUTION" --data-urlencode "card=$CARD" \
        --data-urlencode "pin=$PIN" "http://$PUBLIC_HOST/login")
    [ "$code" = 303 ] || die "login answered $code, not 303; $name's log: $(tail -n 5 "$TMP/$name.log")"
    code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' "http://$PUBLIC_HOST/go/$SERVICE")
    if [ "$code" = 501 ]; then
        unavailable="portvakt proxy mode not available (GET /go/$SERVICE answered 501)"
    elif [ "${code:0:1}" != 3 ]; then
        unavailable="GET /go/$SERVICE answered $code, not a redirect"
    else
        # Follow the entry link to the service host (/__portvakt/enter?t=…), keeping its cookies.
        "${CURL[@]}" -L --max-redirs 5 -o /dev/null "http://$PUBLIC_HOST/go/$SERVICE"
        cookie=$(awk -v d="$SERVICE_HOST" 'BEGIN { FS = "\t"; sub(/:.*/, "", d) }
            NF >= 7 { dom = $1; sub(/^#HttpOnly_/, "", dom); sub(/^\./, "", dom)
                      if (dom == d || ($2 == "TRUE" && substr(d, length(d) - length(dom)) == "." dom))
                          printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }' "$JAR")
        check=$(curl -sS --max-time 30 -o "$TMP/$name.check.html" -w '%{http_code}' \
            -H "Host: $SERVICE_HOST" -H "Cookie: $cookie" "http://127.0.0.1:$port$PATH_UNDER_TEST" || true)
        if [ "$check" != 200 ]; then
            unavailable="a proxied request with the service-host cookie answered $check, not 200"
        elif ! grep -q "Lokalhistorie fra Vestfold" "$TMP/$name.check.html"; then
            unavailable="a proxied request answered 200 but not with the origin's page"
        fi
    fi
    PV_COOKIE[$name]=$cookie
    PV_UNAVAILABLE[$name]=$unavailable
    [ -n "$unavailable" ] && say "($name): $unavailable"
    return 0
}

i=1
for t in "${PV_TARGETS[@]}"; do
    start_portvakt "$t" "${PORTS[$i]}" "${PORTS[$((i + 1))]}"
    i=$((i + 2))
done

if [ "$CALLGRIND" = 1 ]; then
    # Instructions per proxied request: zero the counters, switch instrumentation on for a
    # closed-loop run (few connections: valgrind runs one thread at a time anyway), dump.
    echo
    echo "Instructions per proxied request (callgrind), $(date -u +%Y-%m-%dT%H:%MZ): $DURATION run, 8 connections"
    for t in "${PV_TARGETS[@]}"; do
        [ -n "${PV_UNAVAILABLE[$t]}" ] && { echo "$t: ${PV_UNAVAILABLE[$t]}"; continue; }
        pid=${PV_PID[$t]}
        args=(--url "http://127.0.0.1:${PV_PORT[$t]}$PATH_UNDER_TEST" --host "${PV_HOST[$t]}" --cookie "${PV_COOKIE[$t]}")
        "${GEN_PIN[@]}" "$LOADGEN" closed "${args[@]}" --connections 8 --duration 2s --timeout 30s >/dev/null
        callgrind_control -z "$pid" >/dev/null 2>&1
        callgrind_control -i on "$pid" >/dev/null 2>&1
        line=$("${GEN_PIN[@]}" "$LOADGEN" closed "${args[@]}" --connections 8 --duration "$DURATION" --timeout 30s --label "$t")
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$pid" >/dev/null 2>&1
        n=$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' <<<"$line")
        ir=$(cat "$TMP/$t.callgrind.$pid".* 2>/dev/null | sed -n 's/^totals: *\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
        # CALLGRIND_OUT=dir keeps the dumps for callgrind_annotate.
        [ -n "${CALLGRIND_OUT:-}" ] && mkdir -p "$CALLGRIND_OUT" && cp "$TMP/$t.callgrind.$pid".* "$CALLGRIND_OUT/"
        awk -v t="$t" -v ir="$ir" -v n="$n" 'BEGIN { printf "%-15s %8d requests  %14d instructions  %10.0f instructions/request\n", t, n, ir, n ? ir / n : 0 }'
    done
    exit 0
fi

# --- Runs ----------------------------------------------------------------------------------
# run NAME MODE [loadgen args…]: warm-up for closed runs, then the measured run with the CPU
# time of the server under test (and of the origin) read before and after.
declare -A LINE SRV_CPU SRV_SYS ORIGIN_CPU PREEMPT SLEEPS ORIGIN_WAKE
server_pid() {
    case "$1" in
    direct) echo "$ORIGIN_PID" ;;
    nginx) echo "$NGINX_PID" ;;
    # With Redis, what it costs to serve is portvakt's CPU and redis-server's together.
    portvakt-redis) echo "${PV_PID[$1]} $REDIS_PID" ;;
    *) echo "${PV_PID[$1]}" ;;
    esac
}
target_args() {
    case "$1" in
    direct) echo "--url http://127.0.0.1:$ORIGIN_PORT$PATH_UNDER_TEST" ;;
    nginx) echo "--url http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST" ;;
    *) echo "--url http://127.0.0.1:${PV_PORT[$1]}$PATH_UNDER_TEST --host ${PV_HOST[$1]}" ;;
    esac
}
json() { sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p" <<<"${LINE[$1]:-}" | tr -d '"'; }

run() {
    local name=$1 mode=$2 pid s0 s1 k0 k1 o0 o1 i0 i1 v0 v1 w0 w1 n
    shift 2
    local args
    read -r -a args <<<"$(target_args "$name")"
    case "$name" in portvakt*) args+=(--cookie "${PV_COOKIE[$name]}") ;; esac
    if [ "$mode" = closed ]; then
        "${GEN_PIN[@]}" "$LOADGEN" closed "${args[@]}" --connections "$CONNECTIONS" \
            --duration "$WARMUP" --label warmup >/dev/null || die "warm-up against $name failed"
    fi
    pid=$(server_pid "$name")
    # shellcheck disable=SC2086 # one or two pids
    read -r s0 k0 < <(cpu_ticks $pid); read -r o0 _ < <(cpu_ticks "$ORIGIN_PID")
    # shellcheck disable=SC2086
    read -r i0 v0 < <(ctx_switches $pid); read -r _ w0 < <(ctx_switches "$ORIGIN_PID")
    local sub=$mode
    [ "$mode" = moderate ] && sub=rate
    LINE[$name.$mode]=$("${GEN_PIN[@]}" "$LOADGEN" "$sub" "$@" "${args[@]}" \
        --connections "$CONNECTIONS" --duration "$DURATION" --label "$name") ||
        die "the $mode run against $name failed"
    # shellcheck disable=SC2086
    read -r s1 k1 < <(cpu_ticks $pid); read -r o1 _ < <(cpu_ticks "$ORIGIN_PID")
    # shellcheck disable=SC2086
    read -r i1 v1 < <(ctx_switches $pid); read -r _ w1 < <(ctx_switches "$ORIGIN_PID")
    n=$(json "$name.$mode" requests)
    PREEMPT[$name.$mode]=$(awk -v c=$((i1 - i0)) -v n="$n" 'BEGIN { printf "%.2f", n ? c / n : 0 }')
    SLEEPS[$name.$mode]=$(awk -v c=$((v1 - v0)) -v n="$n" 'BEGIN { printf "%.2f", n ? c / n : 0 }')
    ORIGIN_WAKE[$name.$mode]=$(awk -v c=$((w1 - w0)) -v n="$n" 'BEGIN { printf "%.2f", n ? c / n : 0 }')
    SRV_CPU[$name.$mode]=$(awk -v t=$((s1 - s0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
    SRV_SYS[$name.$mode]=$(awk -v t=$((k1 - k0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
    ORIGIN_CPU[$name.$mode]=$(awk -v t=$((o1 - o0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
    local bad
    bad=$(($(json "$name.$mode" errors) + $(json "$name.$mode" non_2xx)))
    [ "$bad" -gt 0 ] && say "warning: $name $mode: $bad errors or non-2xx answers"
    say "$name $mode: $(json "$name.$mode" rps) req/s, p99 $(json "$name.$mode" p99_us) µs"
    sleep 1
}

TARGETS=(direct nginx)
for t in "${PV_TARGETS[@]}"; do
    [ -z "${PV_UNAVAILABLE[$t]}" ] && TARGETS+=("$t")
done
# With --rounds, each round's closed-loop and moderate-rate figures are kept under
# NAME.MODE.ROUND; NAME.closed becomes the round with the target's median throughput, and
# NAME.moderate the round with its median p99.
keep_round() {
    local k=$1.$2
    LINE[$k.$3]=${LINE[$k]}
    SRV_CPU[$k.$3]=${SRV_CPU[$k]}
    SRV_SYS[$k.$3]=${SRV_SYS[$k]}
    ORIGIN_CPU[$k.$3]=${ORIGIN_CPU[$k]}
    PREEMPT[$k.$3]=${PREEMPT[$k]}
    SLEEPS[$k.$3]=${SLEEPS[$k]}
    ORIGIN_WAKE[$k.$3]=${ORIGIN_WAKE[$k]}
}
# median_round NAME MODE FIELD: the round whose FIELD (rps, p99_us) is the target's median.
median_round() {
    local t=$1 m=$2 f=$3 r
    for ((r = 1; r <= ROUNDS; r++)); do
        echo "$(json "$t.$m.$r" "$f") $r"
    done | sort -g | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { print $2 }'
}
# use_round NAME MODE ROUND: that round's figures become the target's figures for MODE.
use_round() {
    local k=$1.$2 r=$3
    LINE[$k]=${LINE[$k.$r]}
    SRV_CPU[$k]=${SRV_CPU[$k.$r]}
    SRV_SYS[$k]=${SRV_SYS[$k.$r]}
    ORIGIN_CPU[$k]=${ORIGIN_CPU[$k.$r]}
    PREEMPT[$k]=${PREEMPT[$k.$r]}
    SLEEPS[$k]=${SLEEPS[$k.$r]}
    ORIGIN_WAKE[$k]=${ORIGIN_WAKE[$k.$r]}
}
# median [FORMAT]: of the numbers on stdin, one per line, printed with FORMAT (%.2f).
median() {
    sort -g | awk -v f="${1:-%.2f}" '{ v[NR] = $1 } END { if (NR % 2) printf f, v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

say "runs: $DURATION each (closed-loop runs after a $WARMUP warm-up), $CONNECTIONS connections"
for ((round = 1; round <= ROUNDS; round++)); do
    [ "$ROUNDS" -gt 1 ] && say "round $round of $ROUNDS"
    for t in "${TARGETS[@]}"; do
        run "$t" closed
        keep_round "$t" closed "$round"
    done
done
for t in "${TARGETS[@]}"; do
    use_round "$t" closed "$(median_round "$t" closed rps)"
done
RATE=$(awk -v r="$(json direct.closed rps)" -v d="$RATE_DIVISOR" 'BEGIN { printf "%d", r / d }')
say "fixed rate: $RATE req/s (direct closed-loop throughput / $RATE_DIVISOR)"
SLOWEST=$(for t in "${TARGETS[@]}"; do json "$t.closed" rps; done | sort -g | head -n1)
MODERATE=$(awk -v r="$SLOWEST" -v d="$RATE_DIVISOR" 'BEGIN { printf "%d", r / d }')
say "moderate rate: $MODERATE req/s (slowest closed-loop throughput / $RATE_DIVISOR)"
for t in "${TARGETS[@]}"; do
    run "$t" rate --rate "$RATE"
done
for ((round = 1; round <= ROUNDS; round++)); do
    [ "$ROUNDS" -gt 1 ] && say "moderate rate, round $round of $ROUNDS"
    for t in "${TARGETS[@]}"; do
        run "$t" moderate --rate "$MODERATE"
        keep_round "$t" moderate "$round"
    done
done
for t in "${TARGETS[@]}"; do
    use_round "$t" moderate "$(median_round "$t" moderate p99_us)"
done

# --- Report --------------------------------------------------------------------------------
echo
echo "Portvakt load test, $(date -u +%Y-%m-%dT%H:%MZ): $NCPU cores ($CPU_MODEL), kernel $(uname -r)"
echo "loopback; $CONNECTIONS connections; $DURATION per run; fixed rate $RATE req/s; moderate rate $MODERATE req/s; page $(json direct.closed bytes_per_response) bytes; store $STORE"
echo
printf '%-14s %-7s %10s %9s %9s %9s %8s %12s %12s %12s %12s %12s %12s\n' target run req/s p50_ms p99_ms max_ms errors cpu_us/req sys_us/req origin_us/req preempt/req sleep/req origin_wake/req
for t in direct nginx "${PV_TARGETS[@]}"; do
    for m in closed rate moderate; do
        if [ -z "${LINE[$t.$m]:-}" ]; then
            printf '%-14s %-7s %s\n' "$t" "$m" "— ${PV_UNAVAILABLE[$t]:-not run}"
            continue
        fi
        awk -v t="$t" -v m="$m" -v rps="$(json "$t.$m" rps)" -v p50="$(json "$t.$m" p50_us)" \
            -v p99="$(json "$t.$m" p99_us)" -v mx="$(json "$t.$m" max_us)" \
            -v err=$(($(json "$t.$m" errors) + $(json "$t.$m" non_2xx))) \
            -v cpu="${SRV_CPU[$t.$m]}" -v sys="${SRV_SYS[$t.$m]}" -v ocpu="${ORIGIN_CPU[$t.$m]}" \
            -v pre="${PREEMPT[$t.$m]}" -v slp="${SLEEPS[$t.$m]}" -v wake="${ORIGIN_WAKE[$t.$m]}" \
            'BEGIN { printf "%-14s %-7s %10.0f %9.3f %9.3f %9.3f %8d %12.1f %12.1f %12s %12.2f %12.2f %12.2f\n", t, m, rps, p50/1000, p99/1000, mx/1000, err, cpu, sys, (t == "direct" ? "(same)" : sprintf("%.1f", ocpu)), pre, slp, wake }'
    done
done
echo "(cpu_us/req: the server under test — the origin for direct, nginx master+worker, portvakt,"
echo " portvakt and redis-server together for portvakt-redis — user+system CPU time during the run"
echo " divided by the requests; sys_us/req: the part of it spent in the kernel (loopback TCP,"
echo " epoll); origin_us/req: the origin's; preempt/req: the server's involuntary context"
echo " switches per request (pre-empted, mostly by the origin on the same core); sleep/req: its"
echo " voluntary ones (it waited for work: for direct, these are the origin's); origin_wake/req:"
echo " the origin's voluntary ones (it went to sleep; 1/x is how many requests it served per wake-up))"
echo

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
verdict() { awk -v v="$1" -v lim="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= lim : v <= lim; print ok ? "met" : "NOT met" }'; }
echo "nginx/direct throughput (closed):   $(ratio "$(json nginx.closed rps)" "$(json direct.closed rps)")"
if [ "$ROUNDS" -gt 1 ]; then
    # Each target's own figures by round: which of them moved when a ratio did.
    for t in "${TARGETS[@]}"; do
        echo "$t by round: req/s $(for ((r = 1; r <= ROUNDS; r++)); do printf '%.0f ' "$(json "$t.closed.$r" rps)"; done)," \
            "CPU µs/request $(for ((r = 1; r <= ROUNDS; r++)); do printf '%s ' "${SRV_CPU[$t.closed.$r]}"; done)," \
            "of it in the kernel $(for ((r = 1; r <= ROUNDS; r++)); do printf '%s ' "${SRV_SYS[$t.closed.$r]}"; done)," \
            "p99 ms at the moderate rate $(for ((r = 1; r <= ROUNDS; r++)); do awk -v p="$(json "$t.moderate.$r" p99_us)" 'BEGIN { printf "%.2f ", p / 1000 }'; done)"
    done
fi
# p99 - direct p99 at the moderate rate, each round's difference (direct's run came just
# before) and their median: "by-round-diffs median" for target $1.
moderate_p99_diffs() {
    local t=$1 r diffs
    diffs=$(for ((r = 1; r <= ROUNDS; r++)); do
        awk -v a="$(json "$t.moderate.$r" p99_us)" -v b="$(json "direct.moderate.$r" p99_us)" 'BEGIN { printf "%.3f\n", (a - b) / 1000 }'
    done)
    echo "$(echo $diffs) $(median %.3f <<<"$diffs")"
}
if [ "$ROUNDS" -gt 1 ]; then
    # nginx as the reference: what a plain proxy adds to the tail in the same rounds.
    read -r -a nd <<<"$(moderate_p99_diffs nginx)"
    echo "nginx p99 - direct p99 by round at the moderate rate, ms: ${nd[*]:0:ROUNDS} (median ${nd[ROUNDS]})"
fi
for t in "${PV_TARGETS[@]}"; do
    if [ -n "${PV_UNAVAILABLE[$t]}" ]; then
        echo "$t targets: not measured — ${PV_UNAVAILABLE[$t]}"
        continue
    fi
    if [ "$ROUNDS" -gt 1 ]; then
        # Each round's ratio (the targets took turns within it), then their median.
        t1=$(for ((r = 1; r <= ROUNDS; r++)); do ratio "$(json "$t.closed.$r" rps)" "$(json "nginx.closed.$r" rps)"; echo; done)
        t2=$(for ((r = 1; r <= ROUNDS; r++)); do ratio "${SRV_CPU[$t.closed.$r]}" "${SRV_CPU[nginx.closed.$r]}"; echo; done)
        r1=$(median <<<"$t1")
        r2=$(median <<<"$t2")
        echo "$t/nginx by round: throughput $(echo $t1), CPU per request $(echo $t2) (medians below)"
    else
        r1=$(ratio "$(json "$t.closed" rps)" "$(json nginx.closed rps)")
        r2=$(ratio "${SRV_CPU[$t.closed]}" "${SRV_CPU[nginx.closed]}")
    fi
    d=$(awk -v a="$(json "$t.rate" p99_us)" -v b="$(json direct.rate p99_us)" 'BEGIN { printf "%.3f", (a - b) / 1000 }')
    echo "$t/nginx throughput (closed): $r1   target >= 0.80: $(verdict "$r1" 0.80 '>=')"
    echo "$t/nginx CPU per request:     $r2   target <= 1.25: $(verdict "$r2" 1.25 '<=')"
    echo "$t p99 - direct p99 at $RATE/s: $d ms   target <= 1 ms: $(verdict "$d" 1 '<=')"
    if [ "$ROUNDS" -gt 1 ]; then
        read -r -a pd <<<"$(moderate_p99_diffs "$t")"
        d=${pd[ROUNDS]}
        echo "$t p99 - direct p99 by round at the moderate rate, ms: ${pd[*]:0:ROUNDS} (median below)"
    else
        d=$(awk -v a="$(json "$t.moderate" p99_us)" -v b="$(json direct.moderate p99_us)" 'BEGIN { printf "%.3f", (a - b) / 1000 }')
    fi
    echo "$t p99 - direct p99 at $MODERATE/s (moderate): $d ms   target <= 1 ms: $(verdict "$d" 1 '<=')"
done
if [ "$STORE" = both ] && [ -n "${LINE[portvakt.closed]:-}" ] && [ -n "${LINE[portvakt-redis.closed]:-}" ]; then
    echo "portvakt-redis/portvakt (memory): throughput $(ratio "$(json portvakt-redis.closed rps)" "$(json portvakt.closed rps)"), CPU per request $(ratio "${SRV_CPU[portvakt-redis.closed]}" "${SRV_CPU[portvakt.closed]}"), p99 at $RATE/s $(ratio "$(json portvakt-redis.rate p99_us)" "$(json portvakt.rate p99_us)")"
fi
echo
echo "raw (loadgen JSON lines):"
for t in direct nginx "${PV_TARGETS[@]}"; do
    for m in closed rate moderate; do
        if [ "$ROUNDS" -gt 1 ] && [ "$m" != rate ]; then
            for ((r = 1; r <= ROUNDS; r++)); do
                [ -n "${LINE[$t.$m.$r]:-}" ] && echo "${LINE[$t.$m.$r]}"
            done
        else
            [ -n "${LINE[$t.$m]:-}" ] && echo "${LINE[$t.$m]}"
        fi
    done
done
exit 0
