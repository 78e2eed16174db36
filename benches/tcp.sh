#!/usr/bin/env bash
# Compare bulk TCP throughput direct, through jitgate (a tcp resource) and
# through HAProxy (TCP mode) in one run, alternating the subjects, and print
# ratios to direct.
#
#   bash benches/tcp.sh                      # 5 s per run, 2 rounds
#   DURATION=10 ROUNDS=3 bash benches/tcp.sh
#   RELAY_BUFFER=8192 bash benches/tcp.sh    # jitgate's relay_buffer_size
#
# RELAY_BUFFER defaults to 16384, HAProxy's default buffer (tune.bufsize), so
# both proxies copy with the same buffer size; jitgate's own default is 8192.
#
# The backend and the client are examples/tcp_bulk.rs (release build). Installs
# haproxy with apt-get when missing. Writes JSON to
# target/bench-results/tcp-<timestamp>.json.
set -euo pipefail
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
RELAY_BUFFER=${RELAY_BUFFER:-16384}
BACKEND_PORT=17000
JG_PORT=17001
HA_PORT=17002
ADMIN=127.0.0.1:18081
BENCH_RELAY_BUFFER=$RELAY_BUFFER

bench_init
bench_ports_free "$BACKEND_PORT" "$JG_PORT" "$HA_PORT" "${ADMIN##*:}"
bench_need_haproxy
bench_build --bin jitgate --example tcp_bulk
bulk=$BENCH_TARGET/examples/tcp_bulk

"$bulk" serve "127.0.0.1:$BACKEND_PORT" &
BENCH_PIDS+=($!)
bench_wait_port "$BACKEND_PORT"

jitgate_config "$ADMIN"
jitgate_resource bench-tcp tcp "127.0.0.1:$JG_PORT" "127.0.0.1:$BACKEND_PORT"
# shellcheck disable=SC2119 # a tcp resource admits by source address: no logins
jitgate_admin_user
jitgate_start
bench_wait_port "$JG_PORT"
jitgate_grant bench-tcp --source 127.0.0.1/32
haproxy_listen bulk "127.0.0.1:$HA_PORT" "127.0.0.1:$BACKEND_PORT"
haproxy_start

port_of() {
    case $1 in direct) echo "$BACKEND_PORT" ;; jitgate) echo "$JG_PORT" ;; haproxy) echo "$HA_PORT" ;; esac
}

echo "jitgate relay_buffer_size=$RELAY_BUFFER, haproxy tune.bufsize=16384 (its default); ${DURATION}s per run, $ROUNDS rounds" >&2
results="$BENCH_WORK/results.tsv"
: >"$results"
workloads=("up-1|up 1" "down-1|down 1" "up-8|up 8" "down-8|down 8")
for round in $(seq 1 "$ROUNDS"); do
    for w in "${workloads[@]}"; do
        name=${w%%|*}
        read -r mode streams <<<"${w#*|}"
        for subject in $(bench_order "$round" direct jitgate haproxy); do
            out=$("$bulk" run "127.0.0.1:$(port_of "$subject")" "$mode" "$streams" "$DURATION")
            mbs=$(echo "$out" | sed -n 's/.*"mb_per_s":\([0-9.]*\).*/\1/p')
            printf '%s\t%s\t%s\t%s\n' "$round" "$name" "$subject" "${mbs:-0}" >>"$results"
            echo "round $round  $name  $subject  ${mbs:-?} MB/s" >&2
        done
    done
done

out_json="target/bench-results/tcp-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$results" "$out_json" "$DURATION" "$ROUNDS" "$RELAY_BUFFER" <<'PY'
import json, sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for rnd, w, s, mbs in rows:
    data.setdefault(w, {}).setdefault(s, []).append(float(mbs))
summary = {}
print(f"{'workload':<8} {'subject':<8} {'MB/s':>9} {'/direct':>8}")
for w, subj in data.items():
    d = statistics.mean(subj["direct"])
    for s in ("direct", "jitgate", "haproxy"):
        if s not in subj: continue
        v = statistics.mean(subj[s])
        summary.setdefault(w, {})[s] = {"mb_per_s": v, "ratio_to_direct": v / d if d else 0.0, "runs": subj[s]}
        print(f"{w:<8} {s:<8} {v:>9.0f} {v / d if d else 0:>8.2f}")
    j = summary[w]["jitgate"]["mb_per_s"]; h = summary[w]["haproxy"]["mb_per_s"]
    summary[w]["jitgate_over_haproxy"] = j / h if h else 0.0
    print(f"{w:<8} jitgate/haproxy = {j / h if h else 0:.2f}")
json.dump({"duration_s": float(sys.argv[3]), "rounds": int(sys.argv[4]), "relay_buffer_size": int(sys.argv[5]), "results": summary}, open(sys.argv[2], "w"), indent=2)
print(f"JSON: {sys.argv[2]}")
PY
