"""What the serving benchmark compares: every stack, declared once, in STACKS.

An entry says where wrk posts to, how the stack is installed on app1, started and stopped,
its label in the report, which in-process ceiling its images/s is divided by, and which of
the issue's targets it is held to. The order of STACKS is the order everything follows: the
runs (within each phase), the default --stacks, the rows, legends and targets of the report.
Adding a stack is adding an entry here.
"""

from __future__ import annotations

import enum
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import lablib as lab
from lablib import APP1, BENCH_DIR, LAB, SEGSERVE_VENV, dexec, log, sh

# Answer formats, in report order, and the Accept header that asks for each.
ACCEPT = {"png": "image/png", "json": "application/json"}
NAIVE_PORT = 5000
TS_PORT = 8080
LS_PORT = 8090
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
TS_VENV = f"{BENCH_DIR}/venv"
# LitServe and its dependencies, pinned (installed with --no-deps the same way; onnxruntime,
# numpy, pillow and segserve come from the service's venv).
LS_WHEELS = [
    "litserve==0.2.19",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "annotated-doc==0.0.7",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "anyio==4.16.0",
    "idna==3.20",
    "uvicorn==0.55.0",
    "h11==0.16.0",
    "click==8.5.1",
    "httptools==0.9.0",
    "uvloop==0.23.0",
    "watchfiles==1.3.0",
    "websockets==17.4",
    "python-dotenv==1.2.4",
    "pyyaml==6.0.3",
    "pyzmq==27.3.0",
    "python-multipart==0.0.34",
    "opentelemetry-api==1.45.2",
]
LS_VENV = f"{BENCH_DIR}/litserve-venv"


class Phase(enum.Enum):
    """When in the run a stack is measured; run.py takes the phases in this order."""

    FLEET = "both app hosts in rotation, before app2 is drained"
    TURNS = "app2 drained; one stack at a time on app1's core, the order rotating each rep"
    RECONVERGED = "app2 drained; app1 converged with the stack's app_vars for all its reps"


@dataclass(frozen=True, kw_only=True)
class Stack:
    """What every entry has: a name (for --stacks and the report), a label, and its phase."""

    name: str
    label: str
    phase: Phase
    # Install on app1, once, before any run; records its timings (seconds) in the dict given.
    setup: Callable[[dict], None] | None = None
    # Bring the stack up for a turn; returns the seconds it took to get ready when that is
    # worth reporting (kept as NAME_start_s in the .json), else None.
    start: Callable[[], float | None] | None = None
    stop: Callable[[], None] | None = None
    # One stack at a time on the core: our service on app1 is stopped before its turn.
    alone_on_app1: bool = False
    # Shell lines, run on app1 after setup, that print the versions it runs (one per line).
    versions: str = ""


@dataclass(frozen=True, kw_only=True)
class HttpStack(Stack):
    """A stack loaded over HTTP with wrk, at each of its formats and concurrencies."""

    url: Callable[[], str]
    formats: tuple[str, ...] = tuple(ACCEPT)
    conns: tuple[int, ...] = (1, 2, 4)
    # The backend whose in-process ceiling (same format) its images/s is compared to, times the
    # number of app hosts it spreads the load over.
    ceiling: str | None = None
    ceiling_hosts: int = 1
    # Extra vars for playbooks/app.yml (app1, lb1) while it runs: Phase.RECONVERGED only.
    app_vars: tuple[str, ...] = ()
    # Open loop after the closed-loop runs of each repetition: requests at these shares of the
    # images/s just measured at 1 connection (PNG), evenly spaced, whatever the answers.
    open_loop: tuple[float, ...] = ()
    # The targets: images/s at one connection, PNG, at least this share of the ceiling;
    # ahead of this stack (images/s and p99, PNG) at each concurrency; PNG answers under this
    # share of the JSON bytes.
    target_ceiling_share: float | None = None
    # Ahead of each (stack, factor): images/s at least factor x theirs, p99 no higher.
    target_ahead_of: tuple[tuple[str, float], ...] = ()
    # The body is posted as multipart/form-data (field `image`) instead of raw bytes.
    form: bool = False
    target_png_share: float | None = None
    # At least this many times this stack's images/s (PNG, each concurrency), the ratio
    # wanted on a CPU with bfloat16 first, then on any other.
    target_faster_than: tuple[str, float, float] | None = None
    # p99 at most this many times p50 at the highest open-loop share.
    target_open_p99_over_p50: float | None = None
    short: str = ""  # how targets name it ("ahead of TorchServe"); the name if empty


@dataclass(frozen=True, kw_only=True)
class InProcessCeiling(Stack):
    """The service's own handler in one process on app1 (bench/ceiling.py), for each backend
    an HTTP stack is compared to. It always runs: the ratios need it."""


# -- our service ---------------------------------------------------------------------------


def lb_url() -> str:
    return f"http://{lab.container_ip(lab.LB1)}/v1/segment"


def start_ours() -> None:
    lab.segserve_unit(APP1, "start")
    lab.warm(lb_url(), 2)


OURS_VERSIONS = f"""{SEGSERVE_VENV}/bin/python -c 'from importlib.metadata import version as v; \\
  print(*(f"{{p}} {{v(p)}}" for p in ("onnxruntime", "openvino", "flask", "pyuwsgi")))'
"""


# -- the in-process ceiling ----------------------------------------------------------------


def setup_ceiling(info: dict) -> None:
    sh(["docker", "cp", str(lab.HERE / "ceiling.py"), f"{APP1}:{BENCH_DIR}/ceiling.py"])


def run_ceiling(candidate: str, n: int, *, malloc: str | None = None) -> dict:
    """The ceiling of one candidate: a backend name, or `openvino <precision>`. `malloc`: an
    environment prefix for glibc's malloc; None, the service's own (lab.malloc_env)."""
    backend, _, precision = candidate.partition(" ")
    option = f" --precision {precision}" if precision else ""
    malloc = lab.malloc_env() if malloc is None else malloc
    out = dexec(
        APP1,
        f"cd {BENCH_DIR} && {malloc} {SEGSERVE_VENV}/bin/python ceiling.py image.jpg "
        f"--backend {backend}{option} -n {n} 2>/dev/null",
        timeout=900,
    )
    line = next(x for x in out.splitlines() if x.startswith("CEILJSON "))
    result = json.loads(line[len("CEILJSON ") :])
    result["backend"] = candidate
    return result


def openvino_precisions() -> list[str]:
    """The OpenVINO precisions app1's CPU computes natively (as the service decides)."""
    out = dexec(
        APP1,
        f"{SEGSERVE_VENV}/bin/python -c 'from segserve.openvino_backend import host_precisions; "
        "print(*host_precisions())'",
    )
    return out.split()


def served_backend() -> str:
    """What the service behind nginx serves, as a ceiling names it (`openvino bf16`)."""
    with urllib.request.urlopen(lb_url().replace("/v1/segment", "/v1/model"), timeout=30) as r:
        model = json.load(r)
    if model["backend"] == "openvino":
        return f"openvino {model['precision']}"
    return model["backend"]


# -- the seeds' naive server ---------------------------------------------------------------


def setup_naive(info: dict) -> None:
    sh(["docker", "cp", str(lab.HERE / "naive_server.py"), f"{APP1}:{BENCH_DIR}/naive_server.py"])


def naive_url() -> str:
    return f"http://{lab.container_ip(APP1)}:{NAIVE_PORT}/infer"


def start_naive() -> None:
    env = lab.read_env()
    lab.start_pidfile(
        "naive",
        f"{SEGSERVE_VENV}/bin/python naive_server.py {env['SEGSERVE_WEIGHTS_PATH']} "
        f"--port {NAIVE_PORT}",
    )
    # It answers only POST /infer: any HTTP status means it listens.
    lab.wait_http(APP1, f"http://127.0.0.1:{NAIVE_PORT}/infer", 60, any_status=True)
    lab.warm(naive_url(), 2)


def stop_naive() -> None:
    lab.stop_pidfile("naive")


# -- TorchServe ----------------------------------------------------------------------------


def setup_torchserve(info: dict) -> None:
    """JDK, a venv that reuses the service's torch (a .pth file: no second 5 GB install),
    TorchServe, the model archive."""
    dexec(APP1, f"mkdir -p {BENCH_DIR}/model-store")
    for src in ("torchserve/handler.py", "torchserve/model.py"):
        sh(["docker", "cp", str(lab.HERE / src), f"{APP1}:{BENCH_DIR}/{src.split('/')[-1]}"])
    if "ok" not in dexec(APP1, "java -version >/dev/null 2>&1 && echo ok", check=False):
        log(f"app1: installing {JDK} (Debian)")
        t = time.perf_counter()
        lab.resolve_in_container(APP1, ["deb.debian.org"])
        dexec(
            APP1,
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {JDK} >/dev/null",
            timeout=900,
        )
        info["jdk_install_s"] = time.perf_counter() - t
    if "ok" not in dexec(
        APP1,
        f"{TS_VENV}/bin/python -c 'import ts, yaml, captum' >/dev/null 2>&1 && echo ok",
        check=False,
    ):
        log("app1: TorchServe venv (wheels from PyPI; torch shared with the service's venv)")
        t = time.perf_counter()
        install_torchserve()
        info["torchserve_install_s"] = time.perf_counter() - t
    t = time.perf_counter()
    archive_model()
    info["archive_s"] = time.perf_counter() - t


def install_torchserve() -> None:
    """Download the wheels here (app1 has no index), copy them in, install offline."""
    install_offline(TS_VENV, TS_WHEELS)


def install_offline(venv: str, wheels_wanted: list[str]) -> None:
    """A venv on app1 that also sees the service's venv (a .pth file), with these wheels
    downloaded here for app1's Python and installed there with --no-deps, offline."""
    wheels = LAB / "bench" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = []
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
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
            *wheels_wanted,
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
  --find-links {BENCH_DIR}/wheels {" ".join(wheels_wanted)}
""",
        timeout=900,
    )


def archive_model() -> None:
    """The archive: the service's weights file's state_dict, TorchServe eager mode."""
    env = lab.read_env()
    dexec(
        APP1,
        f"""set -e
cd {BENCH_DIR}
{TS_VENV}/bin/python -c "import torch, sys; w = torch.load(sys.argv[1], weights_only=True); \\
  torch.save(w['state_dict'], 'state_dict.pth')" {env["SEGSERVE_WEIGHTS_PATH"]}
rm -f model-store/seg.mar
{TS_VENV}/bin/torch-model-archiver --model-name seg --version 1.0 --model-file model.py \
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


def torchserve_url() -> str:
    return f"http://{lab.container_ip(APP1)}:{TS_PORT}/predictions/seg"


def start_torchserve() -> float:
    t = time.perf_counter()
    lab.start_pidfile(
        "torchserve",
        f"{TS_VENV}/bin/torchserve --foreground --ncs --disable-token-auth "
        "--ts-config config.properties --models seg=seg.mar",
        env=f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LOG_LOCATION={BENCH_DIR}/logs/ts "
        f"METRICS_LOCATION={BENCH_DIR}/logs/ts PATH={TS_VENV}/bin:$PATH",
        prepare="rm -rf logs/ts; mkdir -p logs/ts; ",
    )
    lab.wait_http(APP1, "http://127.0.0.1:8081/models/seg", 240, want='"status": "READY"')
    took = time.perf_counter() - t
    lab.warm(torchserve_url(), 3)
    return took


def stop_torchserve() -> None:
    """`torchserve --stop` (its own pid file), then make sure no frontend or worker is left."""
    dexec(APP1, f"PATH={TS_VENV}/bin:$PATH torchserve --stop", check=False)
    lab.stop_pidfile("torchserve")
    for i in range(40):
        left = dexec(APP1, "pgrep -x java; pgrep -f model_service_worker", check=False).split()
        if not left:
            return
        if i == 20:  # still there after 20 s: end exactly those processes
            dexec(APP1, f"kill -9 {' '.join(left)}", check=False)
        time.sleep(1)


TORCHSERVE_VERSIONS = f"""
echo torchserve $({TS_VENV}/bin/pip show torchserve 2>/dev/null | sed -n 's/^Version: //p')
{TS_VENV}/bin/python -c 'import torch, torchvision, PIL; \\
  print("torch", torch.__version__, "torchvision", torchvision.__version__, "PIL", PIL.__version__)'
java -version 2>&1 | head -1
"""


# -- LitServe -------------------------------------------------------------------------------


def setup_litserve(info: dict) -> None:
    sh(["docker", "cp", str(lab.HERE / "litserve" / "server.py"), f"{APP1}:{BENCH_DIR}/ls.py"])
    if "ok" not in dexec(
        APP1, f"{LS_VENV}/bin/python -c 'import litserve' >/dev/null 2>&1 && echo ok", check=False
    ):
        log("app1: LitServe venv (wheels from PyPI; onnxruntime from the service's venv)")
        t = time.perf_counter()
        install_offline(LS_VENV, LS_WHEELS)
        info["litserve_install_s"] = time.perf_counter() - t


def litserve_url() -> str:
    return f"http://{lab.container_ip(APP1)}:{LS_PORT}/predict"


def start_litserve() -> float:
    t = time.perf_counter()
    lab.start_pidfile("litserve", f"{LS_VENV}/bin/python ls.py --port {LS_PORT}")
    lab.wait_http(APP1, f"http://127.0.0.1:{LS_PORT}/health", 120, want="ok")
    took = time.perf_counter() - t
    lab.warm(litserve_url(), 3, form=True)
    return took


def stop_litserve() -> None:
    """The server, then any inference worker it left."""
    lab.stop_pidfile("litserve")
    for i in range(20):
        if not dexec(APP1, f"pgrep -f {LS_VENV}/bin/python", check=False).split():
            return
        dexec(APP1, f"pkill {'-9 ' if i > 10 else ''}-f {LS_VENV}/bin/python", check=False)
        time.sleep(1)


LITSERVE_VERSIONS = f"""
echo litserve $({LS_VENV}/bin/pip show litserve 2>/dev/null | sed -n 's/^Version: //p') \
  uvicorn $({LS_VENV}/bin/pip show uvicorn 2>/dev/null | sed -n 's/^Version: //p')
"""


# -- the registry --------------------------------------------------------------------------

STACKS: tuple[Stack, ...] = (
    HttpStack(
        name="fleet-onnx",
        label="ours: nginx -> app1 + app2, onnxruntime",
        phase=Phase.FLEET,
        url=lb_url,
        conns=(1, 2, 4, 8),
        ceiling="onnxruntime",
        ceiling_hosts=2,
    ),
    InProcessCeiling(
        name="ceiling",
        label="the service's handler in-process on app1 (1 core, 1 thread)",
        phase=Phase.TURNS,
        setup=setup_ceiling,
        alone_on_app1=True,
    ),
    HttpStack(
        name="ours-onnx",
        label="ours: nginx -> uWSGI, onnxruntime (app1 only)",
        phase=Phase.TURNS,
        url=lb_url,
        start=start_ours,
        ceiling="onnxruntime",
        versions=OURS_VERSIONS,
        target_ceiling_share=0.9,
        target_ahead_of=(("torchserve", 1.0), ("litserve", 1.3)),
        target_png_share=0.01,
        open_loop=(0.5, 0.8),
        target_open_p99_over_p50=1.5,
    ),
    HttpStack(
        name="naive",
        label="seed design: Flask dev server, model per request, JSON (app1)",
        phase=Phase.TURNS,
        url=naive_url,
        formats=("json",),
        setup=setup_naive,
        start=start_naive,
        stop=stop_naive,
        alone_on_app1=True,
        ceiling="torch",
    ),
    HttpStack(
        name="torchserve",
        label="TorchServe 0.12, torch eager (app1)",
        short="TorchServe",
        phase=Phase.TURNS,
        url=torchserve_url,
        formats=("png",),
        setup=setup_torchserve,
        start=start_torchserve,
        stop=stop_torchserve,
        alone_on_app1=True,
        ceiling="torch",
        versions=TORCHSERVE_VERSIONS,
    ),
    HttpStack(
        name="litserve",
        label="LitServe 0.2, the same artifact and onnxruntime session, multipart in (app1)",
        short="LitServe",
        phase=Phase.TURNS,
        url=litserve_url,
        formats=("png",),
        conns=(1, 2, 4),
        setup=setup_litserve,
        start=start_litserve,
        stop=stop_litserve,
        alone_on_app1=True,
        ceiling="onnxruntime",
        form=True,
        versions=LITSERVE_VERSIONS,
    ),
    HttpStack(
        name="ours-torch",
        label="ours: nginx -> uWSGI, torch eager (app1 only)",
        phase=Phase.RECONVERGED,
        url=lb_url,
        app_vars=("uwsgi_app_backend=torch",),
        ceiling="torch",
        target_ceiling_share=0.9,
        target_ahead_of=(("torchserve", 1.0),),
    ),
    HttpStack(
        name="ours-chosen",
        label="ours: nginx -> uWSGI, the backend app1 chose (uwsgi_app_backend=auto; app1 only)",
        phase=Phase.RECONVERGED,
        url=lb_url,
        conns=(1, 2),
        app_vars=("uwsgi_app_backend=auto",),
        ceiling="chosen",
        open_loop=(0.5, 0.8),
        target_ceiling_share=0.95,
        target_faster_than=("ours-onnx", 1.5, 1.0),
        target_open_p99_over_p50=1.5,
    ),
)
BY_NAME = {s.name: s for s in STACKS}
HTTP_STACKS = tuple(s for s in STACKS if isinstance(s, HttpStack))
CEILING = next(s for s in STACKS if isinstance(s, InProcessCeiling))


def ceiling_backends(openvino: list[str]) -> tuple[str, ...]:
    """The candidates the in-process ceiling is measured for: the backends the stacks are
    compared to, and OpenVINO at each precision the host computes (what `chosen` may be)."""
    named = (s.ceiling for s in HTTP_STACKS if s.ceiling and s.ceiling != "chosen")
    return tuple(dict.fromkeys(named)) + tuple(f"openvino {p}" for p in openvino)


def chosen(names: list[str], phase: Phase) -> list[Stack]:
    """The stacks of a phase to run, in registry order: those named, and the ceiling."""
    return [
        s
        for s in STACKS
        if s.phase is phase and (s.name in names or isinstance(s, InProcessCeiling))
    ]


def setup_app1_files() -> None:
    """What every stack reads on app1: the image they all post, and the module with which
    ceiling.py and the LitServe server read the service's settings."""
    dexec(APP1, f"mkdir -p {BENCH_DIR}/logs")
    sh(["docker", "cp", str(lab.IMAGE), f"{APP1}:{BENCH_DIR}/image.jpg"])
    sh(["docker", "cp", str(lab.HERE / "hostenv.py"), f"{APP1}:{BENCH_DIR}/hostenv.py"])


def setup_all() -> dict:
    """Install every stack's pieces on app1 (the image they all post, then each stack's own),
    then note the versions. Returns timings (seconds) and versions."""
    t0 = time.perf_counter()
    setup_app1_files()
    info: dict = {}
    for stack in STACKS:
        if stack.setup:
            stack.setup(info)
    script = "".join(s.versions for s in STACKS)
    info["versions"] = dexec(APP1, script, check=False).strip()
    info["openvino_precisions"] = openvino_precisions()
    info["setup_s"] = time.perf_counter() - t0
    return info
