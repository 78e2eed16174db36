#!/usr/bin/env bash
# The end-to-end benchmark: direct vs. jitgate vs. HAProxy (TCP mode) on
# loopback, in one run, alternating the order of the subjects every round;
# then jitgate's scale figures (cargo bench --bench scale). See
# benches/README.md for what each figure means.
#
#   bash benches/run.sh                       # 10 s per run, 2 rounds
#   DURATION=30 ROUNDS=3 bash benches/run.sh  # steadier figures
#   SMOKE=1 bash benches/run.sh               # under a minute: 2 s, 1 round, small bulk, scale smoke;
#                                             # exits non-zero if any run failed or a figure is missing
#   SMOKE=1 BENCH_PROFILE=dev bash benches/run.sh   # the same with the debug build (CI, after cargo test)
#
# Needs PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres,
# trust), MariaDB/MySQL on $MYHOST:$MYPORT (default 127.0.0.1:3306, root,
# no password), pgbench, psql, mysqlslap, python3; installs haproxy with
# apt-get when missing. Writes target/bench-results/run-<time>.json and the
# table as run-<time>.md; prints the table.
set -euo pipefail
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DURATION=${DURATION:-2}
    ROUNDS=${ROUNDS:-1}
    BULK_ROWS=${BULK_ROWS:-50000}
    MY_QUERIES=${MY_QUERIES:-2000}
    WARMUP=${WARMUP:-0}
else
    DURATION=${DURATION:-10}
    ROUNDS=${ROUNDS:-2}
    BULK_ROWS=${BULK_ROWS:-500000}
    MY_QUERIES=${MY_QUERIES:-20000}
    WARMUP=${WARMUP:-2}
fi
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
MYHOST=${MYHOST:-127.0.0.1}
MYPORT=${MYPORT:-3306}
PG_SCALE=10
MY_ROWS=10000
DB=jitgate_bench
PG_JG=16432
PG_HA=16433
MY_JG=16033
MY_HA=16034
ADMIN=127.0.0.1:18080
# jitgate relay_buffer_size (default 8192, jitgate's own default).
BENCH_RELAY_BUFFER=${RELAY_BUFFER:-$BENCH_RELAY_BUFFER}
# jitgate busy_poll (default: jitgate's own default, off).
BENCH_BUSY_POLL=${BUSY_POLL:-$BENCH_BUSY_POLL}

bench_init
bench_ports_free "$PG_JG" "$PG_HA" "$MY_JG" "$MY_HA" "${ADMIN##*:}"
bench_need_haproxy
bench_log "building jitgate ($BENCH_PROFILE)"
bench_build --bin jitgate

# PostgreSQL here has ssl = on: libpq's default (prefer) would give the
# direct runs TLS and the proxied ones too (both proxies pass it through to
# PostgreSQL or, for jitgate, decline it). Plaintext everywhere, checked.
export PGSSLMODE=disable
if [ "$(psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')" != f ]; then
    bench_log "a direct PostgreSQL connection still uses TLS; sslmode=disable was not honoured"
    exit 1
fi
pg_bench_db "$PGHOST" "$PGPORT" "$DB" "$PG_SCALE"
my_bench_db "$MYHOST" "$MYPORT" "$DB" "$MY_ROWS"

jitgate_config "$ADMIN"
jitgate_resource bench-pg postgres "127.0.0.1:$PG_JG" "$PGHOST:$PGPORT"
jitgate_resource bench-maria mysql "127.0.0.1:$MY_JG" "$MYHOST:$MYPORT"
jitgate_admin_user postgres root
jitgate_start
bench_wait_port "$PG_JG"
bench_wait_port "$MY_JG"
jitgate_grant bench-pg --login postgres
jitgate_grant bench-maria --login root
haproxy_listen pg "127.0.0.1:$PG_HA" "$PGHOST:$PGPORT"
haproxy_listen maria "127.0.0.1:$MY_HA" "$MYHOST:$MYPORT"
haproxy_start

pg_port() { case $1 in direct) echo "$PGPORT" ;; jitgate) echo "$PG_JG" ;; haproxy) echo "$PG_HA" ;; esac; }
my_port() { case $1 in direct) echo "$MYPORT" ;; jitgate) echo "$MY_JG" ;; haproxy) echo "$MY_HA" ;; esac; }
host_of() { if [ "$1" = direct ]; then echo "$2"; else echo 127.0.0.1; fi; }

ts=$(date -u +%Y%m%dT%H%M%SZ)
runs=$BENCH_WORK/runs.jsonl
: >"$runs"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
subjects="direct jitgate haproxy"

if [ "$WARMUP" != 0 ]; then
    for s in $subjects; do
        pgbench -h "$(host_of "$s" "$PGHOST")" -p "$(pg_port "$s")" -U postgres -n -S -c 8 -j 2 -T "$WARMUP" "$DB" >/dev/null 2>&1 || true
    done
fi

# name|pgbench flags (besides -S -T)
pg_workloads=("select-1c|-c 1 -j 1" "select-8c|-c 8 -j 2" "select-64c|-c 64 -j 2" "connect-8c|-C -c 8 -j 2")
point="SET @id = 1 + FLOOR(RAND() * $MY_ROWS);SELECT v FROM $DB.t WHERE id = @id"
bulk_sql="COPY (SELECT repeat('x',1000) FROM generate_series(1,$BULK_ROWS)) TO STDOUT"
bulk_bytes=$((BULK_ROWS * 1001))

for round in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086
    order=$(bench_order "$round" $subjects)
    for w in "${pg_workloads[@]}"; do
        name=${w%%|*}
        args=${w#*|}
        for s in $order; do
            logdir=$BENCH_WORK/pglog
            rm -rf "$logdir" && mkdir "$logdir"
            rc=0
            # shellcheck disable=SC2086
            pgbench -h "$(host_of "$s" "$PGHOST")" -p "$(pg_port "$s")" -U postgres -n -S -T "$DURATION" $args \
                --log --log-prefix="$logdir/tx" "$DB" >"$BENCH_WORK/pgbench.out" 2>&1 || rc=$?
            python3 benches/report.py pgrun "$runs" "$round" "$name" "$s" "$rc" "$BENCH_WORK/pgbench.out" "$logdir"
            bench_log "round $round  pgbench $name  $s  $(grep -m1 '^tps' "$BENCH_WORK/pgbench.out" || echo "FAILED (exit $rc)")"
            rm -rf "$logdir"
        done
    done
    for s in $order; do
        rc=0
        t0=$(date +%s%N)
        psql -h "$(host_of "$s" "$PGHOST")" -p "$(pg_port "$s")" -U postgres -d "$DB" -Xqc "$bulk_sql" >/dev/null 2>"$BENCH_WORK/psql.err" || rc=$?
        t1=$(date +%s%N)
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')
        mbs=$(awk -v n="$bulk_bytes" -v s="$secs" 'BEGIN { printf "%.3f", n / s / 1e6 }')
        if [ "$rc" = 0 ]; then err=""; else err=", \"error\": $(tail -n2 "$BENCH_WORK/psql.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')"; mbs=null; fi
        python3 benches/report.py record "$runs" \
            "{\"kind\": \"bulk\", \"round\": $round, \"workload\": \"copy\", \"subject\": \"$s\", \"bytes\": $bulk_bytes, \"secs\": $secs, \"mb_per_s\": $mbs$err}"
        bench_log "round $round  bulk copy  $s  $mbs MB/s (${secs} s)"
    done
    # name|concurrency
    for w in "point-1c|1" "point-8c|8"; do
        name=${w%%|*}
        conc=${w#*|}
        for s in $order; do
            rc=0
            out=$(mysqlslap --protocol=TCP --skip-ssl -h "$(host_of "$s" "$MYHOST")" -P "$(my_port "$s")" -u root \
                --create-schema="$DB" --concurrency="$conc" --iterations=1 --number-of-queries="$MY_QUERIES" \
                --delimiter=";" --query="$point" 2>&1) || rc=$?
            secs=$(echo "$out" | sed -n 's/.*Average number of seconds to run all queries: \([0-9.]*\) seconds.*/\1/p' | head -n1)
            if [ "$rc" = 0 ] && [ -n "$secs" ] && [ "$secs" != 0 ] && [ "$secs" != 0.000 ]; then
                qps=$(awk -v q="$MY_QUERIES" -v s="$secs" 'BEGIN { printf "%.1f", q / s }')
                err=""
            else
                qps=null
                err=", \"error\": $(echo "$out" | tail -n2 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')"
            fi
            python3 benches/report.py record "$runs" \
                "{\"kind\": \"mysql\", \"round\": $round, \"workload\": \"$name\", \"subject\": \"$s\", \"concurrency\": $conc, \"statements\": $MY_QUERIES, \"secs\": ${secs:-null}, \"qps\": $qps$err}"
            bench_log "round $round  mysqlslap $name  $s  $qps statements/s"
        done
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# Scale: jitgate alone, in process (benches/scale.rs). SCALE_RESULT=FILE
# merges a result written earlier instead of running it.
scale_json=$BENCH_WORK/scale.json
scale_note=""
if [ -n "${SCALE_RESULT:-}" ]; then
    cp "$SCALE_RESULT" "$scale_json"
elif [ -f benches/scale.rs ]; then
    bench_log "running cargo bench --bench scale$([ "$SMOKE" = 1 ] && echo " (SCALE_SMOKE=1)")"
    # SCALE_SMOKE is set only for a smoke run (unset, not "0", otherwise).
    smoke_env=()
    [ "$SMOKE" = 1 ] && smoke_env=(SCALE_SMOKE=1)
    # A dev-profile run (a smoke check) builds the bench without
    # optimisation too: `cargo test` runs a harness-less bench's main.
    scale_cmd=(cargo bench --quiet --bench scale)
    [ "$BENCH_PROFILE" = dev ] && scale_cmd=(cargo test --quiet --bench scale)
    if ! env SCALE_JSON="$scale_json" "${smoke_env[@]}" "${scale_cmd[@]}" >&2; then
        scale_note="${scale_cmd[*]} failed"
        rm -f "$scale_json"
        bench_log "$scale_note"
    elif [ ! -s "$scale_json" ]; then
        scale_note="${scale_cmd[*]} wrote nothing to SCALE_JSON"
        bench_log "$scale_note"
    fi
else
    scale_note="benches/scale.rs is not in this checkout: idle-session RSS, revocation and expiry were skipped"
    bench_log "$scale_note"
fi

python3 - "$BENCH_WORK/meta.json" <<PY
import json, sys
json.dump({
    "started": "$ts",
    "host": {"cpus": $(nproc), "loadavg_start": "$load_start", "loadavg_end": "$load_end"},
    "config": {
        "smoke": $([ "$SMOKE" = 1 ] && echo True || echo False),
        "duration_s": $DURATION, "rounds": $ROUNDS, "warmup_s": $WARMUP,
        "pg_scale": $PG_SCALE, "bulk_rows": $BULK_ROWS, "mysql_queries": $MY_QUERIES,
        "jitgate_relay_buffer_size": $BENCH_RELAY_BUFFER, "jitgate_busy_poll": "${BENCH_BUSY_POLL:-off}", "jitgate_idle_timeout": "$BENCH_IDLE_TIMEOUT",
        "jitgate_commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo +dirty)",
        "haproxy": "$(haproxy -v | head -n1 | cut -d' ' -f3)",
    },
    "scale_note": "$scale_note",
}, open(sys.argv[1], "w"))
PY
out=target/bench-results/run-$ts
python3 benches/report.py summarize "$runs" "$BENCH_WORK/meta.json" "$out.json" "$out.md" "$scale_json"
echo
echo "JSON: $out.json"
echo "table: $out.md"
# A smoke run is a check that every workload ran (CI): it fails on a failed
# run or a missing figure. A full run reports, whatever it measured.
if [ "$SMOKE" = 1 ]; then
    python3 benches/report.py check "$out.json"
fi
