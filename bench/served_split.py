"""Where a served request's time goes beside the in-process ceiling, interleaved on the lab.

    python bench/served_split.py [--reps 3] [--duration 10] [--conns 1,2] [--out NAME]
                                 [--source journal|metrics]

On the lab as `scripts/bench` or `bench/ab.py` leave it (converged), with app2 drained and
lb1 and the client on the cores app1 is not pinned to, as in the bench: each repetition runs
the ceiling of the backend app1 serves (bench/ceiling.py, decode to PNG in one process), then
wrk through nginx at each concurrency. app1's own request records of each wrk run (the
journal's `request` lines, so the service must log every request, its default) split each
answer's time into the stages, the app around them, and what is outside the app's clock:
uWSGI's and Flask's own request handling, and at one connection the wait for both nginx
hops, the network and the client. Means, so that the parts add up; medians over repetitions.
With `--source metrics` the same means come from app1's Prometheus counters (the stage and
request histograms' sums and counts, read from mon1 before and after each run), so the split
also works with `uwsgi_app_log_requests: errors`; the request time then includes every
endpoint the worker answered (a scrape's /metrics every 5 s, under 0.1% of its time).
Writes bench/results/NAME.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time

import lablib as lab
import stacks
from report import machine, med, named


def records(since: float, until: float) -> list[dict]:
    """app1's request records of /v1/segment between two times (seconds since the epoch)."""
    out = lab.dexec(
        lab.APP1,
        f"journalctl -u segserve --since @{since:.3f} --until @{until:.3f} --no-pager -o cat",
    )
    lines = (json.loads(x) for x in out.splitlines() if x.startswith("{"))
    return [
        r
        for r in lines
        if r.get("message") == "request"
        and r.get("endpoint") == "/v1/segment"
        and r.get("status") == 200
    ]


def counters() -> dict[str, float]:
    """app1's /v1/segment stage and request sums and counts, read from mon1 (the one host
    app1's firewall lets reach its metrics port)."""
    port = lab.read_env()["SEGSERVE_METRICS_PORT"]
    url = f"http://{lab.container_ip(lab.APP1)}:{port}/metrics"
    text = lab.dexec(
        lab.MON1,
        f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}')"
        '.read().decode())"',
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("segserve_stage_seconds_", "segserve_request_seconds_")) and (
            "_sum{" in line or "_count{" in line
        ):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def split_counters(run: dict, before: dict[str, float], after: dict[str, float]) -> dict:
    """split()'s figures from the counters' growth during the run (model lraspp, /v1/segment)."""
    grew = {k: after[k] - before.get(k, 0.0) for k in after}

    def total(kind: str, match: str) -> float:
        return sum(v for k, v in grew.items() if k.startswith(kind) and match in k)

    answers = total("segserve_request_seconds_count", 'endpoint="/v1/segment"')
    if answers < 1:
        raise RuntimeError("app1's counters grew by no /v1/segment answer during the run")
    per_answer = 1000 / run["images_per_s"]
    # Every request the worker answered (scrapes included): its time on the app's clock.
    app = 1000 * total("segserve_request_seconds_sum", "") / answers
    stage_sums = {
        k.split('stage="')[1].split('"')[0]: v
        for k, v in grew.items()
        if k.startswith("segserve_stage_seconds_sum")
    }
    stages = 1000 * sum(stage_sums.values()) / answers
    return {
        "records": int(answers),
        "per_answer_ms": per_answer,
        "inference_ms": 1000 * stage_sums.get("inference", 0.0) / answers,
        "stages_ms": stages,
        "app_around_stages_ms": app - stages,
        "outside_app_ms": per_answer - app,
    }


def split(run: dict, recs: list[dict]) -> dict:
    """Milliseconds per answer (1000 / images/s, as one worker delivers them) and the parts of
    it the app's records account for; the rest is outside the app's clock."""
    if not recs:
        raise RuntimeError(
            "app1's journal holds no request record of this run: the split needs every request"
            " logged (uwsgi_app_log_requests: all, the default)"
        )
    mean = lambda f: statistics.fmean(f(r) for r in recs)  # noqa: E731
    per_answer = 1000 / run["images_per_s"]
    app = mean(lambda r: r["ms"])
    stages = mean(lambda r: sum(r["stages_ms"].values()))
    return {
        "records": len(recs),
        "per_answer_ms": per_answer,
        "inference_ms": mean(lambda r: r["stages_ms"]["inference"]),
        "stages_ms": stages,
        "app_around_stages_ms": app - stages,
        # At one connection the worker idles while the answer travels back and the next
        # request comes in; with more, the next one is already queued and this shrinks.
        "outside_app_ms": per_answer - app,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--conns", default="1,2", help="concurrencies, comma-separated")
    ap.add_argument("--ceiling-n", type=int, default=40, help="images per ceiling run")
    ap.add_argument("--out", default="served-split", help="names bench/results/NAME.md")
    ap.add_argument(
        "--source",
        choices=("journal", "metrics"),
        default="journal",
        help="app1's request records (needs every request logged) or its Prometheus counters",
    )
    args = ap.parse_args()
    try:
        args.conns = [int(c) for c in args.conns.split(",") if c]
    except ValueError as exc:
        ap.error(f"--conns takes whole numbers, comma-separated: {exc}")
    if not args.conns or min(args.conns) < 1 or min(args.reps, args.duration, args.ceiling_n) < 1:
        ap.error("--conns, --reps, --duration and --ceiling-n must be above 0")
    os.chdir(lab.ROOT)
    started = time.time()
    lab.make_image()
    bench_vars = [lab.exempt_this_machine(), lab.DRAIN_APP2]
    lab.playbook("playbooks/lb.yml", bench_vars)
    stacks.setup_app1_files()
    stacks.setup_ceiling({})
    url = stacks.lb_url()
    served = stacks.served_backend()
    res = {
        "command": "python bench/served_split.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "served": served,
        "source": args.source,
        "ceilings": [],
        "runs": [],
    }
    away = lab.away_from_app1()
    lab.pin_container(lab.LB1, away)
    try:
        lab.warm(url, 3)
        for rep in range(args.reps):
            ceiling = stacks.run_ceiling(served, args.ceiling_n)
            res["ceilings"].append(ceiling["png"]["images_per_s"])
            lab.log(f"rep {rep}: ceiling {ceiling['png']['images_per_s']:.2f} images/s")
            for conns in args.conns:
                since, before = time.time(), counters() if args.source == "metrics" else {}
                run = lab.wrk(url, conns, args.duration, "image/png", [lab.APP1], cores=away)
                if args.source == "metrics":
                    parts = split_counters(run, before, counters())
                else:
                    time.sleep(1)  # the last records reach the journal
                    parts = split(run, records(since, time.time()))
                parts.update(conns=conns, rep=rep, images_per_s=run["images_per_s"])
                parts["vs_ceiling"] = run["images_per_s"] / ceiling["png"]["images_per_s"]
                res["runs"].append(parts)
                lab.log(f"rep {rep} c={conns}: {json.dumps(parts)}")
    finally:
        lab.pin_container(lab.LB1, None)
        lab.playbook("playbooks/lb.yml", [bench_vars[0]])
    res["minutes"] = (time.time() - started) / 60
    out = lab.RESULTS / args.out
    named(out, ".json").write_text(json.dumps(res, indent=1) + "\n")
    named(out, ".md").write_text("\n".join(report(res, args)) + "\n")
    lab.log(f"wrote {out}.md")
    return 0


def report(res: dict, args) -> list[str]:
    lines = [
        "# Where a served request's time goes beside the ceiling",
        "",
        f"- Command: `{res['command']}` ({res['started']} UTC, {res['minutes']:.0f} min)",
        f"- Machine: {res['machine']}",
        f"- app1 serves {res['served']} (one pinned core, one worker), app2 drained; lb1 and wrk"
        " on the other cores. PNG answers, the 520x520 JPEG.",
        f"- Ceiling (bench/ceiling.py, decode to PNG, one process): {med(res['ceilings']):.2f}"
        f" images/s, median of {len(res['ceilings'])} runs interleaved with the served ones.",
        "- Per answer, ms, means over app1's "
        + (
            "Prometheus counters (stage and request sums over answers) during each run"
            if res.get("source") == "metrics"
            else "request records of each run"
        )
        + f"; medians over {args.reps} repetitions. Outside the app: the rest of each answer's"
        " time on the"
        " worker's clock: uWSGI and Flask setting the request up and sending the answer, and at"
        " one connection the wait for both nginx hops, the network and the client.",
        "",
        "| conns | images/s | served / ceiling | per answer | stages | inference |"
        " app around stages | outside the app | served / ceiling, each repetition |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for conns in args.conns:
        rows = [r for r in res["runs"] if r["conns"] == conns]

        def cell(key, rows=rows):
            return med([r[key] for r in rows])

        ratios = ", ".join(f"{r['vs_ceiling']:.3f}" for r in rows)
        lines.append(
            f"| {conns} | {cell('images_per_s'):.2f} | {cell('vs_ceiling'):.3f} |"
            f" {cell('per_answer_ms'):.1f} | {cell('stages_ms'):.1f} | {cell('inference_ms'):.1f} |"
            f" {cell('app_around_stages_ms'):.2f} | {cell('outside_app_ms'):.2f} |"
            f" {ratios} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
