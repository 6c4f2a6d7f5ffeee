"""What a CPU app host carries, before and after it went without torch, side by side in one run.

    .venv/bin/python bench/footprint.py [--before REV] [--reps 3] [--converge]

Before: the app and app/requirements.lock at REV (default d72038e, the last commit whose CPU
hosts installed torch). After: the app of this working tree and app/requirements-cpu.lock,
which CPU hosts serving the converted model now install. For each:

- a fresh virtualenv made with the hosts' interpreter (/usr/bin/python3) from the lab's
  wheelhouse (`scripts/lab wheelhouse`), no index, hashes required, as the role installs it:
  the install's seconds, the packages and the size on disk;
- the service in it as a CPU host runs it (onnxruntime fp32, one thread; the lab's weights
  converted once here by .venv's segserve-weights; before, with the weights file too, which it
  loaded with torch): seconds from a new process to ready, and the resident memory of that
  process after one real photo, as one uWSGI worker has it; `--reps` starts, interleaved.

With `--converge`, also the lab's fresh converge as a new user's inventory has it
(tests/new_user/converge): at REV (a git worktree sharing this checkout's .lab and .venv), then
at the working tree, one after the other.

Writes bench/results/footprint.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / ".lab"
WHEELHOUSE = LAB / "wheelhouse"
WEIGHTS = LAB / "weights" / "lraspp_mobilenet_v3_large-init-seed0.pth"
RESULTS = ROOT / "bench" / "results"
HOST_PYTHON = "/usr/bin/python3"
BEFORE = "d72038e"
# One worker of a CPU host: start, ready, one photo, its memory. Printed as one JSON line.
# argv: the artifact, the weights' sha256, and the weights file where the app loads it.
WORKER = """
import json, sys, time
started = time.perf_counter()
from segserve import create_app, samples
settings = {"BACKEND": "onnxruntime", "DEVICE": "cpu", "TORCH_THREADS": 1,
            "ONNX_PATH": sys.argv[1], "WEIGHTS_SHA256": sys.argv[2]}
if len(sys.argv) > 3:
    settings["WEIGHTS_PATH"] = sys.argv[3]
app = create_app(settings)
ready = time.perf_counter() - started
with open(samples.path("astronaut.jpg"), "rb") as f:
    answer = app.test_client().post("/v1/segment", data=f.read(),
                                    headers={"Content-Type": "image/jpeg", "Accept": "image/png"})
assert answer.status_code == 200, answer.data
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(json.dumps({"ready_s": ready, "rss_mb": rss / 1024,
                  "torch_loaded": "torch" in sys.modules}))
"""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def build_venv(lock: Path, app: Path, where: Path) -> dict:
    started = time.perf_counter()
    sh([HOST_PYTHON, "-m", "venv", str(where)])
    pip = [str(where / "bin" / "pip"), "install", "-q", "--no-index", "--disable-pip-version-check"]
    pip += ["--find-links", str(WHEELHOUSE)]
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull}
    sh([*pip, "--require-hashes", "-r", str(lock)], env=env)
    seconds = time.perf_counter() - started
    sh([*pip, "--no-deps", str(app)], env=env)
    listed = json.loads(sh([str(where / "bin" / "pip"), "list", "--format=json"]).stdout)
    size = int(sh(["du", "-sm", str(where)]).stdout.split()[0])
    return {"install_s": round(seconds, 1), "packages": len(listed), "size_mb": size}


def convert(out: Path) -> tuple[str, str]:
    tool = Path(sys.executable).parent / "segserve-weights"
    sha = sh([str(tool), "export-onnx", "--if-changed", str(WEIGHTS), str(out)]).stdout.strip()
    weights_sha = (WEIGHTS.parent / (WEIGHTS.name + ".sha256")).read_text().strip()
    return sha, weights_sha


def checkout_of(rev: str, where: Path) -> Path:
    """The tree at `rev`, in a git worktree sharing this checkout's .lab and .venv."""
    sh(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev])
    for shared in (".lab", ".venv"):
        (where / shared).symlink_to(ROOT / shared)
    return where


def converge_seconds(checkout: Path) -> dict:
    """tests/new_user/converge in `checkout`; its report's first and second converge."""
    sh([str(checkout / "tests" / "new_user" / "converge")], timeout=3600)
    report = (checkout / "tests" / "results" / "new-user.md").read_text()
    first = re.search(r"\| first converge \| (\d+) s", report)
    second = re.search(r"\| second converge \| (\d+) s", report)
    return {"first_s": int(first.group(1)), "second_s": int(second.group(1))}


def machine() -> str:
    cpu = sh(["lscpu"]).stdout
    model = re.search(r"Model name:\s*(.*)", cpu).group(1).strip()
    flags = re.search(r"Flags:\s*(.*)", cpu).group(1).split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    noted = ", ".join(wanted) or "none of avx2/avx512/amx"
    return f"{model}, {os.cpu_count()} cores, flags of note: {noted}"


def report(res: dict) -> str:
    rows = res["venvs"]
    base, cpu = rows.values()
    lines = [
        "# A CPU app host's footprint: with torch and without it",
        "",
        f"Measured by `bench/footprint.py` on {res['date']} ({res['machine']}; Python "
        f"{res['python']}, the lab hosts' Debian 12 interpreter). One run, side by side.",
        "",
        "| virtualenv | packages | size | install from the wheelhouse | worker ready | worker RSS "
        "after one photo | torch imported |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['packages']} | {r['size_mb']} MB | {r['install_s']} s | "
            f"{r['ready_s']:.2f} s | {r['rss_mb']:.0f} MB | {r['torch_loaded']} |"
        )
    lines += [
        "",
        f"- Size: **{cpu['size_mb'] / base['size_mb']:.3f}x** ({cpu['size_mb']} against "
        f"{base['size_mb']} MB; the target is at most 600 MB).",
        f"- Install: {cpu['install_s'] / base['install_s']:.2f}x the seconds; worker ready: "
        f"{cpu['ready_s'] / base['ready_s']:.2f}x; worker memory: "
        f"{cpu['rss_mb'] / base['rss_mb']:.2f}x.",
        f"- Worker figures are medians of {res['reps']} interleaved starts, each a new process "
        "serving onnxruntime fp32 (one thread) from the same artifact. Before, the worker also "
        "loaded the weights file with torch (to check it and describe the model); after, the "
        "artifact describes the model and torch is not installed.",
    ]
    if "converge" in res:
        c = res["converge"]
        lines += [
            "",
            "## The lab's fresh converge (tests/new_user/converge)",
            "",
            "| code | first converge | second converge |",
            "| --- | --- | --- |",
        ]
        for label, r in c.items():
            lines.append(f"| {label} | {r['first_s']} s | {r['second_s']} s |")
        before, after = c.values()
        lines += [
            "",
            f"First converge: **{after['first_s'] / before['first_s']:.2f}x** the time "
            "(the target is at most 0.5x).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="A CPU app host's footprint, before and after.")
    ap.add_argument("--before", metavar="REV", default=BEFORE)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--converge", action="store_true")
    args = ap.parse_args()
    for need in (WHEELHOUSE, WEIGHTS):
        if not need.exists():
            sys.exit(f"{need} is missing: run scripts/lab wheelhouse weights first")
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "python": sh(
            [HOST_PYTHON, "-c", "import platform; print(platform.python_version())"]
        ).stdout.strip(),
        "reps": args.reps,
        "venvs": {},
    }
    with tempfile.TemporaryDirectory(prefix="segserve-footprint-") as tmp:
        tmp = Path(tmp)
        artifact, weights_sha = convert(tmp / "model.onnx")
        before = checkout_of(args.before, tmp / "before")
        try:
            label = sh(["git", "-C", str(before), "log", "-1", "--format=%h"]).stdout.strip()
            variants = {
                f"before ({label}): requirements.lock": (before, [str(WEIGHTS)]),
                "after: requirements-cpu.lock": (ROOT, []),
            }
            locks = {
                "before": before / "app" / "requirements.lock",
                "after": ROOT / "app" / "requirements-cpu.lock",
            }
            venvs = {}
            for (name, (tree, _)), lock in zip(variants.items(), locks.values(), strict=True):
                print(f"building the virtualenv {name}", flush=True)
                venvs[name] = tmp / name.split(":")[0].split()[0]
                res["venvs"][name] = build_venv(lock, tree / "app", venvs[name])
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            names = list(variants)
            for rep in range(args.reps):
                for name in names[rep % 2 :] + names[: rep % 2]:
                    python = str(venvs[name] / "bin" / "python")
                    argv = [python, "-c", WORKER, str(tmp / "model.onnx"), weights_sha]
                    out = sh(argv + variants[name][1], cwd=tmp)
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            for name, rs in runs.items():
                res["venvs"][name].update(
                    ready_s=statistics.median(r["ready_s"] for r in rs),
                    rss_mb=statistics.median(r["rss_mb"] for r in rs),
                    torch_loaded=any(r["torch_loaded"] for r in rs),
                )
            res["artifact_sha256"] = artifact
            if args.converge:
                res["converge"] = {
                    f"before ({label})": converge_seconds(before),
                    "after (this working tree)": converge_seconds(ROOT),
                }
        finally:
            sh(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)])
    res["platform"] = platform.platform()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "footprint.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "footprint.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
