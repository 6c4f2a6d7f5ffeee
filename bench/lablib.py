"""Helpers for driving the lab from this machine: commands here and in its containers,
addresses, CPU accounting, converges, our service's unit, and the load generator.

What each benchmarked stack does with them is in stacks.py; this module knows the lab, not
the stacks.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hostenv import BENCH_WEIGHTS, ENV_FILE, parse_env
from provision import loadavg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LAB = ROOT / ".lab"
NETWORK = "segserve-lab"
APP1 = "segserve-lab-app1"
APP2 = "segserve-lab-app2"
LB1 = "segserve-lab-lb1"
MON1 = "segserve-lab-mon1"
BENCH_DIR = "/opt/segserve-bench"  # inside app1: the alternatives' venv, files, logs
SEGSERVE_VENV = "/opt/segserve/venv"
# The posted image: written by make_image, read by warm and wrk, copied into app1.
IMAGE = LAB / "bench" / "astronaut-520.jpg"
# The open-loop load generator: the fault suite's (standard library only).
LOADGEN = ROOT / "molecule" / "cluster" / "files" / "loadgen.py"

# Extra vars for playbooks/lb.yml that take app2 out of nginx's rotation: every request to app1.
DRAIN_APP2 = json.dumps({"nginx_upstream_down_hosts": ["app2"]})

# Every log line of the run, kept for the results' .json.
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
    """CPU time the container has used, from its cgroup (v1 or v2); 0 if neither is found."""
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


def exempt_this_machine() -> str:
    """Extra vars that exempt this machine (the lab's subnet) from nginx's per-address limits,
    which would otherwise answer a load test with 429."""
    return json.dumps({"nginx_rate_limit_exempt": [subnet()]})


def container_cores(container: str) -> set[int]:
    """The cores a container is pinned to (its cpuset: "0", "0-3", "0,2"), or every core of
    this machine when it is not pinned."""
    spec = sh(
        ["docker", "inspect", "-f", "{{.HostConfig.CpusetCpus}}", container], capture=True
    ).stdout.strip()
    cores: set[int] = set()
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores or set(range(os.cpu_count() or 1))


def away_from_app1() -> list[int]:
    """This machine's cores that app1 is not pinned to. While app1 serves alone, the load
    generators and lb1 run there, as a client and a load balancer would on machines of their
    own: otherwise nginx's and the client's work per request lands on the core being measured
    and counts against the stack under test. On a machine with one core, that core."""
    mine = sorted(os.sched_getaffinity(0))
    return sorted(set(mine) - container_cores(APP1)) or mine


def pin_container(container: str, cores: list[int] | None) -> None:
    """Pin a container to `cores`, or back to every core of this machine with None."""
    spec = ",".join(map(str, cores)) if cores else f"0-{(os.cpu_count() or 1) - 1}"
    sh(["docker", "update", "--cpuset-cpus", spec, container], capture=True)
    log(f"{container}: cpuset {spec}")


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
    """Our service's settings on app1 (read once): the alternatives load the same weights.
    Where the service serves the converted model, app1 has no weights file: the lab's one with
    the pinned sha256 is copied to BENCH_WEIGHTS for them."""
    if not _ENV:
        _ENV.update(parse_env(dexec(APP1, f"cat {ENV_FILE}")))
        if "SEGSERVE_WEIGHTS_PATH" not in _ENV:
            sha = _ENV["SEGSERVE_WEIGHTS_SHA256"]
            source = next(
                p
                for p in (LAB / "weights").glob("*.pth")
                if p.with_suffix(".pth.sha256").exists()
                and p.with_suffix(".pth.sha256").read_text().strip() == sha
            )
            dexec(APP1, f"mkdir -p {os.path.dirname(BENCH_WEIGHTS)}")
            sh(["docker", "cp", str(source), f"{APP1}:{BENCH_WEIGHTS}"])
            dexec(APP1, f"chmod 0644 {BENCH_WEIGHTS}")
            _ENV["SEGSERVE_WEIGHTS_PATH"] = BENCH_WEIGHTS
    return _ENV


# -- converging and our service ------------------------------------------------------------


def playbook(playbook: str, extra: list[str], *, limit: str | None = None) -> float:
    """Run a playbook on the lab; its output goes to .lab/bench/NAME.log. Returns seconds."""
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
    """systemctl ACTION segserve; a start returns once the service answers /readyz."""
    dexec(container, f"systemctl {action} segserve")
    if action in ("start", "restart"):
        wait_http(container, "http://127.0.0.1:8002/readyz", 180)


def wait_http(
    container: str, url: str, timeout_s: int, want: str = "", any_status: bool = False
) -> None:
    """Poll URL from inside the container (some ports listen on 127.0.0.1 only) until its body
    contains `want`, or, with any_status, until it answers at all (even an HTTP error)."""
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


def malloc_env() -> str:
    """The service's malloc setting (GLIBC_TUNABLES, from uwsgi_app_malloc_huge_pages) as a
    command's environment prefix: the ceiling and the other stacks on app1 allocate as the
    service's workers do."""
    value = read_env().get("GLIBC_TUNABLES")
    return f"GLIBC_TUNABLES={value}" if value else ""


def start_pidfile(name: str, command: str, *, env: str = "OMP_NUM_THREADS=1", prepare: str = ""):
    """Start `command` in app1's BENCH_DIR, detached (setsid nohup), output to logs/NAME.log,
    its pid in BENCH_DIR/NAME.pid for stop_pidfile. `env` (and the service's malloc setting,
    malloc_env) prefixes it; `prepare` runs first."""
    env = f"{env} {malloc_env()}".strip()
    dexec(
        APP1,
        f"cd {BENCH_DIR} || exit 1; {prepare}{env} setsid nohup {command} "
        f"> logs/{name}.log 2>&1 < /dev/null & echo $! > {BENCH_DIR}/{name}.pid",
    )


def stop_pidfile(name: str) -> None:
    """End the process app1 recorded in BENCH_DIR/NAME.pid (started with setsid nohup)."""
    dexec(
        APP1,
        f"if [ -f {BENCH_DIR}/{name}.pid ]; then kill $(cat {BENCH_DIR}/{name}.pid) "
        f"2>/dev/null; rm -f {BENCH_DIR}/{name}.pid; fi; sleep 1",
        check=False,
    )


# -- load ----------------------------------------------------------------------------------


def make_image(size: int = 520) -> Path:
    """The posted JPEG: the service's sample photo at the served input size."""
    sys.path.insert(0, str(ROOT / "app" / "src"))
    from PIL import Image

    from segserve import samples

    with Image.open(samples.path("astronaut.jpg")) as photo:
        image = photo.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    image.save(IMAGE, format="JPEG", quality=90)
    return IMAGE


FORM_BOUNDARY = "segserve-bench-boundary"
FORM_TYPE = f"multipart/form-data; boundary={FORM_BOUNDARY}"


def form_image() -> Path:
    """IMAGE as a multipart/form-data body with one field `image` (for LitServe)."""
    path = IMAGE.with_suffix(".form")
    path.write_bytes(
        f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        'filename="image.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + IMAGE.read_bytes()
        + f"\r\n--{FORM_BOUNDARY}--\r\n".encode()
    )
    return path


def warm(url: str, n: int, *, form: bool = False) -> None:
    """Post the image n times and wait for each answer: first requests pay one-off costs."""
    data = form_image().read_bytes() if form else IMAGE.read_bytes()
    kind = FORM_TYPE if form else "image/jpeg"
    for _ in range(n):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": kind})
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()


def wrk(
    url: str,
    conns: int,
    duration: int,
    accept: str,
    watch: list[str],
    *,
    form: bool = False,
    cores: list[int] | None = None,
) -> dict:
    """One wrk run posting IMAGE to URL (raw, or as a form), on `cores` if given; its JSON
    summary plus wrk's own CPU time (rusage of children) and the CPU share of each container in
    `watch` during the run."""
    pinned = ["taskset", "-c", ",".join(map(str, cores))] if cores else []
    cmd = [
        *pinned,
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
        str(form_image() if form else IMAGE),
        accept,
        FORM_TYPE if form else "image/jpeg",
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
        client_cores=cores,
        container_cpu_share={c: (cpu_after[c] - cpu_before[c]) / 1e9 / wall for c in watch},
        load_before=load_before,
        load_after=loadavg(),
        command=" ".join(cmd),
    )
    return r


def open_loop(url: str, rate: float, duration: int, accept: str) -> dict:
    """Requests at a fixed rate, evenly spaced, whatever the answers (the fault suite's
    loadgen.py, one connection per request), from this machine: p50/p99 without the closed
    loop's coordinated omission (a slow answer cannot delay the next request). It runs on the
    cores app1 is not pinned to (away_from_app1), and its CPU share is reported."""
    others = away_from_app1()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = sh(
        [
            "taskset",
            "-c",
            ",".join(map(str, others)),
            sys.executable,
            str(LOADGEN),
            url,
            str(IMAGE),
            "--rate",
            f"{rate:.3f}",
            "--duration",
            str(duration),
            "--accept",
            accept,
            "--threads",
            "32",
        ],
        capture=True,
    ).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r = json.loads(out)
    return {
        "rate": rate,
        "client_cpu_share": cpu / wall,
        "client_cores": others,
        "sent": r["sent"],
        "failed": r["failed"],
        "succeeded_per_s": r["succeeded_per_s"],
        "p50": r["latency_ok"]["p50_ms"],
        "p99": r["latency_ok"]["p99_ms"],
        "max": r["latency_ok"]["max_ms"],
        "backlog": r["mode"]["max_backlog"],
    }


def choice_record() -> dict | None:
    """The backend choice record the service on app1 is given now, if any (read afresh:
    read_env's copy predates the reconverge)."""
    path = parse_env(dexec(APP1, f"cat {ENV_FILE}")).get("SEGSERVE_BACKEND_CHOICE")
    return json.loads(dexec(APP1, f"cat {path}")) if path else None
