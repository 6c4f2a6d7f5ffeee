"""The served stack against its ceiling and its alternatives, side by side, on the lab.

    scripts/bench [--reps 3] [--duration 15] [--provisioning] [--skip-lab] [-e EXTRA_VAR ...]

One run: `scripts/lab up`, `site.yml` (with the benchmark client exempt from nginx's rate
limit), then every stack of stacks.STACKS, phase by phase (stacks.Phase): the whole fleet
first; then, with app2 drained, the stacks that take turns on segserve-lab-app1's core (one
pinned core, one uWSGI worker; the same weights, input size 520 and torch threads 1), the
in-process ceiling among them; then the stacks that need app1 converged otherwise (the torch
backend). While an alternative runs on app1, our service there is stopped, and the other way
round: one stack at a time on the core.

The load generator is wrk with bench/wrk/post_image.lua, one thread, from this machine; its
CPU time is measured (rusage). Runs are interleaved (the stacks rotate each repetition) and
medians reported. Writes bench/results/serving.md, serving.png and serving.json (report.py);
with --provisioning also bench/results/provisioning.md (bench/provision.py; several fresh
converges, about 20 minutes more). The lab's helpers are in lablib.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import lablib as lab
import report
import stacks
from lablib import APP1, LB1, log
from provision import loadavg, molecule_running, sharing
from stacks import InProcessCeiling, Phase


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument(
        "--open-duration",
        type=int,
        help="seconds per open-loop run (default: --duration); at ~10 images/s a 10 s run "
        "holds ~80 requests, so its p99 is its slowest one: give slow CPUs 60 or more",
    )
    ap.add_argument("--ceiling-n", type=int, default=40)
    ap.add_argument("--skip-lab", action="store_true", help="do not run scripts/lab up")
    ap.add_argument("--no-converge", action="store_true", help="skip site.yml (converged)")
    ap.add_argument(
        "--provisioning",
        action="store_true",
        help="also time fresh and idempotent converges (bench/provision.py)",
    )
    every = ",".join(s.name for s in stacks.HTTP_STACKS)
    ap.add_argument(
        "--stacks",
        default=every,
        help=f"which to run, comma-separated (default {every}); the ceiling always runs",
    )
    ap.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        help="extra vars for every converge (to measure a role setting)",
    )
    ap.add_argument(
        "--out", default=str(lab.RESULTS / "serving"), help="report path without suffix"
    )
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from .json")
    args = ap.parse_args()
    args.stacks = args.stacks.split(",")
    unknown = [n for n in args.stacks if n not in stacks.BY_NAME]
    if unknown:
        ap.error(f"unknown stacks {','.join(unknown)}; known: {','.join(stacks.BY_NAME)}")
    return args


class OtherJobs:
    """Molecule runs (other jobs on these cores) seen in checks made before each wrk run."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if molecule_running():
            self.seen.append(time.strftime("%H:%M:%S"))


def measure(stack: stacks.Stack, rep: int, args, res: dict, jobs: OtherJobs) -> None:
    """One repetition of a stack: the ceiling for each backend, or wrk at each format and
    concurrency; the runs go into res."""
    if isinstance(stack, InProcessCeiling):
        for backend in stacks.ceiling_backends(res["setup"]["openvino_precisions"]):
            c = stacks.run_ceiling(backend, args.ceiling_n)
            c["rep"] = rep
            res["ceiling_runs"].append(c)
            log(
                f"ceiling {backend}: png {c['png']['images_per_s']:.2f} img/s, "
                f"inference {c['inference']['images_per_s']:.2f}"
            )
        return
    url = stack.url()
    for fmt in stack.formats:
        for conns in stack.conns:
            jobs.check()
            r = lab.wrk(
                url,
                conns,
                args.duration,
                stacks.ACCEPT[fmt],
                [APP1, LB1],
                form=stack.form,
                cores=None if stack.phase is Phase.FLEET else res["away_from_app1"],
            )
            r.update(stack=stack.name, fmt=fmt, rep=rep)
            res["runs"].append(r)
            log(
                f"{stack.name} {fmt} c={conns}: {r['images_per_s']:.2f} img/s p99 "
                f"{r['latency_ms']['p99']:.0f} ms errors {r['errors']} "
                f"wrk {100 * r['wrk_cpu_share']:.1f}% load {r['load_after']}"
            )
            res.setdefault("example_wrk", r["command"])
    capacity = next(
        (
            r["images_per_s"]
            for r in reversed(res["runs"])
            if (r["stack"], r["fmt"], r["conns"], r["rep"]) == (stack.name, "png", 1, rep)
        ),
        None,
    )
    for share in stack.open_loop if capacity else ():
        jobs.check()
        o = lab.open_loop(
            url, share * capacity, args.open_duration or args.duration, stacks.ACCEPT["png"]
        )
        o.update(stack=stack.name, rep=rep, share=share, capacity=capacity)
        res["open_runs"].append(o)
        log(
            f"{stack.name} open loop {share:.0%} of {capacity:.2f} = {o['rate']:.2f}/s: "
            f"p50 {o['p50']:.0f} ms p99 {o['p99']:.0f} ms failed {o['failed']}/{o['sent']}"
        )


def take_turn(stack: stacks.Stack, rep: int, args, res: dict, jobs: OtherJobs) -> None:
    """Start the stack (alone on app1's core if it says so), measure it, stop it."""
    if stack.alone_on_app1:
        lab.segserve_unit(APP1, "stop")
    took = stack.start() if stack.start else None
    if took is not None:
        res.setdefault(f"{stack.name}_start_s", []).append(took)
    try:
        measure(stack, rep, args, res, jobs)
    finally:
        if stack.stop:
            stack.stop()


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    if args.report_only:
        report.write(json.loads(report.named(out, ".json").read_text()), out)
        return 0
    os.chdir(lab.ROOT)
    started = time.time()
    res: dict = {
        "command": "scripts/bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": dt.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
        "load_start": loadavg(),
        "reps": args.reps,
        "duration": args.duration,
        "open_duration": args.open_duration or args.duration,
        "ceiling_n": args.ceiling_n,
        "runs": [],
        "ceiling_runs": [],
        "open_runs": [],
        "notes": [],
    }
    jobs = OtherJobs()

    def turns(phase: Phase) -> None:
        """Each repetition, every chosen stack of the phase, the order rotated by one."""
        chosen = stacks.chosen(args.stacks, phase)
        for rep in range(args.reps if chosen else 0):
            for stack in chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]:
                take_turn(stack, rep, args, res, jobs)

    if args.provisioning:
        lab.sh([sys.executable, str(lab.HERE / "provision.py")])
    if not args.skip_lab:
        lab.sh(["scripts/lab", "up"])
    res["image_bytes"] = lab.make_image().stat().st_size
    # The stacks and their ceilings are onnxruntime's (bench/stacks.py): pinned, since the lab's
    # default (auto) serves whichever backend each host's timing chose. The hosts keep the lock
    # with torch: the torch stack, its ceiling and TorchServe run on app1 from the service's
    # virtualenv (a CPU host serving onnxruntime otherwise installs requirements-cpu.lock).
    pinned = {
        "nginx_rate_limit_exempt": [lab.subnet()],
        "uwsgi_app_backend": "onnxruntime",
        "uwsgi_app_artifact_requirements_file": str(lab.ROOT / "app" / "requirements.lock"),
    }
    bench_vars = [json.dumps(pinned)] + args.extra_vars
    res["extra_vars"] = bench_vars
    if not args.no_converge:
        res["converge_s"] = lab.playbook("site.yml", bench_vars)
    res["setup"] = stacks.setup_all()
    log(f"setup: {res['setup']}")

    # The fleet, both app hosts in rotation.
    turns(Phase.FLEET)
    # app1 alone: app2 drained, the stacks take turns on app1's core; then ours is back on it.
    # lb1 and the load generators move off app1's core, as on machines of their own, so that
    # the core measured runs the stack under test and nothing else.
    lab.playbook("playbooks/lb.yml", bench_vars + [lab.DRAIN_APP2])
    res["away_from_app1"] = lab.away_from_app1()
    lab.pin_container(LB1, res["away_from_app1"])
    try:
        turns(Phase.TURNS)
        lab.segserve_unit(APP1, "start")
        # Our stack on app1 converged otherwise (app2 still drained), then converged back.
        for stack in stacks.chosen(args.stacks, Phase.RECONVERGED):
            lab.playbook("playbooks/app.yml", bench_vars + list(stack.app_vars), limit="app1,lb1")
            if stack.ceiling == "chosen":
                res["chosen"] = stacks.served_backend()
                res["choice_record"] = lab.choice_record()
                log(f"app1 chose {res['chosen']}")
            for rep in range(args.reps):
                take_turn(stack, rep, args, res, jobs)
            lab.playbook("playbooks/app.yml", bench_vars, limit="app1,lb1")
    finally:
        # lb1 on every core again, even after a failure: docker keeps a cpuset across
        # restarts, and `scripts/lab up` reuses the container.
        lab.pin_container(LB1, None)
    # Back to both hosts in rotation.
    lab.playbook("playbooks/lb.yml", bench_vars)

    res["ceilings"] = report.summarise_ceilings(res["ceiling_runs"], res.get("chosen"))
    res["rows"] = {report.row_key(*k): v for k, v in report.summarise(res["runs"]).items()}
    res["load_end"] = loadavg()
    res["sharing"] = sharing(jobs.seen, jobs.checks)
    res["machine"] = report.machine()
    res["run_minutes"] = (time.time() - started) / 60
    res["log"] = lab.LOG
    out.parent.mkdir(parents=True, exist_ok=True)
    report.named(out, ".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    report.write(res, out)
    log(f"wrote {out}.md, .png, .json in {res['run_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
