#!/usr/bin/env bash
# Compare MariaDB/MySQL throughput direct and through jitgate (and through
# HAProxy in TCP mode when it is installed) in one run, alternating the
# subjects, and print ratios to direct.
#
#   bash benches/mysqlslap.sh                      # 20,000 queries per run, 2 rounds
#   QUERIES=100000 ROUNDS=3 bash benches/mysqlslap.sh
#
# Needs MariaDB on $MYHOST:$MYPORT (default 127.0.0.1:3306, user root with
# an empty password) and mysqlslap (mariadb-client). Writes JSON to
# target/bench-results/mysqlslap-<timestamp>.json.
set -euo pipefail
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

MYHOST=${MYHOST:-127.0.0.1}
MYPORT=${MYPORT:-3306}
QUERIES=${QUERIES:-20000}
ROUNDS=${ROUNDS:-2}
ROWS=${ROWS:-10000}
DB=jitgate_bench
JG_PORT=16033
HA_PORT=16034
ADMIN=127.0.0.1:18033

bench_init
bench_ports_free "$JG_PORT" "$HA_PORT" "${ADMIN##*:}"
bench_build --bin jitgate
my_bench_db "$MYHOST" "$MYPORT" "$DB" "$ROWS"

jitgate_config "$ADMIN"
jitgate_resource bench-maria mysql "127.0.0.1:$JG_PORT" "$MYHOST:$MYPORT"
jitgate_admin_user root
jitgate_start
bench_wait_port "$JG_PORT"
jitgate_grant bench-maria --login root

subjects="direct jitgate"
if command -v haproxy >/dev/null 2>&1; then
    haproxy_listen maria "127.0.0.1:$HA_PORT" "$MYHOST:$MYPORT"
    haproxy_start
    subjects="direct jitgate haproxy"
fi

port_of() {
    case $1 in direct) echo "$MYPORT" ;; jitgate) echo "$JG_PORT" ;; haproxy) echo "$HA_PORT" ;; esac
}

# A primary-key lookup of a random row: the id is drawn into a variable
# first (RAND() inside WHERE would be evaluated per row: a full scan), so
# each iteration is two statements.
point="SET @id = 1 + FLOOR(RAND() * $ROWS);SELECT v FROM $DB.t WHERE id = @id"
# name|concurrency|extra mysqlslap flags|query
workloads=(
    "select-1c|1||SELECT 1"
    "point-8c|8|--delimiter=;|$point"
    "connect-8c|8|--detach=1|SELECT 1"
)

results="$BENCH_WORK/results.tsv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for w in "${workloads[@]}"; do
        IFS='|' read -r name conc extra query <<<"$w"
        queries=$QUERIES
        # A new connection per query is far slower: fewer of them.
        [ "$extra" = "--detach=1" ] && queries=$((QUERIES / 4))
        # shellcheck disable=SC2086
        for subject in $(bench_order "$round" $subjects); do
            # shellcheck disable=SC2086
            out=$(mysqlslap --protocol=TCP --skip-ssl -h 127.0.0.1 -P "$(port_of "$subject")" -u root \
                --create-schema="$DB" --concurrency="$conc" --iterations=1 \
                --number-of-queries="$queries" $extra --query="$query" 2>&1)
            secs=$(echo "$out" | sed -n 's/.*Average number of seconds to run all queries: \([0-9.]*\) seconds.*/\1/p' | head -n1)
            qps=$(awk -v q="$queries" -v s="${secs:-0}" 'BEGIN { if (s > 0) printf "%.0f", q / s; else print 0 }')
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$subject" "$qps" "${secs:-0}" >>"$results"
            echo "round $round  $name  $subject  qps=$qps  (${secs:-?} s for $queries queries)" >&2
            [ -z "$secs" ] && echo "$out" >&2
        done
    done
done

out_json="target/bench-results/mysqlslap-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$results" "$out_json" "$QUERIES" "$ROUNDS" <<'PY'
import json, sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for rnd, w, s, qps, secs in rows:
    data.setdefault(w, {}).setdefault(s, []).append(float(qps))
summary = {}
print(f"{'workload':<12} {'subject':<8} {'qps':>10} {'qps/direct':>10}")
for w, subj in data.items():
    d = statistics.mean(subj["direct"])
    for s in ("direct", "jitgate", "haproxy"):
        if s not in subj: continue
        q = statistics.mean(subj[s])
        ratio = q / d if d else 0.0
        summary.setdefault(w, {})[s] = {"qps": q, "ratio_to_direct": ratio, "runs": subj[s]}
        print(f"{w:<12} {s:<8} {q:>10.0f} {ratio:>10.2f}")
    j = summary[w].get("jitgate", {}).get("qps", 0); h = summary[w].get("haproxy", {}).get("qps", 0)
    if h: print(f"{w:<12} jitgate/haproxy = {j / h:.2f}")
json.dump({"queries": int(sys.argv[3]), "rounds": int(sys.argv[4]), "results": summary}, open(sys.argv[2], "w"), indent=2)
print(f"JSON: {sys.argv[2]}")
PY
