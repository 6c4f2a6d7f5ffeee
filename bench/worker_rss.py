"""Resident memory of one warm worker, per architecture and backend: the figures the
uwsgi_app role's preflight adds up to refuse a host whose models do not fit its memory
(roles/uwsgi_app/vars/main.yml, __uwsgi_app_worker_rss_mb).

    .venv/bin/python bench/worker_rss.py [--reps 3]

For each architecture the app serves: untrained seeded weights, converted once with
segserve-weights export-onnx; then, for each backend (torch, onnxruntime, openvino fp32), a
fresh process builds the app as one uWSGI worker does (CPU, one thread, 520 input), answers one
real photo, and reports its VmRSS. `--reps` processes per pair, the median kept. Runs in this
checkout's .venv, which holds every backend; a CPU host's virtualenv has no torch, and the
report says whether a worker loaded it. GPU workers (torch on CUDA) are not measured here.

Writes bench/results/worker_rss.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOOL = Path(sys.executable).parent / "segserve-weights"
BACKENDS = ("torch", "onnxruntime", "openvino")
# One worker: build the app, answer one photo, print its memory. argv: backend, weights,
# weights sha256, artifact.
WORKER = """
import json, sys
from segserve import create_app, samples
backend, weights, sha, onnx = sys.argv[1:5]
settings = {"BACKEND": backend, "DEVICE": "cpu", "TORCH_THREADS": 1, "WEIGHTS_SHA256": sha}
settings.update({"WEIGHTS_PATH": weights} if backend == "torch" else {"ONNX_PATH": onnx})
app = create_app(settings)
with open(samples.path("astronaut.jpg"), "rb") as f:
    answer = app.test_client().post("/v1/segment", data=f.read(),
                                    headers={"Content-Type": "image/jpeg", "Accept": "image/png"})
assert answer.status_code == 200, answer.data
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(json.dumps({"rss_mb": rss / 1024, "torch_loaded": "torch" in sys.modules}))
"""


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "app" / "src"))
    from segserve.models import ARCHS

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            weights = Path(tmp) / f"{arch}.pth"
            sha = run([str(TOOL), "init", "--arch", arch, "--seed", "0", str(weights)])
            onnx = Path(tmp) / f"{arch}.onnx"
            run([str(TOOL), "export-onnx", "--sha256", sha, str(weights), str(onnx)])
            for backend in BACKENDS:
                runs = [
                    json.loads(
                        run([sys.executable, "-c", WORKER, backend, str(weights), sha, str(onnx)])
                    )
                    for _ in range(args.reps)
                ]
                rows.append(
                    {
                        "arch": arch,
                        "backend": backend,
                        "rss_mb": round(statistics.median(r["rss_mb"] for r in runs)),
                        "runs_mb": [round(r["rss_mb"]) for r in runs],
                        "torch_loaded": runs[0]["torch_loaded"],
                    }
                )
                print(rows[-1], flush=True)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (x.split(":", 1)[1].strip() for x in cpuinfo if "model name" in x), platform.machine()
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "worker_rss.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1))
    lines = [
        "# Worker memory per architecture and backend",
        "",
        f"`bench/worker_rss.py --reps {args.reps}` on {cpu}, Python {platform.python_version()}:"
        " one fresh process per run builds the app as a uWSGI worker does (CPU, one thread,"
        " input 520), answers one photo, and reports its VmRSS; the median of the runs.",
        "The uwsgi_app role's preflight adds these up, a quarter more each, per host"
        " (`__uwsgi_app_worker_rss_mb`). Measured in the controller's virtualenv, which has"
        " torch installed; 'torch loaded' says whether the worker imported it (a CPU host's"
        " virtualenv has none). Torch on CUDA is not measured here (no GPU).",
        "",
        "| architecture | backend | worker RSS | runs | torch loaded |",
        "| --- | --- | ---: | --- | --- |",
    ]
    lines += [
        f"| {r['arch']} | {r['backend']} | {r['rss_mb']} MiB | {r['runs_mb']} |"
        f" {'yes' if r['torch_loaded'] else 'no'} |"
        for r in rows
    ]
    (RESULTS / "worker_rss.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
