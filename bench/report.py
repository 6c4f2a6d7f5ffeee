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

from benchlib import cpu_flags
from lablib import APP1, LB1, RESULTS, sh
from stacks import ACCEPT, BY_NAME, CEILING, HTTP_STACKS, HttpStack


def med(values):
    return statistics.median(values) if values else float("nan")


def named(out: Path, suffix: str) -> Path:
    """OUT with SUFFIX appended: a results name may hold dots (`serving-1.5`), which
    Path.with_suffix would cut at, writing `serving-1.md` over another run's report."""
    return out.with_name(out.name + suffix)


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


def summarise_ceilings(ceiling_runs: list[dict], chosen: str | None = None) -> dict:
    """Per candidate (in the order measured): medians over repetitions of images/s and ms for
    each part, answer bytes; `chosen` is also the key of the candidate app1 chose."""
    ceilings = {}
    for backend in dict.fromkeys(c["backend"] for c in ceiling_runs):
        cs = [c for c in ceiling_runs if c["backend"] == backend]
        ceilings[backend] = {
            part: {k: med([c[part][k] for c in cs]) for k in ("images_per_s", "median_ms")}
            for part in ("png", "json", "inference")
        }
        ceilings[backend]["png_bytes"] = cs[0]["png_bytes"]
        ceilings[backend]["json_bytes"] = cs[0]["json_bytes"]
    if chosen in ceilings:
        ceilings["chosen"] = ceilings[chosen]
    return ceilings


def summarise_open(open_runs: list[dict]) -> dict:
    """Group open-loop runs by (stack, share): medians of rate, p50, p99; failures summed."""
    groups: dict[tuple, list[dict]] = {}
    for o in open_runs:
        groups.setdefault((o["stack"], o["share"]), []).append(o)
    return {
        key: {
            "rate": med([o["rate"] for o in os_]),
            "achieved": med([o["succeeded_per_s"] for o in os_]),
            "p50": med([o["p50"] for o in os_]),
            "p99": med([o["p99"] for o in os_]),
            "max": max(o["max"] for o in os_),
            "failed": sum(o["failed"] for o in os_),
            "sent": sum(o["sent"] for o in os_),
            "backlog": max(o["backlog"] for o in os_),
            "client_cpu": med([o.get("client_cpu_share", float("nan")) for o in os_]),
            "n_runs": len(os_),
        }
        for key, os_ in groups.items()
    }


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
        f"{cpu}, {os.cpu_count()} cores ({cpu_flags()}), {mem} GiB; {platform.platform()}; Docker "
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
        if backend == "chosen":
            continue
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


def targets(rows: dict, ceilings: dict, open_rows: dict) -> list[str]:
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
        for rival_name, factor in stack.target_ahead_of:
            rival = BY_NAME[rival_name]
            for conns in stack.conns:
                ours = rows.get((stack.name, "png", conns))
                theirs = rows.get((rival.name, "png", conns))
                if not (ours and theirs):
                    continue
                ratio = ours["images_per_s"] / theirs["images_per_s"]
                ahead = ratio >= factor and ours["p99"] <= theirs["p99"]
                want = f">= {factor:g}x " if factor != 1 else ""
                L.append(
                    f"| {stack.name} ahead of {rival.short or rival.name} ({want}images/s, "
                    f"p99 no higher) at {conns} connection(s), PNG | "
                    f"{ours['images_per_s']:.2f} vs {theirs['images_per_s']:.2f} images/s "
                    f"({ratio:.2f}x), p99 {ours['p99']:.0f} vs {theirs['p99']:.0f} ms "
                    f"| {'yes' if ahead else 'no'} |"
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
    for stack in HTTP_STACKS:
        if not stack.target_faster_than:
            continue
        rival, with_bf16, without = stack.target_faster_than
        bf16 = "openvino bf16" in ceilings
        want = with_bf16 if bf16 else without
        for conns in stack.conns:
            ours, theirs = rows.get((stack.name, "png", conns)), rows.get((rival, "png", conns))
            if ours and theirs:
                ratio = ours["images_per_s"] / theirs["images_per_s"]
                met = "yes" if ratio >= want else f"no, {want - ratio:.2f} short"
                L.append(
                    f"| {stack.name} >= {want:g}x {rival}'s images/s at {conns} connection(s) "
                    f"(the CPU {'has' if bf16 else 'lacks'} bfloat16), PNG "
                    f"| {ours['images_per_s']:.2f} vs {theirs['images_per_s']:.2f} = "
                    f"{ratio:.2f}x | {met} |"
                )
    for stack in HTTP_STACKS:
        top = max(stack.open_loop, default=None)
        o = open_rows.get((stack.name, top))
        if stack.target_open_p99_over_p50 and o:
            want, ratio = stack.target_open_p99_over_p50, o["p99"] / o["p50"]
            per_run = o["sent"] / o["n_runs"]
            # loadgen.py's p99 is the nearest rank int(0.99 n) of the sorted latencies: up to
            # 100 requests a run, that is its slowest request (a stall, not a tail).
            thin = f" (p99 of {per_run:.0f} requests a run: its slowest)" if per_run <= 100 else ""
            L.append(
                f"| {stack.name}: p99 <= {want:g}x p50 at {top:.0%} of capacity, open loop "
                f"| {o['p99']:.0f} / {o['p50']:.0f} ms = {ratio:.2f}x{thin} "
                f"| {'yes' if ratio <= want else f'no, {ratio - want:.2f} over'} |"
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


def included(command: str) -> str:
    """What the run's minutes include besides the measurements, from its options."""
    parts = [] if "--skip-lab" in command else ["lab"]
    parts += [] if "--no-converge" in command else ["converge"]
    parts += ["provisioning"] if "--provisioning" in command else []
    return " and ".join(parts) + " included" if parts else "on the lab as it was, converged"


def header(res: dict) -> list[str]:
    """How the run was made: command, machine, lab, load, versions."""
    return [
        "# Serving: our stack against its ceiling and its alternatives\n",
        f"- Command: `{res['command']}` ({res['started']} UTC; {res['run_minutes']:.0f} min "
        f"in all, {included(res['command'])})",
        f"- Machine: {res['machine']}; {res['sharing']}; load average {res['load_start']} at"
        f" the start, {res['load_end']} at the end.",
        "- Lab: `scripts/lab up`; `ansible-playbook site.yml -i inventory/lab "
        f"{' '.join('-e ' + shlex.quote(e) for e in res['extra_vars'])}` (the benchmark "
        "client, this machine on the lab's Docker network, is exempt from nginx's 10 r/s "
        "rate limit, which would otherwise answer most requests with 429). App containers "
        "are pinned to one core each (app1 core 0, app2 core 1). "
        + (
            f"While app1 serves alone, lb1 and the load generators run on core(s) "
            f"{','.join(map(str, res['away_from_app1']))}, away from app1's, as on machines of "
            "their own; for `fleet-onnx` they are not pinned."
            if res.get("away_from_app1")
            else "lb1 and wrk are not pinned: they share the cores with app1."
        ),
        "- Same host, model, weights, input size, threads: every single-host row runs on "
        "segserve-lab-app1 (1 core, 1 worker, 1 intra-op thread), "
        "lraspp_mobilenet_v3_large with the lab's weights file (untrained seeded init; the "
        "cost is the trained network's), a 520x520 JPEG "
        f"({res['image_bytes']:,} bytes, astronaut.jpg) posted raw. One stack at a time on "
        "the core: our service on app1 is stopped while an alternative runs there, and the "
        "alternative is stopped while ours runs. For `ours-*`, app2 is drained "
        "(`-e nginx_upstream_down_hosts=[app2]` on playbooks/lb.yml), so nginx sends "
        "everything to app1; `fleet-onnx` has both app hosts in rotation. The stacks are "
        "onnxruntime's (`uwsgi_app_backend=onnxruntime` pinned for the run), except "
        "`ours-torch` and `ours-chosen`, for which app1 is converged again with "
        "`uwsgi_app_backend=torch` and `=auto` (the role's default: the host times the "
        "candidates and serves the fastest that passes the agreement gate).",
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
        if backend == "chosen":
            continue
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


def open_table(res: dict, rows: dict) -> list[str]:
    open_rows = summarise_open(res.get("open_runs", []))
    if not open_rows:
        return []
    cores = {tuple(o["client_cores"]) for o in res["open_runs"] if "client_cores" in o}
    pinning = (
        f"pinned to core(s) {', '.join(','.join(map(str, c)) for c in cores)}, away from "
        "app1's; client CPU = its share of one core"
        if cores
        else "not pinned in this run: it shared the cores with app1, and its CPU was not recorded"
    )
    L = [
        "## Open loop: latency at fixed arrival rates\n",
        "wrk is a closed loop: a connection sends its next request only once the last one is "
        "answered, so a slow answer delays the requests behind it and its p99 hides queueing "
        "(coordinated omission). Here requests arrive at a fixed rate whatever the answers "
        "(molecule/cluster/files/loadgen.py, evenly spaced arrivals, a new connection per "
        f"request, 32 sending threads, {pinning}), at a share of the capacity the same "
        "repetition just measured at 1 connection (PNG), "
        f"{res.get('open_duration', res['duration'])} s per run (`--open-duration`). "
        "Evenly spaced, not Poisson: random arrivals at 80% of one worker would queue more. "
        "A run's p99 is only as good as its count of requests (sent / runs below): up to 100, "
        "it is the run's slowest request.\n",
        "| stack | share of capacity | offered /s | answered /s | p50 ms | p99 ms | p99 / p50 "
        "| max ms | failed / sent (runs) | client CPU | closed loop c=1 p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (name, share), o in sorted(open_rows.items()):
        closed = rows.get((name, "png", 1))
        beside = f"{closed['p50']:.0f} / {closed['p99']:.0f}" if closed else ""
        L.append(
            f"| {name} | {share:.0%} | {o['rate']:.2f} | {o['achieved']:.2f} | {o['p50']:.0f} "
            f"| {o['p99']:.0f} | {o['p99'] / o['p50']:.2f} | {o['max']:.0f} "
            f"| {o['failed']}/{o['sent']} ({o['n_runs']}) | {client_share(o['client_cpu'])} "
            f"| {beside} |"
        )
    L.append("")
    return L


def client_share(share: float) -> str:
    """The client's CPU share, or 'not recorded' (runs made before it was measured)."""
    return "not recorded" if share != share else f"{100 * share:.0f}%"


def choice_lines(res: dict) -> list[str]:
    record = res.get("choice_record")
    if not record:
        return []
    L = [
        f"## What app1 chose with `uwsgi_app_backend=auto`: {res.get('chosen')}\n",
        "The role timed every candidate on app1's own core with its worker layout "
        "(segserve-weights choose-backend) and recorded this; `ours-chosen` serves it.\n",
        "```",
        json.dumps({k: v for k, v in record.items() if k != "key"}, indent=1),
        "```",
        "",
    ]
    return L


def write_markdown(res: dict, path: Path) -> None:
    rows = rows_from_json(res)
    L = header(res) + ceiling_table(res) + http_table(rows, res["ceilings"])
    L.append(f"![throughput and p99]({path.with_suffix('.png').name})\n")
    L.extend(open_table(res, rows))
    L.extend(choice_lines(res))
    L.extend(targets(rows, res["ceilings"], summarise_open(res.get("open_runs", []))))
    L.extend(res.get("notes", []))
    path.write_text("\n".join(L) + "\n")


def write(res: dict, out: Path) -> None:
    """OUT.png and OUT.md from the run's record."""
    plot(rows_from_json(res), res["ceilings"], named(out, ".png"))
    write_markdown(res, named(out, ".md"))
