# shellcheck shell=bash
# Shared by the end-to-end benchmark scripts (run.sh, pgbench.sh,
# mysqlslap.sh, tcp.sh): source it, do not run it.
#
#   bench_init                       cd to the repository, make $BENCH_WORK, clean up on exit
#   bench_ports_free PORT...         refuse to start if a port is taken
#   bench_need_haproxy               apt-get install haproxy when missing
#   bench_build [CARGO ARGS...]      build with $BENCH_PROFILE (nice'd)
#   jitgate_config ADMIN [TOML]      start $BENCH_WORK/jitgate.toml: [gateway] + extra keys
#   jitgate_resource NAME PROTO LISTEN BACKEND [TOML]   append a [[resource]]
#   jitgate_admin_user LOGIN...      append the admin user (token $BENCH_TOKEN)
#   jitgate_start                    start jitgate, wait for /healthz
#   jitgate_grant RESOURCE ARGS...   grant the admin user access for 2 h
#   haproxy_listen NAME BIND SERVER  add a TCP-mode `listen` section
#   haproxy_start                    start HAProxy with those sections, wait for the ports
#   bench_wait_port PORT             wait until 127.0.0.1:PORT accepts
#   pg_bench_db HOST PORT DB SCALE   create DB and pgbench tables at SCALE, unless already there
#   my_bench_db HOST PORT DB ROWS    create DB.t with ROWS rows, unless already there
#
# The two proxies get comparable settings: HAProxy 2.6 defaults (buffers of
# tune.bufsize = 16384 bytes, one thread per core, timeouts of 1 h), jitgate
# its default worker_threads (one per core) and relay_buffer_size = 8192 (BENCH_RELAY_BUFFER; a direction that
# streams grows its buffer to 64 KiB) and idle_timeout = "1h"
# (BENCH_IDLE_TIMEOUT): each keeps a timer per session. jitgate's per-source
# handshake rate limit is off
# (handshake_rate = 0): it is a policy, not a cost, and pgbench -C on
# loopback opens connections from one address as fast as it can.

BENCH_TOKEN=${BENCH_TOKEN:-bench-admin-token}
# Cargo profile of the jitgate binary: release for figures; dev (the
# debug build `cargo test` already made) only to check that a script
# works, as CI's smoke run does.
BENCH_PROFILE=${BENCH_PROFILE:-release}
case $BENCH_PROFILE in
    release) BENCH_TARGET=./target/release ;;
    dev) BENCH_TARGET=./target/debug ;;
    *)
        echo "BENCH_PROFILE must be release or dev, not $BENCH_PROFILE" >&2
        exit 2
        ;;
esac
BENCH_BIN=$BENCH_TARGET/jitgate
BENCH_RELAY_BUFFER=${BENCH_RELAY_BUFFER:-8192}
# jitgate's busy_poll; empty = its default (off).
BENCH_BUSY_POLL=${BENCH_BUSY_POLL:-}
BENCH_IDLE_TIMEOUT=${BENCH_IDLE_TIMEOUT:-1h}
BENCH_PIDS=()
BENCH_HAPROXY_LISTENS=()
BENCH_HAPROXY_PORTS=()

bench_log() { echo "$*" >&2; }

bench_init() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    BENCH_WORK=$(mktemp -d)
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p target/bench-results
}

bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${BENCH_PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    [ -n "${BENCH_WORK:-}" ] && rm -rf "$BENCH_WORK"
}

bench_ports_free() {
    local port
    for port in "$@"; do
        if ss -ltn | grep -q "127.0.0.1:$port "; then
            bench_log "port $port is in use; stop what listens there first"
            exit 1
        fi
    done
}

bench_need_haproxy() {
    if ! command -v haproxy >/dev/null 2>&1; then
        bench_log "installing haproxy (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    fi
}

bench_build() {
    nice -n 5 cargo build --profile "$BENCH_PROFILE" --quiet "$@"
}

bench_wait_port() {
    local port=$1 _
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    bench_log "nothing listens on 127.0.0.1:$port"
    return 1
}

jitgate_config() {
    BENCH_ADMIN=$1
    cat >"$BENCH_WORK/jitgate.toml" <<TOML
[gateway]
state_dir = "$BENCH_WORK/data"
admin_listen = "$BENCH_ADMIN"
expiry_warnings = []
relay_buffer_size = $BENCH_RELAY_BUFFER
${BENCH_BUSY_POLL:+busy_poll = \"$BENCH_BUSY_POLL\"}
handshake_rate = 0
${2:-}
TOML
}

jitgate_resource() {
    cat >>"$BENCH_WORK/jitgate.toml" <<TOML

[[resource]]
name = "$1"
protocol = "$2"
listen = "$3"
backend = "$4"
idle_timeout = "$BENCH_IDLE_TIMEOUT"
${5:-}
TOML
}

jitgate_admin_user() {
    local hash logins="" l
    hash=$(printf '%s' "$BENCH_TOKEN" | sha256sum | cut -d' ' -f1)
    for l in "$@"; do logins="$logins${logins:+, }\"$l\""; done
    cat >>"$BENCH_WORK/jitgate.toml" <<TOML

[[user]]
name = "admin"
token_sha256 = "$hash"
roles = ["admin"]
logins = [$logins]
TOML
}

jitgate_start() {
    local _
    RUST_LOG=warn "$BENCH_BIN" serve --config "$BENCH_WORK/jitgate.toml" 2>"$BENCH_WORK/jitgate.log" &
    BENCH_JITGATE_PID=$!
    BENCH_PIDS+=("$BENCH_JITGATE_PID")
    for _ in $(seq 1 100); do
        curl -sf "http://$BENCH_ADMIN/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$BENCH_JITGATE_PID" 2>/dev/null || break
        sleep 0.05
    done
    bench_log "jitgate did not start:"
    cat "$BENCH_WORK/jitgate.log" >&2
    exit 1
}

jitgate_grant() {
    local resource=$1
    shift
    JITGATE_ADMIN_URL="http://$BENCH_ADMIN" JITGATE_TOKEN=$BENCH_TOKEN "$BENCH_BIN" \
        grant admin "$resource" --for 2h --reason "benchmark" "$@" >/dev/null
}

haproxy_listen() {
    BENCH_HAPROXY_LISTENS+=("listen $1
    bind $2
    server $1 $3")
    BENCH_HAPROXY_PORTS+=("${2##*:}")
}

haproxy_start() {
    local l port
    {
        cat <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
CFG
        for l in "${BENCH_HAPROXY_LISTENS[@]}"; do printf '%s\n' "$l"; done
    } >"$BENCH_WORK/haproxy.cfg"
    haproxy -f "$BENCH_WORK/haproxy.cfg" -db >"$BENCH_WORK/haproxy.log" 2>&1 &
    BENCH_HAPROXY_PID=$!
    BENCH_PIDS+=("$BENCH_HAPROXY_PID")
    for port in "${BENCH_HAPROXY_PORTS[@]}"; do
        bench_wait_port "$port" || {
            cat "$BENCH_WORK/haproxy.log" >&2
            exit 1
        }
    done
}

# pgbench -S only reads, so tables left by an earlier run at the same
# scale are reused; `pgbench -i` (several seconds at scale 10) runs only
# when they are missing or of another scale.
pg_bench_db() {
    local host=$1 port=$2 db=$3 scale=$4 have
    psql -h "$host" -p "$port" -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
        || psql -h "$host" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $db"
    have=$(psql -h "$host" -p "$port" -U postgres -d "$db" -Atqc \
        "SELECT (SELECT count(*) FROM pgbench_branches) || '/' || (SELECT count(*) FROM pgbench_accounts)" 2>/dev/null || true)
    if [ "$have" != "$scale/$((scale * 100000))" ]; then
        bench_log "initialising pgbench tables in $db (scale $scale)"
        pgbench -h "$host" -p "$port" -U postgres -i -q -s "$scale" "$db" >/dev/null 2>&1
    fi
}

my_bench_db() {
    local host=$1 port=$2 db=$3 rows=$4
    mysql --protocol=TCP -h "$host" -P "$port" -u root -e "CREATE DATABASE IF NOT EXISTS $db"
    mysql --protocol=TCP -h "$host" -P "$port" -u root "$db" \
        -e "CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB"
    if [ "$(mysql --protocol=TCP -h "$host" -P "$port" -u root -N "$db" -e 'SELECT COUNT(*) FROM t')" != "$rows" ]; then
        mysql --protocol=TCP -h "$host" -P "$port" -u root "$db" \
            -e "TRUNCATE t; INSERT INTO t SELECT seq, REPEAT(CHAR(97 + seq % 26), 100) FROM seq_1_to_$rows"
    fi
}

# The order of the subjects in round R: reversed every other round, so
# drift on a shared machine does not always favour the same subject.
bench_order() {
    local round=$1
    shift
    if [ $((round % 2)) -eq 1 ]; then
        echo "$*"
    else
        echo "$*" | tr ' ' '\n' | tac | tr '\n' ' '
    fi
}
