"""The serving benchmark's results: medians, the machine, the plot and the markdown report.

Which stacks, in which order, with which label, ceiling and targets: all from stacks.STACKS.
Everything here works from the run's record (the .json), so --report-only can redo it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
from pathlib import Path

from lablib import APP1, LB1, RESULTS, sh
from stacks import ACCEPT, BY_NAME, CEILING, HTTP_STACKS, HttpStack, ceiling_backends


def med(values):
    return statistics.median(values) if values else float("nan")


def row_key(stack: str, fmt: str, conns: int) -> str:
    """A row's key in the .json (JSON keys are strings)."""
    return f"{stack}|{fmt}|{conns}"


def rows_from_json(res: dict) -> dict[tuple, dict]:
    """The rows keyed (stack, fmt, conns) again."""
    rows = {}
    for key, row in res["rows"].items():
        stack, fmt, conns = key.split("|")
        rows[(stack, fmt, int(conns))] = row
    return rows


def summarise(runs: list[dict]) -> dict:
    """Group runs by (stack, fmt, conns); medians of each figure, errors summed."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["stack"], r["fmt"], r["conns"]), []).append(r)
    rows = {}
    for key, rs in groups.items():
        rows[key] = {
            "stack": key[0],
            "fmt": key[1],
            "conns": key[2],
            "n_runs": len(rs),
            "images_per_s": med([r["images_per_s"] for r in rs]),
            "images_per_s_each": [round(r["images_per_s"], 2) for r in rs],
            "p50": med([r["latency_ms"]["p50"] for r in rs]),
            "p95": med([r["latency_ms"]["p95"] for r in rs]),
            "p99": med([r["latency_ms"]["p99"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "bytes": med([r["bytes_per_response"] for r in rs]),
            "wrk_cpu": med([r["wrk_cpu_share"] for r in rs]),
            "app_cpu": med([r["container_cpu_share"].get(APP1, 0) for r in rs]),
            "lb_cpu": med([r["container_cpu_share"].get(LB1, 0) for r in rs]),
        }
    return rows


def summarise_ceilings(ceiling_runs: list[dict]) -> dict:
    """Per backend: medians over repetitions of images/s and ms for each part, answer bytes."""
    ceilings = {}
    for backend in ceiling_backends():
        cs = [c for c in ceiling_runs if c["backend"] == backend]
        if cs:
            ceilings[backend] = {
                part: {k: med([c[part][k] for c in cs]) for k in ("images_per_s", "median_ms")}
                for part in ("png", "json", "inference")
            }
            ceilings[backend]["png_bytes"] = cs[0]["png_bytes"]
            ceilings[backend]["json_bytes"] = cs[0]["json_bytes"]
    return ceilings


def ceiling_for(stack: HttpStack, fmt: str, ceilings: dict) -> float | None:
    """The images/s the stack is compared to: its backend's in-process ceiling in the same
    format, times the app hosts it spreads over; None if not measured."""
    c = ceilings.get(stack.ceiling or "", {}).get(fmt, {}).get("images_per_s")
    return stack.ceiling_hosts * c if c else None


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = int(next(x.split()[1] for x in meminfo if x.startswith("MemTotal"))) // 1024 // 1024
    docker = sh(["docker", "version", "-f", "{{.Server.Version}}"], capture=True).stdout.strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem} GiB; {platform.platform()}; Docker "
        f"{docker}; wrk {sh(['wrk', '-v'], check=False, capture=True).stdout.split()[1]}"
    )


def plot(rows: dict, ceilings: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for stack in HTTP_STACKS:
        for fmt, style in zip(ACCEPT, ("-o", "--s"), strict=True):
            pts = sorted((k[2], v) for k, v in rows.items() if k[0] == stack.name and k[1] == fmt)
            if not pts:
                continue
            xs = [c for c, _ in pts]
            label = f"{stack.name} {fmt}"
            line = ax1.plot(xs, [v["images_per_s"] for _, v in pts], style, label=label)[0]
            ax2.plot(xs, [v["p99"] for _, v in pts], style, color=line.get_color(), label=label)
    for backend, c in ceilings.items():
        ax1.axhline(c["png"]["images_per_s"], linestyle=":", color="grey")
        ax1.text(
            1,
            c["png"]["images_per_s"],
            f" ceiling {backend} (1 core)",
            va="bottom",
            fontsize=8,
            color="grey",
        )
    ticks = sorted({c for s in HTTP_STACKS for c in s.conns})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(c) for c in ticks])
    ax2.set_yscale("log")
    ax1.set_xlabel("concurrent connections (wrk)")
    ax2.set_xlabel("concurrent connections (wrk)")
    ax1.set_ylabel("images/s (2xx answers)")
    ax2.set_ylabel("p99 latency (ms, log)")
    ax1.set_title("Throughput, 520x520 JPEG in, mask out")
    ax2.set_title("p99 latency")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fmt_row(r: dict, ceiling: float | None) -> str:
    ratio = f"{r['images_per_s'] / ceiling:.2f}" if ceiling else ""
    return (
        f"| {r['stack']} | {r['fmt']} | {r['conns']} | {r['images_per_s']:.2f} | "
        f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['errors']}/{r['requests']} | "
        f"{r['bytes']:,.0f} | {ratio} | {100 * r['wrk_cpu']:.1f}% | "
        f"{100 * r['app_cpu']:.0f}% | {100 * r['lb_cpu']:.0f}% | "
        f"{', '.join(map(str, r['images_per_s_each']))} |"
    )


def targets(rows: dict, ceilings: dict) -> list[str]:
    """The issue's targets, computed from the rows (medians), as the stacks declare them."""
    L = ["## Targets\n", "| target | measured | met |", "|---|---|---|"]
    # At concurrency = the worker count (1), the ceiling's own concurrency.
    for stack in HTTP_STACKS:
        r, ceiling = rows.get((stack.name, "png", 1)), ceiling_for(stack, "png", ceilings)
        if stack.target_ceiling_share and r and ceiling:
            want, ratio = stack.target_ceiling_share, r["images_per_s"] / ceiling
            L.append(
                f"| {stack.name} >= {100 * want:g}% of the in-process ceiling at concurrency = "
                f"workers (1) | {r['images_per_s']:.2f} / {ceiling:.2f} images/s = "
                f"{100 * ratio:.0f}% | "
                f"{'yes' if ratio >= want else f'no, {100 * (want - ratio):.0f} points short'} |"
            )
    for stack in HTTP_STACKS:
        if not stack.target_ahead_of:
            continue
        rival = BY_NAME[stack.target_ahead_of]
        for conns in stack.conns:
            ours = rows.get((stack.name, "png", conns))
            theirs = rows.get((rival.name, "png", conns))
            if ours and theirs:
                faster = ours["images_per_s"] > theirs["images_per_s"]
                ahead = faster and ours["p99"] <= theirs["p99"]
                L.append(
                    f"| {stack.name} ahead of {rival.short or rival.name} at {conns} "
                    f"connection(s), PNG | {ours['images_per_s']:.2f} vs "
                    f"{theirs['images_per_s']:.2f} images/s "
                    f"({ours['images_per_s'] / theirs['images_per_s']:.2f}x), p99 "
                    f"{ours['p99']:.0f} vs {theirs['p99']:.0f} ms | {'yes' if ahead else 'no'} |"
                )
    for stack in HTTP_STACKS:
        png, js = rows.get((stack.name, "png", 1)), rows.get((stack.name, "json", 1))
        if stack.target_png_share and png and js:
            want, share = stack.target_png_share, png["bytes"] / js["bytes"]
            L.append(
                f"| PNG responses < {100 * want:g}% of the JSON bytes | {png['bytes']:,.0f} / "
                f"{js['bytes']:,.0f} bytes = {100 * share:.2f}% | "
                f"{'yes' if share < want else 'no'} |"
            )
    prov = RESULTS / "provisioning.json"
    if prov.exists():
        p = json.loads(prov.read_text())
        for name, e in p["settings"].items():
            m = e["rerun_median_s"]
            L.append(
                f"| idempotent re-run of site.yml on 3 hosts < 30 s ({name}) | {m:.1f} s | "
                f"{'yes' if m < 30 and e['correct'] else f'no, {m - 30:.1f} s over'} |"
            )
    L.append("")
    return L


def header(res: dict) -> list[str]:
    """How the run was made: command, machine, lab, load, versions."""
    return [
        "# Serving: our stack against its ceiling and its alternatives\n",
        f"- Command: `{res['command']}` ({res['started']} UTC; {res['run_minutes']:.0f} min "
        "in all, lab and provisioning included)",
        f"- Machine: {res['machine']}; {res['sharing']}; load average {res['load_start']} at"
        f" the start, {res['load_end']} at the end.",
        "- Lab: `scripts/lab up`; `ansible-playbook site.yml -i inventory/lab "
        f"{' '.join('-e ' + shlex.quote(e) for e in res['extra_vars'])}` (the benchmark "
        "client, this machine on the lab's Docker network, is exempt from nginx's 10 r/s "
        "rate limit, which would otherwise answer most requests with 429). App containers "
        "are pinned to one core each (app1 core 0, app2 core 1); lb1 and wrk are not pinned.",
        "- Same host, model, weights, input size, threads: every single-host row runs on "
        "segserve-lab-app1 (1 core, 1 worker, 1 intra-op thread), "
        "lraspp_mobilenet_v3_large with the lab's weights file (untrained seeded init; the "
        "cost is the trained network's), a 520x520 JPEG "
        f"({res['image_bytes']:,} bytes, astronaut.jpg) posted raw. One stack at a time on "
        "the core: our service on app1 is stopped while an alternative runs there, and the "
        "alternative is stopped while ours runs. For `ours-*`, app2 is drained "
        "(`-e nginx_upstream_down_hosts=[app2]` on playbooks/lb.yml), so nginx sends "
        "everything to app1; `fleet-onnx` has both app hosts in rotation.",
        "- Load: wrk 4.1 (Debian) with `bench/wrk/post_image.lua`, 1 thread, "
        f"{res['duration']} s per run, {res['reps']} interleaved repetitions (the order of "
        "the stacks rotates each repetition); figures are medians over repetitions, errors "
        "are summed. Example: "
        f"`{res['example_wrk']}`",
        f"- Versions on app1: {res['setup'].get('versions', '').replace(chr(10), '; ')}",
        "",
    ]


def ceiling_table(res: dict) -> list[str]:
    L = [
        f"## Ceiling: {CEILING.label}\n",
        "| backend | decode to PNG, images/s | decode to JSON, images/s | inference alone, "
        "images/s | ms per image (PNG / inference) | PNG bytes | JSON bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, c in res["ceilings"].items():
        L.append(
            f"| {backend} | {c['png']['images_per_s']:.2f} | {c['json']['images_per_s']:.2f} | "
            f"{c['inference']['images_per_s']:.2f} | {c['png']['median_ms']:.1f} / "
            f"{c['inference']['median_ms']:.1f} | {c['png_bytes']:,} | {c['json_bytes']:,} |"
        )
    L.append(
        f"\n(medians over {res['reps']} repetitions of {res['ceiling_n']} images each; each "
        "repetition ran between the HTTP runs, with nothing else on app1's core.)\n"
    )
    return L


def http_table(rows: dict, ceilings: dict) -> list[str]:
    L = [
        "## Through HTTP\n",
        "images/s counts 2xx answers only; latency is wrk's, from this machine; errors = "
        "non-2xx answers + socket errors, over all repetitions; bytes = response body per "
        "answer; ratio = images/s over the ceiling of the same backend and format (fleet: "
        "over twice the 1-core ceiling); CPU columns are shares of one core during the run "
        "(wrk: its own rusage; app1 and lb1: their containers' cgroup).\n",
        "| stack | format | conns | images/s | p50 ms | p95 ms | p99 ms | errors | "
        "bytes | ratio to ceiling | wrk CPU | app1 CPU | lb1 CPU | images/s each run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stack in HTTP_STACKS:
        for fmt in ACCEPT:
            for key in sorted(k for k in rows if k[0] == stack.name and k[1] == fmt):
                L.append(fmt_row(rows[key], ceiling_for(stack, fmt, ceilings)))
    L.append("")
    L.append("Stacks: " + "; ".join(f"`{s.name}` = {s.label}" for s in HTTP_STACKS) + ".\n")
    return L


def write_markdown(res: dict, path: Path) -> None:
    rows = rows_from_json(res)
    L = header(res) + ceiling_table(res) + http_table(rows, res["ceilings"])
    L.append("![throughput and p99](serving.png)\n")
    L.extend(targets(rows, res["ceilings"]))
    L.extend(res.get("notes", []))
    path.write_text("\n".join(L) + "\n")


def write(res: dict, out: Path) -> None:
    """OUT.png and OUT.md from the run's record."""
    plot(rows_from_json(res), res["ceilings"], out.with_suffix(".png"))
    write_markdown(res, out.with_suffix(".md"))
