#!/usr/bin/env python3
"""Figures for benches/run.sh: one record per measured run, then the report.

  report.py pgrun RUNS ROUND WORKLOAD SUBJECT RC STDOUT LOGDIR
      append one pgbench run to RUNS (JSON lines): TPS from pgbench's
      output, the latency of every transaction from its --log files
      (column 3, microseconds; with -C it includes the connection)
  report.py record RUNS JSON
      append a record built by the shell (bulk, mysqlslap)
  report.py summarize RUNS META OUT_JSON OUT_MD [SCALE_JSON]
      aggregate the rounds, compare the subjects, check the targets, write
      the JSON result and the markdown table, print the table
  report.py check OUT_JSON
      exit 1, naming each, if a run failed or a figure is missing: every
      workload measured for all three subjects with no error, and the
      scale figures present (the targets are figures, not checked here)

Latencies of all the rounds of one workload and subject are pooled before
the percentiles are taken (nearest rank). Ratios compare means over rounds.
"""

import json
import math
import os
import re
import sys
from collections import Counter

SUBJECTS = ("direct", "jitgate", "haproxy")


def append(runs, rec):
    with open(runs, "a") as f:
        f.write(json.dumps(rec) + "\n")


def pgrun(runs, rnd, workload, subject, rc, stdout_file, logdir):
    out = open(stdout_file, errors="replace").read()
    m = re.search(r"^tps = ([0-9.]+)", out, re.M)
    tps = float(m.group(1)) if m else None
    hist = Counter()
    failed = 0
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                cols = line.split()
                if len(cols) < 3:
                    continue
                try:
                    hist[int(cols[2])] += 1
                except ValueError:
                    failed += 1  # "failed" / "skipped" in place of a latency
    rec = {
        "kind": "pgbench",
        "round": int(rnd),
        "workload": workload,
        "subject": subject,
        "tps": tps,
        "transactions": sum(hist.values()),
        "failed": failed,
        "hist_us": {str(k): v for k, v in sorted(hist.items())},
    }
    if int(rc) != 0 or tps is None:
        rec["error"] = f"pgbench exit {rc}: " + " | ".join(out.strip().splitlines()[-3:])
    append(runs, rec)


def percentile(hist, q):
    """Nearest-rank percentile of a {value: count} histogram."""
    n = sum(hist.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    seen = 0
    for v in sorted(hist):
        seen += hist[v]
        if seen >= rank:
            return v
    return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def div(a, b):
    return a / b if a is not None and b else None


def sub(a, b):
    return a - b if a is not None and b is not None else None


def summarize_pg(recs):
    out = {}
    for r in recs:
        w = out.setdefault(r["workload"], {"subjects": {}})
        s = w["subjects"].setdefault(
            r["subject"], {"tps_runs": [], "hist": Counter(), "failed": 0, "errors": []}
        )
        s["tps_runs"].append(r["tps"])
        s["hist"].update({int(k): v for k, v in r["hist_us"].items()})
        s["failed"] += r["failed"]
        if "error" in r:
            s["errors"].append(r["error"])
    for name, w in out.items():
        m = re.match(r"(select|connect)-(\d+)c", name)
        w["clients"] = int(m.group(2)) if m else None
        w["new_connection_per_transaction"] = bool(m and m.group(1) == "connect")
        for s in w["subjects"].values():
            h = s.pop("hist")
            n = sum(h.values())
            s["tps"] = mean(s["tps_runs"])
            s["transactions_logged"] = n
            s["mean_us"] = sum(k * v for k, v in h.items()) / n if n else None
            s["p50_us"] = percentile(h, 50)
            s["p99_us"] = percentile(h, 99)
            if not s["errors"]:
                del s["errors"]
        d = w["subjects"].get("direct", {})
        for s in w["subjects"].values():
            s["ratio_to_direct"] = div(s["tps"], d.get("tps"))
            s["added_mean_us"] = sub(s["mean_us"], d.get("mean_us"))
            s["added_p50_us"] = sub(s["p50_us"], d.get("p50_us"))
            s["added_p99_us"] = sub(s["p99_us"], d.get("p99_us"))
        j, h = w["subjects"].get("jitgate", {}), w["subjects"].get("haproxy", {})
        w["jitgate_over_haproxy"] = div(j.get("tps"), h.get("tps"))
    return out


def summarize_simple(recs, key):
    out = {}
    for r in recs:
        w = out.setdefault(r["workload"], {"subjects": {}})
        s = w["subjects"].setdefault(r["subject"], {"runs": [], "errors": []})
        s["runs"].append(r.get(key))
        if "error" in r:
            s["errors"].append(r["error"])
        for k, v in r.items():
            if k not in ("kind", "round", "workload", "subject", key, "error", "secs"):
                w[k] = v
    for w in out.values():
        for s in w["subjects"].values():
            s[key] = mean(s["runs"])
            if not s["errors"]:
                del s["errors"]
        d = w["subjects"].get("direct", {}).get(key)
        for s in w["subjects"].values():
            s["ratio_to_direct"] = div(s[key], d)
        j = w["subjects"].get("jitgate", {}).get(key)
        h = w["subjects"].get("haproxy", {}).get(key)
        w["jitgate_over_haproxy"] = div(j, h)
    return out


def get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def targets(res):
    pg, bulk, scale = res["pgbench"], res["bulk"], res.get("scale") or {}
    t = []

    def add(name, value, fmt, ok, also=None):
        passed = None if value is None else bool(ok(value))
        shown = "n/a" if value is None else fmt.format(value)
        if value is not None and also is not None:
            shown += f" (HAProxy {fmt.format(also)})"
        t.append({"target": name, "measured": value, "shown": shown, "pass": passed})

    for c in (1, 8, 64):
        add(f"pgbench -S {c}c: jitgate TPS ≥ 1.1 × HAProxy's", get(pg, f"select-{c}c", "jitgate_over_haproxy"),
            "{:.2f} ×", lambda v: v >= 1.1)
    jl = get(pg, "select-1c", "subjects", "jitgate", "added_mean_us")
    hl = get(pg, "select-1c", "subjects", "haproxy", "added_mean_us")
    t.append({
        "target": "latency added per round trip at 1c (mean): jitgate ≤ HAProxy",
        "measured": {"jitgate_us": jl, "haproxy_us": hl},
        "shown": "n/a" if jl is None or hl is None else f"{jl:.0f} µs vs {hl:.0f} µs",
        "pass": None if jl is None or hl is None else jl <= hl,
    })
    add("pgbench -S -C 8c: jitgate TPS / direct ≥ 0.8", get(pg, "connect-8c", "subjects", "jitgate", "ratio_to_direct"),
        "{:.2f}", lambda v: v >= 0.8, get(pg, "connect-8c", "subjects", "haproxy", "ratio_to_direct"))
    add("bulk COPY: jitgate MB/s / direct ≥ 0.9", get(bulk, "copy", "subjects", "jitgate", "ratio_to_direct"),
        "{:.2f}", lambda v: v >= 0.9, get(bulk, "copy", "subjects", "haproxy", "ratio_to_direct"))
    add("RSS per idle session ≤ 8 KiB", get(scale, "idle_rss_kib_per_session"), "{:.2f} KiB", lambda v: v <= 8)
    add("revoke one → client EOF, p99 ≤ 2 ms", get(scale, "revoke_one_ms", "p99"), "{:.2f} ms", lambda v: v <= 2)
    add("revoke all → last one closed ≤ 100 ms", get(scale, "revoke_all_ms"), "{:.1f} ms", lambda v: v <= 100)
    add("expiry lateness, p99 ≤ 10 ms", get(scale, "expiry_late_ms", "p99"), "{:.2f} ms", lambda v: v <= 10)
    return t


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def table(header, rows):
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = [i > 0 and all(re.match(r"^[-+0-9.,× ]*$|^n/a$", str(r[i])) for r in rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w[i]) if right[i] else str(c).ljust(w[i]) for i, c in enumerate(cells)) + " |"
    sep = "|" + "|".join(("-" * (w[i] + 1) + ":") if right[i] else ("-" * (w[i] + 2)) for i in range(len(header))) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def render(res):
    c = res["config"]
    md = [
        f"jitgate end-to-end benchmark, {res['started']} "
        f"({'SMOKE, ' if c['smoke'] else ''}{c['duration_s']} s per run, {c['rounds']} round(s); "
        f"load average {res['host']['loadavg_start']} at the start, {res['host']['loadavg_end']} at the end; "
        f"{res['host']['cpus']} CPUs)",
        "",
        "PostgreSQL `pgbench -S` (latencies from `--log`, pooled over the rounds; "
        "`-C`: a new connection per transaction, its latency includes the connect):",
        "",
    ]
    rows = []
    for name, w in res["pgbench"].items():
        for s in SUBJECTS:
            x = w["subjects"].get(s)
            if not x:
                continue
            ms = lambda us: None if us is None else us / 1000
            rows.append([
                name, s + (" (errors)" if x.get("errors") else ""), fmt(x["tps"], ",.0f"),
                fmt(ms(x["p50_us"]), ".3f"), fmt(ms(x["p99_us"]), ".3f"),
                fmt(x["ratio_to_direct"], ".2f"),
                "-" if s == "direct" else fmt(x["added_mean_us"], "+.0f"),
                "-" if s == "direct" else fmt(x["added_p99_us"], "+.0f"),
                fmt(w["jitgate_over_haproxy"], ".2f") if s == "jitgate" else "",
            ])
    md.append(table(["workload", "subject", "TPS", "p50 ms", "p99 ms", "/direct", "added mean µs", "added p99 µs", "jitgate/HAProxy"], rows))
    md += ["", f"Bulk: `COPY (SELECT repeat('x',1000) FROM generate_series(1,{c['bulk_rows']})) TO STDOUT` through psql to /dev/null:", ""]
    rows = []
    for name, w in res["bulk"].items():
        for s in SUBJECTS:
            x = w["subjects"].get(s)
            if x:
                rows.append([name, s + (" (errors)" if x.get("errors") else ""), fmt(x["mb_per_s"], ".0f"), fmt(x["ratio_to_direct"], ".2f"),
                             fmt(w["jitgate_over_haproxy"], ".2f") if s == "jitgate" else ""])
    md.append(table(["workload", "subject", "MB/s", "/direct", "jitgate/HAProxy"], rows))
    md += ["", f"MySQL (MariaDB) `mysqlslap`, a primary-key lookup (`SET @id = random; SELECT ... WHERE id = @id`: two statements), {c['mysql_queries']} statements per run:", ""]
    rows = []
    for name, w in res["mysql"].items():
        for s in SUBJECTS:
            x = w["subjects"].get(s)
            if x:
                rows.append([name, s + (" (errors)" if x.get("errors") else ""), fmt(x["qps"], ",.0f"), fmt(x["ratio_to_direct"], ".2f"),
                             fmt(w["jitgate_over_haproxy"], ".2f") if s == "jitgate" else ""])
    md.append(table(["workload", "subject", "statements/s", "/direct", "jitgate/HAProxy"], rows))
    sc = res.get("scale") or {}
    md += ["", "Scale (`cargo bench --bench scale`, jitgate only):", ""]
    if "skipped" in sc or "error" in sc:
        md.append(f"not measured: {sc.get('skipped') or sc.get('error')}")
    else:
        d3 = lambda d: "-" if not isinstance(d, dict) else f"{fmt(d.get('p50'), '.2f')} / {fmt(d.get('p99'), '.2f')} / {fmt(d.get('max'), '.2f')} (n={d.get('n', '-')})"
        md.append(table(["figure", "value"], [
            ["idle sessions", fmt(sc.get("sessions"), ",")],
            ["RSS per idle session", fmt(sc.get("idle_rss_kib_per_session"), ".2f") + " KiB"],
            ["time to open them", f"{fmt(sc.get('open_secs'), '.2f')} s ({fmt(sc.get('open_per_sec'), ',.0f')}/s)"],
            ["revoke one → client EOF, p50 / p99 / max", d3(sc.get("revoke_one_ms")) + " ms"],
            ["revoke all → last close", fmt(sc.get("revoke_all_ms"), ".1f") + " ms"],
            ["one grant expiring with them all: close − deadline, p50 / p99 / max", d3(sc.get("expire_all_late_ms")) + " ms"],
            ["expiry lateness, p50 / p99 / max", d3(sc.get("expiry_late_ms")) + " ms"],
        ]))
    md += ["", "Targets:", ""]
    md.append(table(["target", "measured", ""], [
        [t["target"], t["shown"], {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]] for t in res["targets"]
    ]))
    errs = [f"{k}/{w}/{s}: {e}" for k in ("pgbench", "bulk", "mysql") for w, x in res[k].items()
            for s, y in x["subjects"].items() for e in y.get("errors", [])]
    if errs:
        md += ["", "Errors:", ""] + [f"- {e}" for e in errs]
    return "\n".join(md) + "\n"


def summarize(runs, meta_file, out_json, out_md, scale_json=None):
    recs = [json.loads(l) for l in open(runs) if l.strip()]
    meta = json.load(open(meta_file))
    res = dict(meta)
    res["pgbench"] = summarize_pg([r for r in recs if r["kind"] == "pgbench"])
    res["bulk"] = summarize_simple([r for r in recs if r["kind"] == "bulk"], "mb_per_s")
    res["mysql"] = summarize_simple([r for r in recs if r["kind"] == "mysql"], "qps")
    if scale_json and os.path.exists(scale_json):
        try:
            res["scale"] = json.load(open(scale_json))
        except ValueError as e:
            res["scale"] = {"error": f"unreadable {scale_json}: {e}"}
    else:
        res["scale"] = {"skipped": meta.get("scale_note") or "no scale result"}
    res.pop("scale_note", None)
    res["targets"] = targets(res)
    text = render(res)
    json.dump(res, open(out_json, "w"), indent=2)
    open(out_md, "w").write(text)
    print(text, end="")


SCALE_FIGURES = ("idle_rss_kib_per_session", "open_per_sec", "revoke_one_ms",
                 "revoke_all_ms", "expire_all_late_ms", "expiry_late_ms")


def problems(res):
    """What a smoke run must not have: failed runs, missing figures."""
    out = []
    for kind, key in (("pgbench", "tps"), ("bulk", "mb_per_s"), ("mysql", "qps")):
        if not res.get(kind):
            out.append(f"{kind}: no workload measured")
        for w, x in (res.get(kind) or {}).items():
            for s in SUBJECTS:
                y = x["subjects"].get(s)
                if y is None:
                    out.append(f"{kind}/{w}/{s}: not measured")
                    continue
                out += [f"{kind}/{w}/{s}: {e}" for e in y.get("errors", [])]
                if not isinstance(y.get(key), (int, float)) or y[key] <= 0:
                    out.append(f"{kind}/{w}/{s}: no {key}")
    sc = res.get("scale") or {}
    if "skipped" in sc or "error" in sc:
        out.append(f"scale: {sc.get('skipped') or sc.get('error')}")
    else:
        out += [f"scale: no {k}" for k in SCALE_FIGURES if sc.get(k) is None]
    return out


def check(out_json):
    found = problems(json.load(open(out_json)))
    for p in found:
        print(f"benchmark check: {p}", file=sys.stderr)
    if found:
        sys.exit(1)


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "pgrun" and len(argv) == 9:
        pgrun(*argv[2:])
    elif cmd == "record" and len(argv) == 4:
        append(argv[2], json.loads(argv[3]))
    elif cmd == "summarize" and len(argv) in (6, 7):
        summarize(*argv[2:])
    elif cmd == "check" and len(argv) == 3:
        check(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
