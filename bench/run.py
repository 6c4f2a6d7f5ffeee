"""The served stack against its ceiling and its alternatives, side by side, on the lab.

    scripts/bench [--reps 3] [--duration 15] [--provisioning] [--skip-lab] [-e EXTRA_VAR ...]

One run: `scripts/lab up`, `site.yml` (with the benchmark client exempt from nginx's rate
limit), then, on the same app host (segserve-lab-app1: one pinned core, one uWSGI worker),
the same weights, input size (520) and torch threads (1):

1. the ceiling: the service's handler in-process (bench/ceiling.py), decode to PNG/JSON and
   inference alone, for the onnxruntime and torch backends;
2. our stack through nginx with only app1 in rotation (app2 drained), JSON and PNG, at
   concurrency 1, 2 and 4 (1 = the worker count), for the onnxruntime backend (the lab's)
   and the torch backend; and the whole fleet (app1 + app2) at 1, 2, 4 and 8;
3. the seeds' naive design (bench/naive_server.py: Flask's development server, the model
   built per request, JSON list of lists);
4. TorchServe 0.12 with its ImageSegmenter handler (bench/torchserve/handler.py).

The load generator is wrk with bench/wrk/post_image.lua, one thread, from this machine; its
CPU time is measured (rusage). Runs are interleaved (the stacks rotate each repetition) and
medians reported. Writes bench/results/serving.md, serving.png and serving.json; with
--provisioning also bench/results/provisioning.md (bench/provision.py; several fresh
converges, about 20 minutes more).

While an alternative runs on app1, our service there is stopped, and the other way round:
one stack at a time on the core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from provision import loadavg, molecule_running, sharing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LAB = ROOT / ".lab"
NETWORK = "segserve-lab"
APP1 = "segserve-lab-app1"
APP2 = "segserve-lab-app2"
LB1 = "segserve-lab-lb1"
BENCH_DIR = "/opt/segserve-bench"  # inside app1: the alternatives' venv, files, logs
SEGSERVE_VENV = "/opt/segserve/venv"
NAIVE_PORT = 5000
TS_PORT = 8080
# TorchServe and what its vision handlers import (captum), from PyPI, with their dependencies
# listed (installed with --no-deps: torch, numpy, pillow, packaging come from the service's
# venv through a .pth file, and pip's resolver spent minutes over torch's requirements).
TS_WHEELS = [
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "captum==0.9.0",
    "enum-compat==0.0.3",
    "matplotlib==3.11.2",
    "contourpy==1.3.3",
    "cycler==0.12.1",
    "fonttools==4.68.0",
    "kiwisolver==1.5.1",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "six==1.17.0",
    "tqdm==4.70.1",
    "psutil==7.2.2",
    "wheel==0.48.0",
    "pyyaml==6.0.3",
]
JDK = "openjdk-17-jre-headless"

LOG: list[str] = []


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    LOG.append(line)


def sh(cmd, *, check=True, capture=False, env=None, timeout=None) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    return subprocess.run(
        cmd,
        check=check,
        text=True,
        env=env,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )


def dexec(container: str, script: str, *, check=True, capture=True, timeout=None) -> str:
    out = sh(
        ["docker", "exec", container, "bash", "-c", script],
        check=False,
        capture=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"{container}: {script[:200]}\n{out.stdout[-3000:]}")
    return out.stdout


def container_ip(name: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "' + NETWORK + '").IPAddress}}'
    return sh(["docker", "inspect", "-f", fmt, name], capture=True).stdout.strip()


def subnet() -> str:
    out = sh(
        [
            "docker",
            "network",
            "inspect",
            NETWORK,
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        ],
        capture=True,
    ).stdout.split()
    return out[0]


def cpu_usage_ns(container: str) -> int:
    cid = sh(["docker", "inspect", "-f", "{{.Id}}", container], capture=True).stdout.strip()
    for path in (
        f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage",
        f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat",
    ):
        p = Path(path)
        if p.exists():
            text = p.read_text()
            if path.endswith("cpu.stat"):
                return int(re.search(r"usage_usec (\d+)", text).group(1)) * 1000
            return int(text)
    return 0


# -- the lab -------------------------------------------------------------------------------


def playbook(playbook: str, extra: list[str], *, limit: str | None = None) -> float:
    cmd = ["ansible-playbook", playbook, "-i", "inventory/lab"]
    for e in extra:
        cmd += ["-e", e]
    if limit:
        cmd += ["--limit", limit]
    started = time.perf_counter()
    out = sh(cmd, check=False, capture=True)
    took = time.perf_counter() - started
    name = Path(playbook).stem
    (LAB / "bench").mkdir(parents=True, exist_ok=True)
    (LAB / "bench" / f"{name}.log").write_text(out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}")
    recap = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+).*failed=(\d+)", out.stdout, re.M)
    log(f"{' '.join(shlex.quote(c) for c in cmd)}: {took:.0f} s, recap {recap}")
    return took


def segserve_unit(container: str, action: str) -> None:
    dexec(container, f"systemctl {action} segserve")
    if action in ("start", "restart"):
        wait_http(container, "http://127.0.0.1:8002/readyz", 180)


def wait_http(
    container: str, url: str, timeout_s: int, want: str = "", any_status: bool = False
) -> None:
    script = (
        "import sys,time,urllib.request,urllib.error\n"
        f"end=time.time()+{timeout_s}\n"
        "while time.time()<end:\n"
        "  try:\n"
        f"    body=urllib.request.urlopen({url!r},timeout=5).read().decode()\n"
        f"    if {want!r} in body: sys.exit(0)\n"
        f"  except urllib.error.HTTPError:\n    if {any_status!r}: sys.exit(0)\n"
        "  except Exception: pass\n"
        "  time.sleep(0.5)\n"
        "sys.exit(1)\n"
    )
    out = sh(["docker", "exec", container, "python3", "-c", script], check=False, capture=True)
    if out.returncode != 0:
        raise RuntimeError(f"{container}: {url} not ready in {timeout_s} s")


# -- the alternatives on app1 --------------------------------------------------------------


def setup_alternatives(image: Path) -> dict:
    """JDK, a venv that reuses the service's torch (a .pth file: no second 5 GB install),
    TorchServe, the model archive. Returns timings and versions."""
    t0 = time.perf_counter()
    dexec(APP1, f"mkdir -p {BENCH_DIR}/model-store {BENCH_DIR}/logs")
    for src in ("naive_server.py", "ceiling.py", "torchserve/handler.py", "torchserve/model.py"):
        sh(["docker", "cp", str(HERE / src), f"{APP1}:{BENCH_DIR}/{Path(src).name}"])
    sh(["docker", "cp", str(image), f"{APP1}:{BENCH_DIR}/image.jpg"])
    info: dict = {}
    if "ok" not in dexec(APP1, "java -version >/dev/null 2>&1 && echo ok", check=False):
        log(f"app1: installing {JDK} (Debian)")
        t = time.perf_counter()
        resolve_in_container(APP1, ["deb.debian.org"])
        dexec(
            APP1,
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {JDK} >/dev/null",
            timeout=900,
        )
        info["jdk_install_s"] = time.perf_counter() - t
    venv = f"{BENCH_DIR}/venv"
    if "ok" not in dexec(
        APP1,
        f"{venv}/bin/python -c 'import ts, yaml, captum' >/dev/null 2>&1 && echo ok",
        check=False,
    ):
        log("app1: TorchServe venv (wheels from PyPI; torch shared with the service's venv)")
        t = time.perf_counter()
        wheels = LAB / "bench" / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        platforms = []
        for tag in (
            "manylinux_2_28_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "any",
        ):
            platforms += ["--platform", tag]
        sh(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(wheels),
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                *platforms,
                *TS_WHEELS,
            ],
            capture=True,
        )
        sh(["docker", "cp", str(wheels), f"{APP1}:{BENCH_DIR}/"])
        dexec(
            APP1,
            f"""set -e
python3 -m venv {venv}
site=$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo {SEGSERVE_VENV}/lib/python3.11/site-packages > $site/segserve-venv.pth
{venv}/bin/pip install -q --disable-pip-version-check --no-index --no-deps \\
  --find-links {BENCH_DIR}/wheels {" ".join(TS_WHEELS)}
""",
            timeout=900,
        )
        info["torchserve_install_s"] = time.perf_counter() - t
    # The archive: the service's weights file's state_dict, TorchServe eager mode.
    env = read_env()
    t = time.perf_counter()
    dexec(
        APP1,
        f"""set -e
cd {BENCH_DIR}
{venv}/bin/python -c "import torch, sys; w = torch.load(sys.argv[1], weights_only=True); \\
  torch.save(w['state_dict'], 'state_dict.pth')" {env["SEGSERVE_WEIGHTS_PATH"]}
rm -f model-store/seg.mar
{venv}/bin/torch-model-archiver --model-name seg --version 1.0 --model-file model.py \
  --serialized-file state_dict.pth --handler handler.py --export-path model-store
cat > config.properties <<EOF
inference_address=http://0.0.0.0:{TS_PORT}
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
default_workers_per_model=1
disable_system_metrics=true
install_py_dep_per_model=false
model_store={BENCH_DIR}/model-store
EOF
""",
    )
    info["archive_s"] = time.perf_counter() - t
    info["versions"] = dexec(
        APP1,
        f"""
echo torchserve $({venv}/bin/pip show torchserve 2>/dev/null | sed -n 's/^Version: //p')
{venv}/bin/python -c 'import torch, torchvision, PIL; \\
  print("torch", torch.__version__, "torchvision", torchvision.__version__, "PIL", PIL.__version__)'
java -version 2>&1 | head -1
{SEGSERVE_VENV}/bin/python -c 'from importlib.metadata import version as v; \\
  print(*(f"{{p}} {{v(p)}}" for p in ("onnxruntime", "flask", "pyuwsgi")))'
""",
        check=False,
    ).strip()
    info["setup_s"] = time.perf_counter() - t0
    return info


def resolve_in_container(container: str, names: list[str]) -> None:
    """Lab containers may fail to resolve names (Docker's embedded DNS cannot always reach the
    machine's resolver); resolve them here and pin them in the container's /etc/hosts."""
    import socket

    for name in names:
        if dexec(container, f"getent hosts {name} >/dev/null && echo ok", check=False).strip():
            continue
        address = socket.gethostbyname(name)
        dexec(container, f"echo '{address} {name}' >> /etc/hosts")
        log(f"{container}: {name} pinned to {address} in /etc/hosts (no DNS in the container)")


_ENV: dict[str, str] = {}


def read_env() -> dict[str, str]:
    if not _ENV:
        for line in dexec(APP1, "cat /etc/segserve/segserve.env").splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                _ENV[k] = v
    return _ENV


def start_naive() -> None:
    env = read_env()
    dexec(
        APP1,
        f"cd {BENCH_DIR} || exit 1; OMP_NUM_THREADS=1 setsid nohup {SEGSERVE_VENV}/bin/python "
        f"naive_server.py {env['SEGSERVE_WEIGHTS_PATH']} --port {NAIVE_PORT} "
        f"> logs/naive.log 2>&1 < /dev/null & echo $! > {BENCH_DIR}/naive.pid",
    )
    wait_http(APP1, f"http://127.0.0.1:{NAIVE_PORT}/infer", 60, any_status=True)
    warm(f"http://{container_ip(APP1)}:{NAIVE_PORT}/infer", 2)


def stop_pidfile(name: str) -> None:
    dexec(
        APP1,
        f"if [ -f {BENCH_DIR}/{name}.pid ]; then kill $(cat {BENCH_DIR}/{name}.pid) "
        f"2>/dev/null; rm -f {BENCH_DIR}/{name}.pid; fi; sleep 1",
        check=False,
    )


def start_torchserve() -> float:
    t = time.perf_counter()
    dexec(
        APP1,
        f"cd {BENCH_DIR} || exit 1; rm -rf logs/ts; mkdir -p logs/ts; "
        f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LOG_LOCATION={BENCH_DIR}/logs/ts "
        f"METRICS_LOCATION={BENCH_DIR}/logs/ts PATH={BENCH_DIR}/venv/bin:$PATH "
        f"setsid nohup {BENCH_DIR}/venv/bin/torchserve --foreground --ncs "
        f"--disable-token-auth --ts-config config.properties --models seg=seg.mar "
        f"> logs/torchserve.log 2>&1 < /dev/null & echo $! > {BENCH_DIR}/torchserve.pid",
    )
    wait_http(APP1, "http://127.0.0.1:8081/models/seg", 240, want='"status": "READY"')
    took = time.perf_counter() - t
    warm(f"http://{container_ip(APP1)}:{TS_PORT}/predictions/seg", 3)
    return took


def stop_torchserve() -> None:
    """`torchserve --stop` (its own pid file), then make sure no frontend or worker is left."""
    dexec(APP1, f"PATH={BENCH_DIR}/venv/bin:$PATH torchserve --stop", check=False)
    stop_pidfile("torchserve")
    for i in range(40):
        left = dexec(APP1, "pgrep -x java; pgrep -f model_service_worker", check=False).split()
        if not left:
            return
        if i == 20:  # still there after 20 s: end exactly those processes
            dexec(APP1, f"kill -9 {' '.join(left)}", check=False)
        time.sleep(1)


def warm(url: str, n: int) -> None:
    data = IMAGE.read_bytes()
    for _ in range(n):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()


# -- load ----------------------------------------------------------------------------------


def wrk(url: str, conns: int, duration: int, accept: str, watch: list[str]) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--timeout",
        "60s",
        "-s",
        str(HERE / "wrk" / "post_image.lua"),
        url,
        "--",
        str(IMAGE),
        accept,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = {c: cpu_usage_ns(c) for c in watch}
    load_before = loadavg()
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = {c: cpu_usage_ns(c) for c in watch}
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON ") :])
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r.update(
        url=url,
        conns=conns,
        accept=accept,
        wall_s=wall,
        images_per_s=r["ok"] / r["duration_s"],
        bytes_per_response=(r["body_bytes"] / r["ok"]) if r["ok"] else 0,
        errors=r["non2xx"] + sum(r["socket_errors"].values()),
        wrk_cpu_s=wrk_cpu,
        wrk_cpu_share=wrk_cpu / wall,
        container_cpu_share={c: (cpu_after[c] - cpu_before[c]) / 1e9 / wall for c in watch},
        load_before=load_before,
        load_after=loadavg(),
        command=" ".join(cmd),
    )
    return r


def run_ceiling(backend: str, n: int) -> dict:
    out = dexec(
        APP1,
        f"cd {BENCH_DIR} && {SEGSERVE_VENV}/bin/python ceiling.py image.jpg "
        f"--backend {backend} -n {n} 2>/dev/null",
        timeout=900,
    )
    line = next(x for x in out.splitlines() if x.startswith("CEILJSON "))
    return json.loads(line[len("CEILJSON ") :])


# -- report --------------------------------------------------------------------------------


def med(values):
    return statistics.median(values) if values else float("nan")


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


STACK_LABELS = {
    "ours-onnx": "ours: nginx -> uWSGI, onnxruntime (app1 only)",
    "ours-torch": "ours: nginx -> uWSGI, torch eager (app1 only)",
    "fleet-onnx": "ours: nginx -> app1 + app2, onnxruntime",
    "torchserve": "TorchServe 0.12, torch eager (app1)",
    "naive": "seed design: Flask dev server, model per request, JSON (app1)",
}


def plot(rows: dict, ceilings: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for stack in STACK_LABELS:
        for fmt, style in (("png", "-o"), ("json", "--s")):
            pts = sorted((k[2], v) for k, v in rows.items() if k[0] == stack and k[1] == fmt)
            if not pts:
                continue
            xs = [c for c, _ in pts]
            label = f"{stack} {fmt}"
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
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
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


def fmt_row(r: dict, ceiling: float | None) -> str:
    ratio = f"{r['images_per_s'] / ceiling:.2f}" if ceiling else ""
    return (
        f"| {r['stack']} | {r['fmt']} | {r['conns']} | {r['images_per_s']:.2f} | "
        f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['errors']}/{r['requests']} | "
        f"{r['bytes']:,.0f} | {ratio} | {100 * r['wrk_cpu']:.1f}% | "
        f"{100 * r['app_cpu']:.0f}% | {100 * r['lb_cpu']:.0f}% | "
        f"{', '.join(map(str, r['images_per_s_each']))} |"
    )


def targets(rows: dict, c_onnx: float | None, c_torch: float | None) -> list[str]:
    """The issue's targets, computed from the rows (medians)."""
    L = ["## Targets\n", "| target | measured | met |", "|---|---|---|"]

    def get(stack, fmt, conns):
        return rows.get((stack, fmt, conns))

    for stack, ceiling in (("ours-onnx", c_onnx), ("ours-torch", c_torch)):
        r = get(stack, "png", 1)
        if r and ceiling:
            ratio = r["images_per_s"] / ceiling
            L.append(
                f"| {stack} >= 90% of the in-process ceiling at concurrency = workers (1) | "
                f"{r['images_per_s']:.2f} / {ceiling:.2f} images/s = {100 * ratio:.0f}% | "
                f"{'yes' if ratio >= 0.9 else f'no, {100 * (0.9 - ratio):.0f} points short'} |"
            )
    for stack in ("ours-onnx", "ours-torch"):
        for conns in (1, 2, 4):
            ours, ts = get(stack, "png", conns), get("torchserve", "png", conns)
            if ours and ts:
                ahead = ours["images_per_s"] > ts["images_per_s"] and ours["p99"] <= ts["p99"]
                L.append(
                    f"| {stack} ahead of TorchServe at {conns} connection(s), PNG | "
                    f"{ours['images_per_s']:.2f} vs {ts['images_per_s']:.2f} images/s "
                    f"({ours['images_per_s'] / ts['images_per_s']:.2f}x), p99 {ours['p99']:.0f} "
                    f"vs {ts['p99']:.0f} ms | {'yes' if ahead else 'no'} |"
                )
    png, js = get("ours-onnx", "png", 1), get("ours-onnx", "json", 1)
    if png and js:
        share = png["bytes"] / js["bytes"]
        L.append(
            f"| PNG responses < 1% of the JSON bytes | {png['bytes']:,.0f} / {js['bytes']:,.0f} "
            f"bytes = {100 * share:.2f}% | {'yes' if share < 0.01 else 'no'} |"
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


def write_report(res: dict, path: Path) -> None:
    rows = {tuple(k.split("|")[:2]) + (int(k.split("|")[2]),): v for k, v in res["rows"].items()}
    ceil = res["ceilings"]
    c_onnx = ceil.get("onnxruntime", {}).get("png", {}).get("images_per_s")
    c_torch = ceil.get("torch", {}).get("png", {}).get("images_per_s")
    c_onnx_json = ceil.get("onnxruntime", {}).get("json", {}).get("images_per_s")
    c_torch_json = ceil.get("torch", {}).get("json", {}).get("images_per_s")

    def ceiling_for(stack, fmt):
        if stack == "ours-onnx":
            return c_onnx if fmt == "png" else c_onnx_json
        if stack in ("ours-torch", "torchserve"):
            return c_torch if fmt == "png" else c_torch_json
        if stack == "naive":
            return c_torch_json
        if stack == "fleet-onnx" and c_onnx:
            return 2 * (c_onnx if fmt == "png" else c_onnx_json)
        return None

    L = []
    L.append("# Serving: our stack against its ceiling and its alternatives\n")
    L.append(
        f"- Command: `{res['command']}` ({res['started']} UTC; {res['run_minutes']:.0f} min "
        "in all, lab and provisioning included)"
    )
    L.append(
        f"- Machine: {res['machine']}; {res['sharing']}; load average {res['load_start']} at"
        f" the start, {res['load_end']} at the end."
    )
    L.append(
        "- Lab: `scripts/lab up`; `ansible-playbook site.yml -i inventory/lab "
        f"{' '.join('-e ' + shlex.quote(e) for e in res['extra_vars'])}` (the benchmark "
        "client, this machine on the lab's Docker network, is exempt from nginx's 10 r/s "
        "rate limit, which would otherwise answer most requests with 429). App containers "
        "are pinned to one core each (app1 core 0, app2 core 1); lb1 and wrk are not pinned."
    )
    L.append(
        f"- Same host, model, weights, input size, threads: every single-host row runs on "
        f"segserve-lab-app1 (1 core, 1 worker, 1 intra-op thread), "
        "lraspp_mobilenet_v3_large with the lab's weights file (untrained seeded init; the "
        "cost is the trained network's), a 520x520 JPEG "
        f"({res['image_bytes']:,} bytes, astronaut.jpg) posted raw. One stack at a time on "
        "the core: our service on app1 is stopped while an alternative runs there, and the "
        "alternative is stopped while ours runs. For `ours-*`, app2 is drained "
        "(`-e nginx_upstream_down_hosts=[app2]` on playbooks/lb.yml), so nginx sends "
        "everything to app1; `fleet-onnx` has both app hosts in rotation."
    )
    L.append(
        f"- Load: wrk 4.1 (Debian) with `bench/wrk/post_image.lua`, 1 thread, "
        f"{res['duration']} s per run, {res['reps']} interleaved repetitions (the order of "
        "the stacks rotates each repetition); figures are medians over repetitions, errors "
        "are summed. Example: "
        f"`{res['example_wrk']}`"
    )
    L.append(f"- Versions on app1: {res['setup'].get('versions', '').replace(chr(10), '; ')}")
    L.append("")
    L.append("## Ceiling: the service's handler in-process on app1 (1 core, 1 thread)\n")
    L.append(
        "| backend | decode to PNG, images/s | decode to JSON, images/s | inference alone, "
        "images/s | ms per image (PNG / inference) | PNG bytes | JSON bytes |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for backend, c in ceil.items():
        L.append(
            f"| {backend} | {c['png']['images_per_s']:.2f} | {c['json']['images_per_s']:.2f} | "
            f"{c['inference']['images_per_s']:.2f} | {c['png']['median_ms']:.1f} / "
            f"{c['inference']['median_ms']:.1f} | {c['png_bytes']:,} | {c['json_bytes']:,} |"
        )
    L.append(
        f"\n(medians over {res['reps']} repetitions of {res['ceiling_n']} images each; each "
        "repetition ran between the HTTP runs, with nothing else on app1's core.)\n"
    )
    L.append("## Through HTTP\n")
    L.append(
        "images/s counts 2xx answers only; latency is wrk's, from this machine; errors = "
        "non-2xx answers + socket errors, over all repetitions; bytes = response body per "
        "answer; ratio = images/s over the ceiling of the same backend and format (fleet: "
        "over twice the 1-core ceiling); CPU columns are shares of one core during the run "
        "(wrk: its own rusage; app1 and lb1: their containers' cgroup).\n"
    )
    L.append(
        "| stack | format | conns | images/s | p50 ms | p95 ms | p99 ms | errors | "
        "bytes | ratio to ceiling | wrk CPU | app1 CPU | lb1 CPU | images/s each run |"
    )
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for stack in STACK_LABELS:
        for fmt in ("png", "json"):
            for key in sorted(k for k in rows if k[0] == stack and k[1] == fmt):
                L.append(fmt_row(rows[key], ceiling_for(stack, fmt)))
    L.append("")
    L.append("Stacks: " + "; ".join(f"`{k}` = {v}" for k, v in STACK_LABELS.items()) + ".\n")
    L.append("![throughput and p99](serving.png)\n")
    L.extend(targets(rows, c_onnx, c_torch))
    L.extend(res.get("notes", []))
    path.write_text("\n".join(L) + "\n")


# -- main ----------------------------------------------------------------------------------


def make_image(path: Path, size: int = 520) -> Path:
    sys.path.insert(0, str(ROOT / "app" / "src"))
    from PIL import Image

    from segserve import samples

    with Image.open(samples.path("astronaut.jpg")) as photo:
        image = photo.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
    return path


IMAGE = LAB / "bench" / "astronaut-520.jpg"


def main() -> int:
    global IMAGE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--ceiling-n", type=int, default=40)
    ap.add_argument("--skip-lab", action="store_true", help="do not run scripts/lab up")
    ap.add_argument("--no-converge", action="store_true", help="skip site.yml (converged)")
    ap.add_argument(
        "--provisioning",
        action="store_true",
        help="also time fresh and idempotent converges (bench/provision.py)",
    )
    ap.add_argument("--stacks", default="fleet-onnx,ours-onnx,naive,torchserve,ours-torch")
    ap.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        help="extra vars for every converge (to measure a role setting)",
    )
    ap.add_argument("--out", default=str(RESULTS / "serving"), help="report path without suffix")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from .json")
    args = ap.parse_args()
    if args.report_only:
        out = Path(args.out)
        res = json.loads(out.with_suffix(".json").read_text())
        rows = {
            tuple(k.split("|")[:2]) + (int(k.split("|")[2]),): v for k, v in res["rows"].items()
        }
        plot(rows, res["ceilings"], out.with_suffix(".png"))
        write_report(res, out.with_suffix(".md"))
        return 0
    stacks = args.stacks.split(",")
    os.chdir(ROOT)
    started = time.time()
    res: dict = {
        "command": "scripts/bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": dt.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
        "load_start": loadavg(),
        "reps": args.reps,
        "duration": args.duration,
        "ceiling_n": args.ceiling_n,
        "runs": [],
        "ceiling_runs": [],
        "notes": [],
    }
    molecule_seen: list[str] = []
    checks = [0]

    def note_molecule():
        checks[0] += 1
        if molecule_running():
            molecule_seen.append(time.strftime("%H:%M:%S"))

    if args.provisioning:
        sh([sys.executable, str(HERE / "provision.py")])
    if not args.skip_lab:
        sh(["scripts/lab", "up"])
    IMAGE = make_image(IMAGE)
    res["image_bytes"] = IMAGE.stat().st_size
    bench_vars = [json.dumps({"nginx_rate_limit_exempt": [subnet()]})] + args.extra_vars
    res["extra_vars"] = bench_vars
    if not args.no_converge:
        res["converge_s"] = playbook("site.yml", bench_vars)
    lb = container_ip(LB1)
    app1 = container_ip(APP1)
    res["setup"] = setup_alternatives(IMAGE)
    log(f"setup: {res['setup']}")

    def http_runs(stack: str, url: str, fmts: list[str], conns: list[int], rep: int):
        for fmt in fmts:
            for c in conns:
                note_molecule()
                accept = "image/png" if fmt == "png" else "application/json"
                r = wrk(url, c, args.duration, accept, [APP1, LB1])
                r.update(stack=stack, fmt=fmt, rep=rep)
                res["runs"].append(r)
                log(
                    f"{stack} {fmt} c={c}: {r['images_per_s']:.2f} img/s p99 "
                    f"{r['latency_ms']['p99']:.0f} ms errors {r['errors']} "
                    f"wrk {100 * r['wrk_cpu_share']:.1f}% load {r['load_after']}"
                )
                res.setdefault("example_wrk", r["command"])

    seg_url = f"http://{lb}/v1/segment"

    # 1. The fleet: both app hosts in rotation.
    if "fleet-onnx" in stacks:
        for rep in range(args.reps):
            http_runs("fleet-onnx", seg_url, ["png", "json"], [1, 2, 4, 8], rep)

    # 2. One host: drain app2; the stacks take turns on app1's core.
    single = [s for s in stacks if s in ("ours-onnx", "naive", "torchserve", "ceiling")]
    playbook("playbooks/lb.yml", bench_vars + ['{"nginx_upstream_down_hosts": ["app2"]}'])
    turns = ["ceiling"] + single
    for rep in range(args.reps):
        order = turns[rep % len(turns) :] + turns[: rep % len(turns)]
        for stack in order:
            if stack == "ours-onnx":
                segserve_unit(APP1, "start")
                warm(seg_url, 2)
                http_runs("ours-onnx", seg_url, ["png", "json"], [1, 2, 4], rep)
                continue
            segserve_unit(APP1, "stop")
            if stack == "ceiling":
                for backend in ("onnxruntime", "torch"):
                    c = run_ceiling(backend, args.ceiling_n)
                    c["rep"] = rep
                    res["ceiling_runs"].append(c)
                    log(
                        f"ceiling {backend}: png {c['png']['images_per_s']:.2f} img/s, "
                        f"inference {c['inference']['images_per_s']:.2f}"
                    )
            elif stack == "naive":
                start_naive()
                try:
                    naive_url = f"http://{app1}:{NAIVE_PORT}/infer"
                    http_runs("naive", naive_url, ["json"], [1, 2, 4], rep)
                finally:
                    stop_pidfile("naive")
            elif stack == "torchserve":
                took = start_torchserve()
                res.setdefault("torchserve_start_s", []).append(took)
                try:
                    http_runs(
                        "torchserve",
                        f"http://{app1}:{TS_PORT}/predictions/seg",
                        ["png"],
                        [1, 2, 4],
                        rep,
                    )
                finally:
                    stop_torchserve()
    segserve_unit(APP1, "start")

    # 3. Our stack with the torch backend on app1 (app2 still drained).
    if "ours-torch" in stacks:
        playbook("playbooks/app.yml", bench_vars + ["uwsgi_app_backend=torch"], limit="app1,lb1")
        for rep in range(args.reps):
            http_runs("ours-torch", seg_url, ["png", "json"], [1, 2, 4], rep)
        playbook("playbooks/app.yml", bench_vars, limit="app1,lb1")
    # Back to both hosts in rotation.
    playbook("playbooks/lb.yml", bench_vars)

    # Summaries.
    ceilings = {}
    for backend in ("onnxruntime", "torch"):
        cs = [c for c in res["ceiling_runs"] if c["backend"] == backend]
        if cs:
            ceilings[backend] = {
                part: {k: med([c[part][k] for c in cs]) for k in ("images_per_s", "median_ms")}
                for part in ("png", "json", "inference")
            }
            ceilings[backend]["png_bytes"] = cs[0]["png_bytes"]
            ceilings[backend]["json_bytes"] = cs[0]["json_bytes"]
    rows = summarise(res["runs"])
    res["ceilings"] = ceilings
    res["rows"] = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rows.items()}
    res["load_end"] = loadavg()
    res["sharing"] = sharing(molecule_seen, checks[0])
    res["machine"] = machine()
    res["run_minutes"] = (time.time() - started) / 60
    res["log"] = LOG
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    plot(rows, ceilings, out.with_suffix(".png"))
    write_report(res, out.with_suffix(".md"))
    log(f"wrote {out}.md, .png, .json in {res['run_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
