"""Memory of one warm torch worker on CUDA, per architecture: host RSS and GPU memory.

The GPU counterpart of bench/worker_rss.py (which measures CPU workers). For each
architecture the app serves: untrained seeded weights (the bench's multi-class test device);
then fresh processes that each build the app as one uWSGI worker does (SEGSERVE_DEVICE=cuda,
one torch thread), answer a 512x512 photo and a 1920x1280 JPEG (served at 520 short side,
so 520x780: the larger activations), and report their VmRSS, torch's peak reserved CUDA
memory, and the GPU memory nvidia-smi charges to the process (the CUDA context included).

On the GPU machine, with bench/gpu/check's Python path (its wheels installed with --target):
    python3 bench/gpu/worker_memory.py --out DIR [--reps 2]
--cpu rehearses the plumbing without a GPU (no GPU figures).
Writes DIR/gpu-worker-memory.{md,json}.
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

# One worker: build the app, answer the photos, print its memory. argv: arch, weights,
# sha256, device.
WORKER = """
import io, json, os, subprocess, sys
from PIL import Image
from segserve import create_app, samples
arch, weights, sha, device = sys.argv[1:5]
app = create_app({"BACKEND": "torch", "DEVICE": device, "TORCH_THREADS": 1,
                  "WEIGHTS_PATH": weights, "WEIGHTS_SHA256": sha})
big = io.BytesIO()
with Image.open(samples.path("coffee.jpg")) as img:
    img.convert("RGB").resize((1920, 1280)).save(big, format="JPEG", quality=90)
client = app.test_client()
for body in (samples.path("astronaut.jpg").read_bytes(), big.getvalue()):
    answer = client.post("/v1/segment", data=body,
                         headers={"Content-Type": "image/jpeg", "Accept": "image/png"})
    assert answer.status_code == 200, answer.data
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
result = {"rss_mb": rss / 1024, "reserved_mb": 0.0, "smi_mb": 0.0}
if device != "cpu":
    import torch
    result["reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        pid, used = (field.strip() for field in line.split(","))
        if int(pid) == os.getpid():
            result["smi_mb"] = float(used)
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="rehearse without a GPU")
    args = parser.parse_args()
    from segserve import weights as weights_mod
    from segserve.models import ARCHS

    device = "cpu" if args.cpu else "cuda"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            path = Path(tmp) / f"{arch}.pth"
            sha = weights_mod.save(weights_mod.init_payload(arch, 0, varied_masks=True), path)
            runs = []
            for _ in range(args.reps):
                out = subprocess.run(
                    [sys.executable, "-c", WORKER, arch, str(path), sha, device],
                    capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                if out.returncode != 0:
                    raise SystemExit(f"{arch}: the worker failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = {"arch": arch, "runs": runs}
            for key in ("rss_mb", "reserved_mb", "smi_mb"):
                row[key] = round(statistics.median(r[key] for r in runs))
            rows.append(row)
            print(row, flush=True)
    gpu = "no GPU (CPU rehearsal)"
    if not args.cpu:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}
    (out / "gpu-worker-memory.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# Memory of one torch worker on CUDA, per architecture",
        "",
        f"`bench/gpu/worker_memory.py --reps {args.reps}` on {gpu}, torch {meta['torch']}, "
        f"Python {meta['python']}: fresh processes build the app as a uWSGI worker does "
        "(SEGSERVE_DEVICE=cuda, one torch thread), answer a 512x512 photo and a 1920x1280 JPEG "
        "(served at 520x780), and report their memory; the median of the runs.",
        "",
        "| architecture | host RSS | GPU, nvidia-smi (context included) | GPU, torch peak "
        "reserved |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {r['arch']} | {r['rss_mb']} MiB | {r['smi_mb']} MiB | {r['reserved_mb']} MiB |"
            for r in rows
        ),
    ]
    (out / "gpu-worker-memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
