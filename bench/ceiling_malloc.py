"""The in-process ceiling without and with glibc's malloc asking for huge pages, in pairs.

    python bench/ceiling_malloc.py [--pairs 6] [-n 40] [--backends "onnxruntime,openvino bf16"]

On the lab as `scripts/bench` leaves it (converged): bench/ceiling.py of each backend (by
default the one app1 serves), in app1, each run a fresh process, alternately with no malloc
setting and with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (what uwsgi_app_malloc_huge_pages gives
the workers), the order swapped each pair. Writes bench/results/ceiling-malloc.md and .json:
each pair's images/s and the median ratio per backend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys

import lablib as lab
import stacks
from report import machine, named

HUGE = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("-n", type=int, default=40, help="images per ceiling run")
    ap.add_argument("--backends", help="comma-separated, as ceilings name them (default: served)")
    args = ap.parse_args()
    if min(args.pairs, args.n) < 1:
        ap.error("--pairs and -n must be above 0")
    os.chdir(lab.ROOT)
    lab.make_image()
    stacks.setup_app1_files()
    stacks.setup_ceiling({})
    served = stacks.served_backend()
    backends = args.backends.split(",") if args.backends else [served]
    known = ["onnxruntime", "torch", *(f"openvino {p}" for p in stacks.openvino_precisions())]
    if unknown := [b for b in backends if b not in known]:
        ap.error(f"--backends: {', '.join(unknown)} not among app1's ({', '.join(known)})")
    thp = lab.dexec(lab.APP1, "cat /sys/kernel/mm/transparent_hugepage/enabled").strip()
    pairs: dict[str, list[dict]] = {b: [] for b in backends}
    for i in range(args.pairs):
        order = ("", HUGE) if i % 2 == 0 else (HUGE, "")
        for backend in backends:
            rates = {}
            for malloc in order:
                run = stacks.run_ceiling(backend, args.n, malloc=malloc)
                rates["huge" if malloc else "plain"] = run["png"]["images_per_s"]
            pairs[backend].append(rates)
            lab.log(f"pair {i} {backend}: plain {rates['plain']:.2f}, huge {rates['huge']:.2f}")
    ratios = {b: statistics.median(p["huge"] / p["plain"] for p in ps) for b, ps in pairs.items()}
    res = {
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "served": served,
        "thp": thp,
        "pairs": pairs,
        "median_ratio": ratios,
    }
    lines = [
        "# The in-process ceiling without and with malloc's huge pages",
        "",
        f"- Command: `python {' '.join(sys.argv)}` ({res['started']} UTC)",
        f"- Machine: {res['machine']}; the kernel's THP mode: `{thp}`",
        f"- bench/ceiling.py, decode to PNG, {args.n} images a run, in app1 (one pinned core),"
        f" each run a fresh process; huge pages: `{HUGE}`. app1 serves {served}.",
        "",
        "| backend | pair | plain images/s | huge pages images/s | ratio |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {b} | {i} | {p['plain']:.2f} | {p['huge']:.2f} | {p['huge'] / p['plain']:.3f} |"
            for b, ps in pairs.items()
            for i, p in enumerate(ps)
        ),
        "",
        "Median ratio: " + ", ".join(f"{b} {r:.3f}" for b, r in ratios.items()) + ".",
    ]
    out = lab.RESULTS / "ceiling-malloc"
    named(out, ".json").write_text(json.dumps(res, indent=1) + "\n")
    named(out, ".md").write_text("\n".join(lines) + "\n")
    lab.log(f"wrote {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
