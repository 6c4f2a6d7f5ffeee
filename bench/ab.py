"""One setting, before and after, side by side on the lab: is a tuning change worth keeping?

    python bench/ab.py NAME --a JSON --b JSON [--playbook playbooks/lb.yml] [--limit HOSTS]
                       [--reps 3] [--duration 15] [--conns 1,2] [--format png]
                       [--open-rates 20] [--open-duration 60]

On the lab as `scripts/bench` leaves it (converged, benchmark client exempt from the rate
limit), with app2 drained so that every request goes to app1 (one pinned core, one worker):
each repetition converges PLAYBOOK with the extra vars of A, measures our stack through
nginx with wrk at each concurrency, then does the same for B; the order of A and B swaps
every repetition. With --open-rates, each variant also gets open-loop runs at those fixed
arrival rates (requests/s), where a pause of the service shows as failed or late requests
that a closed loop would not send. Figures are medians over repetitions (failures summed).
Writes bench/results/tuning-NAME.md and .json. The lab is left converged with A.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import lablib as lab
from provision import loadavg
from report import machine, med, named

RESULTS = lab.RESULTS


def measure(label, extra, args, bench_vars, url) -> list[dict]:
    lab.playbook(args.playbook, bench_vars + [extra], limit=args.limit)
    lab.warm(url, 3)
    runs = []
    accept = "image/png" if args.format == "png" else "application/json"
    for conns in args.conns:
        r = lab.wrk(url, conns, args.duration, accept, [lab.APP1, lab.LB1])
        r["variant"] = label
        runs.append(r)
        lab.log(
            f"{label} c={conns}: {r['images_per_s']:.2f} img/s p50 {r['latency_ms']['p50']:.0f}"
            f" p99 {r['latency_ms']['p99']:.0f} ms errors {r['errors']}"
            f" app1 {100 * r['container_cpu_share'][lab.APP1]:.0f}%"
        )
    for rate in args.open_rates:
        r = lab.open_loop(url, rate, args.open_duration, accept)
        r["variant"] = label
        runs.append(r)
        lab.log(
            f"{label} open loop {rate}/s: p50 {r['p50']:.0f} p99 {r['p99']:.0f} max"
            f" {r['max']:.0f} ms failed {r['failed']}/{r['sent']}"
        )
    return runs


def open_loop_lines(res: dict) -> list[str]:
    lines = [
        "",
        f"Open loop (molecule/cluster/files/loadgen.py: evenly spaced arrivals, a connection per"
        f" request), {res['open_duration']} s a run; latencies are of the answered requests:",
        "",
        "| rate /s | A failed / sent | B failed / sent | A p50 / p99 / max ms |"
        " B p50 / p99 / max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rate in res["open_rates"]:
        cells = {}
        for v in ("A", "B"):
            runs = [r for r in res["runs"] if r["variant"] == v and r.get("rate") == rate]
            cells[v] = (
                f"{sum(r['failed'] for r in runs)} / {sum(r['sent'] for r in runs)}",
                f"{med([r['p50'] for r in runs]):.0f} / {med([r['p99'] for r in runs]):.0f}"
                f" / {max(r['max'] for r in runs):.0f}",
            )
        a, b = cells["A"], cells["B"]
        lines.append(f"| {rate:g} | {a[0]} | {b[0]} | {a[1]} | {b[1]} |")
    return lines


def report(res: dict, path: Path) -> None:
    lines = [
        f"# Tuning: {res['name']}",
        "",
        f"- Command: `{res['command']}` ({res['started']} UTC, {res['minutes']:.0f} min)",
        f"- Machine: {res['machine']}; load average {res['load_start']} at the start,"
        f" {res['load_end']} at the end.",
        f"- A: `{res['a']}`; B: `{res['b']}`, each applied with `{res['playbook']}` before its"
        " runs, on top of the lab's values.",
        f"- Our stack through nginx, app2 drained (app1 alone: 1 pinned core, 1 worker),"
        f" {res['format'].upper()} answers, the 520x520 JPEG; wrk 1 thread, {res['duration']} s"
        f" a run, {res['reps']} repetitions, A and B alternating (order swapped each repetition);"
        " medians.",
        "",
        "| conns | A images/s | B images/s | B / A | A p50 / p99 ms | B p50 / p99 ms |"
        " A app1 CPU | B app1 CPU | errors A / B | A runs | B runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for conns in res["conns"]:
        cells = {}
        for v in ("A", "B"):
            runs = [r for r in res["runs"] if r["variant"] == v and r.get("conns") == conns]
            cells[v] = {
                "ips": med([r["images_per_s"] for r in runs]),
                "p50": med([r["latency_ms"]["p50"] for r in runs]),
                "p99": med([r["latency_ms"]["p99"] for r in runs]),
                "cpu": med([r["container_cpu_share"][lab.APP1] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "each": ", ".join(f"{r['images_per_s']:.2f}" for r in runs),
            }
        a, b = cells["A"], cells["B"]
        lines.append(
            f"| {conns} | {a['ips']:.2f} | {b['ips']:.2f} | {b['ips'] / a['ips']:.3f} |"
            f" {a['p50']:.0f} / {a['p99']:.0f} | {b['p50']:.0f} / {b['p99']:.0f} |"
            f" {100 * a['cpu']:.0f}% | {100 * b['cpu']:.0f}% | {a['errors']} / {b['errors']} |"
            f" {a['each']} | {b['each']} |"
        )
    if res.get("open_rates"):
        lines += open_loop_lines(res)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="names the report: bench/results/tuning-NAME.md")
    ap.add_argument("--a", required=True, help="extra vars (JSON) of the baseline")
    ap.add_argument("--b", required=True, help="extra vars (JSON) of the candidate")
    ap.add_argument("--playbook", default="playbooks/lb.yml")
    ap.add_argument("--limit", help="hosts to converge (app.yml: app1,lb1, so app2 stays out)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--conns", default="1,2", help="concurrencies, comma-separated")
    ap.add_argument("--format", choices=("png", "json"), default="png")
    ap.add_argument("--open-rates", default="", help="open-loop requests/s, comma-separated")
    ap.add_argument("--open-duration", type=int, default=60, help="seconds per open-loop run")
    args = ap.parse_args()
    try:
        args.conns = [int(c) for c in args.conns.split(",") if c]
        args.open_rates = [float(r) for r in args.open_rates.split(",") if r]
    except ValueError as exc:
        ap.error(f"--conns takes whole numbers and --open-rates numbers, comma-separated: {exc}")
    if any(c < 1 for c in args.conns) or any(r <= 0 for r in args.open_rates):
        ap.error("--conns and --open-rates must be above 0")
    started = time.time()
    lab.make_image()
    bench_vars = [lab.exempt_this_machine(), lab.DRAIN_APP2]
    url = f"http://{lab.container_ip(lab.LB1)}/v1/segment"
    lab.playbook("playbooks/lb.yml", bench_vars)
    res = {
        "name": args.name,
        "command": "python bench/ab.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_start": loadavg(),
        "machine": machine(),
        "a": args.a,
        "b": args.b,
        "playbook": args.playbook,
        "reps": args.reps,
        "duration": args.duration,
        "conns": args.conns,
        "format": args.format,
        "open_rates": args.open_rates,
        "open_duration": args.open_duration,
        "runs": [],
    }
    for rep in range(args.reps):
        order = [("A", args.a), ("B", args.b)]
        for label, extra in order if rep % 2 == 0 else order[::-1]:
            res["runs"] += measure(label, extra, args, bench_vars, url)
    lab.playbook(args.playbook, bench_vars + [args.a], limit=args.limit)
    res["load_end"] = loadavg()
    res["minutes"] = (time.time() - started) / 60
    out = RESULTS / f"tuning-{args.name}"
    named(out, ".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    report(res, named(out, ".md"))
    lab.log(f"wrote {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
