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
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

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

bench_init
bench_ports_free "$JG_PORT" "$HA_PORT" "${ADMIN##*:}"
bench_need_haproxy
bench_build --bin jitgate

# PostgreSQL may have ssl = on, and libpq's default (sslmode=prefer) would
# then use TLS wherever it is offered: pin the mode for every subject.
tls_toml=""
if [ "$TLS" = "1" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$BENCH_WORK/tls.key" -out "$BENCH_WORK/tls.crt" >/dev/null 2>&1
    tls_toml="[resource.tls]
cert = \"$BENCH_WORK/tls.crt\"
key = \"$BENCH_WORK/tls.key\"
[resource.backend_tls]
mode = \"require\""
    export PGSSLMODE=require
else
    export PGSSLMODE=disable
fi
pg_bench_db "$PGHOST" "$PGPORT" "$DB" "$SCALE"

jitgate_config "$ADMIN"
jitgate_resource bench-pg postgres "127.0.0.1:$JG_PORT" "$PGHOST:$PGPORT" "$tls_toml"
jitgate_admin_user postgres
jitgate_start
bench_wait_port "$JG_PORT"
jitgate_grant bench-pg --login postgres
haproxy_listen pg "127.0.0.1:$HA_PORT" "$PGHOST:$PGPORT"
haproxy_start

port_of() {
    case $1 in direct) echo "$PGPORT" ;; jitgate) echo "$JG_PORT" ;; haproxy) echo "$HA_PORT" ;; esac
}

results="$BENCH_WORK/results.tsv"
: >"$results"
workloads=("select-1c|-S -c 1 -j 1" "select-8c|-S -c 8 -j 2" "connect-8c|-S -C -c 8 -j 2")
for round in $(seq 1 "$ROUNDS"); do
    for w in "${workloads[@]}"; do
        name=${w%%|*}
        args=${w#*|}
        for subject in $(bench_order "$round" direct jitgate haproxy); do
            # shellcheck disable=SC2086
            out=$(pgbench -h 127.0.0.1 -p "$(port_of "$subject")" -U postgres -n -T "$DURATION" $args "$DB" 2>&1)
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -n1)
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$subject" "${tps:-0}" "${lat:-0}" >>"$results"
            echo "round $round  $name  $subject  tps=${tps:-?}  latency=${lat:-?} ms" >&2
        done
    done
done

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
