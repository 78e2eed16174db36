#!/usr/bin/env bash
# Compare PostgreSQL throughput direct, through jitgate and through HAProxy
# (TCP mode) in one run, alternating the subjects, and print ratios to direct.
#
#   bash benches/pgbench.sh                 # 10 s per run, 2 rounds
#   DURATION=30 ROUNDS=3 bash benches/pgbench.sh
#   TLS=1 bash benches/pgbench.sh           # every client uses sslmode=require:
#       direct = PostgreSQL's own TLS; jitgate terminates TLS and re-originates
#       it to the backend (backend_tls = require); HAProxy passes PostgreSQL's
#       TLS through
#
# Needs PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres,
# trust auth) and pgbench; installs haproxy with apt-get when missing. Writes
# JSON to target/bench-results/pgbench-<timestamp>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCALE=${SCALE:-10}
TLS=${TLS:-0}
DB=jitgate_bench
JG_PORT=16432
HA_PORT=16433
ADMIN=127.0.0.1:18080
TOKEN=bench-admin-token

if ! command -v haproxy >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
fi
cargo build --release --quiet

work=$(mktemp -d)
cleanup() {
    [ -n "${jg_pid:-}" ] && kill "$jg_pid" 2>/dev/null || true
    [ -n "${ha_pid:-}" ] && kill "$ha_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 \
    || psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -qc "CREATE DATABASE $DB"
pgbench -h "$PGHOST" -p "$PGPORT" -U postgres -i -q -s "$SCALE" "$DB" >/dev/null 2>&1

hash=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
tls_toml=""
if [ "$TLS" = "1" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1
    tls_toml="[resource.tls]
cert = \"$work/tls.crt\"
key = \"$work/tls.key\"
[resource.backend_tls]
mode = \"require\""
    export PGSSLMODE=require
else
    export PGSSLMODE=disable
fi
cat >"$work/jitgate.toml" <<TOML
[gateway]
state_dir = "$work/data"
admin_listen = "$ADMIN"
expiry_warnings = []

[[resource]]
name = "bench-pg"
protocol = "postgres"
listen = "127.0.0.1:$JG_PORT"
backend = "$PGHOST:$PGPORT"
idle_timeout = "0s"
$tls_toml

[[user]]
name = "admin"
token_sha256 = "$hash"
roles = ["admin"]
logins = ["postgres"]
TOML
RUST_LOG=warn ./target/release/jitgate serve --config "$work/jitgate.toml" 2>"$work/jitgate.log" &
jg_pid=$!

cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:$HA_PORT
    server pg $PGHOST:$PGPORT
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
ha_pid=$!

for _ in $(seq 1 50); do
    curl -sf "http://$ADMIN/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
JITGATE_ADMIN_URL="http://$ADMIN" JITGATE_TOKEN=$TOKEN ./target/release/jitgate grant admin bench-pg \
    --for 2h --login postgres --reason "benchmark" >/dev/null

port_of() {
    case $1 in direct) echo "$PGPORT" ;; jitgate) echo "$JG_PORT" ;; haproxy) echo "$HA_PORT" ;; esac
}

results="$work/results.tsv"
: >"$results"
workloads=("select-1c|-S -c 1 -j 1" "select-8c|-S -c 8 -j 2" "connect-8c|-S -C -c 8 -j 2")
for round in $(seq 1 "$ROUNDS"); do
    for w in "${workloads[@]}"; do
        name=${w%%|*}
        args=${w#*|}
        # Alternate the order each round so drift on a shared machine
        # does not always favour the same subject.
        if [ $((round % 2)) -eq 1 ]; then order="direct jitgate haproxy"; else order="haproxy jitgate direct"; fi
        for subject in $order; do
            # shellcheck disable=SC2086
            out=$(pgbench -h 127.0.0.1 -p "$(port_of "$subject")" -U postgres -n -T "$DURATION" $args "$DB" 2>&1)
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -n1)
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$subject" "${tps:-0}" "${lat:-0}" >>"$results"
            echo "round $round  $name  $subject  tps=${tps:-?}  latency=${lat:-?} ms" >&2
        done
    done
done

mkdir -p target/bench-results
out_json="target/bench-results/pgbench$([ "$TLS" = 1 ] && echo -tls)-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$results" "$out_json" "$DURATION" "$ROUNDS" "$TLS" <<'PY'
import json, sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for rnd, w, s, tps, lat in rows:
    data.setdefault(w, {}).setdefault(s, {"tps": [], "lat_ms": []})
    data[w][s]["tps"].append(float(tps)); data[w][s]["lat_ms"].append(float(lat))
summary = {}
print(f"{'workload':<12} {'subject':<8} {'tps':>10} {'lat ms':>8} {'tps/direct':>10} {'added ms':>9}")
for w, subj in data.items():
    d_tps = statistics.mean(subj["direct"]["tps"]); d_lat = statistics.mean(subj["direct"]["lat_ms"])
    for s in ("direct", "jitgate", "haproxy"):
        if s not in subj: continue
        tps = statistics.mean(subj[s]["tps"]); lat = statistics.mean(subj[s]["lat_ms"])
        ratio = tps / d_tps if d_tps else 0.0
        summary.setdefault(w, {})[s] = {"tps": tps, "latency_ms": lat, "ratio_to_direct": ratio, "added_latency_ms": lat - d_lat, "runs": subj[s]}
        print(f"{w:<12} {s:<8} {tps:>10.0f} {lat:>8.3f} {ratio:>10.2f} {lat - d_lat:>9.3f}")
    j = summary[w].get("jitgate", {}).get("tps", 0); h = summary[w].get("haproxy", {}).get("tps", 0)
    if h: print(f"{w:<12} jitgate/haproxy = {j / h:.2f}")
json.dump({"duration_s": int(sys.argv[3]), "rounds": int(sys.argv[4]), "tls": sys.argv[5] == "1", "results": summary}, open(sys.argv[2], "w"), indent=2)
print(f"JSON: {sys.argv[2]}")
PY
